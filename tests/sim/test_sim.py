"""The simulator: reproducible for a seed, spread over the region, valid canonical payloads, and
publishers that lose nothing on the real Mosquitto."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.support import Broker, free_port

from vagt.devices import import_csv
from vagt.ingest import RawMessage, decode_batch
from vagt.sim import (
    DEVICE_TYPES,
    MUNICIPALITIES,
    PublishError,
    ScaledClock,
    StepClock,
    Traffic,
    fleet_csv,
    make_fleet,
    publish,
    publish_backlog,
)
from vagt.sim.traffic import PROFILES

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "canonical.schema.json").read_text())
START = 1_763_800_000.0
UNITS = {"spo2": "%", "pulse": "/min", "bp_systolic": "mm[Hg]", "bp_diastolic": "mm[Hg]",
         "weight": "kg", "glucose": "mmol/L", "temperature": "Cel"}


def stream(seed: int, n: int = 3000, devices: int = 300,
           root: str = "vagt/v1") -> list[tuple[str, bytes]]:
    traffic = Traffic(make_fleet(devices, seed), seed=seed, topic_root=root)
    return list(itertools.islice(traffic.messages(StepClock(START, 0.5)), n))


def docs(messages: list[tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, object]]]:
    for topic, payload in messages:
        yield topic, orjson.loads(payload)


# --- the fleet -------------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_fleet_and_stream():
    assert make_fleet(300, 7) == make_fleet(300, 7)
    assert stream(7) == stream(7)


def test_another_seed_gives_another_fleet_and_stream():
    assert make_fleet(300, 7) != make_fleet(300, 8)
    assert stream(7) != stream(8)


@pytest.mark.parametrize("n", [200, 201, 523, 5000])
def test_from_two_hundred_devices_every_municipality_has_some_weighted_by_population(n):
    counts = Counter(d.municipality for d in make_fleet(n, 1))
    assert set(counts) == set(MUNICIPALITIES)
    assert counts.most_common(1)[0][0] == "Aarhus"
    assert counts["Aarhus"] > 2 * counts["Herning"] > 4 * counts["Lemvig"]


def test_a_fleet_has_every_device_type_with_ids_by_type_and_the_size_asked_for():
    fleet = make_fleet(1000, 3)
    assert len(fleet) == 1000
    assert len({d.device_id for d in fleet}) == 1000
    assert {d.type for d in fleet} == set(DEVICE_TYPES) == set(PROFILES)
    oximeters = sorted(d.device_id for d in fleet if d.type == "pulse_oximeter")
    assert oximeters[0] == "OXI-000001"
    for d in fleet:
        assert (d.vendor, d.model) in DEVICE_TYPES[d.type].models


def test_the_fleet_csv_has_the_registry_columns_and_no_cpr_numbers():
    lines = fleet_csv(make_fleet(20, 1)).splitlines()
    assert lines[0].startswith("device_id,vendor,model,type,municipality")
    assert len(lines) == 21
    assert all(line.rsplit(",", 1)[1].startswith("cit-") for line in lines[1:])


def test_the_fleet_csv_registers_every_device(database_url):
    fleet = make_fleet(250, 4)
    with psycopg.connect(database_url) as conn:
        result = import_csv(conn, fleet_csv(fleet), actor="test")
        rows = conn.execute("SELECT device_id, type, municipality FROM devices").fetchall()
    assert result.created == 250
    assert sorted(rows) == sorted((d.device_id, d.type, d.municipality) for d in fleet)


# --- the traffic -----------------------------------------------------------------------------

def test_every_payload_is_canonical_json_on_its_device_topic():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for topic, doc in docs(stream(3)):
        root, dev, device_id, channel = topic.rsplit("/", 3)
        assert (root, dev) == ("vagt/v1", "dev")
        assert channel in ("telemetry", "alarm", "status")
        assert doc["device_id"] == device_id
        validator.validate(doc)
        if channel == "alarm":
            assert doc["events"]


def test_every_simulated_message_decodes_without_a_dead_letter():
    msgs = [RawMessage(t, p, START + 3600) for t, p in stream(3)]
    out = decode_batch(msgs, topic_root="vagt/v1", max_payload_bytes=65536, now=START + 3600)
    assert out.dead == []
    assert {"alarm.fall", "alarm.panic", "dose.due", "dose.taken"} <= set(out.e_code)
    assert {"spo2", "pulse", "bp_systolic", "weight", "glucose", "battery", "signal"} \
        <= set(out.r_metric)


def test_each_device_type_measures_its_own_metrics_in_the_canonical_units():
    fleet = {d.device_id: d.type for d in make_fleet(300, 5)}
    metrics: dict[str, set[str]] = {}
    for _, doc in docs(stream(5)):
        for r in doc.get("readings", []):
            assert r["unit"] == UNITS[r["metric"]]
            metrics.setdefault(fleet[doc["device_id"]], set()).add(r["metric"])
    assert metrics == {"pulse_oximeter": {"spo2", "pulse"},
                       "bp_monitor": {"bp_systolic", "bp_diastolic", "pulse"},
                       "scale": {"weight"}, "glucose_meter": {"glucose"}}


def test_vital_signs_are_plausible():
    values: dict[str, list[float]] = {}
    for _, doc in docs(stream(6, n=6000)):
        for r in doc.get("readings", []):
            values.setdefault(r["metric"], []).append(r["value"])
    assert 70 <= min(values["spo2"]) <= max(values["spo2"]) <= 100
    assert 90 <= sorted(values["spo2"])[len(values["spo2"]) // 2] <= 99
    assert 30 <= min(values["pulse"]) <= max(values["pulse"]) <= 220
    assert all(s > 40 for s in values["bp_diastolic"])
    assert 1.5 <= min(values["glucose"]) <= max(values["glucose"]) <= 30


def test_alarms_come_from_personal_alarms_and_dose_events_from_dispensers():
    fleet = {d.device_id: d.type for d in make_fleet(300, 2)}
    sources: dict[str, set[str]] = {}
    for _, doc in docs(stream(2, n=6000)):
        for e in doc.get("events", []):
            sources.setdefault(e["code"], set()).add(fleet[doc["device_id"]])
    assert sources["alarm.fall"] == sources["alarm.panic"] == {"personal_alarm"}
    assert sources["dose.due"] == sources["dose.taken"] == {"medicine_dispenser"}
    assert sources.get("fault.dispenser_jam", {"medicine_dispenser"}) == {"medicine_dispenser"}


def test_a_dispenser_announces_a_dose_due_before_it_reports_it_taken():
    last: dict[str, str] = {}
    for _, doc in docs(stream(8, n=6000)):
        for e in doc.get("events", []):
            if e["code"] == "dose.taken":
                assert last.get(doc["device_id"]) == "dose.due"
            if e["code"].startswith("dose."):
                last[doc["device_id"]] = e["code"]


def test_message_counters_increase_by_one_per_device():
    seqs: dict[str, list[int]] = {}
    for _, doc in docs(stream(5)):
        seqs.setdefault(doc["device_id"], []).append(doc["seq"])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())


def test_batteries_drain_between_status_messages_and_are_recharged_when_low():
    battery: dict[str, list[int]] = {}
    for _, doc in docs(stream(9, n=30_000, devices=100)):
        if "battery" in doc.get("status", {}):
            battery.setdefault(doc["device_id"], []).append(doc["status"]["battery"])
    falls = rises = 0
    for series in battery.values():
        for a, b in itertools.pairwise(series):
            falls += b < a
            rises += b > a + 20  # a recharge, not noise
    assert falls > 10 * rises > 0


def test_the_clock_parameter_sets_message_times_so_time_can_run_fast():
    traffic = Traffic(make_fleet(10, 1), seed=1)
    times = [orjson.loads(p)["time"] for _, p in
             itertools.islice(traffic.messages(StepClock(START, 60.0)), 5)]
    assert times == [START + 60.0 * k for k in range(5)]
    fast = ScaledClock(speed=3600.0, start=START)
    time.sleep(0.05)
    assert fast() - START >= 0.05 * 3600


# --- publishing to the real Mosquitto ----------------------------------------------------------

class Subscriber:
    """A paho client with a persistent session that keeps every payload it receives."""

    def __init__(self, broker: Broker, topic_filter: str) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.client_id = f"sub-{uuid.uuid4().hex[:8]}"
        self.payloads: list[bytes] = []
        self.lock = threading.Lock()
        self.client: paho.Client | None = None

    def connect(self) -> Subscriber:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=paho.MQTTv311, clean_session=False)
        subscribed = threading.Event()
        c.on_message = self._on_message
        c.on_connect = lambda cl, *_: cl.subscribe(self.topic_filter, qos=1)
        c.on_subscribe = lambda *_: subscribed.set()
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        assert subscribed.wait(10), "no SUBACK from Mosquitto"
        self.client = c
        return self

    def disconnect(self) -> None:
        assert self.client is not None
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, n: int, timeout: float = 60) -> set[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.payloads) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # anything beyond n (a duplicate) would show now
        with self.lock:
            return set(self.payloads)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        with self.lock:
            self.payloads.append(m.payload)


def test_publish_backlog_delivers_every_message_to_a_persistent_session(broker, topic_root):
    sub = Subscriber(broker, f"{topic_root}/dev/#").connect()
    sub.disconnect()  # the session stays: Mosquitto queues the backlog for it
    messages = stream(1, n=5000, root=topic_root)
    assert publish_backlog(broker.url, messages, window=500) == 5000
    sub.connect()
    got = sub.wait_for(5000)
    sub.disconnect()
    assert len(got) == 5000
    assert got == {p for _, p in messages}


def test_publish_flat_out_delivers_every_message(broker, topic_root):
    sub = Subscriber(broker, f"{topic_root}/dev/#").connect()
    messages = stream(2, n=2000, root=topic_root)
    assert asyncio.run(publish(broker.url, messages)) == 2000
    got = sub.wait_for(2000)
    sub.disconnect()
    assert got == {p for _, p in messages}


def test_publish_at_a_rate_takes_as_long_as_the_rate_says(broker, topic_root):
    sub = Subscriber(broker, f"{topic_root}/dev/#").connect()
    messages = stream(3, n=30, root=topic_root)
    started = time.monotonic()
    assert asyncio.run(publish(broker.url, messages, rate=50)) == 30
    elapsed = time.monotonic() - started
    got = sub.wait_for(30)
    sub.disconnect()
    assert 29 / 50 <= elapsed < 29 / 50 + 1.0
    assert len(got) == 30


def test_publishing_to_a_broker_that_is_not_there_raises_publish_error():
    url = f"mqtt://127.0.0.1:{free_port()}"
    with pytest.raises(PublishError, match="127.0.0.1"):
        publish_backlog(url, [("t/x", b"1")])
    with pytest.raises(PublishError, match="127.0.0.1"):
        asyncio.run(publish(url, [("t/x", b"1")]))


def test_publish_backlog_logs_in_with_the_url_credentials(broker, topic_root):
    assert publish_backlog(broker.auth_url, [(f"{topic_root}/dev/X-1/status", b"{}")]) == 1
    wrong = broker.auth_url.replace(broker.password, "wrong")
    with pytest.raises(PublishError, match="refused"):
        publish_backlog(wrong, [(f"{topic_root}/dev/X-1/status", b"{}")])
