"""A TCP proxy in front of the test's PostgreSQL, for outages: `down()` refuses new
connections and cuts the open ones, `up()` forwards again, `go_silent()` keeps the open
connections open but forwards nothing more on them (a crashed host, a failed-over address)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import urllib.parse

from tests.support import free_port


class DatabaseProxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.port = free_port()
        self.target = target
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._silent: set[int] = set()
        self._lock = threading.Lock()

    def url(self, database_url: str) -> str:
        """`database_url` through the proxy."""
        parts = urllib.parse.urlsplit(database_url)
        netloc = parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            _close(self._listener)  # the shutdown wakes the thread in accept()
            self._listener = None
        with self._lock:
            for c in self._open:
                _close(c)
            self._open.clear()

    def go_silent(self) -> None:
        with self._lock:
            self._silent.update(id(c) for c in self._open)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    if id(client) not in self._silent:
                        (server if s is client else client).sendall(data)
        except (OSError, ValueError):
            _close(client)
            _close(server)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
