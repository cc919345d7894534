"""While the bulk lane drains a backlog, its batches wait longer to fill: the messages are
old already, and every batch costs its commit whatever its size (`LaneSpec.backlog_wait_s`).
Live traffic keeps the short wait."""

from __future__ import annotations

import dataclasses
import time

from tests.app.conftest import publish, telemetry, topic
from tests.app.test_refused import run_lane
from tests.support import Broker

from vagt.app.config import Config
from vagt.app.engine import lane_specs
from vagt.app.metrics import EngineMetrics
from vagt.app.pipeline import Pipeline

N = 60
FILL = 30          # the lane's batch_max here


def trickle(port: int, messages: list[tuple[str, bytes]]) -> None:
    """One message every 20 ms: the short wait (50 ms) fills a batch with two or three."""
    for m in messages:
        publish(port, [m])
        time.sleep(0.02)


def drain(database_url: str, broker: Broker, topic_root: str,
          start: float) -> tuple[float, float, float]:
    """How many batches the bulk lane committed, how many messages in them, and how many of
    those it counted as a backlog's, for N readings from `start` on."""
    bulk = next(s for s in lane_specs(Config()) if s.name == "bulk")
    spec = dataclasses.replace(bulk, batch_max=FILL, backlog_wait_s=3.0)
    sent = [(topic(topic_root, "OXI-0001", "telemetry"), telemetry("OXI-0001", start + i, spo2=96))
            for i in range(N)]
    metrics = run_lane(database_url, broker, topic_root, "bulk", sent,
                       "SELECT count(*) FROM readings", pipeline=Pipeline, spec=spec, send=trickle)
    return batches(metrics)


def batches(metrics: EngineMetrics) -> tuple[float, float, float]:
    def sample(name: str) -> float:
        return metrics.registry.get_sample_value(name, {"lane": "bulk"}) or 0.0
    return (sample("vagt_batch_size_messages_count"), sample("vagt_batch_size_messages_sum"),
            sample("vagt_backlog_messages_total"))


def test_a_backlog_is_committed_in_batches_filled_to_the_maximum(
        database_url: str, broker: Broker, topic_root: str, devices: object) -> None:
    # an hour old by the device's clock: a backlog (see CatchingUp)
    count, total, backlog = drain(database_url, broker, topic_root, time.time() - 3600)
    assert total == N
    assert backlog == N      # what the ops team sees: the lane was catching up
    # the first batch before the lane knew it was behind, then full ones: 60 messages that
    # came over 1.2 s in at most four batches
    assert count <= 1 + N / FILL + 1


def test_live_messages_are_committed_without_waiting_to_fill(
        database_url: str, broker: Broker, topic_root: str, devices: object) -> None:
    count, total, backlog = drain(database_url, broker, topic_root, time.time() - 60)
    assert total == N
    assert backlog == 0
    # a batch each 50 ms (the short wait) while they trickle in over 1.2 s
    assert count >= 6


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
