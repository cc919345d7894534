"""Properties: conversions keep order and round-trip; the decoder never raises and accounts for
every message exactly once, whatever the bytes and topics."""

from __future__ import annotations

import math

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ingest.helpers import NOW

from vagt.ingest import RawMessage
from vagt.ingest.decode import decode_batch
from vagt.ingest.units import METRICS, conversion, normalize_array

METRIC_UNITS = [(m.name, u) for m in METRICS.values() for u in m.units]
metric_units = st.sampled_from(METRIC_UNITS)
finite = st.floats(-1e12, 1e12, allow_nan=False)


@given(metric_units, finite, finite)
def test_conversion_keeps_the_order_of_values(metric_unit, a, b):
    _, c = conversion(*metric_unit)
    lo, hi = sorted((a, b))
    assert c.to_canonical(lo) <= c.to_canonical(hi)


@given(metric_units, st.data())
def test_conversion_round_trips_within_rounding(metric_unit, data):
    m, c = conversion(*metric_unit)
    # values a sensor could send: inside the possible range, expressed in the given unit
    value = data.draw(st.floats(c.from_canonical(m.low), c.from_canonical(m.high)))
    back = c.from_canonical(c.to_canonical(value))
    assert math.isclose(back, value, rel_tol=1e-12, abs_tol=1e-9)


@given(metric_units, st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20))
def test_array_conversion_matches_one_value_at_a_time(metric_unit, values):
    m, c = conversion(*metric_unit)
    got, possible = normalize_array(metric_unit[0], values, metric_unit[1])
    for v, g, ok in zip(values, got.tolist(), possible.tolist()):
        one = c.to_canonical(v)
        assert g == one or (math.isnan(g) and math.isnan(one))
        assert ok == (m.low <= one <= m.high)


# JSON made of the labels both formats use, so that many documents get deep into the decoders
labels = st.sampled_from(["n", "v", "u", "bn", "bt", "bu", "bv", "bver", "t", "s", "vs", "vb",
                          "readings", "events", "status", "metric", "value", "unit", "code",
                          "time", "device_id", "seq", "severity", "details", "battery",
                          "signal", "firmware", "foo_", "v"])
words = st.sampled_from(["spo2", "pulse", "glucose", "%", "/", "mg/dL", "OXI-1/", "OXI-2/",
                         "urn:dev:ow:OXI-1:", "alarm.fall", "fall", "event", "firmware",
                         "2026-11-22T09:00:00Z", "critical", ""]) | st.text(max_size=6)
numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.sampled_from([0, -30, 97, NOW, NOW - 60, 2**28, 1e308])
json_values = st.recursive(
    st.none() | st.booleans() | numbers | words,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(labels, inner, max_size=6),
    max_leaves=25)


def _encode(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):  # integers beyond 64 bits
        return repr(value).encode()


# and documents shaped like the formats, with every field free to be wrong, to reach the end
times = st.sampled_from([NOW - 60, NOW, NOW + 3600, 0, -30, "2026-11-22T09:00:00Z", "later"]) \
    | json_values
units = st.sampled_from(sorted({u for m in METRICS.values() for u in m.units} | {"furlong"}))
metrics = st.sampled_from([*METRICS, "mood", "firmware", "event", "alarm"])
reading = st.fixed_dictionaries(
    {"metric": metrics | json_values, "value": numbers | json_values},
    optional={"unit": units | json_values, "time": times, "extra": json_values})
event = st.fixed_dictionaries(
    {"code": st.sampled_from(["alarm.fall", "dose.due", "tamper", "Bad Code"]) | json_values},
    optional={"severity": st.sampled_from(["critical", "info", "urgent"]), "time": times,
              "details": st.dictionaries(st.text(max_size=3), json_values, max_size=3)})
status = st.fixed_dictionaries({}, optional={"battery": numbers, "signal": numbers,
                                             "firmware": words, "time": times})
canonical = st.fixed_dictionaries({}, optional={
    "device_id": st.sampled_from(["OXI-1", "OXI-2"]) | json_values, "seq": numbers,
    "time": times, "readings": st.lists(reading, max_size=3),
    "events": st.lists(event, max_size=2), "status": status})
record = st.fixed_dictionaries({}, optional={
    "bn": st.sampled_from(["OXI-1/", "urn:dev:ow:OXI-1:", "OXI-2/", ""]), "bt": times,
    "bu": units, "bv": numbers, "bver": st.integers(0, 12), "n": metrics, "u": units,
    "v": numbers, "vs": words, "vb": st.booleans(), "s": numbers, "t": numbers | times})
senml = st.lists(record, min_size=0, max_size=4)
payloads = st.one_of(st.binary(max_size=300), json_values.map(_encode),
                     canonical.map(_encode), senml.map(_encode))
topics = st.sampled_from(["vagt/v1/dev/OXI-1/telemetry", "vagt/v1/dev/OXI-1/alarm",
                          "vagt/v1/dev/OXI-1/status", "vagt/v1/dev//telemetry",
                          "vagt/v1/dev/OXI-1/telemetry/x", "other/topic", ""]) | st.text(max_size=30)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(topics, payloads), min_size=1, max_size=10))
def test_the_decoder_never_raises_and_accounts_for_every_message_once(messages):
    batch = [RawMessage(topic, payload, NOW - 1) for topic, payload in messages]
    out = decode_batch(batch, topic_root="vagt/v1", max_payload_bytes=600, now=NOW)
    n = len(batch)
    assert len(out.msg_device) == len(out.msg_channel) == len(out.msg_seq) == n
    with_rows = set(out.r_msg) | set(out.e_msg) | set(out.f_msg)
    assert with_rows.isdisjoint(out.dead_msg)
    assert len(set(out.dead_msg)) == len(out.dead_msg) == len(out.dead)
    # an alarm used in part: its events alone, and a dead letter for the rest
    assert set(out.apart_msg) <= set(out.e_msg) - set(out.r_msg) - set(out.f_msg)
    assert len(set(out.apart_msg)) == len(out.apart_msg) == len(out.apart)
    assert with_rows | set(out.dead_msg) == set(range(n))
    for value, t in zip(out.r_value, out.r_time):
        assert math.isfinite(value) and NOW - 30 * 365 * 86400 < t <= NOW + 300
    for d in out.dead:
        assert d.detail and "\x00" not in d.detail
