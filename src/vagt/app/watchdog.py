"""Cut a database connection whose work has gone on past its limit, so that its thread's
wait in recv ends (an error it can retry on a new connection) rather than lasting for ever.

A database that stops answering and leaves the connection open (a frozen server or its
storage, an address failed over behind a proxy) is seen by no TCP timeout: its side, or the
proxy's, still acknowledges every packet. Only the time the work takes tells.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

log = logging.getLogger("vagt.watchdog")


@dataclass(frozen=True)
class _Watched:
    conn: psycopg.Connection[Any]
    started: float
    deadline: float
    on_cut: Callable[[float], None]


class Watchdog:
    """One thread, started with the first guard, that looks at the guarded connections a few
    times a second."""

    def __init__(self, period_s: float = 0.25) -> None:
        self.period_s = period_s
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, conn: psycopg.Connection[Any], limit_s: float,
              on_cut: Callable[[float], None]) -> Iterator[None]:
        """While the block runs longer than `limit_s`, `conn` is cut: the block's statement
        raises `psycopg.OperationalError`, and `on_cut(seconds_waited)` is called (from the
        watchdog's thread)."""
        now = time.monotonic()
        key = next(self._keys)
        with self._lock:
            self._start()
            self._watched[key] = _Watched(conn, now, now + limit_s, on_cut)
        try:
            yield
        finally:
            # under the lock: once the block is left, its connection (back in the pool,
            # perhaps another thread's) is never cut
            with self._lock:
                self._watched.pop(key, None)

    def cut_all(self) -> None:
        """Cut every connection guarded now, without `on_cut` (nothing is to be tried
        again): the process stops, and gives up what it still waits for the database for."""
        with self._lock:
            for w in self._watched.values():
                _shut_down(w.conn)
            self._watched.clear()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="vagt-db-watchdog",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.period_s)
            now = time.monotonic()
            cut: list[_Watched] = []
            with self._lock:
                for key, w in list(self._watched.items()):
                    if w.deadline <= now:
                        del self._watched[key]
                        _shut_down(w.conn)
                        cut.append(w)
            for w in cut:
                try:
                    w.on_cut(now - w.started)
                except Exception:  # a bug in a callback must not end the watchdog
                    log.exception("event=watchdog_callback_failed")


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down (on a copy of its descriptor, which libpq keeps):
    the thread waiting on it sees the end of the stream at once."""
    try:
        fd = os.dup(conn.pgconn.socket)
    except (psycopg.Error, OSError):  # closed already
        return
    with socket.socket(fileno=fd) as s, contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)


# One per process: the lanes and the rules' timer share it.
WATCHDOG = Watchdog()


@contextlib.contextmanager
def guarded_connection(pool: ConnectionPool, limit_s: float, who: str,
                       timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A connection from `pool` (waiting up to `timeout` for one; the pool's own wait if
    None), cut if the block takes longer than `limit_s`: then `event=database_unresponsive
    <who>` is logged, and the pool's other connections, most likely opened to the same
    server, are replaced. Commit inside the block (`conn.transaction()`), so the commit is
    watched too."""
    def cut(waited_s: float) -> None:
        log.error("event=database_unresponsive %s waited_s=%.1f note=connection_cut", who,
                  waited_s)
        pool.drain()

    with pool.connection(timeout=timeout) as conn, WATCHDOG.guard(conn, limit_s, cut):
        yield conn
