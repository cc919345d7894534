"""A rule keeps state only for the devices it applies to: at 100,000 devices most rules are
for one device type, and a row for every device of the fleet made their state twice what it
needed (docs/performance.md, "eleventh session"). What the rules decide is the same: a
device's state stays its own when another device comes under the rule (moved to its
municipality), when that happens between a batch and its commit, and when another engine
sharing the subscription has not seen the move yet.

The rules of the kinds judged by event codes (`event`, `flapping`) keep rows only for the
devices that sent one of their codes: most devices never send the code a rule waits for.
Validity keeps each metric's runs only for the devices whose model measures the metric."""

from __future__ import annotations

import numpy as np
from tests.rules.harness import Harness, batch_of
from tests.rules.test_kinds import VALIDITY
from tests.rules.test_threshold import SPO2

from vagt.rules import load_rules
from vagt.rules._columns import Transitions
from vagt.rules.kinds import validity
from vagt.rules.persist import pack, unpack
from vagt.rules.state import Context, RuleState

# devices (tests.rules.harness): 0 OXI-1 Aarhus, 1 OXI-2 Samsø, 2 DSP-1 Randers,
# 3 SCL-1 Viborg, 4 GW-1 Aarhus
ON_SAMSO = SPO2 + 'municipalities = ["Samsø"]\n'   # spo2_low, below 90 for 10 minutes
DISPENSERS = """
[[rule]]
name = "dose"
kind = "sequence"
types = ["medicine_dispenser"]
first = ["dose.due"]
then = ["dose.taken"]
within = "30m"

[[rule]]
name = "jam"
kind = "event"
types = ["medicine_dispenser"]
codes = ["dispenser.jam"]
clear_after = "1h"

[[rule]]
name = "battery_low"
kind = "threshold"
metric = "battery"
below = 15
"""


def state(h: Harness, rule: str):
    return dict((r.name, s) for r, s in h.engine.rule_states())[rule]


def test_a_rule_for_one_device_type_keeps_rows_for_those_devices_only_and_alerts_by_device(
        tmp_path):
    h = Harness(tmp_path, DISPENSERS)
    h.batch(events=[(2, "dose.due", 0.0), (2, "dispenser.jam", 10.0)],
            readings=[(3, "battery", 10, 5.0)])
    h.tick(2 * 3600.0)
    # the dispenser (device 2) is the rules' row 0: the alerts are still device 2's
    assert h.opened("dose", 2) == 1
    assert h.opened("jam", 2) == 1 and h.cleared("jam", 2) == 1     # its clear_after
    assert h.open() == {("dose", 2), ("battery_low", 3)}
    for rule in ("dose", "jam"):
        st = state(h, rule)
        assert st.devices.tolist() == [2]
        assert {len(a) for _, a, _, _ in st.arrays()} == {1}
    # a rule for every device keeps a row for each, numbered by the fleet
    assert state(h, "battery_low").devices is None
    assert len(state(h, "battery_low").arrays()[0][1]) == 5


def test_a_device_moved_into_a_rules_municipality_leaves_the_others_state_with_them(tmp_path):
    h = Harness(tmp_path, ON_SAMSO)
    h.batch([(1, "spo2", 88, 0.0)])            # OXI-2 on Samsø: a low run begins
    h.fleet.move("OXI-1", "Samsø")             # device 0 comes before it in the rule's rows
    h.batch([(0, "spo2", 88, 600.0), (1, "spo2", 88, 600.0)])
    # OXI-2's run held 10 minutes; OXI-1's has just begun
    assert h.open() == {("spo2_low", 1)}
    assert state(h, "spo2_low").devices.tolist() == [0, 1]


def test_state_staged_before_a_device_moved_in_is_written_to_its_own_device(tmp_path):
    h = Harness(tmp_path, ON_SAMSO)
    ev = h.engine.evaluate(batch_of([(1, "spo2", 88, 0.0)]))   # a run begins
    h.fleet.move("OXI-1", "Samsø")
    h.tick(1.0)                                 # the rules see the move: rows move along
    h.book.record(ev)
    h.engine.apply(ev)                          # the batch's state, after its commit
    run_start = state(h, "spo2_low").at("run_start", np.array([0, 1])).tolist()
    assert np.isnan(run_start[0]) and run_start[1] == 0.0
    h.batch([(1, "spo2", 88, 600.0)])
    assert h.open() == {("spo2_low", 1)}


def test_state_from_an_engine_that_saw_a_move_first_is_kept_for_its_device(tmp_path):
    moved = Harness(tmp_path, ON_SAMSO)
    moved.fleet.move("OXI-1", "Samsø")
    moved.batch([(0, "spo2", 88, 0.0)])
    with moved.engine.lock:
        rows = np.array([0, 3], dtype=np.int64)
        p = pack(moved.engine, rows)
    other = Harness(tmp_path, ON_SAMSO)        # its fleet has OXI-1 in Aarhus still
    other.batch([(1, "spo2", 95, 0.0)])
    unpack(other.engine, rows, p.layout, p.slots, p.values, p.texts)
    st = state(other, "spo2_low")
    assert st.devices.tolist() == [0, 1]       # a row for the state given; none for device 3
    assert st.at("run_start", np.array([0])).tolist() == [0.0]
    other.fleet.move("OXI-1", "Samsø")
    other.batch([(0, "spo2", 88, 600.0)])
    assert other.open() == {("spo2_low", 0)}


def test_an_alert_open_for_a_device_the_rule_no_longer_applies_to_still_expires(tmp_path):
    h = Harness(tmp_path, DISPENSERS)
    # opened when the gateway was under the rule (before a reload narrowed it, say)
    h.engine.seed([("jam", "GW-1", 0.0)])
    h.book.open_[("jam", 4)] = 0.0
    h.tick(2 * 3600.0)
    assert h.cleared("jam", 4) == 1
    # the seeded device's row; none for the dispenser, which has sent no jam yet
    assert state(h, "jam").devices.tolist() == [4]


def test_a_rule_for_scales_asks_the_stored_history_for_the_scale_by_its_fleet_index(tmp_path):
    asked = []

    def history(metric, devices, since, until):
        asked.append(devices.tolist())
        return np.array([3]), np.array([86400.0]), np.array([79.5])

    h = Harness(tmp_path, '[[rule]]\nname = "weight_gain"\nkind = "rate"\nmetric = "weight"\n'
                          'rise = 2.0\nwindow = "3d"\ntypes = ["scale"]\n', history=history)
    h.batch([(3, "weight", 82.0, 2 * 86400.0)])     # the scale, device 3, is the rule's row 0
    assert asked == [[3]]
    assert h.open() == {("weight_gain", 3)}


GATEWAYS = """
[[rule]]
name = "mains"
kind = "event"
codes = ["power.mains_lost"]
clear_codes = ["power.mains_restored"]

[[rule]]
name = "flapping"
kind = "flapping"
codes = ["connection.lost"]
count = 2
window = "1h"
stable = "30m"
"""


def with_gateways(h: Harness, n: int) -> Harness:
    """`n` more gateways after the harness's five devices (indexes 5, 6, ...): rules with
    rows for a few of them look their rows up by a binary search, not a map of the fleet."""
    for k in range(n):
        h.fleet.add(f"GW-{k:03d}", "Telit", "HomeHub 4G", "gateway", "Aarhus")
    return h


def test_rules_judged_by_codes_keep_rows_only_for_the_devices_that_sent_their_codes(tmp_path):
    h = with_gateways(Harness(tmp_path, GATEWAYS), 200)
    h.batch(readings=[(d, "signal", -70, 0.0) for d in range(5, 205)],
            events=[(4, "power.mains_lost", 0.0), (150, "power.mains_lost", 5.0)]
            + [(100, "connection.lost", t) for t in (60.0, 120.0, 180.0)])
    assert h.open() == {("mains", 4), ("mains", 150), ("flapping", 100)}
    assert state(h, "mains").devices.tolist() == [4, 150]
    assert {len(a) for _, a, _, _ in state(h, "mains").arrays()} == {2}
    assert state(h, "flapping").devices.tolist() == [100]
    h.batch(events=[(150, "power.mains_restored", 600.0), (60, "connection.lost", 600.0)])
    assert h.cleared("mains", 150) == 1
    assert h.open() == {("mains", 4), ("flapping", 100)}   # one lost connection is no flap
    assert state(h, "flapping").devices.tolist() == [60, 100]
    h.tick(2 * 3600.0)                                      # quiet for 30 minutes
    assert h.cleared("flapping", 100) == 1 and h.open() == {("mains", 4)}


def test_an_alert_seeded_for_a_device_that_never_sent_the_code_clears_by_its_clearing_code(
        tmp_path):
    h = with_gateways(Harness(tmp_path, GATEWAYS), 100)
    h.engine.seed([("mains", "GW-050", 0.0)])              # device 55, open in the queue
    ev = h.batch(events=[(55, "power.mains_restored", 60.0)])
    rule, dev, at, _ = ev.transitions.clears()
    assert [(ev.rules[r].name, d, t) for r, d, t in zip(rule, dev, at)] == \
        [("mains", 55, 60.0)]


def test_a_rule_judged_by_codes_and_one_with_the_same_rows_each_see_what_they_judge(
        tmp_path):
    h = Harness(tmp_path, GATEWAYS + """
[[rule]]
name = "weak_signal"
kind = "threshold"
metric = "signal"
below = -100
types = ["gateway"]
""")
    h.batch(events=[(4, "power.mains_lost", 0.0)])      # rows [4], as the gateway rule's
    h.fleet.move("OXI-1", "Samsø")                       # the rules take in the registry
    h.batch(readings=[(4, "signal", -110, 60.0)], events=[(4, "power.mains_lost", 60.0)])
    assert state(h, "mains").devices.tolist() == state(h, "weak_signal").devices.tolist()
    assert h.open() == {("mains", 4), ("weak_signal", 4)}


def parts(h: Harness, rule: str) -> dict[str, list[int]]:
    """Each of the rule's parts (validity's metrics) with its devices (fleet indexes)."""
    return {key: p.devices.tolist() for key, p in state(h, rule).parts.items()}


def test_validity_keeps_each_metrics_runs_only_for_the_devices_whose_model_measures_it(
        tmp_path):
    h = Harness(tmp_path, VALIDITY)      # alert_after = 3
    h.batch([(3, "weight", 400, 1.0), (0, "pulse", 70, 1.0)])
    # the two Nonin oximeters (0, 1), the dispenser (2), the Withings scale (3); not the
    # gateway (4), whose model measures nothing the catalogue gives a range for
    assert parts(h, "implausible") == {
        "spo2": [0, 1], "pulse": [0, 1], "perfusion_index": [0, 1], "doses_remaining": [2],
        "weight": [3], "body_fat": [3], "bmi": [3]}
    arrays = dict((name, a) for name, a, _, _ in state(h, "implausible").arrays())
    assert len(arrays["weight.bad_run"]) == 1 and len(arrays["pulse.last_t"]) == 2
    h.batch([(3, "weight", 400, 2.0), (3, "weight", 300, 3.0), (0, "pulse", 0, 3.0)])
    assert h.open() == {("implausible", 3)}
    assert state(h, "implausible").at("weight.bad_run", np.array([3, 4])).tolist() == [3, 0]


def test_a_device_registered_later_gets_rows_in_the_metrics_its_model_measures(tmp_path):
    h = Harness(tmp_path, VALIDITY)
    h.batch([(3, "weight", 80, 1.0)])
    h.fleet.add("SCL-2", "A&D", "UC-352BLE", "scale", "Aarhus")      # 5: weight only
    h.batch([(5, "weight", 300, float(t)) for t in (2, 3, 4)])      # its range: 5-250 kg
    assert h.open() == {("implausible", 5)}
    assert parts(h, "implausible")["weight"] == [3, 5]
    assert parts(h, "implausible")["body_fat"] == [3]


def test_a_run_of_implausible_values_goes_on_in_another_engine_under_the_names_it_had(
        tmp_path):
    h = Harness(tmp_path, VALIDITY)
    h.batch([(3, "weight", 400, 1.0), (3, "weight", 400, 2.0), (0, "pulse", 0, 2.0)])
    rows = np.arange(5, dtype=np.int64)
    with h.engine.lock:
        p = pack(h.engine, rows)
    # a metric's arrays are stored as they were when they had a row for every device (the
    # rows an engine of before wrote are read, and it reads these)
    names = {e[2] for e in p.layout.entries}
    assert {"weight.bad_run", "weight.last_t", "pulse.bad_run", "pulse.last_t"} <= names
    other = Harness(tmp_path, VALIDITY)
    unpack(other.engine, rows, p.layout, p.slots, p.values, p.texts)
    for e in (h, other):
        e.batch([(3, "weight", 400, 3.0), (0, "pulse", 70, 3.0)])
    assert other.open() == h.open() == {("implausible", 3)}


def test_validity_gives_a_row_to_a_device_it_meets_without_one(tmp_path):
    # the engine gives the rows as it learns the fleet; the kind does not count on that
    (tmp_path / "r.toml").write_text(VALIDITY.replace("alert_after = 3", "alert_after = 2"))
    rule = load_rules(tmp_path / "r.toml")[0]
    st = RuleState(("last_t",))
    weight = (np.array([5.0]), np.array([180.0]))      # one model, the fleet's three devices
    out = Transitions()
    for t in (1.0, 2.0):
        b = batch_of([(2, "weight", 400, t)])
        ctx = Context(n=3, applies=np.ones(3, dtype=bool), ranges={"weight": weight},
                      model=np.zeros(3, dtype=np.intp), latest_seen=np.full(3, t),
                      history=None, updates=[], bad=np.zeros(1, dtype=bool))
        checked, ctx.bad = validity.mark(rule, ctx, b)
        validity.evaluate(0, rule, st, ctx, b, checked, ctx.bad, out)
        for u in ctx.updates:
            u.apply()
    assert st.part("weight").devices.tolist() == [2]
    assert out.fires()[1].tolist() == [2]
