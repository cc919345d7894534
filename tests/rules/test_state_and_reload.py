"""The engine around the kinds: state staged until applied, seeding from open alerts after a
restart, reloads that keep the state of unchanged rules, updates of two lanes."""

from __future__ import annotations

import numpy as np
from tests.rules.harness import Harness

from vagt.rules import load_rules

BATTERY = ('[[rule]]\nname = "battery_low"\nkind = "threshold"\nmetric = "battery"\n'
           'below = 15\nclear_at = 25\n')
SPO2 = ('[[rule]]\nname = "spo2_low"\nkind = "threshold"\nmetric = "spo2"\nbelow = 90\n'
        'for = "10m"\n')


def test_state_does_not_change_until_the_evaluation_is_applied(tmp_path):
    h = Harness(tmp_path, SPO2)
    b = [(0, "spo2", 85, 0.0)]
    h.engine.evaluate(_batch(b))  # evaluated, never applied: its commit failed
    h.batch([(0, "spo2", 85, 0.0)])  # the retry sees the same state and starts the timer
    h.batch([(0, "spo2", 85, 600.0)])
    assert h.open() == {("spo2_low", 0)}


def test_an_alert_open_before_a_restart_is_cleared_by_recovery_after_it(tmp_path):
    h = Harness(tmp_path, BATTERY)
    h.engine.seed([("battery_low", "OXI-1", 100.0)])
    h.book.open_[("battery_low", 0)] = 100.0  # the queue has it open
    h.batch([(0, "battery", 90, 200.0)])
    assert h.open() == set()


def test_a_reload_keeps_the_state_of_unchanged_rules_and_starts_changed_ones_fresh(tmp_path):
    h = Harness(tmp_path, SPO2 + BATTERY)
    h.batch([(0, "spo2", 85, 0.0), (1, "battery", 20, 0.0)])
    p = tmp_path / "new.toml"
    p.write_text(SPO2 + BATTERY.replace("clear_at = 25", "clear_at = 30"))
    changed = h.engine.reload(load_rules(p), [])
    assert changed == ["battery_low"]
    h.batch([(0, "spo2", 85, 600.0)])
    assert h.open() == {("spo2_low", 0)}  # the 10-minute timer went on across the reload


def test_a_removed_rule_is_reported_and_a_new_one_seeded_from_open_alerts(tmp_path):
    h = Harness(tmp_path, SPO2)
    p = tmp_path / "new.toml"
    p.write_text(BATTERY)
    changed = h.engine.reload(load_rules(p), [("battery_low", "OXI-2", 5.0)])
    assert sorted(changed) == ["battery_low", "spo2_low"]
    h.book.open_[("battery_low", 1)] = 5.0
    h.batch([(1, "battery", 50, 10.0)])
    assert h.open() == set()


def test_of_two_lanes_updates_of_one_device_the_later_in_device_time_wins(tmp_path):
    h = Harness(tmp_path, BATTERY)
    late = h.engine.evaluate(_batch([(0, "battery", 10, 200.0)]))
    early = h.engine.evaluate(_batch([(0, "battery", 90, 100.0)]))
    h.engine.apply(late)
    h.engine.apply(early)  # committed second, but older: must not undo the low battery
    ev = h.batch([(0, "battery", 90, 300.0)])
    assert ev.transitions.clears()[1].tolist() == [0]


def _batch(readings):
    import numpy as np

    from vagt.rules import Batch

    return Batch(np.array([r[0] for r in readings], dtype=np.int64),
                 np.array([r[1] for r in readings], dtype=object),
                 np.array([r[2] for r in readings], dtype=np.float64),
                 np.array([r[3] for r in readings], dtype=np.float64),
                 np.empty(0, dtype=np.int64), np.empty(0, dtype=object), np.empty(0))


def test_after_a_restart_a_stuck_sensor_alert_is_not_cleared_by_the_first_value(tmp_path):
    h = Harness(tmp_path, '[[rule]]\nname = "stuck"\nkind = "stuck"\nmetric = "spo2"\ncount = 3\n')
    h.engine.seed([("stuck", "OXI-1", 100.0)])
    h.book.open_[("stuck", 0)] = 100.0
    h.batch([(0, "spo2", 95, 200.0)])
    assert h.open() == {("stuck", 0)}
    h.batch([(0, "spo2", 96, 300.0)])
    assert h.open() == set()


def test_after_a_restart_an_open_flapping_alert_clears_once_quiet(tmp_path):
    h = Harness(tmp_path, '[[rule]]\nname = "flap"\nkind = "flapping"\n'
                          'codes = ["connection.lost"]\ncount = 3\nwindow = "1h"\n')
    h.engine.seed([("flap", "GW-1", 1000.0)])
    h.book.open_[("flap", 4)] = 1000.0
    h.tick(1000.0 + 3599)
    assert h.open() == {("flap", 4)}
    h.tick(1000.0 + 3600)
    assert h.open() == set()


ADDED = [("BPM-9", "Omron", "M7 Intelli IT", "bp_monitor", "Aarhus"),      # pulse 40..180
         ("OXI-9", "Acme", "Prototype", "pulse_oximeter", "Aarhus"),       # not catalogued
         ("OXI-8", "Masimo", "MightySat", "pulse_oximeter", "Samsø"),      # pulse 25..240
         ("PAL-9", "Tunstall", "Lifeline Vi+", "personal_alarm", "Aarhus")]  # heard hourly
WHERE = ('[[rule]]\nname = "implausible"\nkind = "validity"\nalert_after = 3\n'
         '[[rule]]\nname = "pulse_low"\nkind = "threshold"\nmetric = "pulse"\nbelow = 40\n'
         'municipalities = ["Aarhus"]\n'
         '[[rule]]\nname = "silent"\nkind = "absence"\nfactor = 2\n'
         'types = ["gateway", "personal_alarm"]\n')


def test_devices_added_one_at_a_time_between_batches_are_judged_as_if_there_from_the_start(
        tmp_path):
    # The alarm lane's process adds each device as its first alarm comes; the rules then
    # work out where the added ones apply, their plausible ranges and heartbeats, not all
    # the devices' again.
    (tmp_path / "grown").mkdir()
    (tmp_path / "whole").mkdir()
    grown = Harness(tmp_path / "grown", WHERE)
    whole = Harness(tmp_path / "whole", WHERE)
    batches = [[(0, "pulse", 70, 1.0)]]
    grown.batch(batches[0])
    for k, device in enumerate(ADDED):
        grown.fleet.add(*device)
        whole.fleet.add(*device)
        batches.append([(5 + k, "battery", 80, 2.0 + k)])
        grown.batch(batches[-1])
    for b in batches:
        whole.batch(b)

    # device 0: a Nonin 3230 (pulse 18..321) in Aarhus, 6: in Aarhus, 7: in Samsø
    last = [(d, "pulse", 30, 10.0) for d in (0, 5, 6, 7)]
    for h in (grown, whole):
        assert h.batch(last).bad.tolist() == [False, True, False, False]
        assert h.open() == {("pulse_low", 0), ("pulse_low", 6)}
        seen = [np.nan] * 4 + [1000.0] + [np.nan] * 3 + [1000.0]   # the gateway, PAL-9
        h.sweep(1000.0 + 601, seen)          # a gateway is heard every 300 s, an alarm 3600
        assert h.open() == {("pulse_low", 0), ("pulse_low", 6), ("silent", 4)}
        h.sweep(1000.0 + 7201, seen)
        assert ("silent", 8) in h.open()


def test_a_device_half_added_by_another_thread_is_judged_once_it_is_whole(tmp_path):
    h = Harness(tmp_path, WHERE)
    h.batch([(0, "pulse", 70, 1.0)])
    h.fleet.ids.append("BPM-9")       # its other columns not yet (Fleet._add, meanwhile)
    h.batch([(0, "pulse", 71, 2.0)])
    for column, value in zip((h.fleet.vendor, h.fleet.model, h.fleet.type,
                              h.fleet.municipality, h.fleet.status), ADDED[0][1:] + ("deployed",)):
        column.append(value)
    assert h.batch([(5, "pulse", 30, 3.0)]).bad.tolist() == [True]   # Omron: 40..180
