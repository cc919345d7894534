"""Test support shared by the fixtures: free ports and a real Mosquitto process."""

from __future__ import annotations

import getpass
import itertools
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vagt.app import embedded

__all__ = ["ROOT", "Broker", "free_port", "start_mosquitto", "stop_mosquitto"]

ROOT = Path(__file__).resolve().parent.parent

# Ports for the tests' servers are drawn from below the kernel's ephemeral range, each pytest-
# xdist worker from a block of its own. A port the kernel hands out for bind(0) is from that
# range, as are the local ports of every client connection (psycopg's, paho's, of any worker):
# one freed by the check was now and then taken by a connection before the server bound it
# ("address already in use", twice on 2026-12-06 with three workers).
_BLOCK = 1500
_FIRST = 20000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_ports() -> itertools.cycle[int] | None:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    k = int(name[2:]) if name[2:].isdigit() else 0
    low = _FIRST + _BLOCK * k
    if low + _BLOCK > _ephemeral_low():
        return None   # no room below it: the kernel's choice
    start = random.randrange(_BLOCK)   # a worker started again does not reuse the last run's
    return itertools.cycle([low + (start + i) % _BLOCK for i in range(_BLOCK)])


_PORTS = _worker_ports()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on or holds right now, one this worker
    has not handed out for a while (its block is gone round before one comes again)."""
    if _PORTS is not None:
        for _ in range(_BLOCK):
            port = next(_PORTS)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))   # not SO_REUSEADDR: one in TIME_WAIT is skipped
                except OSError:
                    continue
            return port
    return int(embedded.free_port())


def start_mosquitto(conf: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """A Mosquitto on `conf`, once it listens on `port`; its log is quoted if it exits."""
    process = subprocess.Popen(["mosquitto", "-c", str(conf)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else "(no log)"
                raise RuntimeError(f"mosquitto exited ({log}):\n{text}") from None
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("mosquitto did not start listening within 10 s")


def stop_mosquitto(process: subprocess.Popen[bytes] | None) -> None:
    """A clean stop (SIGTERM): Mosquitto writes its persistence file before it exits."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


@dataclass
class Broker:
    """A real Mosquitto process this test run owns."""

    port: int
    auth_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    user: str = "vagt"
    password: str = "s3cret-test-only"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"mqtt://{self.user}:{self.password}@127.0.0.1:{self.auth_port}"

    def start(self) -> None:
        template = (ROOT / "scripts" / "mosquitto-test.conf").read_text()
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            template.format(port=self.port, auth_port=self.auth_port, dir=self.directory,
                            user=getpass.getuser())
        )
        pw = self.directory / "passwords"
        if not pw.exists():
            pw.touch()
            subprocess.run(
                ["mosquitto_passwd", "-b", str(pw), self.user, self.password], check=True
            )
            pw.chmod(0o600)
        self.process = start_mosquitto(conf, self.port, self.directory / "mosquitto.log")

    def stop(self) -> None:
        stop_mosquitto(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
