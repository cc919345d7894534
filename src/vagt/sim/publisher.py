"""Publishing simulated traffic at QoS 1: paced or flat out with aiomqtt, or a backlog with paho.

Both keep a window of unacknowledged messages (so packet ids never wrap onto one still in
flight) and return only when the broker has acknowledged every message they sent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from vagt.sim.pacing import Pacing
from vagt.sim.simulation import SimMessage

log = logging.getLogger("vagt.sim")

WINDOW = 1000  # unacknowledged messages in flight; well below the 65,535 packet ids
LONGEST_NAP = 0.5  # s: a publisher waiting for a message's time still sees `stop` this often

# (topic, payload), or a simulated message whose time a Pacing can wait for
Outgoing = tuple[str, bytes] | SimMessage


class PublishError(RuntimeError):
    """The broker could not be reached, or it did not acknowledge what was published."""


@dataclass
class PublishStats:
    """Counters another thread may read while a publisher runs (the demo's summary line)."""

    sent: int = 0
    acknowledged: int = 0


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise PublishError(f"broker URL must be mqtt://host:port or mqtts://host:port, "
                               f"got {u.scheme}://{u.hostname or ''}")
        tls = u.scheme == "mqtts"
        return cls(u.hostname, u.port or (8883 if tls else 1883),
                   urllib.parse.unquote(u.username) if u.username else None,
                   urllib.parse.unquote(u.password) if u.password else None, tls)


# --- asyncio: paced or flat out -----------------------------------------------------------------

async def publish(url: str, messages: Iterable[Outgoing], rate: float | None = None, *,
                  pacing: Pacing | None = None, stop: Callable[[], bool] | None = None,
                  duration: float | None = None, protocol: int = 4,
                  stats: PublishStats | None = None, window: int = WINDOW) -> int:
    """Publish each (topic, payload) at QoS 1, at most `rate` a second (None: as fast as the
    broker takes them), each SimMessage not before `pacing` says; return how many the broker
    acknowledged, which is all of them.

    Ends when `messages` ends, `stop()` is true (checked between messages and while
    waiting), or `duration` seconds after the broker took the connection: as the rate,
    the duration counts from there, so a broker slow to answer does not cut the run short.
    Protocol 4 (MQTT 3.1.1) works with every broker, amqtt included.
    """
    stats = stats if stats is not None else PublishStats()
    address = BrokerAddress.parse(url)
    try:
        async with _client(address, protocol, window) as client:
            await _publish_all(client, messages, _Timing(rate, pacing, stop, duration),
                               stats, window)
    except* aiomqtt.MqttError as group:
        raise PublishError(f"publishing to {address.host}:{address.port} failed after "
                           f"{stats.acknowledged} acknowledged messages: "
                           f"{group.exceptions[0]}") from group.exceptions[0]
    log.info("event=published messages=%d host=%s port=%d", stats.acknowledged,
             address.host, address.port)
    return stats.acknowledged


def _client(address: BrokerAddress, protocol: int, window: int) -> aiomqtt.Client:
    client = aiomqtt.Client(
        address.host, address.port, username=address.username, password=address.password,
        identifier=f"vagt-sim-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5 if protocol == 5 else aiomqtt.ProtocolVersion.V311,
        tls_context=ssl.create_default_context() if address.tls else None,
        max_inflight_messages=0, timeout=60)  # 0: the window is ours (see _Backlog)
    client.pending_calls_threshold = window + 1  # a full window is normal here, not a warning
    return client


class _Timing:
    """When the next message may go: the rate, the pacing of simulated time, the stop flag,
    the duration; rate and duration count from `started`."""

    def __init__(self, rate: float | None, pacing: Pacing | None,
                 stop: Callable[[], bool] | None, duration: float | None = None) -> None:
        self.rate = rate
        self.pacing = pacing
        self.stop = stop if stop is not None else (lambda: False)
        self.duration = duration
        self.started = time.monotonic()

    def stopped(self) -> bool:
        return self.stop() or (self.duration is not None
                               and time.monotonic() - self.started >= self.duration)

    async def wait(self, sent: int, message: Outgoing) -> bool:
        """Wait until `message` (the `sent`-th) may go; False if stopped meanwhile."""
        while not self.stopped():
            delay = 0.0
            if self.rate is not None:
                delay = sent / self.rate - (time.monotonic() - self.started)
            if self.pacing is not None and isinstance(message, SimMessage):
                delay = max(delay, self.pacing.delay(message.time))
            if delay <= 0:
                return True
            await asyncio.sleep(min(delay, LONGEST_NAP))
        return False


async def _publish_all(client: aiomqtt.Client, messages: Iterable[Outgoing], timing: _Timing,
                       stats: PublishStats, window: int) -> None:
    # Each publish is a task, so the rate is not bound to one round trip per message; tasks
    # start in creation order, so a device's messages leave in the order they were made.
    slots = asyncio.Semaphore(window)
    timing.started = time.monotonic()  # connected: the rate and the duration count from here
    async with asyncio.TaskGroup() as tasks:
        for n, message in enumerate(messages):
            if not await timing.wait(n, message):
                break
            await slots.acquire()
            tasks.create_task(_publish_one(client, message[0], message[1], slots, stats))
            stats.sent += 1


async def _publish_one(client: aiomqtt.Client, topic: str, payload: bytes,
                       slots: asyncio.Semaphore, stats: PublishStats) -> None:
    try:
        await client.publish(topic, payload, qos=1)
        stats.acknowledged += 1
    finally:
        slots.release()


# --- paho: a backlog, flat out ------------------------------------------------------------------

def publish_backlog(url: str, messages: Iterable[Outgoing], *, protocol: int = 4,
                    window: int = WINDOW, timeout: float = 120.0) -> int:
    """Publish a backlog at QoS 1 as fast as the broker takes it, up to `window` messages in
    flight without waiting for each PUBACK; return once every message is acknowledged.

    For benchmarks that preload 100,000+ messages: several times faster than `publish`.
    Raises PublishError if the broker refuses us, refuses a message, or acknowledges nothing
    for `timeout` seconds.
    """
    address = BrokerAddress.parse(url)
    with _Backlog(address, protocol, window, timeout) as backlog:
        for message in messages:
            backlog.send(message[0], message[1])
        backlog.wait_for_all()
    log.info("event=backlog_published messages=%d host=%s port=%d", backlog.sent,
             address.host, address.port)
    return backlog.sent


class _Backlog:
    """One paho client whose unacknowledged messages are held to a window by a semaphore."""

    def __init__(self, address: BrokerAddress, protocol: int, window: int, timeout: float) -> None:
        self.address = address
        self.window = window
        self.timeout = timeout
        self.sent = 0
        self.refused: list[str] = []
        self.slots = threading.BoundedSemaphore(window)
        self.connected = threading.Event()
        self.connack: ReasonCode | None = None
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"vagt-backlog-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311)
        # 0 = no window of paho's own: ours keeps the count down, and paho's, once full,
        # rescans every message in flight at each PUBACK
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        if address.username is not None:
            self.client.username_pw_set(address.username, address.password)
        if address.tls:
            self.client.tls_set_context(ssl.create_default_context())

    def __enter__(self) -> _Backlog:
        where = f"{self.address.host}:{self.address.port}"
        try:
            self.client.connect(self.address.host, self.address.port)
        except OSError as e:
            raise PublishError(f"cannot reach the broker at {where}: {e}") from e
        self.client.loop_start()
        if not self.connected.wait(30) or self.connack is None or self.connack.is_failure:
            self.client.loop_stop()
            raise PublishError(f"the broker at {where} refused us: "
                               f"{self.connack or 'no answer within 30 s'}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def send(self, topic: str, payload: bytes) -> None:
        self._take_slot()
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise PublishError(f"publishing to {topic} failed: {paho.error_string(info.rc)}")
        self.sent += 1

    def wait_for_all(self) -> None:
        for _ in range(self.window):  # every slot given back: every PUBACK is in
            self._take_slot()
        if self.refused:
            raise PublishError(f"the broker refused {len(self.refused)} of {self.sent} "
                               f"messages, the first: {self.refused[0]}")

    def _take_slot(self) -> None:
        if not self.slots.acquire(timeout=self.timeout):
            raise PublishError(f"the broker acknowledged nothing for {self.timeout:.0f} s "
                               f"({self.sent} messages sent)")

    def _on_connect(self, _c: paho.Client, _u: object, _f: object, rc: ReasonCode,
                    _p: object) -> None:
        self.connack = rc
        self.connected.set()

    def _on_publish(self, _c: paho.Client, _u: object, mid: int, rc: ReasonCode,
                    _p: object) -> None:
        if rc.is_failure:  # MQTT 5 only: e.g. not authorized for the topic
            self.refused.append(f"message {mid}: {rc}")
        self.slots.release()
