"""The batch histogram exports exactly what prometheus-client's own Histogram would."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from vagt.app.metrics import LATENCY_BUCKETS, BatchHistogram


def exposition(values: list[float], batched: bool) -> str:
    r = CollectorRegistry()
    if batched:
        h = BatchHistogram("lat", "latency", "lane", LATENCY_BUCKETS)
        r.register(h)
        h.observe_many("bulk", np.asarray(values, dtype=np.float64))
    else:
        ph = Histogram("lat", "latency", ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        for v in values:
            ph.labels("bulk").observe(v)
    text = generate_latest(r).decode()
    # prometheus-client adds a _created gauge; the rest must be identical
    return "\n".join(line for line in text.splitlines() if "_created" not in line)


@given(st.lists(st.sampled_from([*LATENCY_BUCKETS, 0.0, 0.0001, 0.2499, 0.2501, 99.0]) |
                st.floats(0, 100, allow_nan=False), min_size=1, max_size=50))
def test_the_same_buckets_count_and_sum_as_observing_one_by_one(values: list[float]) -> None:
    assert _numbers(exposition(values, True)) == _numbers(exposition(values, False))


def _numbers(text: str) -> list[tuple[str, float]]:
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out.append((key, round(float(value), 9)))  # the sum, added in another order
    return out


def test_the_alarm_lane_process_metrics_are_served_with_the_engines_as_one() -> None:
    """One endpoint: the same family from both processes once, a series both have summed."""
    import pickle

    from vagt.app.metrics import EngineMetrics

    engine, child = EngineMetrics(), EngineMetrics()
    engine.received.labels("bulk").inc(5000)
    engine.alerts_opened.labels("clinical").inc(2)
    child.received.labels("alarm").inc(3)
    child.alerts_opened.labels("emergency").inc(3)
    child.alerts_opened.labels("clinical").inc(1)
    child.latency.observe_many("alarm", np.asarray([0.05, 0.3]))
    # what crosses the pipe is pickled
    engine.include(lambda: pickle.loads(pickle.dumps(list(child.registry.collect()))))
    text = generate_latest(engine.registry).decode()
    assert text.count("# HELP vagt_messages_received_total ") == 1
    assert 'vagt_messages_received_total{lane="bulk"} 5000.0' in text
    assert 'vagt_messages_received_total{lane="alarm"} 3.0' in text
    assert 'vagt_alerts_opened_total{queue="clinical"} 3.0' in text
    assert 'vagt_alerts_opened_total{queue="emergency"} 3.0' in text
    assert 'vagt_received_to_committed_seconds_bucket{lane="alarm",le="0.1"} 1.0' in text
    assert 'vagt_received_to_committed_seconds_count{lane="alarm"} 2.0' in text
    created = [line for line in text.splitlines()
               if line.startswith('vagt_alerts_opened_created{queue="clinical"}')]
    assert len(created) == 1 and float(created[0].split()[-1]) < 2e9  # a time, not a sum
    # a scrape of one family (`?name[]=...`) is merged the same way
    one = generate_latest(engine.registry.restricted_registry(
        ["vagt_alerts_opened_total"])).decode()
    assert one.count("# HELP vagt_alerts_opened_total ") == 1
    assert 'vagt_alerts_opened_total{queue="clinical"} 3.0' in one
    assert "vagt_messages_received_total" not in one
