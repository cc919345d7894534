"""SenML JSON (RFC 8428): base fields, resolution and relative times, as the RFC's examples."""

from __future__ import annotations

import orjson
import pytest

from vagt.ingest import DeadLetterReason, RawMessage, decode_batch
from vagt.ingest.senml import RELATIVE_LIMIT

NOW = 1795340000.0


def decode(records, device: str = "OXI-1", channel: str = "telemetry"):
    return decode_batch([RawMessage(f"vagt/v1/dev/{device}/{channel}", orjson.dumps(records),
                                    NOW)], topic_root="vagt/v1", max_payload_bytes=65536, now=NOW)


def rows(out):
    return list(zip(out.r_metric, out.r_value, out.r_unit, out.r_time))


def test_a_single_datapoint_with_base_name_and_unit():
    out = decode([{"bn": "urn:dev:ow:OXI-1:", "n": "temperature", "u": "Cel", "v": 23.1,
                   "t": NOW - 5}])
    assert rows(out) == [("temperature", 23.1, "Cel", NOW - 5)]


def test_base_time_plus_relative_offsets_and_base_unit_carry_over():
    out = decode([{"bn": "OXI-1/", "bt": NOW - 60, "bu": "%", "n": "spo2", "v": 97, "t": 0},
                  {"n": "spo2", "v": 96, "t": 10},
                  {"n": "pulse", "u": "/min", "v": 60, "t": 20}])
    assert rows(out) == [("spo2", 97.0, "%", NOW - 60), ("spo2", 96.0, "%", NOW - 50),
                         ("pulse", 60.0, "/min", NOW - 40)]


def test_times_below_2_to_the_28_are_relative_to_now():
    out = decode([{"n": "spo2", "v": 97, "t": -30}, {"n": "spo2", "v": 96}])
    assert out.r_time == [NOW - 30, NOW]
    assert RELATIVE_LIMIT == 268435456


def test_base_value_is_added_to_each_value():
    out = decode([{"bn": "OXI-1/", "bv": 90, "n": "spo2", "v": 7, "t": NOW - 1},
                  {"n": "spo2", "v": 5, "t": NOW - 2}])
    assert out.r_value == [97.0, 95.0]


def test_a_base_name_given_again_changes_the_names_after_it():
    out = decode([{"bn": "OXI-1/", "n": "spo2", "v": 97},
                  {"bn": "urn:dev:ow:OXI-1:", "n": "pulse", "v": 60}])
    assert out.r_metric == ["spo2", "pulse"]


def test_a_senml_ratio_becomes_percent():
    out = decode([{"n": "battery", "u": "/", "v": 0.5}])
    assert out.r_value == [50.0] and out.r_unit == ["%"]


def test_string_values_set_firmware_and_carry_events():
    out = decode([{"bn": "ALM-1/", "n": "firmware", "vs": "4.0.2"},
                  {"n": "event", "vs": "alarm.fall"}], device="ALM-1", channel="alarm")
    assert out.f_firmware == ["4.0.2"] and out.e_code == ["alarm.fall"]
    assert out.e_severity == ["critical"]


def test_a_record_with_only_base_fields_contributes_nothing_but_its_bases():
    out = decode([{"bn": "OXI-1/", "bt": NOW - 100, "bu": "%"}, {"n": "spo2", "v": 97}])
    assert rows(out) == [("spo2", 97.0, "%", NOW - 100)]


@pytest.mark.parametrize(("records", "expected"), [
    ([{"n": "spo2", "u": "furlong", "v": 1}], DeadLetterReason.UNKNOWN_UNIT),
    ([{"bn": "OXI-2/", "n": "spo2", "v": 97}], DeadLetterReason.DEVICE_MISMATCH),
    ([{"bn": "urn:dev:ow:OXI-9:", "n": "spo2", "v": 97}], DeadLetterReason.DEVICE_MISMATCH),
    ([{"n": "spo2", "v": 97, "vs": "x"}], DeadLetterReason.SCHEMA),
    ([{"n": "spo2", "v": "97"}], DeadLetterReason.SCHEMA),
    ([{"v": 97}], DeadLetterReason.SCHEMA),
    ([{"bver": 11, "n": "spo2", "v": 97}], DeadLetterReason.SCHEMA),
    ([{"n": "spo2", "v": 97, "foo_": 1}], DeadLetterReason.SCHEMA),
    ([{"n": "light", "vb": True}], DeadLetterReason.SCHEMA),
    ([], DeadLetterReason.SCHEMA),
    ([{"n": "spo2", "s": 970}], DeadLetterReason.SCHEMA),
])
def test_invalid_packs_are_dead_letters_with_a_specific_reason(records, expected):
    out = decode(records)
    assert [d.reason for d in out.dead] == [expected]


def test_a_value_too_large_for_a_double_is_malformed_json():
    out = decode_batch([RawMessage("vagt/v1/dev/OXI-1/telemetry", b'[{"n":"spo2","v":1e400}]',
                                   NOW)], topic_root="vagt/v1", max_payload_bytes=999, now=NOW)
    assert [d.reason for d in out.dead] == [DeadLetterReason.MALFORMED]


def test_an_alarm_channel_pack_without_an_event_is_refused():
    out = decode([{"n": "spo2", "v": 97}], channel="alarm")
    assert out.dead and out.dead[0].reason is DeadLetterReason.SCHEMA
