"""While the bulk lane drains a backlog, its batches wait longer to fill: the messages are
old already, and every batch costs its commit whatever its size (`LaneSpec.backlog_wait_s`).
Live traffic keeps the short wait."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from tests.app.conftest import publish, scalar, telemetry, topic, trickle, wait_for
from tests.app.test_refused import run_lane
from tests.support import Broker

from vagt.app.config import Config
from vagt.app.engine import lane_specs
from vagt.app.metrics import BATCH_BUCKETS, EngineMetrics
from vagt.app.pipeline import Pipeline

N = 60
FILL = 30          # the lane's batch_max here


def readings(topic_root: str, start: float, n: int = N) -> list[tuple[str, bytes]]:
    return [(topic(topic_root, "OXI-0001", "telemetry"), telemetry("OXI-0001", start + i, spo2=96))
            for i in range(n)]


def drain(database_url: str, broker: Broker, topic_root: str, sent: list[tuple[str, bytes]],
          send: Callable[[int, list[tuple[str, bytes]]], None] = trickle
          ) -> tuple[float, float, float, float]:
    """How many batches the bulk lane committed, how many messages in them, how many of
    those it counted as a backlog's, and how many batches held more than 25 (nearly full)."""
    bulk = next(s for s in lane_specs(Config()) if s.name == "bulk")
    spec = dataclasses.replace(bulk, batch_max=FILL, backlog_wait_s=3.0)
    metrics = run_lane(database_url, broker, topic_root, "bulk", sent,
                       "SELECT count(*) FROM readings", pipeline=Pipeline, spec=spec, send=send)
    return batches(metrics)


def batches(metrics: EngineMetrics) -> tuple[float, float, float, float]:
    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, {"lane": "bulk", **labels}) or 0.0
    count = sample("vagt_batch_size_messages_count")
    assert 25 in BATCH_BUCKETS       # the bucket read below
    return (count, sample("vagt_batch_size_messages_sum"), sample("vagt_backlog_messages_total"),
            count - sample("vagt_batch_size_messages_bucket", le="25.0"))


def test_a_backlog_is_committed_in_batches_filled_to_the_maximum(
        database_url: str, broker: Broker, topic_root: str, devices: object) -> None:
    # an hour old by the device's clock: a backlog (see CatchingUp)
    count, total, backlog, nearly_full = drain(database_url, broker, topic_root,
                                               readings(topic_root, time.time() - 3600))
    assert total == N
    assert backlog == N      # what the ops team sees: the lane was catching up
    assert nearly_full >= 1  # a batch filled to 30, waited for as the messages came
    # the first batch before the lane knew it was behind, then full ones: 60 messages that
    # came over 1.2 s in at most four batches
    assert count <= 1 + N / FILL + 1


def test_live_messages_are_committed_without_waiting_to_fill(
        database_url: str, broker: Broker, topic_root: str, devices: object) -> None:
    count, total, backlog, nearly_full = drain(database_url, broker, topic_root,
                                               readings(topic_root, time.time() - 60))
    assert total == N
    assert backlog == 0
    # a batch each 50 ms (the short wait) while they trickle in over 1.2 s: a few messages
    # each, not the 30 the lane would wait for, which would make two full batches (one
    # nearly full may come of a commit held up half a second on a busy machine; a count of
    # batches failed there)
    assert count > N / FILL
    assert nearly_full <= 1


def test_once_a_backlog_is_drained_and_the_lane_idle_live_messages_wait_no_longer(
        database_url: str, broker: Broker, topic_root: str, devices: object) -> None:
    old = readings(topic_root, time.time() - 3600, n=5)
    live = readings(topic_root, time.time() - 60)

    def backlog_then_live(port: int, _sent: list[tuple[str, bytes]]) -> None:
        publish(port, old)
        # from its commit: a first commit held up 1.5 s on a busy machine left the lane no
        # idle second before the live messages came, and they were a backlog's (65 of 65)
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == len(old),
                 what="the backlog committed")
        time.sleep(2)         # the lane takes nothing for a second: the backlog is over
        trickle(port, live)

    count, total, backlog, _ = drain(database_url, broker, topic_root, old + live,
                                     send=backlog_then_live)
    assert total == len(old) + N
    # the live messages in a batch each 50 ms, not held for the backlog's wait (3 s here),
    # which would fill two batches to 30 as they trickle in: full batches, which the lane
    # counts as a backlog's (65 counted, with the lane still draining after its idle second)
    assert backlog == len(old)
    assert count > 1 + N / FILL
    # Not how many batches were nearly full: two commits held up half a second each on a
    # busy machine make two batches of 26-29 live messages, not full ones (CI, 2026-12-07),
    # while the lane waited the short wait as it should


def test_a_bulk_batch_is_never_meant_to_hold_more_than_the_broker_may_leave_unacknowledged(
) -> None:
    config = Config()
    config = dataclasses.replace(
        config, mqtt=dataclasses.replace(config.mqtt, receive_maximum=4000))
    [bulk] = [s for s in lane_specs(config) if s.name == "bulk"]
    assert bulk.batch_max == 4000       # not the 10,000 a draining lane would wait for
    v311 = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, protocol=4))
    [bulk] = [s for s in lane_specs(v311) if s.name == "bulk"]
    assert bulk.batch_max == 10000      # MQTT 3.1.1: the broker's own limit, unknown here
