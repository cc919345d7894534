"""The simulated stream as a whole: byte for byte the same for a seed, in publishing order,
numbered per device, valid for vagt's own decoder, the catalogue's metrics in their units."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import jsonschema
import pytest
from tests.sim.helpers import DAY, START, channel, docs, run

from vagt.devices.catalogue import load_catalogue
from vagt.ingest import RawMessage
from vagt.ingest.decode import decode_batch
from vagt.ingest.model import DeadLetterReason
from vagt.ingest.units import METRICS
from vagt.sim import CHANNELS, SimConfig, Simulation, backlog, last_local, make_fleet

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "canonical.schema.json").read_text())


def stream(seed: int, hours: float = 12, devices: int = 200, **kw: object) -> list[object]:
    sim = Simulation(make_fleet(devices, seed), seed=seed, start=START, **kw)  # type: ignore[arg-type]
    return list(sim.messages(until=START + hours * 3600))


def test_the_same_seed_gives_the_byte_identical_stream():
    a, b = stream(7), stream(7)
    assert len(a) > 1000
    assert a == b  # topics, payloads and publishing times


DIGEST = """
import hashlib, sys
from vagt.sim import Simulation, make_fleet
sim = Simulation(make_fleet(200, 7), seed=7, start={start})
h = hashlib.sha256()
for m in sim.messages(until={start} + 12 * 3600):
    h.update(m.topic.encode() + b"\\0" + m.payload + b"\\0")
print(h.hexdigest())
"""


def test_the_same_seed_gives_the_same_stream_in_another_process_whatever_its_hash_seed():
    script = DIGEST.format(start=START)
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": hash_seed}
                              ).stdout.strip() for hash_seed in ("1", "2")}
    here = hashlib.sha256()
    for m in stream(7):
        here.update(m.topic.encode() + b"\0" + m.payload + b"\0")
    assert digests == {here.hexdigest()}


def test_another_seed_gives_another_stream():
    a, b = stream(7), stream(8)
    assert [m.payload for m in a[:200]] != [m.payload for m in b[:200]]


def test_the_stream_does_not_depend_on_how_it_is_consumed():
    sim = Simulation(make_fleet(200, 3), seed=3, start=START)
    first = list(sim.messages(until=START + 1000))  # not on a window's edge
    rest = list(sim.messages(until=START + 12 * 3600))
    assert first and max(m.time for m in first) < START + 1000 <= rest[0].time
    assert first + rest == stream(3)


def test_messages_come_in_publishing_order_and_nothing_is_dated_after_it_is_sent():
    _, msgs = run(300, 8, faults=10.0)
    times = [m.time for m in msgs]
    assert times == sorted(times)
    assert times[0] >= START
    for m, doc in docs(msgs):
        assert doc["time"] <= m.time


def test_each_device_numbers_its_messages_one_by_one_in_the_order_they_are_sent():
    _, msgs = run(300, 8, faults=10.0)
    seqs: dict[str, list[int]] = {}
    for _, doc in docs(msgs):
        seqs.setdefault(doc["device_id"], []).append(doc["seq"])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())


def test_every_payload_is_canonical_json_on_its_device_topic_and_channel():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    _, msgs = run(300, 8, faults=10.0)
    for m, doc in docs(msgs)[::7]:
        root, dev, device_id, ch = m.topic.rsplit("/", 3)
        assert (root, dev, doc["device_id"]) == ("vagt/v1", "dev", device_id)
        assert ch in CHANNELS
        validator.validate(doc)


def test_alarms_and_the_faults_a_citizen_depends_on_go_on_the_alarm_channel():
    _, msgs = run(300, 8, faults=10.0)
    on: dict[str, set[str]] = {}
    for m, doc in docs(msgs):
        for e in doc.get("events", []):
            on.setdefault(e["code"], set()).add(channel(m))
        if channel(m) == "alarm":
            assert doc["events"]
    for code in ("alarm.fall", "alarm.panic", "fault.dispenser_jam", "power.mains_lost",
                 "power.mains_restored", "tamper"):
        assert on[code] == {"alarm"}, code
    assert on["dose.due"] == on["dose.taken"] == {"telemetry"}
    assert on["connection.lost"] == {"status"}


def test_a_quiet_fleet_decodes_without_a_single_dead_letter():
    _, msgs = run(400, 8, faults=0.0)
    now = START + 9 * DAY
    out = decode_batch([RawMessage(m.topic, m.payload, now) for m in msgs], topic_root="vagt/v1",
                       max_payload_bytes=65536, now=now)
    assert out.dead == []
    assert {"spo2", "pulse", "perfusion_index", "bp_systolic", "bp_diastolic", "weight",
            "body_fat", "bmi", "glucose", "doses_remaining", "battery", "signal"} \
        <= set(out.r_metric)


def _outside(metrics_of, doc):
    """The readings of `doc` outside its model's plausible range: (metric, value, physical)."""
    out = []
    for r in doc.get("readings", []):
        m = metrics_of[doc["device_id"]][r["metric"]]
        if not m.low <= r["value"] <= m.high:
            phys = METRICS[r["metric"]]
            out.append((r["metric"], r["value"], phys.low <= r["value"] <= phys.high))
    return out


def test_bad_values_are_outside_the_models_range_and_only_the_unphysical_ones_are_refused():
    fleet, msgs = run(300, 8, faults=10.0)
    cat = load_catalogue()
    metrics_of = {d.device_id: cat.require(d.vendor, d.model).metrics for d in fleet}
    now = START + 9 * DAY
    out = decode_batch([RawMessage(m.topic, m.payload, now) for m in msgs], topic_root="vagt/v1",
                       max_payload_bytes=65536, now=now)
    refused = {d.payload for d in out.dead}
    assert {d.reason for d in out.dead} == {DeadLetterReason.IMPOSSIBLE_VALUE}
    implausible = unphysical = 0
    for m, doc in docs(msgs):
        bad = _outside(metrics_of, doc)
        physical = all(p for _, _, p in bad)
        assert (m.payload in refused) == (not physical), doc
        implausible += sum(p for _, _, p in bad)
        unphysical += sum(not p for _, _, p in bad)
    assert implausible > 5 * unphysical > 0


def test_each_device_reports_its_catalogue_models_metrics_with_their_units():
    fleet, msgs = run(400, 8, faults=0.0)
    cat = load_catalogue()
    model = {d.device_id: cat.require(d.vendor, d.model) for d in fleet}
    for _, doc in docs(msgs):
        readings = doc.get("readings", [])
        if not readings:
            continue
        m = model[doc["device_id"]]
        names = [r["metric"] for r in readings]
        if m.type == "medicine_dispenser":
            assert names == ["doses_remaining"]
        else:
            assert names == [k for k in m.metrics]
        for r in readings:
            assert r["unit"] == m.metrics[r["metric"]].unit == METRICS[r["metric"]].unit
            assert m.metrics[r["metric"]].low <= r["value"] <= m.metrics[r["metric"]].high


def test_devices_send_only_the_event_codes_their_model_reports():
    fleet, msgs = run(300, 8, faults=10.0)
    cat = load_catalogue()
    model = {d.device_id: cat.require(d.vendor, d.model) for d in fleet}
    codes: Counter[str] = Counter()
    for _, doc in docs(msgs):
        for e in doc.get("events", []):
            assert model[doc["device_id"]].sends_event(e["code"]), (doc["device_id"], e)
            codes[e["code"]] += 1
    assert set(codes) == {"alarm.fall", "alarm.panic", "tamper", "fault.dispenser_jam",
                          "power.mains_lost", "power.mains_restored", "dose.due", "dose.taken",
                          "connection.lost", "connection.restored"}


def test_a_backlog_is_n_messages_of_the_channels_asked_for_all_in_the_past():
    before = time.time()
    msgs = list(backlog(5000, devices=1000, seed=2, channels=("telemetry", "status")))
    assert len(msgs) == 5000
    assert {channel(m) for m in msgs} <= {"telemetry", "status"}
    assert max(m.time for m in msgs) <= before + 1
    # at night there may be heartbeats alone; in the evening people measure too
    evening = list(backlog(5000, devices=1000, seed=2, channels=("telemetry", "status"),
                           end=last_local(22, before=START)))
    assert {channel(m) for m in evening} == {"telemetry", "status"}
    again = list(backlog(5000, devices=1000, seed=2, channels=("telemetry", "status"),
                         end=msgs[-1].time + 1))
    assert len(again) == 5000
    with pytest.raises(ValueError, match="channel 'gossip'"):
        backlog(1, channels=("gossip",))


def test_a_backlog_can_end_at_the_same_local_hour_whatever_the_hour_it_is_made():
    tz = ZoneInfo("Europe/Copenhagen")
    summer = datetime(2026, 7, 1, 9, 30, tzinfo=tz).timestamp()
    clocks_back = datetime(2026, 10, 25, 23, 0, tzinfo=tz).timestamp()  # a 25-hour day
    for before in (START, START + 0.5 * DAY, summer, clocks_back, clocks_back - 20 * 3600):
        t = last_local(20, before=before)
        assert datetime.fromtimestamp(t, tz).strftime("%H:%M:%S") == "20:00:00"
        assert before - DAY - 3600 < t <= before, datetime.fromtimestamp(before, tz)
    on_the_hour = datetime(2026, 7, 1, 20, 0, tzinfo=tz).timestamp()
    assert last_local(20, before=on_the_hour) == on_the_hour
    assert last_local(20, before=on_the_hour - 1) == on_the_hour - DAY
    with pytest.raises(ValueError, match="0 to 23, not 24"):
        last_local(24)


def test_the_configuration_refuses_nonsense_and_scales_faults():
    with pytest.raises(ValueError, match="dose_missed is a share"):
        SimConfig(dose_missed=1.5)
    with pytest.raises(ValueError, match="falls_per_year must be 0 or more"):
        SimConfig(falls_per_year=-1)
    with pytest.raises(ValueError, match="flapping_cycles"):
        SimConfig(flapping_cycles=(5, 2))
    base, c = SimConfig(), SimConfig().with_faults(10)
    assert c.falls_per_year == 10 * base.falls_per_year
    assert c.dispenser_jam == 10 * base.dispenser_jam
    assert SimConfig().with_faults(1000).dispenser_jam == 1.0
    assert c.dose_missed == base.dose_missed  # a habit: not made worse by the factor
    assert SimConfig().with_faults(0.5).dose_missed == base.dose_missed / 2
    assert c.heartbeat_jitter == base.heartbeat_jitter  # routine, not a fault
    none = SimConfig().with_faults(0)
    assert none.drops_per_year == none.dose_missed == none.impossible_value == 0
