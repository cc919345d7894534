"""The committed JSON Schemas and examples agree with the hand-written decoders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from tests.ingest.helpers import NOW, decode

from vagt.ingest.canonical import EVENT_CODE, RFC3339
from vagt.ingest.units import METRICS

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CANONICAL = Draft202012Validator(json.loads((SCHEMAS / "canonical.schema.json").read_text()))
SENML = Draft202012Validator(json.loads((SCHEMAS / "senml.schema.json").read_text()))
EXAMPLES = sorted((SCHEMAS / "examples").glob("*.json"))
SPO2 = {"metric": "spo2", "value": 97, "unit": "%"}


def test_the_schemas_are_valid_draft_2020_12():
    Draft202012Validator.check_schema(CANONICAL.schema)
    Draft202012Validator.check_schema(SENML.schema)


def test_there_is_an_example_of_each_kind():
    kinds = {p.stem.split("-")[0] for p in EXAMPLES}
    assert kinds >= {"telemetry", "alarm", "status", "senml"}


def _device_and_channel(path: Path, doc: dict | list) -> tuple[str, str]:
    if isinstance(doc, dict):
        device = doc["device_id"]
    else:  # the base name's last segment: "urn:dev:ow:SCL-000088:" or "ALM-000007/"
        device = doc[0]["bn"].rstrip(":/").replace("/", ":").split(":")[-1]
    kind = next((k for k in ("alarm", "status") if k in path.stem), "telemetry")
    return device, kind


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_committed_example_is_valid_and_decodes_without_a_dead_letter(path: Path):
    doc = json.loads(path.read_text())
    (CANONICAL if isinstance(doc, dict) else SENML).validate(doc)
    device, channel = _device_and_channel(path, doc)
    out = decode(doc, device=device, channel=channel)
    assert out.dead == [], out.dead[0].detail if out.dead else ""
    assert out.n_readings + out.n_events + len(out.f_firmware) > 0
    assert set(out.r_device + out.e_device + out.f_device) == {device}


def test_the_blood_pressure_example_is_stored_in_millimetres_of_mercury():
    path = SCHEMAS / "examples" / "telemetry-blood-pressure.json"
    out = decode(json.loads(path.read_text()), device="BPM-000042")
    assert set(out.r_unit) == {"mm[Hg]", "/min"}
    assert out.r_value[0] == pytest.approx(17.6 / 0.133322)


REFUSED_BY_BOTH = [
    {"readngs": [SPO2]},
    {"readings": [{**SPO2, "uint": "%"}]},
    {"readings": []},
    {},
    {"readings": {"spo2": 97}},
    {"readings": [97]},
    {"readings": [{"value": 97}]},
    {"readings": [{"metric": "spo2"}]},
    {"readings": [{**SPO2, "value": "97"}]},
    {"readings": [{**SPO2, "value": True}]},
    {"readings": [{**SPO2, "unit": None}]},
    {"readings": [{**SPO2, "unit": "furlong"}]},
    {"readings": [{"metric": "glucose", "value": 7}]},
    {"readings": [{"metric": "mood", "value": 3}]},
    {"readings": [{**SPO2, "time": 12}]},
    {"status": {}},
    {"status": {"time": NOW}},
    {"status": {"battery": 120}},
    {"status": {"signal": "weak"}},
    {"status": {"firmware": "1.0\tbeta"}},
    {"status": {"firmware": ""}},
    {"status": {"firmware": "x" * 65}},
    {"status": {"firmware": "1.2\u202e"}},
    {"status": {"firmware": "1.2\u0085"}},
    {"status": {"firmware": "1.\u200b2"}},
    {"status": {"firmware": "1.2\u2067"}},
    {"status": {"batery": 50}},
    {"events": []},
    {"events": [{"code": "Alarm Fall"}]},
    {"events": [{"code": "alarm." + "x" * 60}]},
    {"events": [{"code": "alarm.fall", "severity": "urgent"}]},
    {"events": [{"code": "dose.due", "details": "late"}]},
    {"events": [{"code": "dose.due", "detail": {}}]},
    {"seq": -1, "readings": [SPO2]},
    {"seq": 1.5, "readings": [SPO2]},
    {"seq": "7", "readings": [SPO2]},
    {"v": 2, "readings": [SPO2]},
    {"v": True, "readings": [SPO2]},
    {"device_id": 7, "readings": [SPO2]},
    {"device_id": "OXI 1", "readings": [SPO2]},
    {"time": "yesterday", "readings": [SPO2]},
    {"time": "2026-11-22T10:00:00", "readings": [SPO2]},
    {"time": "2026-11-22", "readings": [SPO2]},
    {"time": None, "readings": [SPO2]},
    {"time": 0, "readings": [SPO2]},
]


@pytest.mark.parametrize("doc", REFUSED_BY_BOTH, ids=[str(i) for i in range(len(REFUSED_BY_BOTH))])
def test_the_schema_refuses_what_the_decoder_refuses(doc):
    assert not CANONICAL.is_valid(doc)
    assert decode(doc).dead, "the decoder accepted what the schema refuses"


ACCEPTED_BY_BOTH = [
    {"readings": [SPO2]},
    {"readings": [{"metric": "pulse", "value": 61}]},
    {"readings": [], "events": [{"code": "dose.due"}]},
    {"v": 1, "device_id": "OXI-1", "seq": 0, "time": "2026-11-22t09:00:00.5z", "readings": [SPO2]},
    {"seq": 41.0, "readings": [SPO2]},
    {"status": {"firmware": "v2.0 (build 5)"}},
    {"events": [{"code": "tamper", "severity": "major", "time": NOW - 5, "details": {"a": [1]}}]},
]


@pytest.mark.parametrize("doc", ACCEPTED_BY_BOTH, ids=[str(i) for i in range(len(ACCEPTED_BY_BOTH))])
def test_the_schema_accepts_what_the_decoder_accepts(doc):
    CANONICAL.validate(doc)
    assert not decode(doc).dead


def test_the_schema_lists_the_catalogues_metrics_and_their_units():
    reading = CANONICAL.schema["$defs"]["reading"]
    assert reading["properties"]["metric"]["enum"] == list(METRICS)
    rules = {r["if"]["properties"]["metric"]["const"]: r["then"] for r in reading["allOf"]}
    for name, m in METRICS.items():
        assert rules[name]["properties"]["unit"]["enum"] == list(m.units), name
        assert ("unit" in rules[name].get("required", [])) == (not m.assume_unit), name


def test_the_schemas_firmware_pattern_refuses_no_character_the_decoder_accepts():
    """The schema lists the common characters that are not printable; the decoder refuses
    every one (str.isprintable), and never one the schema lets through."""
    pattern = re.compile(CANONICAL.schema["$defs"]["status"]["properties"]["firmware"]["pattern"])
    refused = [f"U+{n:04X}" for n in range(0x10000)
               if chr(n).isprintable() and not pattern.match(chr(n))]
    assert refused == []


def test_the_schema_uses_the_decoders_patterns_and_ranges():
    defs = CANONICAL.schema["$defs"]
    assert defs["time"]["oneOf"][1]["pattern"] == RFC3339.pattern.replace("\\Z", "$")
    assert defs["event"]["properties"]["code"]["pattern"] == EVENT_CODE.pattern.replace("\\Z", "$")
    status = defs["status"]["properties"]
    for name in ("battery", "signal"):
        assert (status[name]["minimum"], status[name]["maximum"]) == (METRICS[name].low,
                                                                      METRICS[name].high)


@pytest.mark.parametrize("pack", [
    [{"n": "spo2", "v": 97, "vs": "x"}],
    [{"bver": 11, "n": "spo2", "v": 97}],
    [{"n": "spo2", "v": 97, "foo_": 1}],
    [{"n": "spo2", "v": "97"}],
    [{"n": "open", "vb": "yes"}],
    [],
])
def test_the_senml_schema_refuses_what_the_decoder_refuses(pack):
    assert not SENML.is_valid(pack)
    assert decode(pack).dead
