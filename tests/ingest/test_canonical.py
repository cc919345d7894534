"""The canonical JSON payload: what it becomes, and how each kind of mistake is refused."""

from __future__ import annotations

import orjson
import pytest
from tests.ingest.helpers import NOW, RECEIVED, dead_detail, dead_reason, decode, readings

SPO2 = {"metric": "spo2", "value": 97, "unit": "%"}


def test_readings_are_stored_in_their_metrics_canonical_units():
    out = decode({"time": NOW - 60, "readings": [
        {"metric": "bp_systolic", "value": 17.6, "unit": "kPa"},
        {"metric": "bp_diastolic", "value": 84, "unit": "mmHg"},
        {"metric": "pulse", "value": 66, "unit": "bpm"}]})
    assert out.r_unit == ["mm[Hg]", "mm[Hg]", "/min"]
    assert out.r_value[0] == pytest.approx(17.6 / 0.133322)
    assert out.r_value[1:] == [84.0, 66.0]
    assert out.r_device == ["OXI-1"] * 3 and out.r_msg == [0, 0, 0]


def test_a_reading_takes_its_own_time_then_the_message_time_then_the_arrival_time():
    out = decode({"time": NOW - 60, "readings": [SPO2, {**SPO2, "time": NOW - 30}]})
    assert out.r_time == [NOW - 60, NOW - 30]
    assert decode({"readings": [SPO2]}).r_time == [RECEIVED]


@pytest.mark.parametrize(("text", "seconds"), [
    ("2026-11-22T10:00:00+01:00", 1795338000.0),
    ("2026-11-22T09:00:00Z", 1795338000.0),
    ("2026-11-22t09:00:00z", 1795338000.0),
    ("2026-11-22T09:00:00.250Z", 1795338000.25),
    ("2026-11-22T04:00:00-05:00", 1795338000.0),
    ("2026-11-22T23:00:00+14:00", 1795338000.0),   # the widest offsets in use (Kiribati)
    ("2026-11-21T21:00:00-12:00", 1795338000.0),
    ("2026-11-22T09:00:00.123456789012345678Z", 1795338000.123456),
])
def test_rfc3339_times_with_an_offset_are_understood(text, seconds):
    assert decode({"time": text, "readings": [SPO2]}).r_time == [seconds]


@pytest.mark.parametrize(("text", "seconds"), [
    ("2016-12-31T23:59:60Z", 1483228800.0),
    ("2017-01-01T00:59:60+01:00", 1483228800.0),
    ("2016-12-31T23:59:60.5Z", 1483228800.5),
])
def test_a_leap_second_is_a_valid_time_read_as_the_next_second(text, seconds):
    """RFC 3339 allows second 60; PostgreSQL reads it as the next minute's first second."""
    assert decode({"time": text, "events": [{"code": "alarm.fall"}]},
                  channel="alarm").e_time == [seconds]


@pytest.mark.parametrize("offset", ["+24:00", "+01:60", "-99:00", "+23:99"])
def test_an_offset_of_impossible_hours_or_minutes_is_refused_saying_which(offset):
    detail = dead_detail({"time": f"2026-11-22T09:00:00{offset}", "readings": [SPO2]})
    assert detail.startswith(f"time '2026-11-22T09:00:00{offset}' has the offset {offset}; "
                             "an offset's hours are 00 to 23 and its minutes 00 to 59")


def test_integer_unix_seconds_are_stored_as_floats():
    out = decode({"time": int(NOW) - 5, "readings": [SPO2]})
    assert out.r_time == [NOW - 5] and type(out.r_time[0]) is float


def test_status_battery_and_signal_become_readings_and_firmware_its_own_row():
    out = decode({"time": NOW, "status": {"battery": 55, "signal": -80, "firmware": "1.2.0"}},
                 channel="status")
    assert readings(out) == [("battery", 55.0, "%", NOW), ("signal", -80.0, "dB[mW]", NOW)]
    assert (out.f_device, out.f_firmware, out.f_time, out.f_msg) == (["OXI-1"], ["1.2.0"],
                                                                     [NOW], [0])


@pytest.mark.parametrize(("code", "severity"), [
    ("alarm.fall", "critical"), ("alarm.panic", "critical"), ("fault.dispenser_jam", "warning"),
    ("power.mains_lost", "warning"), ("tamper", "warning"), ("dose.due", "info"),
    ("dose.taken", "info"),
])
def test_an_event_without_a_severity_gets_its_codes_default(code, severity):
    assert decode({"events": [{"code": code}]}, channel="alarm").e_severity == [severity]


def test_an_events_own_severity_is_kept():
    out = decode({"events": [{"code": "alarm.fall", "severity": "major"}]}, channel="alarm")
    assert out.e_severity == ["major"]


def test_event_details_are_kept_as_json_text_and_default_to_an_empty_object():
    out = decode({"events": [{"code": "dose.taken", "details": {"slot": 3, "by": "hand"}},
                             {"code": "dose.due"}]})
    assert [orjson.loads(d) for d in out.e_details] == [{"slot": 3, "by": "hand"}, {}]


@pytest.mark.parametrize(("written", "kept"), [
    (b"89450123456789012345", '"89450123456789012345"'),   # an ICCID sent as a number
    (b"-9223372036854775809", '"-9223372036854775809"'),
    (b"123456789012345678901234567890", '"123456789012345678901234567890"'),
    (b"18446744073709551615", "18446744073709551615"),     # 64 bits: orjson reads it exactly
    (b"-9223372036854775808", "-9223372036854775808"),
    (b"1.5e20", "1.5e+20"),                                # written as a float: one
])
def test_an_integer_in_details_wider_than_64_bits_is_kept_as_its_digits(written, kept):
    """orjson reads such an integer as a float: 89450123456789012345 was stored as
    8.9450123456789e+19, the ICCID lost."""
    payload = b'{"events": [{"code": "dose.taken", "details": {"iccid": ' + written + b"}}]}"
    assert decode(payload).e_details == ['{"iccid":' + kept + "}"]


def test_wide_integers_are_kept_wherever_they_are_in_an_events_details():
    payload = (b'{"events": [{"code": "dose.taken", "details": {"note": "e+1", "n": 1.0}},'
               b' {"code": "dose.due", "details": {"sim": {"iccid": 89450123456789012345},'
               b' "old": [89450123456789012346, 2], "note": "e+1"}}]}')
    assert [orjson.loads(d) for d in decode(payload).e_details] == [
        {"note": "e+1", "n": 1.0},
        {"sim": {"iccid": "89450123456789012345"}, "old": ["89450123456789012346", 2],
         "note": "e+1"}]


def test_an_alarm_used_in_part_keeps_the_wide_integers_of_its_details():
    payload = (b'{"readings": [{"metric": "mood", "value": 1}], "events": [{"code": '
               b'"alarm.fall", "details": {"iccid": 89450123456789012345}}]}')
    out = decode(payload, channel="alarm")
    assert [d.reason.value for d in out.apart] == ["unknown_metric"]
    assert out.e_details == ['{"iccid":"89450123456789012345"}']


def test_a_device_may_name_itself_and_give_a_version_and_a_counter():
    out = decode({"v": 1, "device_id": "OXI-1", "seq": 41, "readings": [SPO2]})
    assert out.msg_seq == [41] and out.n_readings == 1


def test_a_counter_written_as_a_whole_float_is_understood():
    assert decode({"seq": 41.0, "readings": [SPO2]}).msg_seq == [41]


def test_empty_readings_beside_an_event_are_fine():
    assert decode({"readings": [], "events": [{"code": "dose.due"}]}).n_events == 1


def test_a_message_without_a_counter_has_seq_minus_one():
    assert decode({"readings": [SPO2]}).msg_seq == [-1]


INVALID = [
    # (document, reason, words the detail must hold)
    ({"readngs": [SPO2]}, "schema", "unknown field 'readngs'"),
    ({"readings": [{**SPO2, "uint": "%"}]}, "schema", "readings[0] has unknown field 'uint'"),
    ({"readings": []}, "schema", "carries nothing"),
    ({}, "schema", "carries nothing"),
    ({"readings": {"spo2": 97}}, "schema", "readings must be an array"),
    ({"readings": [97]}, "schema", "readings[0] must be an object"),
    ({"readings": [{"value": 97}]}, "schema", "readings[0].metric must be a string"),
    ({"readings": [{"metric": "spo2"}]}, "schema", "readings[0].value must be a number, got null"),
    ({"readings": [{**SPO2, "value": "97"}]}, "schema", "value must be a number, got '97'"),
    ({"readings": [{**SPO2, "value": True}]}, "schema", "value must be a number, got true"),
    ({"readings": [{**SPO2, "unit": None}]}, "schema", "unit must be a string"),
    ({"readings": [{**SPO2, "unit": 5}]}, "schema", "unit must be a string"),
    ({"readings": [SPO2, {**SPO2, "unit": "furlong"}]}, "unknown_unit",
     "readings[1].unit: unit 'furlong' is not accepted for metric 'spo2'"),
    ({"readings": [{"metric": "glucose", "value": 7}]}, "unknown_unit", "needs a unit"),
    ({"readings": [{"metric": "mood", "value": 3}]}, "unknown_metric",
     "readings[0].metric: metric 'mood' is not known"),
    ({"readings": [{**SPO2, "value": 140}]}, "impossible_value",
     "readings[0].value: spo2 140 % is outside"),
    ({"readings": [{"metric": "weight", "value": -2, "unit": "kg"}]}, "impossible_value", "0 to 700"),
    ({"status": {"battery": 120}}, "impossible_value",
     "status.battery: battery 120 % is outside what a working sensor can report: 0 to 100 %"),
    ({"status": {"battery": 50, "signal": -151.5}}, "impossible_value",
     "status.signal: signal -151.5 dB[mW] is outside what a working sensor can report"),
    ({"status": {"battery": "full"}}, "schema", "status.battery must be a number"),
    ({"status": {"time": NOW}}, "schema", "status must carry at least one of"),
    ({"status": {"firmware": "1.0\n"}}, "schema", "status.firmware must be a string of 1 to 64"),
    ({"status": {"firmware": ""}}, "schema", "status.firmware"),
    ({"status": {"firmware": "x" * 65}}, "schema", "status.firmware"),
    ({"status": {"firmware": "1.2\u202e"}}, "schema",
     "status.firmware must be a string of 1 to 64 printable characters, got '1.2\\u202e': it "
     "holds U+202E RIGHT-TO-LEFT OVERRIDE (its character 4)"),
    ({"status": {"firmware": "\u20662.1.0\u2069"}}, "schema",
     "U+2066 LEFT-TO-RIGHT ISOLATE (its character 1)"),
    ({"status": {"firmware": "2.1\u200b.0"}}, "schema", "U+200B ZERO WIDTH SPACE"),
    ({"status": {"firmware": "2.1\u009b31m"}}, "schema", "U+009B CONTROL SEQUENCE INTRODUCER"),
    ({"status": {"firmware": "2.1\u0090"}}, "schema", "U+0090, a control character"),
    ({"status": {"firmware": "2.1\u2028beta"}}, "schema", "U+2028 LINE SEPARATOR"),
    ({"status": {"firmware": "2.1\U000e0062"}}, "schema", "U+E0062 TAG LATIN SMALL LETTER B"),
    ({"status": {"batery": 50}}, "schema", "status has unknown field 'batery'"),
    ({"events": [{"code": "Alarm Fall"}]}, "schema", "events[0].code must be an event code"),
    ({"events": [{"code": "alarm." + "x" * 60}]}, "schema", "at most 64"),
    ({"events": [{"code": "alarm.fall", "severity": "urgent"}]}, "schema",
     "events[0].severity must be one of critical, major, warning, info, got 'urgent'"),
    ({"events": [{"code": "dose.due", "details": "late"}]}, "schema", "details must be an object"),
    ({"events": [{"code": "dose.due", "details": {"note": "a\u0000b"}}]}, "schema", "U+0000"),
    ({"events": [{"code": "dose.due", "detail": {}}]}, "schema", "unknown field 'detail'"),
    ({"seq": -1, "readings": [SPO2]}, "schema", "seq must be a whole number"),
    ({"seq": 1.5, "readings": [SPO2]}, "schema", "seq must be a whole number"),
    ({"seq": "7", "readings": [SPO2]}, "schema", "seq must be a whole number"),
    ({"v": 2, "readings": [SPO2]}, "schema", "v (the format version) must be 1, got 2"),
    ({"v": True, "readings": [SPO2]}, "schema", "must be 1, got true"),
    ({"device_id": 7, "readings": [SPO2]}, "schema", "device_id must be a string"),
    ({"time": "yesterday", "readings": [SPO2]}, "bad_time", "'yesterday' is not an RFC 3339 time"),
    ({"time": "2026-11-22T10:00:00", "readings": [SPO2]}, "bad_time", "with an offset"),
    ({"time": "2026-11-22", "readings": [SPO2]}, "bad_time", "not an RFC 3339 time"),
    ({"time": "2026-02-30T10:00:00Z", "readings": [SPO2]}, "bad_time", "not a valid time"),
    ({"time": None, "readings": [SPO2]}, "bad_time", "time must be unix seconds"),
    ({"time": NOW + 3600, "readings": [SPO2]}, "bad_time", "3600 s in the future"),
    ({"time": NOW * 1000, "readings": [SPO2]}, "bad_time", "looks like milliseconds"),
    ({"time": 0, "readings": [SPO2]}, "bad_time", "before 2000-01-01"),
    ({"readings": [{**SPO2, "time": 12}]}, "bad_time", "readings[0].time"),
    ({"events": [{"code": "dose.due", "time": NOW + 900}]}, "bad_time", "events[0].time"),
    ({"status": {"battery": 5, "time": "soon"}}, "bad_time", "status.time"),
    ({"device_id": "OXI-2", "readings": [SPO2]}, "device_mismatch",
     "device_id 'OXI-2' in the payload is not 'OXI-1', the device of the topic"),
]


@pytest.mark.parametrize(("doc", "reason", "words"), INVALID,
                         ids=[f"{i}-{r}" for i, (_, r, _) in enumerate(INVALID)])
def test_an_invalid_document_is_a_dead_letter_saying_what_and_where(doc, reason, words):
    out = decode(doc)
    assert [d.reason.value for d in out.dead] == [reason]
    assert words in out.dead[0].detail
    assert out.dead[0].detail.endswith("(topic vagt/v1/dev/OXI-1/telemetry)")


def test_details_nested_deeper_than_can_be_written_are_refused_not_a_crash():
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    payload = b'{"events": [{"code": "dose.due", "details": ' + deep + b"}]}"
    assert dead_reason(payload) == "schema"
    assert "nested too deeply" in dead_detail(payload)


def test_a_message_on_the_alarm_channel_without_an_event_is_refused():
    assert "alarm channel must carry at least one event" in dead_detail(
        {"readings": [SPO2]}, channel="alarm")


def test_a_reading_with_a_value_too_long_to_quote_is_cut_short_in_the_detail():
    detail = dead_detail({"readings": [{**SPO2, "unit": "u" * 5000}]})
    assert len(detail) < 300 and "…" in detail
