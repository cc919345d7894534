"""Batch boundaries do not change what rules decide: the same stream, cut into batches
anywhere, opens and clears the same alerts, fired as often (that is what makes a backtest,
which batches by row count, agree with live evaluation, which batches by arrival, and two
engines agree with one)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from tests.rules.harness import Harness

RULES = """
[[rule]]
name = "spo2_low"
kind = "threshold"
metric = "spo2"
below = 90
clear_at = 93
for = "10m"

[[rule]]
name = "stuck"
kind = "stuck"
metric = "spo2"
count = 3

[[rule]]
name = "mains"
kind = "event"
codes = ["power.mains_lost"]
clear_codes = ["power.mains_restored"]

[[rule]]
name = "dose"
kind = "sequence"
first = ["dose.due"]
then = ["dose.taken"]
within = "30m"

[[rule]]
name = "flap"
kind = "flapping"
codes = ["connection.lost"]
count = 2
window = "1h"

[[rule]]
name = "gain"
kind = "rate"
metric = "spo2"
rise = 5
window = "1h"
"""
CODES = ["power.mains_lost", "power.mains_restored", "dose.due", "dose.taken",
         "connection.lost"]

rows = st.lists(
    st.tuples(st.integers(0, 2), st.booleans(), st.sampled_from([85.0, 88.0, 91.0, 95.0, 97.0]),
              st.sampled_from(CODES), st.integers(1, 1200)),
    min_size=1, max_size=60)


def stream(spec):
    """Rows in device-time order (times strictly increase), as readings and events."""
    out, t = [], 0.0
    for device, is_reading, value, code, gap in spec:
        t += gap
        out.append(("r", (device, "spo2", value, t)) if is_reading else ("e", (device, code, t)))
    return out


def run(tmp_path: Path, items, cuts) -> tuple[dict, dict, dict]:
    h = Harness(tmp_path, RULES)
    bounds = [0, *sorted(set(cuts)), len(items)]
    for a, b in zip(bounds, bounds[1:]):
        chunk = items[a:b]
        h.batch([x for k, x in chunk if k == "r"], [x for k, x in chunk if k == "e"],
                [(x[0], x[-1]) for _, x in chunk])
    return dict(h.book.opened), dict(h.book.cleared), dict(h.book.fired)


@settings(max_examples=150, deadline=None)
@given(rows, st.lists(st.integers(0, 60), max_size=8))
# low long enough to fire, then a value in the hysteresis band (the alert stays, but that
# value is no repeat: it once counted as one when it came in a batch of its own)
@example([(0, True, 85.0, "dose.due", 1), (0, True, 85.0, "dose.due", 700),
          (0, True, 91.0, "dose.due", 100), (0, True, 95.0, "dose.due", 100)], [1, 2, 3])
def test_any_batching_of_a_stream_gives_the_same_alerts(tmp_path_factory, spec, cuts):
    tmp = tmp_path_factory.mktemp("b")
    items = stream(spec)
    whole = run(tmp, items, [])
    one_by_one = run(tmp, items, list(range(1, len(items))))
    cut = run(tmp, items, [c for c in cuts if c < len(items)])
    assert whole == one_by_one == cut
