"""A message that processing fails on (a bug, or data the database refuses) is kept as a
dead letter with an alert, and the rest of its batch goes on: the lane neither stops nor
takes the same batch again and again, which would hold every alarm behind it."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool
from tests.app.conftest import (
    alarm,
    publish,
    query,
    register,
    scalar,
    telemetry,
    topic,
    wait_for,
)
from tests.support import Broker

from vagt.alerts import actions
from vagt.app.config import Config
from vagt.app.engine import Lane, LaneSpec, lane_specs, open_engine_pool
from vagt.app.metrics import EngineMetrics
from vagt.app.pipeline import BatchOutcome, Pipeline
from vagt.ingest.consumer import MqttSession, SessionSettings
from vagt.ingest.model import RawMessage
from vagt.rules import load_rules

T0 = time.time() - 3600


class BrokenOn(Pipeline):
    """The real pipeline, with a bug that one device's messages set off (`failures` times;
    None: always)."""

    broken_device = "OXI-0002"
    failures: int | None = None

    def process(self, conn: psycopg.Connection, messages: Sequence[RawMessage],
                state_apart: bool = False, skip: Collection[str] = ()) -> BatchOutcome:
        if any(f"/dev/{self.broken_device}/" in m.topic for m in messages) \
                and self.failures != 0:
            if self.failures is not None:
                self.failures -= 1
            raise ZeroDivisionError("a bug this device's message sets off")
        return super().process(conn, messages, state_apart, skip)


class BrokenInAlarmProcess(BrokenOn):
    """`BrokenOn` loaded as the alarm lane's process loads it: its fleet holds at first only
    the devices with something open (`Pipeline.load`'s `whole_fleet`)."""

    @classmethod
    def load(cls, conn: psycopg.Connection, **kw: Any) -> Pipeline:  # type: ignore[override]
        return super().load(conn, **{**kw, "whole_fleet": False})


def personal_alarms(database_url: str, *device_ids: str) -> None:
    """Registered besides the `devices` fixture's own (ALM-0001), in Aarhus."""
    register(database_url, [(d, "Tunstall", "Lifeline Vi+", "personal_alarm", "Aarhus")
                            for d in device_ids])


@contextlib.contextmanager
def lane_parts(database_url: str, broker: Broker, topic_root: str, spec: LaneSpec,
               pipeline: type[Pipeline]) -> Iterator[tuple[ConnectionPool, MqttSession,
                                                           Pipeline]]:
    """What a lane of the engine runs on: a pool, a session on the lane's channel (connected)
    and `pipeline` loaded as the engine loads it."""
    channel = "alarm" if spec.name == "alarm" else "telemetry"
    settings = SessionSettings(client_id=f"refused-{uuid.uuid4().hex[:8]}",
                               filters=(f"{topic_root}/dev/+/{channel}",), port=broker.port,
                               session_expiry_s=300)
    with open_engine_pool(database_url, Config(), size=(1, 3)) as pool, \
            MqttSession(settings) as session:
        with pool.connection() as conn:
            loaded = pipeline.load(conn, topic_root=topic_root, rules=load_rules(None),
                                   clock=time.time)
        wait_for(lambda: session.connected, what="the lane's session")
        yield pool, session, loaded


def run_lane(database_url: str, broker: Broker, topic_root: str, lane: str,
             messages: list[tuple[str, bytes]], until: str,
             pipeline: type[Pipeline] = BrokenOn, spec: LaneSpec | None = None,
             send: Callable[[int, list[tuple[str, bytes]]], None] = publish) -> EngineMetrics:
    """One lane of the engine (its spec from the default config unless `spec`) over a real
    session and database, until the query `until` (a count) reaches the number of messages
    published (by `send`, all at once unless told otherwise)."""
    spec = spec or next(s for s in lane_specs(Config()) if s.name == lane)
    metrics = EngineMetrics()
    stop = threading.Event()
    with lane_parts(database_url, broker, topic_root, spec, pipeline) as (pool, session,
                                                                          fleet_pipeline):
        worker = threading.Thread(target=Lane(spec, session, pool, fleet_pipeline,
                                              metrics).run, args=(stop,))
        worker.start()
        send(broker.port, messages)
        try:
            wait_for(lambda: scalar(database_url, until) == len(messages), what=until)
            wait_for(lambda: metrics.acked.labels(lane)._value.get() == len(messages),
                     what="every message acknowledged")
        finally:
            stop.set()
            worker.join(30)
        assert not worker.is_alive(), "the lane stopped"
    return metrics


def test_the_message_processing_fails_on_is_refused_and_the_rest_of_its_batch_is_stored(
        database_url: str, broker: Broker, topic_root: str, devices: object) -> None:
    sent = [(topic(topic_root, d, "telemetry"), telemetry(d, T0 + k, spo2=96))
            for k, d in enumerate(["OXI-0001", "OXI-0002", "OXI-0001"])]
    metrics = run_lane(database_url, broker, topic_root, "bulk", sent,
                       "SELECT (SELECT count(*) FROM readings) + "
                       "(SELECT count(*) FROM dead_letters)")
    assert scalar(database_url, "SELECT count(*) FROM readings "
                                "WHERE device_id = 'OXI-0001'") == 2
    [(reason, device, detail)] = query(database_url,
                                       "SELECT reason, device_id, detail FROM dead_letters")
    assert (reason, device) == ("processing_failed", "OXI-0002")
    assert "ZeroDivisionError: a bug this device's message sets off" in detail
    assert query(database_url, "SELECT rule, device_id, queue, severity FROM alerts") == [
        ("message_processing_failed", "OXI-0002", "service_centre", "warning")]
    assert metrics.messages_refused.labels("bulk")._value.get() == 1
    assert metrics.dead_letters.labels("processing_failed")._value.get() == 1


def test_an_alarm_that_processing_fails_on_still_reaches_the_emergency_queue(
        database_url: str, broker: Broker, topic_root: str, devices: object,
        monkeypatch) -> None:
    monkeypatch.setattr(BrokenOn, "broken_device", "ALM-0001")
    personal_alarms(database_url, "ALM-0002")
    sent = [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0)),
            (topic(topic_root, "ALM-0002", "alarm"), alarm("ALM-0002", T0))]
    run_lane(database_url, broker, topic_root, "alarm", sent,
             "SELECT count(*) FROM alerts")
    assert query(database_url, "SELECT rule, device_id, queue, severity FROM alerts "
                               "ORDER BY device_id") == [
        ("alarm_processing_failed", "ALM-0001", "emergency", "critical"),
        ("personal_alarm", "ALM-0002", "emergency", "critical")]
    summary = scalar(database_url, "SELECT summary FROM alerts WHERE device_id = 'ALM-0001'")
    assert "contact the citizen" in summary
    assert scalar(database_url, "SELECT reason FROM dead_letters") == "processing_failed"


def test_an_alarm_that_processing_fails_on_is_among_its_municipalitys_alerts(
        database_url: str, broker: Broker, topic_root: str, devices: object,
        monkeypatch) -> None:
    """An operator of a municipality sees only its alerts (the API's scope), in the alarm
    lane's own process too, whose fleet holds at first only the devices it has heard: the
    alarm fails before its device is known there."""
    monkeypatch.setattr(BrokenOn, "broken_device", "ALM-0001")
    run_lane(database_url, broker, topic_root, "alarm",
             [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))],
             "SELECT count(*) FROM alerts", BrokenInAlarmProcess)
    with psycopg.connect(database_url) as conn:
        [alert] = actions.list_alerts(conn, municipality="Randers")
    assert (alert.rule, alert.device_id) == ("alarm_processing_failed", "ALM-0001")
    assert {k: alert.labels[k] for k in ("type", "vendor")} == {"type": "personal_alarm",
                                                                "vendor": "Tunstall"}


def test_a_message_that_fails_once_and_then_goes_through_is_not_refused(
        database_url: str, broker: Broker, topic_root: str, devices: object,
        monkeypatch) -> None:
    """The batch fails, and the message alone fails once more (the moment, not the message):
    the second time alone it is stored, like the rest."""
    monkeypatch.setattr(BrokenOn, "failures", 2)
    sent = [(topic(topic_root, d, "telemetry"), telemetry(d, T0 + k, spo2=96))
            for k, d in enumerate(["OXI-0001", "OXI-0002", "OXI-0001"])]
    metrics = run_lane(database_url, broker, topic_root, "bulk", sent,
                       "SELECT count(*) FROM readings")
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 0
    assert query(database_url, "SELECT count(*) FROM alerts") == [(0,)]
    assert metrics.messages_refused.labels("bulk")._value.get() == 0


class CountedBrokenOn(Pipeline):
    """The real pipeline, with a bug that the messages of `broken` devices set off, every
    time; `tried` holds the (topic, payload) of each part it was given, in order."""

    broken: frozenset[str] = frozenset()
    tried: list[list[tuple[str, bytes]]] = []

    def process(self, conn: psycopg.Connection, messages: Sequence[RawMessage],
                state_apart: bool = False, skip: Collection[str] = ()) -> BatchOutcome:
        self.tried.append([(m.topic, m.payload) for m in messages])
        if self.broken.intersection(m.topic.split("/")[-2] for m in messages):
            raise ZeroDivisionError("a bug this device's message sets off")
        return super().process(conn, messages, state_apart, skip)


def one_batch(lane: str, n: int) -> LaneSpec:
    """The lane's spec, taking `n` messages as one batch (they are published at once)."""
    spec = next(s for s in lane_specs(Config()) if s.name == lane)
    return dataclasses.replace(spec, batch_max=n, batch_wait_s=10.0)


def test_a_message_that_fails_holds_up_its_batch_a_few_transactions_not_one_a_message(
        database_url: str, broker: Broker, topic_root: str, devices: object,
        monkeypatch) -> None:
    """After the batch fails, its halves go again, and the half that fails in halves again:
    the message is found in about 2 log2(n) transactions, and the rest is stored."""
    sent = [(topic(topic_root, "OXI-0001", "telemetry"), telemetry("OXI-0001", T0 + k, spo2=96))
            for k in range(100)]
    sent.insert(37, (topic(topic_root, "OXI-0002", "telemetry"),
                     telemetry("OXI-0002", T0, spo2=96)))
    monkeypatch.setattr(CountedBrokenOn, "broken", frozenset({"OXI-0002"}))
    monkeypatch.setattr(CountedBrokenOn, "tried", [])
    metrics = run_lane(database_url, broker, topic_root, "bulk", sent,
                       "SELECT (SELECT count(*) FROM readings) + "
                       "(SELECT count(*) FROM dead_letters)", CountedBrokenOn,
                       one_batch("bulk", len(sent)))
    tried = CountedBrokenOn.tried
    assert tried[0] == sent, "the batch was taken whole"
    # the batch, two halves at each of 7 levels down to the message alone, and it once more
    assert len(tried) <= 1 + 2 * math.ceil(math.log2(len(sent))) + 1
    stored = [m for part in tried[1:] if sent[37] not in part for m in part]
    assert stored == sent[:37] + sent[38:], "each of the others stored once, in order"
    assert scalar(database_url, "SELECT count(*) FROM readings "
                                "WHERE device_id = 'OXI-0001'") == 100
    assert query(database_url, "SELECT reason, device_id FROM dead_letters") == [
        ("processing_failed", "OXI-0002")]
    assert metrics.messages_refused.labels("bulk")._value.get() == 1


def test_each_of_several_messages_that_fail_in_one_batch_is_refused_and_the_rest_stored(
        database_url: str, broker: Broker, topic_root: str, devices: object,
        monkeypatch) -> None:
    personal_alarms(database_url, "ALM-0002", "ALM-0003", "ALM-0004")
    order = ["ALM-0001", "ALM-0002", "ALM-0003", "ALM-0004"]
    sent = [(topic(topic_root, d, "alarm"), alarm(d, T0 + k)) for k, d in enumerate(order)]
    monkeypatch.setattr(CountedBrokenOn, "broken", frozenset({"ALM-0002", "ALM-0004"}))
    monkeypatch.setattr(CountedBrokenOn, "tried", [])
    metrics = run_lane(database_url, broker, topic_root, "alarm", sent,
                       "SELECT count(*) FROM alerts", CountedBrokenOn,
                       one_batch("alarm", len(sent)))
    assert query(database_url, "SELECT rule, device_id, queue FROM alerts "
                               "ORDER BY device_id") == [
        ("personal_alarm", "ALM-0001", "emergency"),
        ("alarm_processing_failed", "ALM-0002", "emergency"),
        ("personal_alarm", "ALM-0003", "emergency"),
        ("alarm_processing_failed", "ALM-0004", "emergency")]
    assert query(database_url, "SELECT device_id FROM dead_letters ORDER BY device_id") == [
        ("ALM-0002",), ("ALM-0004",)]
    assert metrics.messages_refused.labels("alarm")._value.get() == 2
    assert CountedBrokenOn.tried[0] == sent, "the batch was taken whole"


class StateBrokenOn(Pipeline):
    """The real pipeline, with a bug in writing one device's state (the alarm lane's second
    transaction, `write_state`)."""

    def write_state(self, conn: psycopg.Connection, out: BatchOutcome) -> None:
        if out.state_rows is not None and "ALM-0001" in out.state_rows[0]:
            raise ZeroDivisionError("a bug in this device's state")
        super().write_state(conn, out)


def test_an_alarm_whose_device_state_fails_is_delivered_and_the_lane_goes_on(
        database_url: str, broker: Broker, topic_root: str, devices: object) -> None:
    """The alarm lane commits the alarm first and the device state after. If the state
    fails every time, the alarm must not be taken again and again (holding every alarm
    behind it): it is acknowledged, kept as a dead letter, and the service centre hears."""
    personal_alarms(database_url, "ALM-0002")
    sent = [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0)),
            (topic(topic_root, "ALM-0002", "alarm"), alarm("ALM-0002", T0))]
    metrics = run_lane(database_url, broker, topic_root, "alarm", sent,
                       "SELECT count(*) FROM alerts WHERE rule = 'personal_alarm'",
                       StateBrokenOn)
    alerts = query(database_url, "SELECT rule, device_id, queue, severity FROM alerts "
                                 "ORDER BY rule, device_id")
    assert [a for a in alerts if a[0] == "personal_alarm"] == [
        ("personal_alarm", "ALM-0001", "emergency", "critical"),
        ("personal_alarm", "ALM-0002", "emergency", "critical")]
    # the lane may have taken both alarms in one batch, whose state then failed as one
    refused = [a for a in alerts if a[0] != "personal_alarm"]
    assert ("message_processing_failed", "ALM-0001", "service_centre", "warning") in refused
    assert {a[2:] for a in refused} == {("service_centre", "warning")}   # delivered: no 2nd call
    dead = query(database_url, "SELECT reason, device_id, detail FROM dead_letters")
    assert {(r, d) for r, d, _ in dead} == {("processing_failed", a[1]) for a in refused}
    assert all("its events and alerts were stored, its device state was not" in detail
               for _, _, detail in dead)
    assert scalar(database_url, "SELECT last_seen FROM devices "
                                "WHERE device_id = 'ALM-0001'") is None
    assert metrics.messages_refused.labels("alarm")._value.get() == len(dead)


class StateBrokenOnCounted(StateBrokenOn):
    """`StateBrokenOn`, noting the devices of each state it was given to write."""

    tried: list[list[str]] = []

    def write_state(self, conn: psycopg.Connection, out: BatchOutcome) -> None:
        if out.state_rows is not None:
            self.tried.append(list(out.state_rows[0]))
        super().write_state(conn, out)


def test_a_device_whose_state_fails_has_its_own_messages_refused_and_the_others_state_written(
        database_url: str, broker: Broker, topic_root: str, devices: object,
        monkeypatch) -> None:
    """The alarm lane's batch holds several devices' alarms; one device's state fails every
    time. The state goes again in halves by device: that device's message is refused, and
    the other devices' state is written, their messages not dead letters."""
    personal_alarms(database_url, "ALM-0002", "ALM-0003")
    order = ["ALM-0002", "ALM-0001", "ALM-0003"]
    sent = [(topic(topic_root, d, "alarm"), alarm(d, T0 + k)) for k, d in enumerate(order)]
    monkeypatch.setattr(StateBrokenOnCounted, "tried", [])
    metrics = run_lane(database_url, broker, topic_root, "alarm", sent,
                       "SELECT count(*) FROM alerts WHERE rule = 'personal_alarm'",
                       StateBrokenOnCounted, one_batch("alarm", len(sent)))
    assert sorted(StateBrokenOnCounted.tried[0]) == sorted(order), "the batch was taken whole"
    assert query(database_url, "SELECT rule, device_id, queue FROM alerts "
                               "ORDER BY rule, device_id") == [
        ("message_processing_failed", "ALM-0001", "service_centre"),
        ("personal_alarm", "ALM-0001", "emergency"),
        ("personal_alarm", "ALM-0002", "emergency"),
        ("personal_alarm", "ALM-0003", "emergency")]
    # each alarm counted once, though the halves' firings were recorded again
    assert query(database_url, "SELECT device_id, repeat_count FROM alerts "
                               "WHERE rule = 'personal_alarm' ORDER BY device_id") == [
        ("ALM-0001", 1), ("ALM-0002", 1), ("ALM-0003", 1)]
    assert query(database_url, "SELECT reason, device_id FROM dead_letters") == [
        ("processing_failed", "ALM-0001")]
    assert query(database_url, "SELECT device_id, last_seen IS NOT NULL FROM devices "
                               "WHERE device_id LIKE 'ALM-%%' ORDER BY device_id") == [
        ("ALM-0001", False), ("ALM-0002", True), ("ALM-0003", True)]
    assert metrics.messages_refused.labels("alarm")._value.get() == 1


def test_an_alarm_refused_while_its_device_has_a_refusal_open_is_an_alert_of_its_own(
        database_url: str, broker: Broker, topic_root: str, devices: object,
        monkeypatch) -> None:
    """The bug its heartbeat set off opened a service-centre warning; the alarm that sets it
    off too must reach the emergency queue, not only count again on that warning."""
    monkeypatch.setattr(BrokenOn, "broken_device", "ALM-0001")
    run_lane(database_url, broker, topic_root, "bulk",
             [(topic(topic_root, "ALM-0001", "telemetry"), telemetry("ALM-0001", T0, battery=80))],
             "SELECT count(*) FROM dead_letters")
    run_lane(database_url, broker, topic_root, "alarm",
             [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0 + 60))],
             "SELECT count(*) FROM dead_letters WHERE topic LIKE '%%/alarm'")
    assert query(database_url, "SELECT rule, queue, severity, repeat_count FROM alerts "
                               "ORDER BY id") == [
        ("message_processing_failed", "service_centre", "warning", 1),
        ("alarm_processing_failed", "emergency", "critical", 1)]
    assert query(database_url, "SELECT event, count(*) FROM alert_outbox GROUP BY event") == [
        ("opened", 2)]


class AlwaysBroken(Pipeline):
    """The real pipeline, with a bug that every batch sets off, whatever it holds; `sizes`
    has the number of messages of each part it was given."""

    sizes: list[int] = []

    def process(self, conn: psycopg.Connection, messages: Sequence[RawMessage],
                state_apart: bool = False, skip: Collection[str] = ()) -> BatchOutcome:
        self.sizes.append(len(messages))
        raise ZeroDivisionError("a bug every batch sets off")


def test_an_alarm_alone_in_its_batch_that_fails_whatever_it_holds_is_refused(
        database_url: str, broker: Broker, topic_root: str, devices: object,
        monkeypatch) -> None:
    """A batch of one has no halves: it was halved into nothing and itself, and nothing,
    failing too, into nothing again, for ever; the alarm never reached anyone."""
    monkeypatch.setattr(AlwaysBroken, "sizes", [])
    run_lane(database_url, broker, topic_root, "alarm",
             [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))],
             "SELECT count(*) FROM alerts", AlwaysBroken)
    assert AlwaysBroken.sizes == [1, 1, 1]    # the batch, then the message alone twice
    assert query(database_url, "SELECT rule, queue, severity FROM alerts") == [
        ("alarm_processing_failed", "emergency", "critical")]


def test_a_device_whose_state_fails_alone_in_its_batch_has_only_its_own_messages_refused(
        database_url: str, broker: Broker, topic_root: str, devices: object) -> None:
    """Beside it in the batch, an alarm of a device the registry does not have (a dead letter
    and an alert of its own already): it is not refused again as a state that failed."""
    sent = [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0)),
            (topic(topic_root, "ALM-9999", "alarm"), alarm("ALM-9999", T0))]
    run_lane(database_url, broker, topic_root, "alarm", sent,
             "SELECT count(*) FROM dead_letters", StateBrokenOn, one_batch("alarm", len(sent)))
    assert query(database_url, "SELECT rule, device_id FROM alerts ORDER BY rule") == [
        ("message_processing_failed", "ALM-0001"), ("personal_alarm", "ALM-0001"),
        ("unknown_device", "ALM-9999"), ("unregistered_alarm", "ALM-9999")]
    assert query(database_url, "SELECT reason, device_id FROM dead_letters ORDER BY reason") \
        == [("processing_failed", "ALM-0001"), ("unknown_device", "ALM-9999")]


class SettlerBug(Pipeline):
    """The real pipeline, with a bug after the first state the alarm lane's settler writes."""

    raised = False

    def after_commit(self, out: BatchOutcome) -> None:
        if not SettlerBug.raised:
            SettlerBug.raised = True
            raise ZeroDivisionError("a bug in the settler")
        super().after_commit(out)


def test_the_alarm_lane_ends_on_its_settlers_failure_while_waiting_for_room_in_its_queue(
        database_url: str, broker: Broker, topic_root: str, devices: object,
        monkeypatch) -> None:
    """A bulk batch holds the device's row: the settler waits, its queue fills, and the lane
    waits for room. The settler fails: the lane must end with its error (its process is
    then started again), not wait on a queue nobody empties, its alarms never acknowledged."""
    monkeypatch.setattr(SettlerBug, "raised", False)
    spec = dataclasses.replace(next(s for s in lane_specs(Config()) if s.name == "alarm"),
                               batch_max=1)
    stop = threading.Event()
    failed: list[BaseException] = []
    with lane_parts(database_url, broker, topic_root, spec, SettlerBug) as (pool, session,
                                                                           pipeline):
        lane = Lane(spec, session, pool, pipeline, EngineMetrics())

        def run() -> None:
            try:
                lane.run(stop)
            except BaseException as e:   # what the engine's supervision sees
                failed.append(e)

        worker = threading.Thread(target=run)
        try:
            with psycopg.connect(database_url) as bulk:     # holds the row
                bulk.execute("UPDATE devices SET last_seen = last_seen "
                             "WHERE device_id = 'ALM-0001'")
                worker.start()
                publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"),
                                       alarm("ALM-0001", T0 + k)) for k in range(70)])
                # one settling, 64 queued, and the lane waiting to queue the 66th
                wait_for(lambda: scalar(database_url, "SELECT count(*) FROM events") == 66,
                         what="the settler's queue full")
                time.sleep(0.5)
            worker.join(15)
            ended = not worker.is_alive()
        finally:
            stop.set()
            worker.join(30)
    assert ended, "the lane ended"
    assert [type(e) for e in failed] == [ZeroDivisionError]
