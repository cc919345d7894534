"""The simulator: reproducible for a seed, spread over the region, valid canonical payloads."""

from __future__ import annotations

import itertools
from collections import Counter

import orjson

from vagt.ingest import RawMessage, decode_batch
from vagt.sim import MUNICIPALITIES, Traffic, fleet_csv, make_fleet


def stream(seed: int, n: int = 2000) -> list[tuple[str, bytes]]:
    fleet = make_fleet(300, seed)
    times = (1795330000.0 + k for k in itertools.count())
    return list(itertools.islice(Traffic(fleet, seed=seed).messages(times), n))


def test_the_same_seed_gives_the_same_fleet_and_stream():
    assert make_fleet(300, 7) == make_fleet(300, 7)
    assert stream(7) == stream(7)


def test_another_seed_gives_another_stream():
    assert stream(7) != stream(8)


def test_two_hundred_devices_cover_all_19_municipalities_weighted_by_population():
    counts = Counter(d.municipality for d in make_fleet(200, 1))
    assert set(counts) == set(MUNICIPALITIES)
    assert counts["Aarhus"] == max(counts.values())
    assert counts["Samsø"] == 1


def test_every_simulated_message_decodes_without_a_dead_letter():
    msgs = [RawMessage(t, p, 1795340000.0) for t, p in stream(3)]
    out = decode_batch(msgs, topic_root="vagt/v1", max_payload_bytes=65536, now=1795340000.0)
    assert out.dead == []
    assert {"alarm.fall", "alarm.panic"} & set(out.e_code)
    assert {"spo2", "bp_systolic", "weight", "glucose", "battery"} <= set(out.r_metric)


def test_message_counters_increase_by_one_per_device():
    seqs: dict[str, list[int]] = {}
    for _, payload in stream(5):
        doc = orjson.loads(payload)
        seqs.setdefault(doc["device_id"], []).append(doc["seq"])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())


def test_the_fleet_csv_has_the_registry_header_and_no_cpr_numbers():
    text = fleet_csv(make_fleet(20, 1))
    assert text.splitlines()[0] == "device_id,vendor,model,type,municipality,citizen_ref"
    assert all(line.split(",")[5].startswith("cit-") for line in text.splitlines()[1:])
