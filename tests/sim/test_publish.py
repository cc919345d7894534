"""Publishing simulated traffic to the real Mosquitto: nothing lost, at the rate asked, and in
step with simulated time (never ahead of the wall clock); and the pacing itself."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.sim.helpers import START
from tests.support import Broker, free_port

from vagt.sim import Pacing, PublishError, SimMessage, Simulation, make_fleet, publish, publish_backlog


def stream(seed: int, n: int, root: str) -> list[SimMessage]:
    sim = Simulation(make_fleet(300, seed), seed=seed, start=START, topic_root=root)
    out: list[SimMessage] = []
    for m in sim.messages():
        out.append(m)
        if len(out) == n:
            return out
    raise AssertionError("unreachable: the stream is endless")


# --- pacing -----------------------------------------------------------------------------------

class FakeClocks:
    def __init__(self, wall: float) -> None:
        self.wall_now = wall
        self.mono = 100.0

    def wall(self) -> float:
        return self.wall_now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, s: float) -> None:
        self.wall_now += s
        self.mono += s


def test_pacing_runs_simulated_time_at_its_speed_from_the_start():
    clocks = FakeClocks(wall=START + 86400)  # the simulation starts a day ago
    pacing = Pacing(START, speed=60.0, wall=clocks.wall, monotonic=clocks.monotonic)
    assert pacing.delay(START) <= 0
    assert pacing.delay(START + 600) == pytest.approx(10.0)
    clocks.advance(10.0)
    assert pacing.delay(START + 600) == pytest.approx(0.0)
    assert pacing.now() == pytest.approx(START + 600)


def test_pacing_never_lets_a_message_out_before_its_time_has_come_on_the_wall_clock():
    clocks = FakeClocks(wall=START + 60)
    fast = Pacing(START, speed=1000.0, wall=clocks.wall, monotonic=clocks.monotonic)
    assert fast.delay(START + 120) == pytest.approx(60.0)  # not the 0.12 s the speed allows
    flat_out = Pacing(START, wall=clocks.wall, monotonic=clocks.monotonic)
    assert flat_out.delay(START + 30) < 0 and flat_out.delay(START + 90) == pytest.approx(30.0)
    assert flat_out.now() == START + 60
    with pytest.raises(ValueError, match="speed must be above 0"):
        Pacing(START, speed=0)


def test_publish_waits_for_simulated_time_and_stops_when_told(broker, topic_root):
    sub = Subscriber(broker, f"{topic_root}/dev/#").connect()
    now = time.time()
    times = [now - 30, now - 20, now - 10, now + 1.0, now + 60]  # three past, two to come
    messages = [SimMessage(f"{topic_root}/dev/X-{k}/status",
                           b'{"status":{"signal":-%d}}' % (70 + k), t) for k, t in enumerate(times)]
    stop = threading.Event()
    threading.Timer(3.0, stop.set).start()
    started = time.monotonic()
    sent = asyncio.run(publish(broker.url, messages, pacing=Pacing(now - 30), stop=stop.is_set))
    elapsed = time.monotonic() - started
    got = sub.wait_for(sent)
    sub.disconnect()
    assert sent == 4  # the one due in a minute was still waiting when told to stop
    assert got == {m.payload for m in messages[:4]}
    assert sub.arrived[messages[3].payload] >= messages[3].time  # not before its time
    assert elapsed < 30


class Subscriber:
    """A paho client with a persistent session that keeps every payload it receives."""

    def __init__(self, broker: Broker, topic_filter: str) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.client_id = f"sub-{uuid.uuid4().hex[:8]}"
        self.payloads: list[bytes] = []
        self.arrived: dict[bytes, float] = {}  # wall-clock time of arrival
        self.lock = threading.Lock()
        self.client: paho.Client | None = None

    def connect(self) -> Subscriber:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=paho.MQTTv311, clean_session=False)
        subscribed = threading.Event()
        c.on_message = self._on_message
        c.on_connect = lambda cl, *_: cl.subscribe(self.topic_filter, qos=1)
        c.on_subscribe = lambda *_: subscribed.set()
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        assert subscribed.wait(10), "no SUBACK from Mosquitto"
        self.client = c
        return self

    def disconnect(self) -> None:
        assert self.client is not None
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, n: int, timeout: float = 60) -> set[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.payloads) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # anything beyond n (a duplicate) would show now
        with self.lock:
            return set(self.payloads)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        with self.lock:
            self.payloads.append(m.payload)
            self.arrived.setdefault(m.payload, time.time())


def test_publish_backlog_delivers_every_message_to_a_persistent_session(broker, topic_root):
    sub = Subscriber(broker, f"{topic_root}/dev/#").connect()
    sub.disconnect()  # the session stays: Mosquitto queues the backlog for it
    messages = stream(1, 5000, topic_root)
    assert publish_backlog(broker.url, messages, window=500) == 5000
    sub.connect()
    got = sub.wait_for(5000)
    sub.disconnect()
    assert len(got) == 5000
    assert got == {m.payload for m in messages}


def test_publish_flat_out_delivers_every_message(broker, topic_root):
    sub = Subscriber(broker, f"{topic_root}/dev/#").connect()
    messages = stream(2, 2000, topic_root)
    assert asyncio.run(publish(broker.url, messages)) == 2000
    got = sub.wait_for(2000)
    sub.disconnect()
    assert got == {m.payload for m in messages}


def test_publish_at_a_rate_takes_as_long_as_the_rate_says(broker, topic_root):
    sub = Subscriber(broker, f"{topic_root}/dev/#").connect()
    messages = stream(3, 30, topic_root)
    started = time.monotonic()
    assert asyncio.run(publish(broker.url, messages, rate=50)) == 30
    elapsed = time.monotonic() - started
    got = sub.wait_for(30)
    sub.disconnect()
    assert 29 / 50 <= elapsed < 29 / 50 + 1.0
    assert len(got) == 30


def test_publishing_to_a_broker_that_is_not_there_raises_publish_error():
    url = f"mqtt://127.0.0.1:{free_port()}"
    with pytest.raises(PublishError, match="127.0.0.1"):
        publish_backlog(url, [("t/x", b"1")])
    with pytest.raises(PublishError, match="127.0.0.1"):
        asyncio.run(publish(url, [("t/x", b"1")]))


def test_publish_backlog_logs_in_with_the_url_credentials(broker, topic_root):
    assert publish_backlog(broker.auth_url, [(f"{topic_root}/dev/X-1/status", b"{}")]) == 1
    wrong = broker.auth_url.replace(broker.password, "wrong")
    with pytest.raises(PublishError, match="refused"):
        publish_backlog(wrong, [(f"{topic_root}/dev/X-1/status", b"{}")])
