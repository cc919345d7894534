"""The canonical JSON payload: decoding, and the committed JSON Schema agreeing with it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import orjson
import pytest

from vagt.ingest import DeadLetterReason, RawMessage, decode_batch

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "canonical.schema.json").read_text())
NOW = 1795340000.0  # 2026-11-22


def decode(payload: bytes | dict | list, device: str = "OXI-1", channel: str = "telemetry",
           limit: int = 65536):
    if not isinstance(payload, bytes):
        payload = orjson.dumps(payload)
    return decode_batch([RawMessage(f"vagt/v1/dev/{device}/{channel}", payload, NOW - 1)],
                        topic_root="vagt/v1", max_payload_bytes=limit, now=NOW)


def reason(payload, **kw) -> str:
    out = decode(payload, **kw)
    assert len(out.dead) == 1, "expected a dead letter"
    return out.dead[0].reason.value


@pytest.mark.parametrize("path", sorted((ROOT / "schemas" / "examples").glob("*.json")),
                         ids=lambda p: p.name)
def test_every_committed_example_is_valid_and_decodes(path: Path):
    doc = json.loads(path.read_text())
    if isinstance(doc, dict):
        jsonschema.validate(doc, SCHEMA)
        device = doc["device_id"]
    else:
        device = doc[0]["bn"].split(":")[-2]
    channel = "alarm" if "alarm" in path.name else "telemetry"
    out = decode(doc, device=device, channel=channel)
    assert out.dead == [], out.dead[0].detail if out.dead else ""
    assert out.n_readings + out.n_events + len(out.f_device) > 0


def test_units_are_normalised_to_one_unit_per_metric():
    out = decode(json.loads((ROOT / "schemas/examples/telemetry-blood-pressure.json").read_text()),
                 device="BPM-000042")
    got = dict(zip(out.r_metric, zip(out.r_value, out.r_unit)))
    assert got["bp_systolic"][1] == "mm[Hg]" and got["bp_systolic"][0] == pytest.approx(132.01, 0.01)
    assert got["bp_diastolic"] == (84.0, "mm[Hg]")
    assert got["pulse"] == (66.0, "/min")


def test_a_reading_without_a_time_takes_the_message_time_then_the_arrival_time():
    out = decode({"time": NOW - 60, "readings": [{"metric": "spo2", "value": 97}]})
    assert out.r_time == [NOW - 60]
    out = decode({"readings": [{"metric": "spo2", "value": 97}]})
    assert out.r_time == [NOW - 1]


def test_rfc3339_times_with_an_offset_are_understood():
    out = decode({"time": "2026-11-22T10:00:00+01:00", "readings": [{"metric": "spo2",
                                                                     "value": 97}]})
    assert out.r_time == [1795338000.0]


def test_status_gives_battery_and_signal_readings_and_the_firmware():
    out = decode({"time": NOW, "status": {"battery": 55, "signal": -80, "firmware": "1.2"}},
                 channel="status")
    assert sorted(zip(out.r_metric, out.r_value)) == [("battery", 55.0), ("signal", -80.0)]
    assert out.f_firmware == ["1.2"]


def test_alarm_events_default_to_critical_severity():
    out = decode({"events": [{"code": "alarm.panic"}, {"code": "dose.taken"}]}, channel="alarm")
    assert out.e_severity == ["critical", "info"]


@pytest.mark.parametrize(("doc", "expected"), [
    ({"readings": [{"metric": "spo2", "value": 97, "unit": "furlong"}]}, "unknown_unit"),
    ({"readings": [{"metric": "mood", "value": 3}]}, "unknown_metric"),
    ({"readings": [{"metric": "spo2", "value": 140}]}, "impossible_value"),
    ({"readings": [{"metric": "weight", "value": -2, "unit": "kg"}]}, "impossible_value"),
    ({"readings": [{"metric": "spo2", "value": "97"}]}, "schema"),
    ({"readings": [{"metric": "spo2", "value": True}]}, "schema"),
    ({"readngs": [{"metric": "spo2", "value": 97}]}, "schema"),
    ({"readings": []}, "schema"),
    ({"events": [{"code": "Alarm Fall"}]}, "schema"),
    ({"events": [{"code": "alarm.fall", "severity": "urgent"}]}, "schema"),
    ({"seq": -1, "readings": [{"metric": "spo2", "value": 97}]}, "schema"),
    ({"time": "yesterday", "readings": [{"metric": "spo2", "value": 97}]}, "bad_time"),
    ({"time": "2026-11-22T10:00:00", "readings": [{"metric": "spo2", "value": 97}]}, "bad_time"),
    ({"time": NOW + 3600, "readings": [{"metric": "spo2", "value": 97}]}, "bad_time"),
    ({"time": 0, "readings": [{"metric": "spo2", "value": 97}]}, "bad_time"),
    ({"device_id": "OXI-2", "readings": [{"metric": "spo2", "value": 97}]}, "device_mismatch"),
])
def test_invalid_documents_are_dead_letters_with_a_specific_reason(doc, expected):
    assert reason(doc) == expected


@pytest.mark.parametrize("doc", [
    {"readings": [{"metric": "spo2", "value": "97"}]},
    {"readngs": [{"metric": "spo2", "value": 97}]},
    {"events": [{"code": "Alarm Fall"}]},
    {"events": [{"code": "alarm.fall", "severity": "urgent"}]},
    {"seq": -1, "readings": [{"metric": "spo2", "value": 97}]},
    {"time": "2026-11-22T10:00:00", "readings": [{"metric": "spo2", "value": 97}]},
    {"status": {}},
    {"v": 2, "readings": [{"metric": "spo2", "value": 97}]},
])
def test_the_schema_refuses_what_the_decoder_refuses(doc):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)
    assert decode(doc).dead, "the decoder accepted what the schema refuses"


def test_a_message_on_the_alarm_channel_without_an_event_is_refused():
    assert reason({"readings": [{"metric": "spo2", "value": 97}]}, channel="alarm") == "schema"


def test_malformed_json_is_a_dead_letter_naming_the_problem():
    out = decode(b'{"readings": [')
    assert out.dead[0].reason is DeadLetterReason.MALFORMED
    assert "not UTF-8 JSON" in out.dead[0].detail


def test_an_oversized_payload_is_refused_before_it_is_parsed():
    out = decode(b"[" * 2000, limit=1000)  # would be malformed too, if it were parsed
    assert out.dead[0].reason is DeadLetterReason.PAYLOAD_TOO_LARGE
    assert "2000 bytes is over the limit of 1000 bytes" in out.dead[0].detail


def test_a_topic_outside_vagt_is_bad_topic_and_says_what_is_expected():
    out = decode_batch([RawMessage("vagt/v1/dev/OXI-1/gossip", b"{}", NOW)],
                       topic_root="vagt/v1", max_payload_bytes=100, now=NOW)
    assert out.dead[0].reason is DeadLetterReason.BAD_TOPIC
    assert "telemetry|alarm|status" in out.dead[0].detail


def test_the_dead_letter_keeps_the_raw_bytes_and_the_device():
    payload = b'{"readings": [{"metric": "spo2", "value": 101}]}'
    out = decode(payload)
    assert out.dead[0].payload == payload and out.dead[0].device_id == "OXI-1"


def test_decoding_is_fast_enough_for_the_hot_path():
    """Not a timing assert: prints the cost so that a regression is seen in the test log."""
    msgs = [RawMessage(f"vagt/v1/dev/OXI-{i % 100}/telemetry", orjson.dumps(
        {"device_id": f"OXI-{i % 100}", "seq": i, "time": NOW - 10,
         "readings": [{"metric": "spo2", "value": 97, "unit": "%"},
                      {"metric": "pulse", "value": 61, "unit": "/min"}]}), NOW)
        for i in range(20000)]
    t = time.perf_counter()
    out = decode_batch(msgs, topic_root="vagt/v1", max_payload_bytes=65536, now=NOW)
    per_msg = (time.perf_counter() - t) / len(msgs)
    print(f"decode: {per_msg * 1e6:.1f} µs per message")
    assert out.n_readings == 40000 and not out.dead
