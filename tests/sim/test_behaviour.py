"""Each device type behaves as such devices do, visible in its own stream: heartbeats at its
model's interval, measurements at the times of day people take them, doses due and taken (or
missed), batteries, outages and the flush after them, and the faults at their rates."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from typing import Any

from tests.sim.helpers import DAY, START, by_device, channel, docs, local_hour, run

from vagt.devices.catalogue import load_catalogue
from vagt.sim import SimConfig, SimDevice, Simulation, make_fleet
from vagt.sim.plan import MEASUREMENT_SLOTS

CAT = load_catalogue()
JITTER = SimConfig().heartbeat_jitter


def _model(d):
    return CAT.require(d.vendor, d.model)


def _series(pairs, key):
    return [(doc["time"], key(doc)) for _, doc in pairs if key(doc) is not None]


# --- heartbeats ---------------------------------------------------------------------------

def test_every_device_sends_a_status_heartbeat_at_its_models_interval_never_late():
    fleet, msgs = run(400, 8, faults=0.0)
    beats = by_device([p for p in docs(msgs) if channel(p[0]) == "status"])
    assert set(beats) == {d.device_id for d in fleet}
    for d in fleet:
        hb = _model(d).heartbeat_s
        times = [doc["time"] for _, doc in beats[d.device_id]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all((1 - JITTER) * hb - 0.01 <= g <= hb + 0.01 for g in gaps), d.device_id
        assert len(times) >= int(8 * 86400 / hb) - 1
        status = beats[d.device_id][0][1]["status"]
        assert status["firmware"] == d.firmware and -120 <= status["signal"] <= -30
        assert ("battery" in status) == (_model(d).battery != "none")


# --- measurements at the times of day ------------------------------------------------------

def _measurement_hours(devices: int = 400, days: float = 8) -> dict[str, list[float]]:
    fleet, msgs = run(devices, days, faults=0.0)
    kind = {d.device_id: d.type for d in fleet}
    hours: dict[str, list[float]] = {}
    for m, doc in docs(msgs):
        if channel(m) == "telemetry" and "readings" in doc and "events" not in doc:
            hours.setdefault(kind[doc["device_id"]], []).append(local_hour(doc["time"]))
    return hours


def test_blood_pressure_is_measured_mornings_and_evenings_and_weight_in_the_morning():
    hours = _measurement_hours()
    bp, scale = hours["bp_monitor"], hours["scale"]
    assert all(5 <= h < 10 or 17 <= h < 23 for h in bp)
    morning = sum(h < 12 for h in bp)
    assert morning > len(bp) - morning > 0.3 * len(bp)
    assert all(5 <= h < 10 for h in scale)


def test_glucose_is_measured_before_meals_and_oximetry_a_few_times_a_day():
    hours = _measurement_hours()
    meals = [slot[0] for slot in MEASUREMENT_SLOTS["glucose_meter"]]
    assert all(min(abs(h - m) for m in meals) <= 1.6 for h in hours["glucose_meter"])
    by_meal = Counter(min(meals, key=lambda m, h=h: abs(h - m)) for h in hours["glucose_meter"])
    assert set(by_meal) == set(meals) and by_meal[7.0] == max(by_meal.values())
    oxi = hours["pulse_oximeter"]
    assert not any(0 <= h < 5 for h in oxi)
    parts = Counter("morning" if h < 11 else "afternoon" if h < 17 else "evening" for h in oxi)
    assert min(parts.values()) > 0.15 * len(oxi)


def test_nobody_measures_more_often_than_their_slots_allow():
    fleet, msgs = run(400, 8, faults=0.0)
    kind = {d.device_id: d.type for d in fleet}
    per_day: Counter[tuple[str, int]] = Counter()
    for _, doc in docs(msgs):
        if "readings" in doc and kind[doc["device_id"]] in MEASUREMENT_SLOTS:
            per_day[(doc["device_id"], int((doc["time"] + 3600) // 86400))] += 1
    for (device, _), n in per_day.items():
        assert n <= len(MEASUREMENT_SLOTS[kind[device]])


def test_a_citizens_values_keep_to_their_own_baseline_with_noise():
    fleet, msgs = run(400, 8, faults=0.0)
    systolic = by_device([(m, doc) for m, doc in docs(msgs) if any(
        r["metric"] == "bp_systolic" for r in doc.get("readings", []))])
    spreads, means = [], []
    for pairs in systolic.values():
        values = [r["value"] for _, doc in pairs for r in doc["readings"]
                  if r["metric"] == "bp_systolic"]
        if len(values) >= 8:
            mean = sum(values) / len(values)
            means.append(mean)
            spreads.append((sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5)
    assert len(means) > 20
    assert 4 < sorted(spreads)[len(spreads) // 2] < 15  # noise of one person
    assert max(means) - min(means) > 30  # people differ more than a person's readings


def test_heart_failure_patients_now_and_then_gain_two_kilos_over_three_days():
    def rises(faults: float, **kw: Any) -> int:
        _, msgs = run(400, 14, faults=faults, **kw)
        weights = by_device([(m, doc) for m, doc in docs(msgs) if any(
            r["metric"] == "weight" for r in doc.get("readings", []))])
        found = 0
        for pairs in weights.values():
            w = [(doc["time"], doc["readings"][0]["value"]) for _, doc in pairs]
            found += any(w2 - w1 >= 1.5 for (t1, w1), (t2, w2) in
                         itertools.combinations(w, 2) if 2 * 86400 <= t2 - t1 <= 3.5 * 86400)
        return found

    assert rises(1.0, weight_gain_per_year=40.0) > 3 * max(rises(0.0), 1)


# --- medicine dispensers ---------------------------------------------------------------------

def _doses(devices: int, days: float, **kw: Any) -> tuple[list[tuple[str, str, float]], Any]:
    fleet, msgs = run(devices, days, **kw)
    events = [(doc["device_id"], e["code"], e.get("details", {}).get("slot"), doc["time"])
              for _, doc in docs(msgs) for e in doc.get("events", [])
              if e["code"] in ("dose.due", "dose.taken", "fault.dispenser_jam")]
    return events, fleet


def test_a_dose_is_announced_at_its_time_and_usually_taken_within_minutes():
    events, _ = _doses(400, 8, dose_missed=0.1)
    due = {(d, slot, int(t // 86400 + 0.05)): t for d, code, slot, t in events
           if code == "dose.due"}
    delays = []
    for d, code, slot, t in events:
        if code == "dose.due":
            hh, mm = map(int, slot.split(":"))
            assert abs(local_hour(t) - (hh + mm / 60)) < 1 / 60  # on the minute of its slot
        if code == "dose.taken":
            matches = [t - td for (dd, s, _), td in due.items() if dd == d and s == slot
                       and 0 < t - td <= 95 * 60]
            assert len(matches) == 1, (d, slot, t)
            delays.append(matches[0])
    assert len(delays) > 500
    assert sorted(delays)[len(delays) // 2] < 6 * 60  # the median within minutes
    assert sum(x <= 15 * 60 for x in delays) > 0.85 * len(delays)


def test_doses_are_missed_at_about_the_configured_rate():
    events, _ = _doses(400, 8, dose_missed=0.1)
    codes = Counter(code for _, code, _, _ in events)
    missed = (codes["dose.due"] - codes["dose.taken"] - codes["fault.dispenser_jam"])
    assert codes["dose.due"] > 1000
    assert 0.07 < missed / codes["dose.due"] < 0.13
    none_missed, _ = _doses(400, 8, faults=0.0)
    codes = Counter(code for _, code, _, _ in none_missed)
    assert codes["dose.due"] == codes["dose.taken"]


def test_a_dispenser_reports_the_doses_left_going_down_and_refilled():
    fleet, msgs = run(400, 8, faults=0.0)
    left = by_device([(m, doc) for m, doc in docs(msgs) if any(
        r["metric"] == "doses_remaining" for r in doc.get("readings", []))])
    steps = Counter()
    for pairs in left.values():
        values = [doc["readings"][0]["value"] for _, doc in pairs]
        steps.update("down" if b == a - 1 else "refill" if b > a else "other"
                     for a, b in itertools.pairwise(values))
    assert steps["down"] > 20 * steps["refill"] > 0 and steps["other"] == 0


# --- batteries -------------------------------------------------------------------------------

def _batteries(fleet, msgs, kind: str) -> dict[str, list[int]]:
    wanted = {d.device_id for d in fleet if _model(d).battery == kind}
    out: dict[str, list[int]] = {}
    for _, doc in docs(msgs):
        b = doc.get("status", {}).get("battery")
        if b is not None and doc["device_id"] in wanted:
            out.setdefault(doc["device_id"], []).append(b)
    return out


def test_rechargeable_batteries_drain_and_are_recharged_sometimes_too_late():
    fleet, msgs = run(400, 8)
    series = _batteries(fleet, msgs, "rechargeable")
    falls = sum(b < a for s in series.values() for a, b in itertools.pairwise(s))
    charged = sum(any(a < 50 and b == 100 for a, b in itertools.combinations(s, 2))
                  for s in series.values())
    low = sum(min(s) < 15 for s in series.values())
    assert falls > 1000 and charged > 10 and 0 < low < charged


def test_replaceable_cells_drain_slowly_and_are_replaced_when_low():
    fleet, msgs = run(400, 8)
    series = _batteries(fleet, msgs, "replaceable")
    replaced = [s for s in series.values() if any(
        a < 25 and b == 100 for a, b in itertools.pairwise(s))]
    assert replaced
    steady = [s for s in series.values() if s not in replaced]
    assert all(s[0] - s[-1] <= 8 for s in steady)  # under 1 % a day


def test_cells_replaced_too_late_run_low_and_the_device_falls_silent_until_they_are():
    bp = [SimDevice(f"BPM-{k:06d}", "bp_monitor", "Omron", "M7 Intelli IT", "Odder",
                    f"cit-{k:012x}", "1.2.0") for k in range(40)]
    quiet = SimConfig().with_faults(0.0)  # nothing else happens
    sim = Simulation(bp, seed=4, start=START, config=dataclasses.replace(
        quiet, late_replacement=0.5, replaceable_drain_per_day=1.0, canonical_only=True))
    beats = by_device([(m, doc) for m, doc in docs(tuple(sim.messages(until=START + 120 * DAY)))
                       if "status" in doc])
    low = revived = 0
    for pairs in beats.values():
        series = [(doc["time"], doc["status"]["battery"]) for _, doc in pairs]
        low += min(b for _, b in series) < 15
        revived += any(t2 - t1 > 3 * DAY and b1 < 15 and b2 == 100
                       for (t1, b1), (t2, b2) in itertools.pairwise(series))
    assert low > 0 and revived > 0


def test_a_mains_outage_is_lost_then_restored_with_the_backup_battery_draining_meanwhile():
    fleet, msgs = run(300, 8, faults=10.0)
    power = [(doc["device_id"], e["code"], doc["time"]) for _, doc in docs(msgs)
             for e in doc.get("events", []) if e["code"].startswith("power.")]
    assert power
    state: dict[str, str] = {}
    for d, code, _ in power:
        assert state.get(d, "power.mains_restored") != code, (d, code)  # alternate
        state[d] = code
    mains = _batteries(fleet, msgs, "mains_backup")
    assert any(min(s) < 95 for s in mains.values())
    assert all(s[-1] == 100 or state.get(d) == "power.mains_lost" or min(s) < 100
               for d, s in mains.items())


# --- connectivity ----------------------------------------------------------------------------

def test_after_an_outage_the_buffered_readings_are_flushed_with_their_older_times():
    fleet, msgs = run(300, 8, faults=10.0)
    link = {d.device_id: d.gateway or d.device_id for d in fleet}
    restored = {(doc["device_id"], m.time) for m, doc in docs(msgs)
                for e in doc.get("events", []) if e["code"] == "connection.restored"}
    late = [(m, doc) for m, doc in docs(msgs) if m.time - doc["time"] > 60]
    assert len(late) > 20
    assert any(link[doc["device_id"]] != doc["device_id"] and
               (link[doc["device_id"]], m.time) in restored for m, doc in late)  # a gateway's
    assert any(link[doc["device_id"]] == doc["device_id"] for _, doc in late)  # its own radio
    heard = by_device(docs(msgs))
    for m, doc in late:
        # silence from the connection while it was down: no heartbeat went out
        for other, _ in heard.get(link[doc["device_id"]], []):
            assert not doc["time"] < other.time < m.time or other.time == m.time
        flush = [o for o, _ in heard[doc["device_id"]] if o.time == m.time]
        assert [orjson_time(o) for o in flush] == sorted(orjson_time(o) for o in flush)


def orjson_time(m) -> float:
    import orjson
    return float(orjson.loads(m.payload)["time"])


def test_a_gateway_whose_backup_battery_gives_out_takes_its_household_offline_till_mains():
    long_outages = dataclasses.replace(SimConfig().with_faults(0.0), mains_outages_per_year=60,
                                       mains_outage_median_min=600, backup_drain_per_hour=40,
                                       canonical_only=True)
    fleet, msgs = run(300, 5, **{f.name: getattr(long_outages, f.name)
                                 for f in dataclasses.fields(SimConfig)})
    gateway_of = {d.device_id: d.gateway for d in fleet}
    restored = {(doc["device_id"], m.time) for m, doc in docs(msgs)
                if doc.get("events", [{}])[0].get("code") == "power.mains_restored"}
    late = [(m, doc) for m, doc in docs(msgs) if m.time - doc["time"] > 60]
    assert late
    households = 0
    for m, doc in late:  # nothing else goes wrong in this fleet: only the power
        link = gateway_of[doc["device_id"]] or doc["device_id"]
        assert (link, m.time) in restored
        households += link != doc["device_id"]
    assert households


def test_a_flapping_gateway_reports_its_connection_lost_and_back_many_times_in_minutes():
    fleet, msgs = run(300, 8, faults=10.0)
    lost = by_device([(m, doc) for m, doc in docs(msgs) if any(
        e["code"] == "connection.lost" for e in doc.get("events", []))])
    lo, _ = SimConfig().flapping_cycles
    flapping = 0
    for device, pairs in lost.items():
        assert device.startswith("GWY-")
        times = [e["time"] for _, doc in pairs for e in doc["events"]
                 if e["code"] == "connection.lost"]
        flapping += any(b - a <= 3600 for a, b in zip(times, times[lo - 1:]))
        for _, doc in pairs:
            down, up = doc["events"]
            assert down["time"] < up["time"] == doc["time"]
    assert flapping > 0
    _, quiet = run(400, 8, faults=0.0)
    assert not any(b'"connection.' in m.payload for m in quiet)


def test_a_stuck_sensor_repeats_the_same_values_for_the_configured_count():
    def longest_runs(msgs) -> Counter[int]:
        runs: Counter[int] = Counter()
        for pairs in by_device([p for p in docs(msgs) if channel(p[0]) == "telemetry"
                                and "events" not in p[1]]).values():
            values = [tuple(r["value"] for r in doc["readings"]) for _, doc in pairs]
            runs.update(len(list(g)) for _, g in itertools.groupby(values))
        return runs

    repeats = SimConfig().stuck_repeats
    stuck = longest_runs(run(400, 8, stuck_sensor_per_year=40.0)[1])
    assert stuck[repeats] > 0
    assert max(stuck) <= repeats + 1  # a run may meet the value just before it
    assert max(longest_runs(run(400, 8, faults=0.0)[1])) <= repeats // 2  # noise alone


def test_personal_alarms_come_now_and_then_at_about_their_rate():
    fleet, msgs = run(300, 8, faults=10.0)
    alarms = Counter(e["code"] for _, doc in docs(msgs) for e in doc.get("events", [])
                     if e["code"].startswith("alarm."))
    pendants = sum(_model(d).sends_event("alarm.fall") for d in fleet)
    c = SimConfig().with_faults(10.0)
    for code, per_year in (("alarm.fall", c.falls_per_year), ("alarm.panic", c.panics_per_year)):
        expected = pendants * per_year * 8 / 365
        assert 0.5 * expected < alarms[code] < 1.6 * expected, (code, alarms[code], expected)


# --- a regional outage -----------------------------------------------------------------------

REGIONAL = {"regional_outage_share": 0.8, "regional_outage_at_h": 10.0, "regional_outage_h": 3.0}


def test_after_a_regional_outage_most_devices_flush_hours_of_messages_at_once():
    fleet, msgs = run(300, 1, faults=0.0, **REGIONAL)
    back = START + 13 * 3600
    window = SimConfig().window_s
    old = by_device([(m, doc) for m, doc in docs(msgs)
                     if back <= m.time < back + window and m.time - doc["time"] > 3600])
    assert len(old) > len(fleet) / 2
    for device, pairs in by_device(docs(msgs)).items():
        if device not in old:
            continue
        during = [doc for m, doc in pairs if START + 10 * 3600 <= m.time < back]
        assert during == []  # nothing got through meanwhile
        flushed = [doc for m, doc in pairs if m.time == back]
        times = [doc["time"] for doc in flushed]
        assert times == sorted(times) and times[0] < back - 3600  # in order, as they were made
    seqs = {device: [doc["seq"] for _, doc in pairs] for device, pairs in by_device(docs(msgs)).items()}
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())  # the counters too


def test_without_a_regional_outage_no_window_brings_most_devices_old_messages():
    fleet, msgs = run(300, 1, faults=10.0)
    window = SimConfig().window_s
    old: dict[int, set[str]] = {}
    for m, doc in docs(msgs):
        if m.time - doc["time"] > 3600:
            old.setdefault(int((m.time - START) // window), set()).add(doc["device_id"])
    assert max((len(d) for d in old.values()), default=0) < len(fleet) / 10


def test_gateways_report_the_regional_outage_when_they_are_back():
    _, msgs = run(300, 1, faults=0.0, **REGIONAL)
    lost = [e for m, doc in docs(msgs) for e in doc.get("events", [])
            if e["code"] == "connection.lost" and m.time == START + 13 * 3600]
    assert lost and {e["time"] for e in lost} == {START + 10 * 3600}


def test_a_regional_outage_in_the_vendors_formats_is_the_same_stream_for_the_same_seed():
    def stream(seed: int) -> list[Any]:
        config = SimConfig(**REGIONAL)
        sim = Simulation(make_fleet(200, seed), seed=seed, start=START, config=config)
        return list(sim.messages(until=START + DAY))

    a = stream(5)
    assert a == stream(5) != stream(6)
    assert any(m.payload.startswith(b"[") for m in a)
    assert sum(m.time == START + 13 * 3600 for m in a) > 100  # the flush
