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
