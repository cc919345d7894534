"""The bulk lane's MQTT session in a process of its own (`vagt.app.receiver`): a batch is
acknowledged only when the engine says it is committed, only by the child it came from, and
nothing is lost when either side dies."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from tests.app.conftest import (
    EngineProcess,
    publish,
    reconnect_through_a_broker_restart,
    scalar,
    take_all,
    telemetry,
    topic,
    trickle,
    wait_for,
)
from tests.app.test_alarm_process import ended, metric
from tests.support import Broker

from vagt.app.metrics import EngineMetrics
from vagt.app.receiver import ReceiverProcess, ReceiverSettings
from vagt.ingest.consumer import SessionSettings
from vagt.ingest.model import RawMessage

T0 = time.time() - 3600


def receiver_pids(engine: EngineProcess) -> list[int]:
    return [int(p) for p in re.findall(r"event=bulk_receiver_process_started pid=(\d+)",
                                       engine.log())]


@pytest.fixture
def settings(broker: Broker, topic_root: str) -> ReceiverSettings:
    session = SessionSettings(client_id=f"recv-{uuid.uuid4().hex[:8]}",
                              filters=(f"{topic_root}/dev/+/telemetry",), port=broker.port,
                              session_expiry_s=300)
    return ReceiverSettings(session, batch_max=100, batch_wait_s=0.05)


def publish_qos_0_passed_on(port: int, messages: list[tuple[str, bytes]], watch: str) -> None:
    """Publish at QoS 0 and return once the broker has passed the messages on: an observer
    subscribed to `watch` has them all. `publish` returns when they are written, and a
    broker stopped at once may not have read them yet; a QoS 0 message is then lost, as it
    may be, before any subscriber had it."""
    seen: list[bytes] = []
    observer = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}",
                           protocol=paho.MQTTv5)
    observer.on_message = lambda _c, _u, m: seen.append(m.payload)
    subscribed = threading.Event()
    observer.on_subscribe = lambda *_: subscribed.set()
    observer.connect("127.0.0.1", port)
    observer.loop_start()
    try:
        observer.subscribe(watch, qos=0)
        assert subscribed.wait(10), "the observer's subscription"
        publish(port, messages, qos=0)
        wait_for(lambda: len(seen) >= len(messages), what="the broker passing them on")
    finally:
        observer.disconnect()
        observer.loop_stop()


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def payloads(topic_root: str, n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(topic(topic_root, "OXI-0001", "telemetry"),
             telemetry("OXI-0001", T0 + i, seq=i, spo2=95)) for i in range(start, start + n)]


def test_a_batch_taken_from_a_child_that_died_is_not_acknowledged_by_the_next_one(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event) -> None:
    sent = payloads(topic_root, 10)
    with ReceiverProcess(settings) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        publish(broker.port, sent)
        first = take_all(receiver, 10, stop)
        assert [m.payload for m in first] == [p for _, p in sent]
        assert receiver.pid is not None
        os.kill(receiver.pid, signal.SIGKILL)
        wait_for(lambda: not receiver.alive, what="the child to die")
        receiver.start()          # as the engine's supervisor does
        again = take_all(receiver, 10, stop)
        assert [m.payload for m in again] == [p for _, p in sent]   # the broker sent it again
        # The new child numbers its batches from 1 too, and holds its batch 1 now: the old
        # batch's acknowledgement must not release it (nor anything of the new child's).
        assert receiver.ack(first) == 0
    acked: list[int] = []
    with ReceiverProcess(settings, on_acked=acked.append) as receiver:
        third = take_all(receiver, 10, stop)
        assert [m.payload for m in third] == [p for _, p in sent]
        receiver.ack(third)
        wait_for(lambda: acked == [10], what="the child's count of acknowledgements")
    # acknowledged for good: a new session under the same client id gets nothing
    with ReceiverProcess(settings) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        assert take_all(receiver, 1, stop, timeout=2) == []


def test_what_the_engine_did_not_acknowledge_comes_again_after_a_restart(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event) -> None:
    with ReceiverProcess(settings) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        sent = payloads(topic_root, 30)
        publish(broker.port, sent)
        batches: list[list[RawMessage]] = []
        while sum(map(len, batches)) < 30:
            if batch := receiver.take(100, 0.05, stop):
                batches.append(batch)
        receiver.ack(batches[0])   # the first batch committed, the rest not
    with ReceiverProcess(settings) as receiver:
        again = take_all(receiver, 30 - len(batches[0]), stop)
    assert [m.payload for m in again] == [p for _, p in sent[len(batches[0]):]]


def test_a_killed_bulk_receiver_is_started_again_and_nothing_is_lost(
        engine: EngineProcess, broker: Broker, database_url: str, topic_root: str,
        devices: object) -> None:
    engine.start().wait_ready()
    [first] = receiver_pids(engine)
    # Hold the readings table, so that the engine has the next batch in hand, uncommitted,
    # when its receiver dies.
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE readings IN EXCLUSIVE MODE")
        publish(broker.port, payloads(topic_root, 50))
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM pg_stat_activity "
                                              "WHERE wait_event_type = 'Lock' "
                                              "AND datname = current_database()"),
                 what="the engine waiting to store the batch")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(receiver_pids(engine)) == 2, what="the receiver started again")
    # the lock is gone: the engine commits the batch, its acknowledgement goes nowhere, and
    # the broker sends the batch to the new receiver; stored once, by its keys
    publish(broker.port, payloads(topic_root, 50, start=50))
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == 100,
             what="every reading")
    wait_for(lambda: (metric(engine, 'vagt_messages_acked_total{lane="bulk"}') or 0) >= 100,
             what="every message acknowledged")
    assert "event=bulk_receiver_process_exited exitcode=-9" in engine.log()
    assert metric(engine, 'vagt_child_process_restarts_total{process="bulk_receiver"}') == 1.0
    assert metric(engine, 'vagt_child_process_up{process="bulk_receiver"}') == 1.0
    assert metric(engine, 'vagt_mqtt_connected{lane="bulk"}') == 1.0
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 0
    time.sleep(1)
    assert scalar(database_url, "SELECT count(*) FROM readings") == 100


def test_the_bulk_receiver_ends_with_the_engine(
        engine: EngineProcess, broker: Broker, database_url: str, topic_root: str,
        devices: object) -> None:
    engine.start().wait_ready()
    [child] = receiver_pids(engine)
    publish(broker.port, payloads(topic_root, 20))
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == 20,
             what="the readings")
    assert engine.terminate() == 0
    assert ended(child)
    engine.start().wait_ready()
    [_, child] = receiver_pids(engine)
    time.sleep(1)
    # committed and acknowledged before the stop: nothing came again
    assert metric(engine, 'vagt_messages_received_total{lane="bulk"}') in (None, 0.0)
    engine.kill()  # no goodbye: the child sees its pipe close
    wait_for(lambda: ended(child), timeout=15, what="the orphaned receiver to end")
    assert "event=engine_gone note=bulk_receiver_stopping" in engine.log()


def test_with_the_bulk_session_in_the_engines_own_process_readings_still_come_in(
        engine: EngineProcess, broker: Broker, database_url: str, topic_root: str,
        devices: object) -> None:
    engine.env["VAGT_BULK_RECEIVER_PROCESS"] = "false"
    engine.start().wait_ready()
    publish(broker.port, payloads(topic_root, 20))
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == 20,
             what="the readings")
    assert receiver_pids(engine) == []
    wait_for(lambda: metric(engine, 'vagt_messages_acked_total{lane="bulk"}') == 20.0,
             what="the acknowledgements counted")


def niceness(pid: int, tid: int | None = None) -> int:
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        return int(f.read().split(") ", 1)[1].split()[16])


def test_the_bulk_lane_yields_the_cpu_to_the_alarm_lane(
        engine: EngineProcess, broker: Broker, database_url: str, topic_root: str,
        devices: object) -> None:
    engine.start().wait_ready()
    assert engine.proc is not None
    pid = engine.proc.pid
    [receiver] = receiver_pids(engine)
    [alarm_lane] = [int(p) for p in re.findall(r"event=alarm_lane_process_started pid=(\d+)",
                                               engine.log())]
    assert niceness(receiver) == 19          # ingest.bulk_nice's default
    threads = {int(t): niceness(pid, int(t)) for t in os.listdir(f"/proc/{pid}/task")}
    assert threads[pid] == 0                 # the engine's main thread, API, timer: as started
    assert sorted(threads.values()).count(19) == 1   # the bulk lane's thread
    assert niceness(alarm_lane) == 0


def test_a_receiver_whose_acknowledgements_fail_ends_rather_than_stall(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event) -> None:
    """A bug in the child's acknowledging (here: told to acknowledge a batch it never sent)
    ends the child; the supervisor starts it again and the broker sends what it held."""
    from vagt.app.receiver import ACK

    sent = payloads(topic_root, 5)
    with ReceiverProcess(settings) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        publish(broker.port, sent)
        assert len(take_all(receiver, 5, stop)) == 5
        receiver._send((ACK, 99, 99))
        wait_for(lambda: not receiver.alive, what="the child to end")
        receiver.start()
        again = take_all(receiver, 5, stop)
        assert [m.payload for m in again] == [p for _, p in sent]


def test_a_lane_behind_a_backlog_is_seen_as_behind_though_its_batches_are_not_full(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event) -> None:
    """Merged batches stop short of the maximum (whole batches only): the rules' timer must
    still learn that a backlog waits (see CatchingUp)."""
    with ReceiverProcess(settings) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        publish(broker.port, payloads(topic_root, 250))   # batches of at most 100
        time.sleep(1)                                      # all of them sent here
        first = receiver.take(100, 0.05, stop)
        assert 0 < len(first) <= 100 and receiver.behind
        rest = take_all(receiver, 250 - len(first), stop)
        assert len(rest) == 250 - len(first) and not receiver.behind


def test_a_take_that_may_wait_longer_than_the_child_merges_its_batches_to_fill(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event) -> None:
    """The child sends a batch each 50 ms (its settings); a lane draining a backlog may wait
    longer, and then takes one batch made of the child's, up to `max_n` (see
    LaneSpec.backlog_wait_s)."""
    sent = payloads(topic_root, 40)
    with ReceiverProcess(settings) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        trickling = threading.Thread(target=trickle, args=(broker.port, sent))
        trickling.start()
        batch = receiver.take(40, 10.0, stop)
        trickling.join()
    assert [m.payload for m in batch] == [p for _, p in sent]
    assert len({m.token.number for m in batch}) > 1     # the child's batches, merged


def settled(value: Callable[[], int], quiet_s: float = 1.0, timeout: float = 20) -> int:
    """`value()` once it has not changed for `quiet_s`."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"still changing after {timeout}s: {last}")


@pytest.mark.parametrize("store_kept", [True, False])
def test_what_waited_in_the_engine_across_the_childs_reconnect_is_there_once(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event, store_kept: bool) -> None:
    # The engine takes nothing (its database away, say) while the broker restarts, and the
    # child connects again.
    # - With its store, the broker has the session and sends the 30 again: what waited
    #   from the first connection cannot be acknowledged any more, and is dropped (kept, each
    #   reconnect would add a Receive Maximum of copies).
    # - Without it (SIGKILLed before its save, or no persistence), the session is gone and
    #   nothing comes again: what waited is all there is, and is kept.
    sent, later = payloads(topic_root, 30), payloads(topic_root, 1, start=30)
    acked: list[int] = []
    with ReceiverProcess(settings, on_acked=acked.append) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        publish(broker.port, sent)
        reconnect_through_a_broker_restart(receiver, broker, 30, store_kept)
        publish(broker.port, later)   # a batch of the new connection
        assert settled(lambda: receiver.waiting) == 31
        got = take_all(receiver, 31, stop)
        assert sorted(m.payload for m in got) == sorted(p for _, p in sent + later)
        receiver.ack(got)
        # on the new connection: the 30 sent again and the one after them; without the
        # store, the one after them only (the first 30's acknowledgements are no-ops)
        wait_for(lambda: sum(acked) == (31 if store_kept else 1), what="the acknowledgements")
    with ReceiverProcess(settings) as receiver:   # nothing is owed any more
        wait_for(lambda: receiver.connected, what="the child's session")
        assert take_all(receiver, 1, stop, timeout=2) == []


def test_what_a_lost_session_left_waiting_survives_a_later_reconnect_that_resumes(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event) -> None:
    # The broker loses the session (restarted without its store): the 30 that waited are
    # all there is. Then it restarts with its store: it sends again the 5 of the session's
    # own connection, not the 30, which must still be there, once each.
    first, second = payloads(topic_root, 30), payloads(topic_root, 5, start=30)
    with ReceiverProcess(settings) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        publish(broker.port, first)
        reconnect_through_a_broker_restart(receiver, broker, 30, store_kept=False)
        publish(broker.port, second)
        reconnect_through_a_broker_restart(receiver, broker, 35, store_kept=True)
        assert settled(lambda: receiver.waiting) == 35
        got = take_all(receiver, 35, stop)
        assert sorted(m.payload for m in got) == sorted(p for _, p in first + second)


def test_what_came_at_qos_0_and_waited_in_the_engine_across_the_childs_reconnect_is_kept(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event) -> None:
    # As above with the store kept, but 5 of them came at QoS 0: the broker sent those once
    # and sends them never again, so they must not be dropped with the QoS 1 ones.
    once, sent = payloads(topic_root, 5), payloads(topic_root, 25, start=5)
    acked: list[int] = []
    with ReceiverProcess(settings, on_acked=acked.append) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        publish(broker.port, once, qos=0)
        publish(broker.port, sent)
        reconnect_through_a_broker_restart(receiver, broker, 30, store_kept=True)
        assert settled(lambda: receiver.waiting) == 30
        got = take_all(receiver, 30, stop)
        assert sorted(m.payload for m in got) == sorted(p for _, p in once + sent)
        receiver.ack(got)
        # the 25 as sent again; the QoS 0 ones have nothing to acknowledge
        wait_for(lambda: sum(acked) == 25, what="the acknowledgements")
    with ReceiverProcess(settings) as receiver:   # nothing is owed any more
        wait_for(lambda: receiver.connected, what="the child's session")
        assert take_all(receiver, 1, stop, timeout=2) == []


def test_qos_0_messages_kept_across_a_reconnect_in_the_childs_take_lose_nothing_after(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event) -> None:
    """QoS 0 messages wait in the child's inbox (its batch still filling) while it connects
    again; the new connection's QoS 1 messages join them in one take, and the next batch
    comes on the new connection before the engine takes. Every one reaches the engine, and
    the child acknowledges only what it handed over (else the broker forgets messages
    never stored)."""
    settings = dataclasses.replace(settings, batch_max=1000, batch_wait_s=4.0)
    once = payloads(topic_root, 5)
    first, second = payloads(topic_root, 10, start=100), payloads(topic_root, 10, start=200)
    acked: list[int] = []
    with ReceiverProcess(settings, on_acked=acked.append) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        # the child's take waits 4 s to fill
        publish_qos_0_passed_on(broker.port, once, settings.session.filters[0])
        broker.stop()
        broker.start()                         # the store kept: the session goes on
        wait_for(lambda: receiver.connected, what="the child connected again")
        publish(broker.port, first)            # QoS 1, on the new connection, same take
        assert settled(lambda: receiver.waiting, quiet_s=5.0, timeout=30) == 15
        publish(broker.port, second)           # the next batch, while the engine is busy
        assert settled(lambda: receiver.waiting, quiet_s=5.0, timeout=30) == 25
        got = take_all(receiver, 25, stop)
        assert sorted(m.payload for m in got) == sorted(p for _, p in once + first + second)
        receiver.ack(got)
        wait_for(lambda: sum(acked) == 20, what="the QoS 1 ones acknowledged")


def test_the_bulk_receiver_holds_no_more_than_its_receive_maximum_for_a_slower_engine(
        broker: Broker, topic_root: str, settings: ReceiverSettings,
        stop: threading.Event) -> None:
    # The broker (Mosquitto 2.0.11) sends past the Receive Maximum once acknowledgements
    # flow; the child stops reading at it, so what waits here and what the engine holds
    # together stay within it, and the operator sees the lane holding at its limit.
    limit, n = 50, 1000
    session = dataclasses.replace(settings.session, receive_maximum=limit,
                                  stop_reading_at_receive_maximum=True)
    settings = dataclasses.replace(settings, session=session, batch_max=10)
    metrics = EngineMetrics(CollectorRegistry())
    with ReceiverProcess(settings) as receiver:     # the persistent session
        wait_for(lambda: receiver.connected, what="the child's session")
    sent = payloads(topic_root, n)
    publish(broker.port, sent)
    got: list[RawMessage] = []
    takes: list[list[RawMessage]] = []
    most = 0
    seen_paused = False
    with ReceiverProcess(settings) as receiver:
        metrics.watch_reading("bulk", lambda: receiver.reading_paused,
                              lambda: receiver.reading_paused_s)
        deadline = time.monotonic() + 120
        while len(got) < n and time.monotonic() < deadline:
            if batch := receiver.take(10, 0.0, stop):
                takes.append(batch)
            time.sleep(0.05)     # the broker has time to send what it would
            most = max(most, sum(map(len, takes)) + receiver.waiting)
            seen_paused = seen_paused or paused_metric(metrics) == 1.0
            if len(takes) > 2 or not batch:     # commits lag two batches behind
                receiver.ack(takes[0])
                got += takes.pop(0)
        assert [m.payload for m in got] == [p for _, p in sent]
        assert most <= limit, "the engine held more than the Receive Maximum"
        assert seen_paused, "the lane was never seen holding at its limit"
        wait_for(lambda: paused_seconds(metrics) > 0, what="the child to say how long")
    with ReceiverProcess(settings) as receiver:
        wait_for(lambda: receiver.connected, what="the child's session")
        assert take_all(receiver, 1, stop, timeout=2) == [], "an acknowledged message came again"


def paused_metric(metrics: EngineMetrics) -> float | None:
    return metrics.registry.get_sample_value("vagt_mqtt_reading_paused", {"lane": "bulk"})


def paused_seconds(metrics: EngineMetrics) -> float:
    return metrics.registry.get_sample_value("vagt_mqtt_reading_paused_seconds_total",
                                             {"lane": "bulk"}) or 0.0
