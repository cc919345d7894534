"""Engine fixtures: registered devices, an engine in its own process, a plain MQTT publisher."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.app.db_proxy import DatabaseProxy
from tests.support import Broker, free_port

from vagt.app.engine import Session
from vagt.devices import import_csv
from vagt.ingest.model import RawMessage
from vagt.ingest.units import METRICS

DEVICES = [
    ("OXI-0001", "Nonin", "3230", "pulse_oximeter", "Aarhus"),
    ("OXI-0002", "Nonin", "3230", "pulse_oximeter", "Samsø"),
    ("ALM-0001", "Tunstall", "Lifeline Vi+", "personal_alarm", "Randers"),
    ("BPM-0001", "A&D", "UA-651BLE", "bp_monitor", "Viborg"),
]


def register(database_url: str, devices: list[tuple[str, str, str, str, str]]) -> None:
    """Register and deploy devices as the service centre does, through the registry (so only
    approved models pass), each to a citizen of its own in its municipality."""
    header = "device_id,vendor,model,type,municipality,citizen_ref\n"
    rows = "".join(f"{d},{vendor},{model},{type_},{place},cit-{d.lower()}\n"
                   for d, vendor, model, type_, place in devices)
    with psycopg.connect(database_url) as conn:
        import_csv(conn, "test-fleet.csv", actor="test", text=header + rows)


@pytest.fixture
def devices(database_url: str) -> list[tuple[str, str, str, str, str]]:
    register(database_url, DEVICES)
    return DEVICES


def topic(root: str, device_id: str, channel: str) -> str:
    return f"{root}/dev/{device_id}/{channel}"


def telemetry(device_id: str, t: float, seq: int | None = None, **metrics: float) -> bytes:
    doc: dict[str, Any] = {"device_id": device_id, "time": t,
                           "readings": [{"metric": k, "value": v, "unit": METRICS[k].unit}
                                        for k, v in metrics.items()]}
    if seq is not None:
        doc["seq"] = seq
    return orjson.dumps(doc)


def alarm(device_id: str, t: float, code: str = "alarm.fall") -> bytes:
    return orjson.dumps({"device_id": device_id, "time": t, "events": [{"code": code}]})


def trickle(url_port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish one message every 20 ms: a 50 ms batch wait fills a batch with two or three."""
    for m in messages:
        publish(url_port, [m])
        time.sleep(0.02)


def take_all(session: Session, n: int, stop: threading.Event | None = None,
             timeout: float = 30) -> list[RawMessage]:
    """What a session (an `MqttSession` or a `ReceiverProcess`) hands out, until `n` messages
    or `timeout`; not acknowledged."""
    stop = stop or threading.Event()
    got: list[RawMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += session.take(n - len(got), 0.05, stop)
    return got


def reconnect_through_a_broker_restart(session: Any, broker: Broker, held: int,
                                       store_kept: bool) -> None:
    """Once `session` (an `MqttSession` or a `ReceiverProcess`) holds `held` messages not
    taken, restart the broker, with its store or without it (as one SIGKILLed before its
    save, or run without persistence); return when the session is connected again."""
    wait_for(lambda: session.waiting == held, what=f"the {held} messages, held")
    broker.stop()
    if not store_kept:
        (broker.directory / "mosquitto.db").unlink()
    broker.start()
    wait_for(lambda: not session.connected, what="the session to see the broker go")
    wait_for(lambda: session.connected, what="the session connected again")


def publish(url_port: int, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    """Publish at QoS 1 and wait until the broker has acknowledged every message (at QoS 0,
    until each is written: the broker reads them before the DISCONNECT that follows)."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                    protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=qos) for t, p in messages]
        for info in infos:
            info.wait_for_publish(timeout=60)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


@dataclass
class EngineProcess:
    """`vagt run` in a process of its own, as an operator would start it."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    runs: list[int] = field(default_factory=list)

    def start(self) -> EngineProcess:
        # A restart gets a metrics port of its own: the last run's, free again, may be taken
        # meanwhile by another worker's process (a restarted engine once stopped on "Address
        # already in use"). Tests read it from `env` after (re)starting.
        if self.proc is not None and self.env.get("VAGT_METRICS_PORT") != "0":
            self.env["VAGT_METRICS_PORT"] = str(free_port())
        self.log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vagt.app.cli", "run"], env=self.env,
            stdout=self.log_file, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Until both MQTT sessions are up and the broker has granted each a subscription
        (the log says so): a message published before a new session's SUBSCRIBE has
        reached the broker goes to no one. An alarm published as soon as both lanes had
        logged `mqtt_connected` reached neither once, on a busy machine (the full suite,
        2026-12-07), and the test waited for its alert in vain."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.log_path.read_bytes()
            text, since = data.decode(errors="replace"), data[self.log_from:].decode(errors="replace")
            subscribed = set(re.findall(r"event=mqtt_subscribed client_id=(\S+)", since))
            if text.count("event=mqtt_connected") >= 2 * (len(self.runs) + 1) \
                    and len(subscribed) >= 2:
                self.runs.append(1)
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited early:\n{text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"engine not ready in {timeout}s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def engine(database_url: str, broker: Broker, topic_root: str,
           tmp_path: Path) -> Iterator[EngineProcess]:
    env = dict(os.environ)
    env.update({
        "VAGT_MQTT_URL": broker.url,
        "VAGT_DATABASE_URL": database_url,
        "VAGT_MQTT_TOPIC_ROOT": topic_root,
        "VAGT_MQTT_CLIENT_ID": f"vagt-{uuid.uuid4().hex[:8]}",
        "VAGT_METRICS_PORT": str(free_port()),
    })
    e = EngineProcess(env, tmp_path / "engine.log")
    yield e
    e.stop()


@pytest.fixture
def proxy() -> Iterator[DatabaseProxy]:
    """A proxy in front of the test database, which a test can make refuse or fall silent."""
    p = DatabaseProxy()
    p.up()
    yield p
    p.down()


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def query(database_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def scalar(database_url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return query(database_url, sql, params)[0][0]
