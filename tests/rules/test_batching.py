"""Batch boundaries do not change what rules decide: the same stream, cut into batches
anywhere, with the timer ticking between them or not, opens and clears the same alerts at
the same times, fired as often (that is what makes a backtest, which batches by row count,
agree with live evaluation, which batches by arrival and ticks by the clock, and two
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
name = "jam"
kind = "event"
codes = ["fault.jam"]
clear_after = "30m"

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
name = "flap_stable"
kind = "flapping"
codes = ["connection.lost"]
count = 2
window = "1h"
stable = "10m"

[[rule]]
name = "gain"
kind = "rate"
metric = "spo2"
rise = 5
window = "1h"
"""
CODES = ["power.mains_lost", "power.mains_restored", "dose.due", "dose.taken",
         "connection.lost", "fault.jam"]
# past every timer: the runs end with all deadlines met, so what they leave open compares
END = 10 * 86400.0

rows = st.lists(
    st.tuples(st.integers(0, 2), st.booleans(), st.sampled_from([85.0, 88.0, 91.0, 95.0, 97.0]),
              st.sampled_from(CODES), st.sampled_from([0, 1, 60, 300, 600, 1200, 2400])),
    min_size=1, max_size=60)


def stream(spec):
    """Rows in device-time order (times never go back; rows may share a time), as readings
    and events. A second value of a metric, or the same code again, at one device time is
    left out, as the pipeline leaves it out (a dead letter, a redelivery)."""
    out, t, seen = [], 0.0, set()
    for device, is_reading, value, code, gap in spec:
        t += gap
        key = (device, "spo2" if is_reading else code, t)
        if key in seen:
            continue
        seen.add(key)
        out.append(("r", (device, "spo2", value, t)) if is_reading else ("e", (device, code, t)))
    return out


def run(tmp_path: Path, items, cuts, ticks: bool, backwards: bool = False) -> tuple[dict, ...]:
    """The stream in batches cut before `cuts`, each in order or `backwards`; with `ticks`,
    the timer ticks before each batch at its first row's time (the devices' clocks right),
    as it may whenever the engine is between batches. Every run ends with a tick past every
    deadline."""
    h = Harness(tmp_path, RULES)
    bounds = [0, *sorted(set(cuts)), len(items)]
    for a, b in zip(bounds, bounds[1:]):
        chunk = items[a:b]
        if ticks:
            h.tick(chunk[0][1][-1])
        if backwards:
            chunk = chunk[::-1]
        h.batch([x for k, x in chunk if k == "r"], [x for k, x in chunk if k == "e"],
                [(x[0], x[-1]) for _, x in chunk])
    h.tick(items[-1][1][-1] + END)
    book = h.book
    return dict(book.opened), dict(book.cleared), dict(book.fired), dict(book.resolved)


def between_times(items) -> list[int]:
    """Where the stream may be cut: between rows of different device times. Rows of one
    time come in one batch (a backtest's batch is a span of time), or the later ones are
    late and evaluated again in order with the others (`Pipeline._evaluate_locked`)."""
    return [k for k in range(1, len(items)) if items[k][1][-1] != items[k - 1][1][-1]]


@settings(max_examples=200, deadline=None)
@given(rows, st.lists(st.integers(0, 60), max_size=8))
# low long enough to fire, then a value in the hysteresis band (the alert stays, but that
# value is no repeat: it once counted as one when it came in a batch of its own)
@example([(0, True, 85.0, "dose.due", 1), (0, True, 85.0, "dose.due", 600),
          (0, True, 91.0, "dose.due", 60), (0, True, 95.0, "dose.due", 60)], [1, 2, 3])
# mains lost and restored at one device time: cleared, whichever came first
@example([(0, False, 85.0, "power.mains_lost", 1), (0, False, 85.0, "power.mains_restored", 0)],
         [1])
# a dose taken at the second it was due answers it, whichever came first
@example([(0, False, 85.0, "dose.due", 1), (0, False, 85.0, "dose.taken", 0)], [1])
# a jam again after its alert cleared by itself (30 minutes): a new alert, in one batch too
@example([(0, False, 85.0, "fault.jam", 1), (0, False, 85.0, "fault.jam", 2400)], [])
# flaps 11 minutes apart, quiet longer than `stable` between: cleared and opened again
@example([(0, False, 85.0, "connection.lost", 1), (0, False, 85.0, "connection.lost", 600),
          (0, False, 85.0, "connection.lost", 60), (0, False, 85.0, "connection.lost", 600),
          (0, False, 85.0, "connection.lost", 60)], [])
def test_any_batching_of_a_stream_gives_the_same_alerts(tmp_path_factory, spec, cuts):
    tmp = tmp_path_factory.mktemp("b")
    items = stream(spec)
    apart = between_times(items)
    some = [apart[c % len(apart)] for c in cuts] if apart else []
    whole = run(tmp, items, [], ticks=False)
    assert run(tmp, items, [], ticks=False, backwards=True) == whole
    assert run(tmp, items, apart, ticks=True, backwards=True) == whole
    assert run(tmp, items, apart, ticks=False) == whole
    assert run(tmp, items, some, ticks=True) == whole
    assert run(tmp, items, some, ticks=False, backwards=True) == whole
