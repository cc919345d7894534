"""The catalogue of approved models: the built-in one loads, and each kind of mistake in a
catalogue file is refused with a message that names the file, the model and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from vagt.devices.catalogue import CatalogueError, load_catalogue
from vagt.sim.fleet import DEVICE_TYPES


def test_the_built_in_catalogue_covers_every_simulated_model() -> None:
    cat = load_catalogue()
    for kind in DEVICE_TYPES:
        assert any(m.type == kind for m in cat), f"no approved {kind} for the simulator"
    oxi = cat.require("Nonin", "3230")
    assert oxi.metrics["spo2"].unit == "%"
    assert (oxi.metrics["spo2"].low, oxi.metrics["spo2"].high) == (0.0, 100.0)
    assert cat.require("Telit", "HomeHub 4G").heartbeat_s == 300
    assert cat.require("Evondos", "E300").sends_event("dose.due")
    assert not cat.require("Nonin", "3230").sends_event("alarm.fall")


def test_every_oximeter_takes_any_saturation_as_plausible() -> None:
    # An implausible value is kept out of every rule: SpO2 65 % marked so never reached the
    # rules that alert on a low SpO2, and a Contec reading a healthy 100 % five times opened
    # a sensor-fault alert. The range is what the device can report, not the normal range.
    for m in load_catalogue():
        if m.type == "pulse_oximeter":
            spo2 = m.metrics["spo2"]
            assert (spo2.low, spo2.high) == (0.0, 100.0), f"{m.vendor} {m.model}"


def test_a_hypertensive_crisis_is_plausible_on_every_bp_monitor() -> None:
    for m in load_catalogue():
        if m.type == "bp_monitor":
            sys = m.metrics["bp_systolic"]
            assert sys.low <= 70 and sys.high >= 270, f"{m.vendor} {m.model}"


def test_names_are_matched_without_regard_to_case_or_spacing() -> None:
    cat = load_catalogue()
    assert cat.require("nonin", "  3230 ").model == "3230"
    assert cat.require("TUNSTALL", "lifeline  vi+").vendor == "Tunstall"


def test_an_unapproved_model_is_refused_with_the_approved_ones_named() -> None:
    cat = load_catalogue()
    with pytest.raises(CatalogueError, match=r"Nonin 9999 is not an approved model "
                                             r"\(approved Nonin models: 3230\)"):
        cat.require("Nonin", "9999")
    with pytest.raises(CatalogueError, match="approved vendors: .*Tunstall"):
        cat.require("Acme", "X1")
    with pytest.raises(CatalogueError, match="Nonin 3230 is a pulse_oximeter, not a scale"):
        cat.require("Nonin", "3230", "scale")


def test_firmware_approval() -> None:
    m = load_catalogue().require("Nonin", "3230")
    assert m.firmware_approved("2.5.0")
    assert not m.firmware_approved("2.6.0-beta")


GOOD = '''
[[model]]
vendor = "V"
model = "M"
type = "scale"
heartbeat_s = 3600
battery = "replaceable"
firmware = ["1.0"]
[model.metrics]
weight = { min = 5, max = 250 }
'''


@pytest.mark.parametrize(("change", "message"), [
    (('heartbeat_s = 3600', 'heartbeat_s = 3'), r"model #1 \(V M\): field 'heartbeat_s' must "
                                                r"be whole seconds"),
    (('battery = "replaceable"', 'battery = "nuclear"'), "field 'battery' must be one of"),
    (('weight = {', 'wieght = {'), r"metrics.wieght: not a metric vagt knows"),
    (('max = 250', 'max = 900'), r"metrics.weight: need 0 <= min < max <= 700 kg, got 5..900"),
    (('min = 5,', 'min = 5, unit = "lb",'), r"metrics.weight.unit: .*canonical unit kg"),
    (('type = "scale"', 'type = "Scale!"'), "field 'type' must be lowercase"),
    (('vendor = "V"', 'vendor = ""'), "field 'vendor' must be a non-empty string"),
    (('firmware = ["1.0"]', 'firmware = "1.0"'), "field 'firmware' must be a list"),
    (('heartbeat_s', 'colour = "red"\nheartbeat_s'), r"unknown field\(s\) colour"),
    (('vendor = "V"', 'vendor = "V\\u202e"'), r"model #1: field 'vendor' holds U\+202E "
                                              r"RIGHT-TO-LEFT OVERRIDE \(its character 2\)"),
    (('firmware = ["1.0"]', 'firmware = ["1.0\\u200b"]'),
     r"a version in field 'firmware' holds U\+200B ZERO WIDTH SPACE"),
])
def test_mistakes_in_a_catalogue_file_are_named(tmp_path: Path, change: tuple[str, str],
                                               message: str) -> None:
    f = tmp_path / "catalogue.toml"
    f.write_text(GOOD.replace(*change), encoding="utf-8")
    with pytest.raises(CatalogueError, match=message) as e:
        load_catalogue(f)
    assert str(f) in str(e.value)


def test_a_model_listed_twice_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD + GOOD.replace('"V"', '"v"'), encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"model #2 \(v M\) is listed twice"):
        load_catalogue(f)


def test_a_good_file_loads(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD, encoding="utf-8")
    cat = load_catalogue(f)
    assert len(cat) == 1 and cat.types() == ["scale"]
    with pytest.raises(CatalogueError, match="no such catalogue file"):
        load_catalogue(tmp_path / "missing.toml")
