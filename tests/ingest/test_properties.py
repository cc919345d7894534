"""Properties: unit conversion keeps order and round-trips; the decoder never raises and
accounts for every message exactly once, whatever the bytes."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from vagt.ingest import RawMessage, decode_batch
from vagt.ingest.units import METRICS, UnitError, normalize

NOW = 1795340000.0
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(
        st.sampled_from(["n", "v", "u", "bn", "bt", "t", "readings", "events", "status", "metric",
                         "value", "unit", "code", "time", "device_id", "seq", "vs", "bv"]),
        c, max_size=5),
    max_leaves=20)


@given(st.sampled_from(sorted(METRICS)), st.data())
def test_conversion_is_monotonic_in_every_accepted_unit(metric, data):
    m = METRICS[metric]
    unit = data.draw(st.sampled_from(sorted(m.units)))
    factor, offset = m.units[unit]
    lo = (m.low - offset) / factor
    hi = (m.high - offset) / factor
    a, b = sorted(data.draw(st.lists(st.floats(lo, hi), min_size=2, max_size=2)))
    try:
        va, _ = normalize(metric, a, unit)
        vb, _ = normalize(metric, b, unit)
    except UnitError:  # rounding at the range's edge
        return
    assert va <= vb


@given(st.floats(0.1, 300))
def test_pounds_and_kilograms_round_trip(kg):
    v, unit = normalize("weight", kg / 0.45359237, "[lb_av]")
    assert unit == "kg" and math.isclose(v, kg, rel_tol=1e-12)


@given(st.floats(1, 40))
def test_mg_per_dl_and_mmol_per_l_agree(mmol):
    v, _ = normalize("glucose", mmol * 18.016, "mg/dL")
    assert math.isclose(v, mmol, rel_tol=1e-12)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.binary(max_size=200),
                          json_values.map(lambda v: json.dumps(v).encode())),
                min_size=1, max_size=8),
       st.lists(st.sampled_from(["vagt/v1/dev/OXI-1/telemetry", "vagt/v1/dev/ALM-1/alarm",
                                 "vagt/v1/dev/OXI-1/status", "vagt/v1/dev//telemetry",
                                 "other/topic"]), min_size=8, max_size=8))
def test_the_decoder_never_raises_and_accounts_for_every_message_once(payloads, topics):
    msgs = [RawMessage(topics[i], p, NOW) for i, p in enumerate(payloads)]
    out = decode_batch(msgs, topic_root="vagt/v1", max_payload_bytes=150, now=NOW)
    assert len(out.msg_device) == len(msgs)
    rows_of = set(out.r_msg) | set(out.e_msg) | set(out.f_msg)
    assert rows_of.isdisjoint(out.dead_msg)
    assert rows_of | set(out.dead_msg) == set(range(len(msgs)))
    assert len(set(out.dead_msg)) == len(out.dead_msg)
