"""decode_batch: every message wholly in the columns or exactly one dead letter."""

from __future__ import annotations

import time

import orjson
import pytest
from tests.ingest.helpers import NOW, RECEIVED, dead_detail, dead_reason, decode

import vagt.ingest.decode
from vagt.ingest import DeadLetterReason, RawMessage, TopicError
from vagt.ingest.decode import decode_batch

SPO2 = {"metric": "spo2", "value": 97, "unit": "%"}


def msg(device: str, channel: str, doc: object, received: float = RECEIVED) -> RawMessage:
    payload = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return RawMessage(f"vagt/v1/dev/{device}/{channel}", payload, received)


def batch(*messages: RawMessage, **kw: float):
    return decode_batch(messages, topic_root="vagt/v1", max_payload_bytes=4096, now=NOW, **kw)


def test_a_refused_message_leaves_none_of_its_rows_behind():
    out = batch(msg("OXI-1", "telemetry", {"readings": [SPO2]}),
                msg("OXI-2", "status", {"status": {"battery": 50, "firmware": "1.0"},
                                        "events": [{"code": "dose.due"}],
                                        "readings": [SPO2, {**SPO2, "unit": "furlong"}]}),
                msg("OXI-3", "telemetry", {"readings": [SPO2, SPO2]}))
    assert out.r_device == ["OXI-1", "OXI-3", "OXI-3"] and out.r_msg == [0, 2, 2]
    assert out.e_device == [] and out.f_device == []
    assert out.dead_msg == [1] and out.dead[0].reason is DeadLetterReason.UNKNOWN_UNIT


def test_every_message_gets_its_device_channel_and_seq_even_a_dead_letter():
    out = batch(msg("OXI-1", "telemetry", {"seq": 7, "readings": [SPO2]}),
                RawMessage("elsewhere/OXI-1", b"{}", RECEIVED),
                msg("ALM-1", "alarm", {"seq": 8, "readings": [SPO2]}),
                msg("GW-1", "status", {"status": {"signal": -70}}))
    assert out.msg_device == ["OXI-1", "", "ALM-1", "GW-1"]
    assert out.msg_channel == ["telemetry", "", "alarm", "status"]
    assert out.msg_seq == [7, -1, -1, -1]
    assert out.dead_msg == [1, 2]


def test_columns_of_one_kind_have_equal_lengths():
    out = batch(msg("DSP-1", "status", {"status": {"battery": 50, "signal": -60, "firmware": "2"},
                                        "events": [{"code": "dose.taken"}]}),
                msg("OXI-1", "telemetry", [{"n": "spo2", "v": 97}, {"n": "firmware", "vs": "3"}]))
    assert len({len(c) for c in (out.r_device, out.r_metric, out.r_value, out.r_unit,
                                 out.r_time, out.r_msg)}) == 1
    assert len({len(c) for c in (out.e_device, out.e_code, out.e_severity, out.e_time,
                                 out.e_details, out.e_msg)}) == 1
    assert out.f_msg == [0, 1] and out.f_firmware == ["2", "3"]


def test_the_dead_letter_keeps_the_raw_bytes_topic_arrival_time_and_device():
    payload = b'{"readings": [{"metric": "spo2", "value": 101}]}'
    out = batch(msg("OXI-1", "telemetry", payload, received=NOW - 7))
    d = out.dead[0]
    assert (d.topic, d.payload, d.received_at, d.device_id) == (
        "vagt/v1/dev/OXI-1/telemetry", payload, NOW - 7, "OXI-1")


def test_a_bad_topic_is_a_dead_letter_without_a_device():
    out = batch(RawMessage("vagt/v1/dev/OXI-1/gossip", b"{}", RECEIVED))
    assert out.dead[0].reason is DeadLetterReason.BAD_TOPIC and out.dead[0].device_id is None
    assert "telemetry, alarm or status" in out.dead[0].detail


@pytest.mark.parametrize("topic", ["vagt/v1/dev/ALM-1/alarms", "vagt/v1/dev/ALM-1/alarm/x",
                                   "vagt/v1/dev/ALM-1", "vagt/v1/dev"])
def test_a_topic_on_no_channel_vagt_reads_is_a_dead_letter_saying_which_it_reads(topic):
    out = batch(RawMessage(topic, b'{"events": [{"code": "alarm.fall"}]}', RECEIVED))
    assert out.e_device == [] and out.dead_msg == [0]
    assert out.dead[0].reason is DeadLetterReason.BAD_TOPIC
    assert "vagt/v1/dev/{device_id}/{telemetry|alarm|status}" in out.dead[0].detail


def test_a_copy_of_another_lanes_channel_is_left_alone():
    """The bulk lane reads every device topic, the alarm channel's too: those are the alarm
    lane's, in no column and no dead letter here."""
    out = batch(msg("ALM-1", "alarm", {"events": [{"code": "alarm.fall"}]}),
                msg("ALM-1", "alarm", b"not json"),
                msg("OXI-1", "telemetry", {"readings": [SPO2]}), skip={"alarm"})
    assert out.skipped_msg == [0, 1]
    assert out.e_device == [] and out.dead == [] and out.r_msg == [2]
    assert out.msg_channel == ["alarm", "alarm", "telemetry"]


def test_oversized_payload_is_dead_letter_before_parsing():
    detail = dead_detail(b"[" * 2000, limit=1000)  # malformed too, were it parsed
    assert dead_reason(b"[" * 2000, limit=1000) == "payload_too_large"
    assert "the payload of 2000 bytes is over the limit of 1000 bytes" in detail


def test_a_payload_of_exactly_the_limit_is_parsed():
    payload = orjson.dumps({"readings": [SPO2]})
    assert not decode(payload, limit=len(payload)).dead


@pytest.mark.parametrize("payload", [b'{"readings": [', b"", b"\xff\xfe{}", b"\xef\xbb\xbf{}",
                                     b"{'readings': []}", b'[{"n":"spo2","v":1e400}]', b"NaN"])
def test_a_payload_that_is_not_json_is_malformed_and_says_the_parsers_error(payload):
    assert dead_reason(payload) == "malformed"
    assert dead_detail(payload).startswith("the payload is not UTF-8 JSON: ")


@pytest.mark.parametrize("payload", [b"97", b'"spo2"', b"null", b"true"])
def test_a_json_scalar_is_neither_format_and_is_refused(payload):
    assert dead_reason(payload) == "schema"
    assert "a JSON object (canonical format) or an array (SenML)" in dead_detail(payload)


FALL = {"code": "alarm.fall"}


def test_an_alarms_events_are_used_beside_a_bad_status_which_is_kept_as_a_dead_letter():
    out = batch(msg("ALM-1", "alarm", {"seq": 4, "events": [FALL], "status": {"battery": 120},
                                       "readings": [SPO2]}))
    assert out.e_code == ["alarm.fall"] and out.e_msg == [0] and out.msg_seq == [4]
    assert out.n_readings == 0 and out.dead == [] and out.apart_msg == [0]
    [d] = out.apart
    assert (d.reason, d.device_id) == (DeadLetterReason.IMPOSSIBLE_VALUE, "ALM-1")
    assert d.detail.startswith("status.battery: battery 120 % is outside")
    assert "its events were used" in d.detail


def test_an_alarm_beside_a_firmware_that_reads_as_another_is_used_and_its_status_refused():
    """A right-to-left override makes "1.2.9" shown as "9.2.1" in a table: the status is
    refused, naming the character, and the fall beside it reaches the call centre."""
    out = batch(msg("ALM-1", "alarm", {"events": [FALL],
                                       "status": {"battery": 80, "firmware": "\u202e9.2.1"}}))
    assert out.e_code == ["alarm.fall"] and out.dead == []
    assert out.f_firmware == [] and out.n_readings == 0
    [d] = out.apart
    assert d.reason is DeadLetterReason.SCHEMA
    assert d.detail.startswith("status.firmware must be a string of 1 to 64 printable characters, "
                               "got '\\u202e9.2.1': it holds U+202E RIGHT-TO-LEFT OVERRIDE")
    assert "\u202e" not in d.detail   # the detail is shown too: the character only escaped


@pytest.mark.parametrize(("doc", "words"), [
    ({"events": [{"code": "Alarm Fall"}], "status": {"battery": 120}}, "events[0].code"),
    ({"time": "soon", "events": [FALL], "status": {"battery": 120}}, "time 'soon'"),
    ({"device_id": "ALM-2", "events": [FALL], "status": {"battery": 120}}, "device_id 'ALM-2'"),
    ({"seq": -1, "events": [FALL], "status": {"battery": 120}}, "seq must be"),
    ({"readings": [SPO2], "status": {"battery": 120}}, "status.battery"),
])
def test_an_alarm_with_a_bad_part_its_events_need_is_refused_whole(doc, words):
    out = batch(msg("ALM-1", "alarm", doc))
    assert out.n_events == 0 and out.apart == [] and out.dead_msg == [0]
    assert words in out.dead[0].detail


def test_telemetry_beside_a_bad_status_is_refused_whole():
    out = batch(msg("OXI-1", "status", {"events": [FALL], "status": {"battery": 120}}))
    assert out.n_events == 0 and out.apart == [] and out.dead_msg == [0]


def test_payload_naming_another_device_is_device_mismatch():
    detail = dead_detail({"device_id": "OXI-2", "readings": [SPO2]}, device="OXI-1")
    assert "'OXI-2'" in detail and "'OXI-1'" in detail


def test_a_retained_copy_is_a_dead_letter_however_good_its_payload():
    good = msg("ALM-1", "alarm", {"events": [{"code": "alarm.fall"}]})
    out = batch(good, RawMessage(good.topic, good.payload, RECEIVED, retained=True))
    assert out.e_msg == [0] and out.dead_msg == [1]
    assert out.dead[0].reason is DeadLetterReason.RETAINED
    assert out.dead[0].device_id == "ALM-1" and out.msg_channel == ["alarm", "alarm"]
    assert "publish with retain=false" in out.dead[0].detail


@pytest.mark.parametrize("payload, key", [
    (b'{"readings": [{"metric": "spo2", "value": 82, "value": 97}]}', "value"),
    (b'{"readings": [{"metric": "spo2", "value": 82, "unit": "%"}], "readings": []}', "readings"),
    (b'{"events": [{"code": "dose.due", "details": {"a": ":", "a": "::"}}]}', "a"),
    (b'[{"n": "spo2", "v": 82, "v": 97}]', "v"),
    # an escaped ':' (\u003a) in a string makes the counts even: the exact search still runs
    (b'{"device_id": "OXI-2", "device_id": "OXI-1", "time": "2026-11-22T09:00\\u003a00Z",'
     b' "readings": [{"metric": "pulse", "value": 70}]}', "device_id"),
])
def test_a_key_given_twice_in_one_object_is_a_schema_dead_letter_naming_it(payload, key):
    out = decode(payload)
    assert [d.reason for d in out.dead] == [DeadLetterReason.SCHEMA]
    assert out.dead[0].detail.startswith(f"key '{key}' appears twice in one object")
    assert out.n_readings == 0 and out.n_events == 0


# SenML ignores an unknown field whose label does not end in '_' (RFC 8428 §4.4); nested
# deeper than orjson writes (254 levels), it once hid a key given twice from the check
_DEEP = b"[" * 300 + b"]" * 300


@pytest.mark.parametrize("payload", [
    b'[{"n": "spo2", "v": 82, "v": 97, "x": ' + _DEEP + b"}]",
    b'[{"bn": "OXI-2/", "bn": "OXI-1/", "n": "spo2", "v": 97, "x": ' + _DEEP + b"}]",
])
def test_a_key_given_twice_is_found_beside_a_field_nested_too_deep_to_write(payload):
    out = decode(payload)
    assert [d.reason for d in out.dead] == [DeadLetterReason.SCHEMA]
    assert "appears twice in one object" in out.dead[0].detail
    assert out.n_readings == 0


def test_a_document_nested_too_deep_to_check_for_keys_given_twice_is_refused():
    deep = b"[" * 1010 + b"]" * 1010   # orjson reads it; the stdlib's parser, not
    out = decode(b'[{"n": "spo2", "v": 82, "v": 97, "x": ' + deep + b"}]")
    assert [d.reason for d in out.dead] == [DeadLetterReason.SCHEMA]
    assert "nested too deeply" in out.dead[0].detail
    assert out.n_readings == 0


@pytest.mark.parametrize("payload", [
    # ':' in strings (times, SenML names, details), spaces around them, escaped ones
    b'{"time" : "2026-11-22T09:00:00Z", "readings": [{"metric": "spo2", "value": 97}]}',
    b'{"events": [{"code": "dose.due", "details": {"note": "a\\":b", "at": "09:00"}}]}',
    b'{"time": "2026-11-22T09:00\\u003a00Z", "readings": [{"metric": "spo2", "value": 97}]}',
    b'[{"bn": "urn:dev:ow:OXI-1:", "n": "spo2", "v": 97}, {"n": "pulse", "u": "/min", "v": 61}]',
    # the same key in different objects is no duplicate
    b'{"readings": [{"metric": "spo2", "value": 97}, {"metric": "pulse", "value": 61}]}',
])
def test_the_same_key_in_different_objects_and_colons_in_strings_are_no_duplicate(payload):
    assert decode(payload).dead == []


def test_unknown_unit_becomes_dead_letter():
    out = decode({"readings": [{"metric": "pulse", "value": 60, "unit": "furlong"}]})
    assert out.dead[0].reason is DeadLetterReason.UNKNOWN_UNIT and out.n_readings == 0
    assert "readings[0].unit" in out.dead[0].detail and "accepted: /min" in out.dead[0].detail


def test_the_allowed_future_skew_is_the_callers():
    doc = {"time": NOW + 60, "readings": [SPO2]}
    assert not batch(msg("OXI-1", "telemetry", doc)).dead
    assert batch(msg("OXI-1", "telemetry", doc), max_future_skew_s=30).dead


def test_senml_relative_times_count_from_now_not_from_arrival():
    out = batch(msg("OXI-1", "telemetry", [{"n": "spo2", "v": 97, "t": -10}], received=NOW - 99))
    assert out.r_time == [NOW - 10]


def test_a_topic_root_that_cannot_be_is_an_error_not_a_batch_of_dead_letters():
    with pytest.raises(TopicError):
        decode_batch([msg("OXI-1", "telemetry", {"readings": [SPO2]})], topic_root="vagt/#",
                     max_payload_bytes=100, now=NOW)


def test_a_bug_in_a_decoder_raises_instead_of_becoming_a_dead_letter(monkeypatch):
    def broken(*args: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(vagt.ingest.decode, "decode_canonical", broken)
    with pytest.raises(KeyError):
        decode({"readings": [SPO2]})


def test_decoding_is_fast_enough_for_the_hot_path():
    """Not a timing assert (machines differ): prints the cost so a regression shows in the log."""
    msgs = [msg(f"OXI-{i % 100}", "telemetry", {
        "device_id": f"OXI-{i % 100}", "seq": i, "time": NOW - 10,
        "readings": [SPO2, {"metric": "pulse", "value": 61, "unit": "/min"},
                     {"metric": "perfusion_index", "value": 4.2, "unit": "%"}]})
        for i in range(5000)]
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        out = batch(*msgs)
        best = min(best, time.process_time() - t)
    print(f"decode: {best / len(msgs) * 1e6:.1f} µs per message of 3 readings")
    assert out.n_readings == 15000 and not out.dead
