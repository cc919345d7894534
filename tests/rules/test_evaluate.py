"""Rule evaluation over a batch: a table of edge cases for the event and threshold kinds."""

from __future__ import annotations

import numpy as np

from vagt.rules import Rule, evaluate

ALARM = Rule(name="personal_alarm", kind="event", severity="critical", priority=1,
             queue="emergency", summary="{code}", codes=("alarm.*",))
BATTERY = Rule(name="battery_low", kind="threshold", severity="warning", priority=4,
               queue="technical", summary="", metric="battery", below=15.0, clear_at=25.0)


def run(rules, readings=(), events=()):
    r = list(readings)
    e = list(events)
    return evaluate(
        rules,
        r_device=np.array([x[0] for x in r], dtype=np.int64),
        r_metric=np.array([x[1] for x in r], dtype=object),
        r_value=np.array([x[2] for x in r], dtype=np.float64),
        r_time=np.array([x[3] for x in r], dtype=np.float64),
        e_device=np.array([x[0] for x in e], dtype=np.int64),
        e_code=np.array([x[1] for x in e], dtype=object),
        e_time=np.array([x[2] for x in e], dtype=np.float64),
    )


def test_alarm_events_of_one_device_in_a_batch_make_one_firing_with_a_count():
    firings, _ = run([ALARM], events=[(3, "alarm.fall", 20.0), (3, "alarm.panic", 10.0),
                                      (5, "alarm.fall", 15.0)])
    rule, dev, first, last, _, code, count = firings.concat()
    assert dev.tolist() == [3, 5]
    assert count.tolist() == [2, 1]
    assert first.tolist() == [10.0, 15.0] and last.tolist() == [20.0, 15.0]
    assert code.tolist() == ["alarm.panic", "alarm.fall"]  # the first in device time


def test_event_rule_ignores_codes_outside_its_patterns():
    firings, _ = run([ALARM], events=[(1, "dose.taken", 1.0), (1, "fault.dispenser_jam", 2.0)])
    assert len(firings.concat()[1]) == 0


def test_threshold_fires_on_the_latest_value_of_the_batch_not_an_earlier_one():
    # device 1 dipped to 10 % and then recharged to 80 %: no firing, and a clear
    firings, clears = run([BATTERY], readings=[(1, "battery", 10.0, 1.0),
                                               (1, "battery", 80.0, 2.0)])
    assert len(firings.concat()[1]) == 0
    assert clears.concat()[1].tolist() == [1]


def test_threshold_uses_device_time_not_arrival_order():
    firings, _ = run([BATTERY], readings=[(1, "battery", 10.0, 9.0), (1, "battery", 80.0, 2.0)])
    assert firings.concat()[1].tolist() == [1]
    assert firings.concat()[4].tolist() == [10.0]


def test_threshold_between_level_and_clear_level_neither_fires_nor_clears():
    firings, clears = run([BATTERY], readings=[(2, "battery", 20.0, 1.0)])
    assert len(firings.concat()[1]) == 0 and len(clears.concat()[1]) == 0


def test_threshold_counts_the_rows_past_the_level():
    firings, _ = run([BATTERY], readings=[(4, "battery", 9.0, 1.0), (4, "battery", 8.0, 2.0),
                                          (4, "spo2", 8.0, 2.0)])
    assert firings.concat()[6].tolist() == [2]


def test_above_threshold_fires_above_and_clears_at_or_below_clear_level():
    hot = Rule(name="hot", kind="threshold", severity="warning", priority=3, queue="t",
               summary="", metric="temperature", above=38.0, clear_at=37.5)
    firings, clears = run([hot], readings=[(1, "temperature", 38.5, 1.0),
                                           (2, "temperature", 37.5, 1.0),
                                           (3, "temperature", 37.8, 1.0)])
    assert firings.concat()[1].tolist() == [1]
    assert clears.concat()[1].tolist() == [2]


def test_an_empty_batch_gives_nothing():
    firings, clears = run([ALARM, BATTERY])
    assert len(firings.concat()[1]) == 0 and len(clears.concat()[1]) == 0
