"""The vendors' formats (vagt.sim.wire): the mixed stream uses the decoder's paths (SenML,
other units, RFC 3339, no time, no unit) and decodes to what the canonical stream says."""

from __future__ import annotations

import math

from tests.sim.helpers import run

from vagt.ingest import RawMessage
from vagt.ingest.canonical import default_severity
from vagt.ingest.decode import decode_batch
from vagt.ingest.model import DecodedBatch
from vagt.ingest.units import METRICS
from vagt.sim import SimMessage
from vagt.sim.wire import UNIT_DECIMALS, wire_of


def decoded(m: SimMessage) -> DecodedBatch:
    """The message as the engine reads it when it arrives (at its publishing time)."""
    return decode_batch([RawMessage(m.topic, m.payload, m.time)], topic_root="vagt/v1",
                        max_payload_bytes=65536, now=m.time)


def tolerance(device_model: tuple[str, str], metric: str) -> float:
    """Half the last digit the model shows a metric with, in the canonical unit."""
    unit = wire_of(*device_model).units.get(metric)
    if unit not in UNIT_DECIMALS:
        return 1e-9
    c = METRICS[metric].units[unit]
    return 0.5 * 10.0 ** -UNIT_DECIMALS[unit] * c.mul / c.div + 1e-9


def test_the_vendors_formats_decode_to_the_values_and_times_the_devices_meant():
    fleet, mixed = run(300, 4, faults=10.0, canonical_only=False)
    _, canonical = run(300, 4, faults=10.0)
    model = {d.device_id: (d.vendor, d.model) for d in fleet}
    assert [(m.topic, m.time) for m in mixed] == [(m.topic, m.time) for m in canonical]
    senml = 0
    for a, b in zip(mixed, canonical, strict=True):
        got, meant = decoded(a), decoded(b)
        assert [d.reason for d in got.dead] == [d.reason for d in meant.dead], a.payload
        if got.dead:
            continue
        device = got.msg_device[0]
        assert got.msg_seq in (meant.msg_seq, [-1])
        assert (got.r_metric, got.r_unit) == (meant.r_metric, meant.r_unit), a.payload
        for metric, v, w in zip(got.r_metric, got.r_value, meant.r_value):
            assert math.isclose(v, w, abs_tol=tolerance(model[device], metric)), a.payload
        assert got.r_time == meant.r_time or all(
            abs(s - t) < 1e-3 for s, t in zip(got.r_time, meant.r_time)), a.payload
        assert (got.e_code, got.f_firmware) == (meant.e_code, meant.f_firmware), a.payload
        assert all(abs(s - t) < 1e-3 for s, t in zip(got.e_time, meant.e_time)), a.payload
        if a.payload.startswith(b"["):  # SenML: an event has no severity or details there
            senml += 1
            assert got.e_severity == [default_severity(c) for c in got.e_code]
            assert set(got.e_details) <= {"{}"}
        else:
            assert (got.e_severity, got.e_details) == (meant.e_severity, meant.e_details)
    assert senml > 1000


def test_a_quiet_fleet_in_its_vendors_formats_decodes_without_a_single_dead_letter():
    _, msgs = run(400, 2, faults=0.0, canonical_only=False)
    dead = [d for m in msgs for d in decoded(m).dead]
    assert dead == []


def test_the_mix_uses_senml_other_units_other_times_and_leaves_out_what_it_may():
    fleet, msgs = run(300, 4, faults=10.0, canonical_only=False)
    payloads = [m.payload for m in msgs]
    seen = {name for name, mark in (
        ("senml", b'[{"bn":'), ("relative t", b'"t":-'), ("vs event", b'"vs":"dose.'),
        ("lb", b'"bu":"lb"'), ("mg/dL", b'"bu":"mg/dL"'), ("kPa", b'"unit":"kPa"'),
        ("dBW", b'"u":"dBW"'), ("ratio", b'"bu":"/"'), ("grams", b'"unit":"g"'),
        ("rfc3339 utc", b'Z","'), ("rfc3339 offset", b'+01:00"'),
        ("no unit", b'"value":97}'), ("no device_id", b'{"seq":'))
        if any(mark in p for p in payloads)}
    assert len(seen) == 13, seen
    no_time = [p for p in payloads if b'"time"' not in p and b'"bt"' not in p]
    assert no_time and all(b"battery" in p or b"signal" in p for p in no_time)  # heartbeats
    # canonical JSON alone, when asked for: the baseline
    _, plain = run(300, 4, faults=10.0)
    assert all(m.payload.startswith(b'{"device_id":') for m in plain)
