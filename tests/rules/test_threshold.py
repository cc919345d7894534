"""threshold: `for` across batches and gaps, hysteresis, out-of-order readings, a device's first
one."""

from __future__ import annotations

import numpy as np
from tests.rules.harness import Harness, batch_of

SPO2 = """
[[rule]]
name = "spo2_low"
kind = "threshold"
metric = "spo2"
below = 90
clear_at = 93
for = "10m"
"""
BATTERY = """
[[rule]]
name = "battery_low"
kind = "threshold"
metric = "battery"
below = 15
clear_at = 25
"""


def test_a_for_duration_spanning_batches_opens_only_once_it_has_held_that_long(tmp_path):
    h = Harness(tmp_path, SPO2)
    h.batch([(0, "spo2", 88, 0.0)])
    h.batch([(0, "spo2", 87, 300.0)])
    assert h.open() == set()  # held 5 minutes so far
    h.batch([(0, "spo2", 86, 600.0)])
    assert h.open() == {("spo2_low", 0)}
    fr = h.last.transitions.fires()
    assert fr[2].tolist() == [600.0]  # opened when the 10 minutes were reached


def test_a_good_reading_inside_the_for_duration_restarts_it(tmp_path):
    h = Harness(tmp_path, SPO2)
    h.batch([(0, "spo2", 88, 0.0), (0, "spo2", 95, 400.0)])
    h.batch([(0, "spo2", 88, 500.0), (0, "spo2", 88, 1000.0)])
    assert h.open() == set()
    h.batch([(0, "spo2", 88, 1100.0)])
    assert h.open() == {("spo2_low", 0)}


def test_two_low_readings_hours_apart_do_not_hold_for_the_time_between(tmp_path):
    # a spot-check oximeter: 88 % at 08:30 and again at 14:00, nothing seen between
    h = Harness(tmp_path, SPO2)
    h.batch([(0, "spo2", 88, 0.0)])
    h.batch([(0, "spo2", 88, 5.5 * 3600)])
    assert h.open() == set()
    h.batch([(0, "spo2", 88, 5.5 * 3600 + 300)])
    h.batch([(0, "spo2", 88, 5.5 * 3600 + 600)])  # 10 minutes since 14:00, no gap too long
    assert h.open() == {("spo2_low", 0)}


def test_a_gap_longer_than_max_gap_restarts_for_within_one_batch_as_across_batches(tmp_path):
    rule = SPO2 + 'max_gap = "2m"\n'
    times = [0.0, 60.0, 120.0, 300.0, 360.0, 420.0, 480.0, 540.0, 600.0, 660.0, 720.0, 780.0,
             840.0, 900.0]
    whole = Harness(tmp_path, rule)
    whole.batch([(0, "spo2", 88, t) for t in times])
    one_by_one = Harness(tmp_path, rule)
    for t in times:
        one_by_one.batch([(0, "spo2", 88, t)])
    # the run restarts at 300 (3 minutes after 120); held 10 minutes at 900
    for h in (whole, one_by_one):
        assert h.opened("spo2_low", 0) == 1
    assert one_by_one.last.transitions.fires()[2].tolist() == [900.0]
    assert whole.last.transitions.fires()[2].tolist() == [900.0]


def test_a_gap_does_not_clear_an_open_alert(tmp_path):
    h = Harness(tmp_path, SPO2)
    h.batch([(0, "spo2", 88, 0.0), (0, "spo2", 88, 300.0), (0, "spo2", 88, 600.0)])
    h.batch([(0, "spo2", 89, 6 * 3600.0)])  # still low hours later: a repeat
    assert h.open() == {("spo2_low", 0)} and h.cleared("spo2_low", 0) == 0
    assert h.last.transitions.fires()[6].tolist() == [1]


def test_the_latest_reading_of_a_run_not_yet_held_is_state_another_engine_needs(tmp_path):
    # `last_t` alone is a watermark, not written; the gap is measured from what is stored
    h = Harness(tmp_path, SPO2)
    h.batch([(0, "spo2", 88, 0.0)])
    ev = h.engine.evaluate(batch_of([(0, "spo2", 88, 300.0)]))
    assert h.engine.moved(ev).tolist() == [0]


def test_a_for_run_stored_before_its_latest_reading_was_kept_goes_on_by_last_t(tmp_path):
    h = Harness(tmp_path, SPO2)
    h.batch([(0, "spo2", 88, 0.0), (0, "spo2", 88, 300.0)])
    st = dict((r.name, s) for r, s in h.engine.rule_states())["spo2_low"]
    st.put("run_last", st.rows_of(np.array([0])), np.array([np.nan]))  # as an older engine stored it
    h.batch([(0, "spo2", 88, 600.0)])
    assert h.open() == {("spo2_low", 0)}


def test_a_value_between_level_and_clear_level_keeps_an_open_alert_open(tmp_path):
    h = Harness(tmp_path, BATTERY)
    h.batch([(0, "battery", 10, 1.0)])
    h.batch([(0, "battery", 20, 2.0)])
    assert h.open() == {("battery_low", 0)}
    h.batch([(0, "battery", 25, 3.0)])
    assert h.open() == set() and h.cleared("battery_low", 0) == 1


def test_a_value_in_the_hysteresis_band_clears_nothing_that_is_not_open(tmp_path):
    h = Harness(tmp_path, BATTERY)
    ev = h.batch([(1, "battery", 20, 1.0), (1, "battery", 90, 2.0)])
    assert len(ev.transitions.clears()[1]) == 0 and len(ev.transitions.fires()[1]) == 0


def test_an_older_reading_arriving_late_does_not_flip_the_state(tmp_path):
    h = Harness(tmp_path, BATTERY)
    h.batch([(0, "battery", 10, 100.0)])
    h.batch([(0, "battery", 90, 50.0)])  # measured before the low one
    assert h.open() == {("battery_low", 0)}
    h.batch([(0, "battery", 90, 150.0)])
    assert h.open() == set()


def test_within_a_batch_device_time_orders_rows_not_arrival(tmp_path):
    h = Harness(tmp_path, BATTERY)
    h.batch([(0, "battery", 10, 9.0), (0, "battery", 80, 2.0)])
    assert h.open() == {("battery_low", 0)}


def test_fire_and_clear_within_one_batch_open_and_resolve_an_alert(tmp_path):
    h = Harness(tmp_path, BATTERY)
    h.batch([(0, "battery", 10, 1.0), (0, "battery", 90, 2.0), (0, "battery", 5, 3.0)])
    assert h.opened("battery_low", 0) == 2 and h.cleared("battery_low", 0) == 1
    assert h.open() == {("battery_low", 0)}


def test_a_devices_first_reading_past_the_level_fires_without_history(tmp_path):
    h = Harness(tmp_path, BATTERY)
    h.batch([(3, "battery", 4, 1.0)])
    assert h.open() == {("battery_low", 3)}


def test_repeats_while_open_count_rows_past_the_level(tmp_path):
    h = Harness(tmp_path, BATTERY)
    h.batch([(0, "battery", 10, 1.0)])
    ev = h.batch([(0, "battery", 9, 2.0), (0, "battery", 8, 3.0), (0, "spo2", 8, 3.0)])
    assert ev.transitions.fires()[6].tolist() == [2]
    assert h.opened("battery_low", 0) == 1


def test_above_threshold_fires_above_and_clears_at_or_below_clear_level(tmp_path):
    h = Harness(tmp_path, '[[rule]]\nname = "hot"\nkind = "threshold"\nmetric = "temperature"\n'
                          'above = 38.0\nclear_at = 37.5\n')
    h.batch([(0, "temperature", 38.5, 1.0), (1, "temperature", 37.8, 1.0)])
    assert h.open() == {("hot", 0)}
    h.batch([(0, "temperature", 37.8, 2.0)])
    assert h.open() == {("hot", 0)}
    h.batch([(0, "temperature", 37.5, 3.0)])
    assert h.open() == set()


def test_filters_limit_a_rule_to_its_device_types_and_municipalities(tmp_path):
    h = Harness(tmp_path, BATTERY.replace('below = 15', 'below = 15\ntypes = ["pulse_oximeter"]\n'
                                          'municipalities = ["Aarhus"]'))
    h.batch([(0, "battery", 5, 1.0), (1, "battery", 5, 1.0), (3, "battery", 5, 1.0)])
    assert h.open() == {("battery_low", 0)}
