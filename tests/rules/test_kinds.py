"""validity, stuck, event, absence, sequence, rate and flapping: each fires and clears, with
their edges (first message, out-of-order, spans of batches, timers)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.rules.harness import Harness, batch_of

from vagt.rules.kinds.absence import NEVER_HEARD

DAY = 86400.0


# -- validity ---------------------------------------------------------------------------------

VALIDITY = '[[rule]]\nname = "implausible"\nkind = "validity"\nalert_after = 3\n'


def test_implausible_values_are_marked_bad_by_the_models_range_and_not_alerted_on(tmp_path):
    h = Harness(tmp_path, VALIDITY + '[[rule]]\nname = "pulse_low"\nkind = "threshold"\n'
                                     'metric = "pulse"\nbelow = 40\n')
    # Nonin 3230: pulse 18..321; a pulse of 5 /min is implausible for this model
    ev = h.batch([(0, "pulse", 5, 1.0), (0, "pulse", 70, 2.0), (1, "pulse", 35, 1.0)])
    assert ev.bad.tolist() == [True, False, False]
    assert h.open() == {("pulse_low", 1)}  # the bad 5 /min did not open pulse_low on device 0


def test_each_device_is_judged_by_its_own_models_range_and_an_unknown_model_by_none(tmp_path):
    h = Harness(tmp_path, VALIDITY)
    h.fleet.add("OXI-3", "Omron", "M7 Intelli IT", "bp_monitor", "Aarhus")    # pulse 40..180
    h.fleet.add("OXI-4", "Masimo", "MightySat", "pulse_oximeter", "Aarhus")   # pulse 25..240
    h.fleet.add("OXI-5", "Acme", "Prototype", "pulse_oximeter", "Aarhus")     # not catalogued
    # device 0 is a Nonin 3230 (pulse 18..321); indexes 5, 6, 7 the devices added here
    pulses = [(0, 20), (5, 20), (6, 20), (7, 20), (0, 200), (5, 200), (6, 200), (7, 200)]
    ev = h.batch([(d, "pulse", v, 1.0 + k) for k, (d, v) in enumerate(pulses)])
    assert ev.bad.tolist() == [False, True, True, False, False, True, False, False]


def test_n_implausible_values_in_a_row_open_a_sensor_alert_and_a_good_one_clears(tmp_path):
    h = Harness(tmp_path, VALIDITY)
    h.batch([(3, "weight", 400, 1.0), (3, "weight", 400, 2.0)])
    assert h.open() == set()
    h.batch([(3, "weight", 300, 3.0)])  # the third in a row, in the next batch
    assert h.open() == {("implausible", 3)}
    h.batch([(3, "weight", 80, 4.0)])
    assert h.open() == set()


def test_a_broken_sensor_beside_a_working_one_is_counted_per_metric(tmp_path):
    # Nonin 3230: a pulse of 0 /min is implausible, the SpO2 beside it reads well; the rows
    # come sorted by device and time, so the metrics interleave
    h = Harness(tmp_path, VALIDITY)
    for k in range(3):
        h.batch([(0, "pulse", 0, 3600.0 * k), (0, "spo2", 97, 3600.0 * k)])
    assert h.open() == {("implausible", 0)}
    fr = h.last.transitions.fires()
    assert (fr[4].tolist(), fr[5].tolist()) == ([0.0], ["pulse"])   # value, metric
    h.batch([(0, "spo2", 96, 4 * 3600.0)])   # the SpO2 sensor says nothing of the pulse's
    assert h.open() == {("implausible", 0)}
    h.batch([(0, "pulse", 70, 5 * 3600.0)])
    assert h.open() == set()


def test_per_metric_runs_are_the_same_in_one_batch_as_in_many(tmp_path):
    rows = [(0, m, v, 60.0 * k) for k in range(4)
            for m, v in (("pulse", 0), ("spo2", 97), ("perfusion_index", 50))]
    rows += [(0, "pulse", 70, 300.0)]   # the pulse mends; the perfusion index does not
    whole = Harness(tmp_path, VALIDITY)
    whole.batch(rows)
    split = Harness(tmp_path, VALIDITY)
    for r in rows:
        split.batch([r])
    for h in (whole, split):
        assert h.open() == {("implausible", 0)} and h.opened("implausible", 0) == 1


def test_the_alert_clears_only_when_no_metric_is_still_in_a_bad_run(tmp_path):
    h = Harness(tmp_path, VALIDITY)
    h.batch([(0, "pulse", 0, float(k)) for k in range(3)])
    h.batch([(0, "perfusion_index", 50, 10.0 + k) for k in range(3)])
    h.batch([(0, "pulse", 70, 20.0)])
    assert h.open() == {("implausible", 0)}   # the perfusion index is still implausible
    h.batch([(0, "perfusion_index", 3, 21.0)])
    assert h.open() == set() and h.cleared("implausible", 0) == 1


def test_a_metric_reported_in_its_own_message_counts_however_the_batches_fall(tmp_path):
    # SenML-style: the pulse and the SpO2 of one measurement in two messages, two batches
    h = Harness(tmp_path, VALIDITY)
    for k in range(3):
        h.batch([(0, "pulse", 70, float(k))])
        h.batch([(0, "perfusion_index", 50, float(k))])
    assert h.open() == {("implausible", 0)}


def test_plausible_readings_change_no_state_worth_writing(tmp_path):
    # the engine writes a device's rule state when it moves; which rows a rule has seen,
    # per metric too, is not worth a write per reading
    h = Harness(tmp_path, VALIDITY)
    h.batch([(0, "pulse", 70, 1.0), (0, "spo2", 97, 1.0)])
    ev = h.engine.evaluate(batch_of([(0, "pulse", 71, 2.0), (0, "spo2", 96, 2.0)]))
    assert h.engine.moved(ev).tolist() == []
    ev = h.engine.evaluate(batch_of([(0, "pulse", 0, 2.0)]))
    assert h.engine.moved(ev).tolist() == [0]


def test_metrics_the_model_has_no_range_for_are_not_judged(tmp_path):
    h = Harness(tmp_path, VALIDITY)
    ev = h.batch([(0, "weight", 900, 1.0), (0, "battery", 10, 1.0)])
    assert ev.bad.tolist() == [False, False]


# -- stuck ------------------------------------------------------------------------------------

STUCK = '[[rule]]\nname = "stuck_spo2"\nkind = "stuck"\nmetric = "spo2"\ncount = 4\n'


def test_identical_values_in_a_row_across_batches_fire_and_a_change_clears(tmp_path):
    h = Harness(tmp_path, STUCK)
    h.batch([(0, "spo2", 95, 1.0), (0, "spo2", 95, 2.0)])
    h.batch([(0, "spo2", 95, 3.0)])
    assert h.open() == set()
    h.batch([(0, "spo2", 95, 4.0)])
    assert h.open() == {("stuck_spo2", 0)}
    h.batch([(0, "spo2", 96, 5.0)])
    assert h.open() == set()


def test_a_redelivered_row_does_not_count_as_another_identical_value(tmp_path):
    h = Harness(tmp_path, STUCK)
    h.batch([(0, "spo2", 95, 1.0), (0, "spo2", 95, 1.0), (0, "spo2", 95, 2.0)])
    h.batch([(0, "spo2", 95, 2.0), (0, "spo2", 95, 3.0)])
    assert h.open() == set()


# -- event ------------------------------------------------------------------------------------

MAINS = ('[[rule]]\nname = "mains"\nkind = "event"\ncodes = ["power.mains_lost"]\n'
         'clear_codes = ["power.mains_restored"]\n')


def test_an_event_is_cleared_by_its_clearing_code_from_the_same_device(tmp_path):
    h = Harness(tmp_path, MAINS)
    h.batch(events=[(4, "power.mains_lost", 10.0), (2, "power.mains_restored", 11.0)])
    assert h.open() == {("mains", 4)}
    h.batch(events=[(4, "power.mains_restored", 20.0)])
    assert h.open() == set() and h.cleared("mains", 4) == 1


def test_a_late_lost_older_than_the_restore_already_seen_opens_nothing(tmp_path):
    h = Harness(tmp_path, MAINS)
    h.batch(events=[(4, "power.mains_lost", 10.0), (4, "power.mains_restored", 20.0)])
    h.batch(events=[(4, "power.mains_lost", 15.0)])
    assert h.open() == set() and h.opened("mains", 4) == 1


def test_an_alarm_has_no_clearing_and_a_late_one_still_fires(tmp_path):
    h = Harness(tmp_path, '[[rule]]\nname = "alarm"\nkind = "event"\ncodes = ["alarm.*"]\n')
    h.batch(events=[(0, "alarm.fall", 100.0), (0, "alarm.panic", 90.0)])
    fr = h.last.transitions.fires()
    assert fr[5].tolist() == ["alarm.panic"] and fr[6].tolist() == [2]
    h.tick(10 * DAY)
    assert h.open() == {("alarm", 0)}


def test_an_event_clears_after_its_timeout(tmp_path):
    h = Harness(tmp_path, '[[rule]]\nname = "tamper"\nkind = "event"\ncodes = ["tamper"]\n'
                          'clear_after = "1h"\n')
    h.batch(events=[(0, "tamper", 100.0)])
    h.tick(100.0 + 3599)
    assert h.open() == {("tamper", 0)}
    h.tick(100.0 + 3600)
    assert h.open() == set()


def test_a_jam_again_after_its_alert_expired_is_a_new_alert_in_one_batch_too(tmp_path):
    # the dispenser jammed, was freed (nothing says so: the alert clears 12 h after), and
    # jammed again 13 h after; a backlog brings both in one batch
    h = Harness(tmp_path, '[[rule]]\nname = "jam"\nkind = "event"\ncodes = ["fault.jam"]\n'
                          'clear_after = "12h"\n')
    h.batch(events=[(2, "fault.jam", 0.0), (2, "fault.jam", 13 * 3600.0)])
    assert h.opened("jam", 2) == 2 and h.cleared("jam", 2) == 1
    assert h.open() == {("jam", 2)}
    ct = h.last.transitions.clears()[2]
    assert ct.tolist() == [12 * 3600.0] and h.last.transitions.expired().tolist() == [True]


def test_a_jam_within_its_timeout_is_a_repeat_and_the_timeout_runs_from_it(tmp_path):
    h = Harness(tmp_path, '[[rule]]\nname = "jam"\nkind = "event"\ncodes = ["fault.jam"]\n'
                          'clear_after = "12h"\n')
    h.batch(events=[(2, "fault.jam", 0.0), (2, "fault.jam", 11 * 3600.0),
                    (2, "fault.jam", 22 * 3600.0)])
    assert h.opened("jam", 2) == 1 and h.cleared("jam", 2) == 0
    h.batch(events=[(2, "fault.jam", 34 * 3600.0)])   # 12 h after the last: expired first
    assert h.opened("jam", 2) == 2 and h.cleared("jam", 2) == 1


def test_mains_lost_and_restored_at_one_time_leave_nothing_open_whichever_came_first(
        tmp_path):
    for events in ([(4, "power.mains_lost", 10.0), (4, "power.mains_restored", 10.0)],
                   [(4, "power.mains_restored", 10.0), (4, "power.mains_lost", 10.0)]):
        h = Harness(tmp_path, MAINS)
        h.batch(events=events)
        assert h.open() == set() and h.cleared("mains", 4) == 1


# -- absence ----------------------------------------------------------------------------------

ABSENCE = '[[rule]]\nname = "silent"\nkind = "absence"\nfactor = 2\ntypes = ["gateway"]\n'


def test_a_device_silent_past_k_heartbeats_fires_at_the_sweep_and_speaking_clears(tmp_path):
    h = Harness(tmp_path, ABSENCE)  # HomeHub 4G heartbeat 300 s: absent after 600 s
    seen = [np.nan, np.nan, np.nan, np.nan, 1000.0]
    h.sweep(1599.0, seen)
    assert h.open() == set()
    h.sweep(1601.0, seen)
    assert h.open() == {("silent", 4)}
    h.sweep(1700.0, seen)
    assert h.opened("silent", 4) == 1  # one alert, not one per sweep
    h.batch(seen=[(4, 1650.0)])
    assert h.open() == set()


def test_the_sweep_clears_a_device_heard_by_another_process(tmp_path):
    h = Harness(tmp_path, ABSENCE)
    h.sweep(2000.0, [np.nan] * 4 + [1000.0])
    h.sweep(2100.0, [np.nan] * 4 + [2050.0])  # last_seen moved on: committed elsewhere
    assert h.open() == set() and h.cleared("silent", 4) == 1


def test_a_gateway_whose_clock_is_slow_is_judged_by_when_it_was_heard(tmp_path):
    """Heard 5 s ago, its clock 20 minutes behind ours: it is talking, not silent."""
    h = Harness(tmp_path, ABSENCE)
    slow = 20 * 60.0
    for now in (10_000.0, 10_300.0, 10_600.0):   # a heartbeat 5 s before each sweep
        h.batch(seen=[(4, now - 5 - slow)])
        h.sweep(now, [np.nan] * 4 + [now - 5 - slow], [np.nan] * 4 + [now - 5])
    assert h.opened("silent", 4) == 0


def test_a_slow_gateway_that_falls_silent_fires_dated_when_it_was_heard_and_its_next_clears(
        tmp_path):
    """Dated when we last heard it plus the limit (a silence has no device time); its next
    message, dated before that by its slow clock, clears it all the same."""
    h = Harness(tmp_path, ABSENCE)
    slow = 20 * 60.0
    seen, heard = [np.nan] * 4 + [10_000.0 - slow], [np.nan] * 4 + [10_000.0]
    h.sweep(10_599.0, seen, heard)
    assert h.open() == set()
    h.sweep(10_601.0, seen, heard)
    assert h.open() == {("silent", 4)}
    assert h.last.transitions.fires()[2].tolist() == [10_600.0]
    h.batch(seen=[(4, 10_700.0 - slow)])
    assert h.open() == set()


def test_a_device_silent_again_after_its_clock_was_set_back_is_absent_again(tmp_path):
    """Silent (an alert), heard at 2000 with its clock set back (its latest device time
    stays 1000: the greatest is kept), silent again: a second alert, not the first again."""
    h = Harness(tmp_path, ABSENCE)   # absent after 600 s
    seen = [np.nan] * 4 + [1000.0]
    h.sweep(1601.0, seen, [np.nan] * 4 + [1000.0])
    h.sweep(2005.0, seen, [np.nan] * 4 + [2000.0])
    assert h.open() == set() and h.cleared("silent", 4) == 1
    h.sweep(2601.0, seen, [np.nan] * 4 + [2000.0])
    assert h.open() == {("silent", 4)} and h.opened("silent", 4) == 2


def test_a_device_never_heard_and_not_deployed_is_not_absent(tmp_path):
    """Neither heard nor deployed (`last_heard` NaN: on a shelf): never silent."""
    h = Harness(tmp_path, ABSENCE)
    h.sweep(1e9, [np.nan] * 5)
    h.sweep(1e9, [np.nan] * 5, [np.nan] * 5)
    assert h.open() == set()


def test_a_device_deployed_and_never_heard_is_absent_from_its_deployment_on(tmp_path):
    """No device time; heard, for the sweep, at its deployment (1000): silent past the limit
    since, dated by our clock, with the code that says it was never heard."""
    h = Harness(tmp_path, ABSENCE)   # HomeHub 4G heartbeat 300 s: absent after 600 s
    seen, heard = [np.nan] * 5, [np.nan] * 4 + [1000.0]
    h.sweep(1599.0, seen, heard)
    assert h.open() == set()
    h.sweep(1601.0, seen, heard)
    assert h.open() == {("silent", 4)}
    fires = h.last.transitions.fires()
    assert (fires[2].tolist(), fires[5].tolist()) == ([1600.0], [NEVER_HEARD])


def test_any_first_message_of_a_device_never_heard_clears_its_absence(tmp_path):
    """Its clock restarted at 2000-01-01: the message is still the device speaking."""
    h = Harness(tmp_path, ABSENCE)
    h.sweep(1601.0, [np.nan] * 5, [np.nan] * 4 + [1000.0])
    h.batch(seen=[(4, 946_684_800.0)])
    assert h.open() == set()
    assert h.cleared("silent", 4) == 1


def test_a_deployed_device_never_heard_has_no_clock_to_be_wrong(tmp_path):
    h = Harness(tmp_path, '[[rule]]\nname = "clock"\nkind = "clock"\nmax_skew = "1h"\n'
                          'for = "15m"\n')
    for now in (1e6, 1e6 + 3600, 1e6 + 7200):
        h.sweep(now, [np.nan] * 5, [1000.0] * 5)
    assert h.open() == set()


# -- sequence ---------------------------------------------------------------------------------

DOSE = ('[[rule]]\nname = "missed_dose"\nkind = "sequence"\nfirst = ["dose.due"]\n'
        'then = ["dose.taken"]\nwithin = "30m"\nqueue = "home_care"\n')


def test_a_dose_taken_in_time_fires_nothing(tmp_path):
    h = Harness(tmp_path, DOSE)
    h.batch(events=[(2, "dose.due", 0.0)])
    h.batch(events=[(2, "dose.taken", 1700.0)])
    h.tick(10 * DAY)
    assert h.open() == set()


def test_a_missed_dose_fires_when_a_later_message_shows_the_window_passed(tmp_path):
    h = Harness(tmp_path, DOSE)
    h.batch(events=[(2, "dose.due", 0.0)])
    h.batch(seen=[(2, 1900.0)])  # any message of the device, 31+ minutes later
    assert h.open() == {("missed_dose", 2)}
    assert h.last.transitions.fires()[2].tolist() == [1800.0]  # at the deadline
    h.batch(events=[(2, "dose.taken", 2000.0)])  # taken late: resolves itself
    assert h.open() == set()


def test_a_missed_dose_of_a_silent_device_fires_at_the_tick(tmp_path):
    h = Harness(tmp_path, DOSE)
    h.batch(events=[(2, "dose.due", 0.0)])
    h.tick(1700.0)
    assert h.open() == set()
    h.tick(1800.0 + 61)
    assert h.open() == {("missed_dose", 2)}


def test_a_dispenser_whose_clock_is_behind_is_not_called_missed_before_its_deadline(
        tmp_path):
    """Its clock 40 minutes behind ours: a tick just after the dose came is 15 s into the
    window on its clock; the dose taken two minutes later ends it."""
    h = Harness(tmp_path, DOSE)
    behind = [0.0, 0.0, 40 * 60.0, 0.0, 0.0]
    now = 100_000.0
    h.batch(events=[(2, "dose.due", now - 2400)])
    h.tick(now + 15, behind)
    h.batch(events=[(2, "dose.taken", now - 2400 + 120)])
    h.tick(now + 3600, behind)
    assert h.opened("missed_dose", 2) == 0


def test_a_dispenser_whose_clock_is_behind_misses_a_dose_at_its_deadline(tmp_path):
    h = Harness(tmp_path, DOSE)
    behind = [0.0, 0.0, 40 * 60.0, 0.0, 0.0]
    now = 100_000.0
    h.batch(events=[(2, "dose.due", now - 2400)])
    h.tick(now + 1800, behind)
    assert h.open() == set()
    h.tick(now + 1800 + 61, behind)
    assert h.open() == {("missed_dose", 2)}
    assert h.last.transitions.fires()[2].tolist() == [now - 2400 + 1800]   # its deadline


def test_two_doses_due_in_one_batch_the_first_missed_the_second_taken(tmp_path):
    h = Harness(tmp_path, DOSE)
    h.batch(events=[(2, "dose.due", 0.0), (2, "dose.due", 7200.0), (2, "dose.taken", 7300.0)])
    assert h.opened("missed_dose", 2) == 1 and h.cleared("missed_dose", 2) == 1


def test_two_doses_due_in_two_batches_and_both_missed_fire_twice(tmp_path):
    # the second is judged too, though the first still waited when it came
    h = Harness(tmp_path, DOSE)
    h.batch(events=[(2, "dose.due", 0.0)])
    h.batch(events=[(2, "dose.due", 600.0)])
    h.batch(seen=[(2, 4000.0)])
    assert h.opened("missed_dose", 2) == 1 and h.book.fired[("missed_dose", 2)] == 2
    first, last = h.last.transitions.fires()[2:4]
    assert (first.tolist(), last.tolist()) == ([1800.0], [2400.0])  # the first and last deadline


def test_at_the_tick_only_the_doses_past_their_deadline_fire_the_later_wait(tmp_path):
    h = Harness(tmp_path, DOSE)
    h.batch(events=[(2, "dose.due", 0.0), (2, "dose.due", 600.0), (2, "dose.due", 1200.0)])
    h.tick(2400.0 + 61)
    assert h.book.fired[("missed_dose", 2)] == 2
    h.batch(events=[(2, "dose.taken", 2900.0)])  # the third is taken in time
    assert h.open() == set() and h.book.fired[("missed_dose", 2)] == 2
    h.tick(10 * DAY)
    assert h.book.fired[("missed_dose", 2)] == 2


HOLDING = DOSE + """
[[rule]]
name = "spo2_stuck"
kind = "stuck"
metric = "spo2"
count = 3
types = ["pulse_oximeter"]

[[rule]]
name = "personal_alarm"
kind = "event"
codes = ["alarm.*"]
"""


@pytest.mark.parametrize("rows, rule, device, holds", [
    # a dose due waits on its deadline (the timer fires it there); taken, nothing waits
    ({"events": [(2, "dose.due", 0.0)]}, "missed_dose", 2, 1800.0),
    ({"events": [(2, "dose.due", 0.0), (2, "dose.taken", 600.0)]}, "missed_dose", 2, np.inf),
    # missed: the condition holds until a dose.taken
    ({"events": [(2, "dose.due", 0.0)], "seen": [(2, 4000.0)]}, "missed_dose", 2, -np.inf),
    ({"readings": [(0, "spo2", 95.0, 60.0 * m) for m in range(3)]}, "spo2_stuck", 0, -np.inf),
    ({"readings": [(0, "spo2", 95.0 + m, 60.0 * m) for m in range(3)]}, "spo2_stuck", 0,
     np.inf),
    # rules that rows in order do not decide: every alarm counts, and a rule that does not
    # apply to the device (a dispenser has no SpO2) says nothing of its alerts
    ({}, "personal_alarm", 0, -np.inf),
    ({}, "spo2_stuck", 2, -np.inf),
])
def test_from_when_a_rules_state_may_hold_an_alert(tmp_path, rows, rule, device, holds):
    """What late rows evaluated again in order leave of an alert (`app.replay`): it is taken
    back only if it last fired before this."""
    h = Harness(tmp_path, HOLDING)
    h.batch(**rows)
    names = [r.name for r in h.engine.rules]
    got = h.engine.holds_from(np.array([device]), h.engine.rules)
    assert got[names.index(rule), 0] == holds


def test_a_rules_state_holds_everything_for_rules_reloaded_since_the_evaluation(tmp_path):
    h = Harness(tmp_path, HOLDING)
    before = h.engine.rules
    h.engine.reload(list(before), [])
    assert (h.engine.holds_from(np.array([0, 2]), before) == -np.inf).all()


def test_transitions_are_the_same_when_the_rules_did_the_same(tmp_path):
    # what the alarm lane compares to record an alarm's alerts only once (a missed dose's
    # value is NaN)
    batches = ([(2, "dose.due", 0.0)], [(2, "dose.due", 0.0), (2, "dose.due", 600.0)])
    runs = []
    for events in (*batches, batches[0]):
        h = Harness(tmp_path, DOSE)
        h.batch(events=events)
        runs.append(h.batch(seen=[(2, 4000.0)]).transitions)
    assert runs[0].same_as(runs[2]) and not runs[0].same_as(runs[1])


# -- rate -------------------------------------------------------------------------------------

RATE = ('[[rule]]\nname = "weight_gain"\nkind = "rate"\nmetric = "weight"\nrise = 2.0\n'
        'window = "3d"\n')


def test_a_weight_gain_within_the_window_fires_and_a_settled_weight_clears(tmp_path):
    h = Harness(tmp_path, RATE)
    h.batch([(3, "weight", 80.0, 0.0)])
    h.batch([(3, "weight", 81.0, DAY)])
    h.batch([(3, "weight", 82.2, 2 * DAY)])
    assert h.open() == {("weight_gain", 3)}
    h.batch([(3, "weight", 82.0, 5 * DAY)])  # 80 kg is out of the window now
    assert h.open() == set()


def test_a_gain_spread_over_more_than_the_window_does_not_fire(tmp_path):
    h = Harness(tmp_path, RATE)
    h.batch([(3, "weight", 80.0, 0.0), (3, "weight", 81.0, 2 * DAY),
             (3, "weight", 82.5, 4 * DAY)])
    assert h.open() == set()


def test_after_a_restart_the_window_comes_from_stored_history(tmp_path):
    asked = []

    def history(metric, devices, since, until):
        asked.append((metric, devices.tolist(), since, until))
        return np.array([3]), np.array([DAY]), np.array([79.5])

    h = Harness(tmp_path, RATE, history=history)
    h.batch([(3, "weight", 82.0, 2 * DAY)])
    assert asked == [("weight", [3], -DAY, 2 * DAY)]
    assert h.open() == {("weight_gain", 3)}
    h.batch([(3, "weight", 82.1, 2.5 * DAY)])
    assert len(asked) == 1  # memory reaches back now


# -- flapping ---------------------------------------------------------------------------------

FLAP = ('[[rule]]\nname = "flapping"\nkind = "flapping"\ncodes = ["connection.lost"]\n'
        'count = 3\nwindow = "1h"\n')


def test_more_than_n_losses_within_the_window_open_one_alert_not_n(tmp_path):
    h = Harness(tmp_path, FLAP)
    h.batch(events=[(4, "connection.lost", 0.0), (4, "connection.restored", 1.0),
                    (4, "connection.lost", 600.0)])
    h.batch(events=[(4, "connection.lost", 1200.0)])
    assert h.open() == set()  # 3 losses: not more than 3
    h.batch(events=[(4, "connection.lost", 1800.0), (4, "connection.lost", 2400.0)])
    assert h.open() == {("flapping", 4)} and h.opened("flapping", 4) == 1


def test_flapping_clears_once_stable_for_the_window(tmp_path):
    h = Harness(tmp_path, FLAP)
    h.batch(events=[(4, "connection.lost", float(t)) for t in (0, 60, 120, 180)])
    assert h.open() == {("flapping", 4)}
    h.tick(180.0 + 3599)
    assert h.open() == {("flapping", 4)}
    h.tick(180.0 + 3600)
    assert h.open() == set()


def test_flapping_clears_when_the_next_loss_comes_after_a_stable_spell(tmp_path):
    h = Harness(tmp_path, FLAP)
    h.batch(events=[(4, "connection.lost", float(t)) for t in (0, 60, 120, 180)])
    h.batch(events=[(4, "connection.lost", 180.0 + 7200)])
    assert h.open() == set()
    assert h.book.resolved[("flapping", 4)] == 180.0


def test_flapping_that_paused_longer_than_stable_is_a_new_alert_in_one_batch_too(tmp_path):
    # losses 11 minutes apart, stable 10: quiet for 10 minutes after the third, so the
    # alert it opened cleared before the fourth opened another
    h = Harness(tmp_path, FLAP.replace("count = 3", "count = 2") + 'stable = "10m"\n')
    h.batch(events=[(4, "connection.lost", 660.0 * k) for k in range(4)])
    assert h.opened("flapping", 4) == 2 and h.cleared("flapping", 4) == 1
    assert h.last.transitions.clears()[2].tolist() == [1320.0 + 600]


def test_a_dose_taken_at_the_second_it_was_due_answers_it_whichever_came_first(tmp_path):
    h = Harness(tmp_path, DOSE)
    h.batch(events=[(2, "dose.taken", 0.0), (2, "dose.due", 0.0)])
    h.tick(10 * DAY)
    assert h.open() == set() and h.book.opened == {}


def test_a_dose_taken_arriving_before_its_due_in_another_batch_is_not_lost(tmp_path):
    h = Harness(tmp_path, DOSE)
    h.batch(events=[(2, "dose.due", 0.0), (2, "dose.taken", 600.0)])
    h.batch(events=[(2, "dose.due", 300.0)])  # older than what was seen: ignored
    h.tick(10 * DAY)
    assert h.open() == set()


def test_a_late_weight_reading_older_than_the_latest_changes_nothing(tmp_path):
    h = Harness(tmp_path, RATE)
    h.batch([(3, "weight", 80.0, 0.0), (3, "weight", 80.5, DAY)])
    h.batch([(3, "weight", 90.0, 0.5 * DAY)])
    assert h.open() == set()


def test_a_device_with_no_earlier_reading_has_no_change_to_measure(tmp_path):
    h = Harness(tmp_path, RATE)
    ev = h.batch([(3, "weight", 120.0, 0.0)])
    assert len(ev.transitions.fires()[1]) == 0 and len(ev.transitions.clears()[1]) == 0
