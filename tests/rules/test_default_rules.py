"""The built-in rules as a citizen's devices meet them: SpO2 at each level, from spot checks
and from a monitor that reads continuously; faults by the kind of device."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.rules.harness import Harness

from vagt.devices.catalogue import load_catalogue
from vagt.rules import load_rules
from vagt.rules.config import default_rules_path

OXI, DSP = 0, 2
H = 3600.0
T0 = 1_750_000_000.0


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path, default_rules_path().read_text())


def spo2_alerts(h: Harness) -> set[str]:
    return {rule for rule, d in h.open() if d == OXI and rule.startswith("spo2")}


@pytest.mark.parametrize(("value", "alerts"), [
    (82, {"spo2_critical", "spo2_low"}),   # the alert policy shows the nurse the critical one
    (86, {"spo2_low"}),
    (89, set()),                           # once: not below 88, and 90 has not held
    (65, {"spo2_critical", "spo2_low"}),   # below what the catalogue once called plausible
])
def test_one_spot_check_reading_alerts_by_its_level(h, value, alerts):
    h.batch([(OXI, "spo2", value, T0), (OXI, "pulse", 110, T0)])
    assert spo2_alerts(h) == alerts


def test_a_mild_level_that_holds_on_a_continuous_monitor_alerts(h):
    h.batch([(OXI, "spo2", 89, T0 + 60 * k) for k in range(10)])
    assert spo2_alerts(h) == set()   # 9 minutes
    h.batch([(OXI, "spo2", 89, T0 + 600)])
    assert spo2_alerts(h) == {"spo2_low_sustained"}


def test_mild_spot_checks_hours_apart_do_not_hold_for_10_minutes(h):
    h.batch([(OXI, "spo2", 89, T0)])
    h.batch([(OXI, "spo2", 89, T0 + 5.5 * H)])
    assert spo2_alerts(h) == set()


def test_a_normal_reading_clears_the_spot_check_alerts(h):
    h.batch([(OXI, "spo2", 82, T0)])
    h.batch([(OXI, "spo2", 94, T0 + 120)])   # measured again: 94 %
    assert spo2_alerts(h) == set()


def test_a_healthy_100_percent_is_no_sensor_fault_on_any_oximeter(h):
    h.fleet.add("OXI-C", "Contec", "CMS50D-BT", "pulse_oximeter", "Aarhus")
    contec = len(h.fleet) - 1
    for k in range(10):
        h.batch([(contec, "spo2", 100, T0 + k * H)])
    assert h.open() == set()


def test_a_personal_alarms_fault_is_a_device_fault_not_a_dispenser_jam(h):
    h.fleet.add("ALM-1", "Tunstall", "Lifeline Vi+", "personal_alarm", "Aarhus")
    alarm = len(h.fleet) - 1
    h.batch(events=[(alarm, "fault.speaker", T0), (DSP, "fault.dispenser_jam", T0)])
    assert h.open() == {("device_fault", alarm), ("dispenser_jam", DSP)}


def test_every_type_that_may_send_a_fault_has_one_fault_rule():
    rules = [r for r in load_rules(None) if r.kind == "event" and r.matches_code("fault.x")]
    for m in load_catalogue():
        if m.sends_event("fault.x"):
            covering = [r.name for r in rules if not r.types or m.type in r.types]
            assert len(covering) == 1, f"{m.type}: {covering}"
