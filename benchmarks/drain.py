"""Backlog drain: a telemetry backlog queued at the broker for a persistent session, drained by

1. a bare paho-mqtt consumer that only counts (the ceiling of one Python process),
2. the full vagt engine (decode, devices, store, rules, alerts, commit, then acknowledge),
3. a consumer that INSERTs and commits each message (what one would otherwise write),

all in the same run against the same Mosquitto and PostgreSQL. Prints messages per second and
the ratios. The backlog is what the bulk lane of a simulated fleet receives (vagt.sim.backlog).
Usage: .venv/bin/python -m benchmarks.drain [--messages 100000] [--repeat 3] [--devices 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg import sql
from tests.support import Broker, free_port

from vagt.app import db
from vagt.app.config import load_config
from vagt.app.engine import run_engine
from vagt.app.metrics import EngineMetrics
from vagt.devices import import_csv
from vagt.sim import SimConfig, backlog, fleet_csv, last_local, make_fleet

BULK_CHANNELS = ("telemetry", "status")
PG_ADMIN = os.environ.get("VAGT_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RECEIVE_MAXIMUM = 20000


# The backlog ends at this hour of the citizens' clocks, the last time it struck: 200,000
# messages of 100,000 devices are then the late afternoon's, with the most measurements and
# doses of the day (9 % telemetry). Ending now instead, a run at night drained heartbeats
# alone and a run in the evening did not, and their figures could not be compared.
BACKLOG_ENDS_AT_LOCAL_HOUR = 20


def make_backlog(root: str, n: int, devices: int, *, canonical_only: bool = False
                 ) -> list[tuple[str, bytes]]:
    """What the bulk lane of a simulated fleet receives (telemetry and status: heartbeats,
    measurements, dose events, connection reports), the same whatever the hour it runs; in
    the vendors' formats, or with `canonical_only` all canonical JSON."""
    config = SimConfig(canonical_only=canonical_only)
    return [(m.topic, m.payload) for m in backlog(n, devices=devices, seed=1, topic_root=root,
                                                  channels=BULK_CHANNELS, config=config,
                                                  end=last_local(BACKLOG_ENDS_AT_LOCAL_HOUR))]


def v5_client(client_id: str, **kw: object) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                       **kw)  # type: ignore[arg-type]


def session_props() -> Properties:
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 3600
    p.ReceiveMaximum = RECEIVE_MAXIMUM
    return p


def session(port: int, client_id: str, filters: list[str]) -> None:
    """Subscribe once with a persistent session, then leave: what follows queues for it."""
    c = v5_client(client_id)
    c.connect("127.0.0.1", port, clean_start=False, properties=session_props())
    c.loop_start()
    c.subscribe([(f, 1) for f in filters])
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()


def create_session(port: int, client_id: str, root: str) -> None:
    """A persistent session for the bulk lane's topics under `root`: the backlog queues for it."""
    session(port, client_id, [f"{root}/dev/+/{ch}" for ch in BULK_CHANNELS])


def publish_backlog(port: int, messages: list[tuple[str, bytes]]) -> None:
    c = v5_client(f"bench-pub-{uuid.uuid4().hex[:6]}")
    c.max_inflight_messages_set(2000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    # paho's packet ids wrap at 65,535 and its in-flight bookkeeping is linear in what is
    # pending: publish in chunks, each acknowledged before the next
    for start in range(0, len(messages), 10_000):
        infos = [c.publish(t, p, qos=1) for t, p in messages[start:start + 10_000]]
        for i in infos:
            i.wait_for_publish(timeout=120)
    c.disconnect()
    c.loop_stop()


def drain_bare(port: int, client_id: str, n: int) -> float:
    """The ceiling: paho receives and acknowledges, the callback only counts."""
    done = threading.Event()
    count = [0]
    start = [0.0]

    def on_message(_c: object, _u: object, _m: paho.MQTTMessage) -> None:
        if count[0] == 0:
            start[0] = time.perf_counter()
        count[0] += 1
        if count[0] == n:
            done.set()

    c = v5_client(client_id)
    c.on_message = on_message
    t = time.perf_counter()
    c.connect("127.0.0.1", port, clean_start=False, properties=session_props())
    c.loop_start()
    done.wait(600)
    elapsed = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return n / elapsed


def drain_insert_per_message(port: int, client_id: str, n: int, conninfo: str) -> float:
    """One INSERT and one commit per message, acknowledged by paho after the callback."""
    done = threading.Event()
    count = [0]
    conn = psycopg.connect(conninfo)

    def on_message(_c: object, _u: object, m: paho.MQTTMessage) -> None:
        doc = orjson.loads(m.payload)
        status = doc.get("status", {})
        values = [(r["metric"], r["value"], r["unit"]) for r in doc.get("readings", [])]
        values += [(k, status[k], u) for k, u in (("battery", "%"), ("signal", "dB[mW]"))
                   if k in status]
        for metric, value, unit in values:
            conn.execute(
                "INSERT INTO readings (time, device_id, metric, value, unit, received_at) "
                "VALUES (to_timestamp(%s), %s, %s, %s, %s, now()) ON CONFLICT DO NOTHING",
                (doc["time"], doc["device_id"], metric, value, unit))
        conn.commit()
        count[0] += 1
        if count[0] == n:
            done.set()

    c = v5_client(client_id)
    c.on_message = on_message
    t = time.perf_counter()
    c.connect("127.0.0.1", port, clean_start=False, properties=session_props())
    c.loop_start()
    done.wait(1800)
    elapsed = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    conn.close()
    return n / elapsed


def drain_engine(port: int, root: str, n: int, devices: int, conninfo: str) -> float:
    client_id = f"bench-engine-{uuid.uuid4().hex[:6]}"
    config = load_config(None, env={})
    config = replace(config, mqtt=replace(config.mqtt, url=f"mqtt://127.0.0.1:{port}",
                                          client_id=client_id, topic_root=root,
                                          receive_maximum=RECEIVE_MAXIMUM),
                     database=replace(config.database, url=conninfo), metrics_port=0)
    create_session(port, f"{client_id}-bulk", root)
    publish_backlog(port, make_backlog(root, n, devices))
    metrics = EngineMetrics()
    stop = threading.Event()
    ready = [0.0]
    engine = threading.Thread(target=run_engine, kwargs=dict(
        config=config, stop=stop, metrics=metrics,
        on_ready=lambda: ready.__setitem__(0, time.perf_counter())))
    engine.start()
    acked = metrics.acked.labels("bulk")
    deadline = time.monotonic() + 900
    while acked._value.get() < n and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - ready[0]
    stop.set()
    engine.join()
    if acked._value.get() < n:
        raise RuntimeError(f"engine acknowledged only {acked._value.get()} of {n}")
    return n / elapsed


@contextlib.contextmanager
def own_broker() -> Iterator[tuple[Broker, Path]]:
    """A Mosquitto of the benchmark's own, and a temporary directory beside its files for
    anything else the benchmark keeps; the broker is stopped and the directory removed after."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(free_port(), free_port(), work / "broker")
        broker.directory.mkdir()
        broker.start()
        try:
            yield broker, work
        finally:
            broker.stop()


def fresh_database(devices: int = 0) -> str:
    """A new database of its own, migrated; with `devices`, the simulated fleet of that many
    registered in it (seed 1, as `make_backlog`'s)."""
    name = f"vagt_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = PG_ADMIN.rpartition("/")
    url = f"{base}/{name}"
    db.migrate(url)
    if devices:
        with psycopg.connect(url) as conn:
            import_csv(conn, fleet_csv(make_fleet(devices, 1)), actor="benchmark")
    return url


def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def timed(label: str, fn: Callable[[], float]) -> float:
    rate = fn()
    print(f"  {label:<32} {rate:>10,.0f} msg/s", flush=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--insert-messages", type=int, default=10_000,
                    help="backlog for the per-message INSERT consumer (it is slow)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--devices", type=int, default=2000, help="the simulated fleet's size")
    args = ap.parse_args()
    n, devices = args.messages, args.devices
    bare, full, insert = [], [], []
    with own_broker() as (broker, _):
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat}: {n:,} messages", flush=True)
            root = f"bench{uuid.uuid4().hex[:6]}/v1"
            cid = f"bench-bare-{uuid.uuid4().hex[:6]}"
            create_session(broker.port, cid, root)
            publish_backlog(broker.port, make_backlog(root, n, devices))
            bare.append(timed("bare paho consumer (counts)",
                              lambda cid=cid: drain_bare(broker.port, cid, n)))
            url = fresh_database(devices)
            try:
                full.append(timed("vagt engine (full pipeline)", lambda url=url: drain_engine(
                    broker.port, f"bench{uuid.uuid4().hex[:6]}/v1", n, devices, url)))
            finally:
                drop_database(url)
            if r == 0 and args.insert_messages:
                url = fresh_database(devices)
                try:
                    root = f"bench{uuid.uuid4().hex[:6]}/v1"
                    cid = f"bench-ins-{uuid.uuid4().hex[:6]}"
                    create_session(broker.port, cid, root)
                    # canonical JSON: this baseline reads the payload itself
                    publish_backlog(broker.port, make_backlog(
                        root, args.insert_messages, devices, canonical_only=True))
                    insert.append(timed("INSERT + commit per message", lambda cid=cid, url=url:
                                        drain_insert_per_message(
                                            broker.port, cid, args.insert_messages, url)))
                finally:
                    drop_database(url)
    mb, mf = statistics.median(bare), statistics.median(full)
    print()
    print(f"{'drain of':<34}{'median msg/s':>14}")
    print(f"{'bare paho consumer (ceiling)':<34}{mb:>14,.0f}")
    print(f"{'vagt engine, full pipeline':<34}{mf:>14,.0f}")
    if insert:
        print(f"{'INSERT + commit per message':<34}{insert[0]:>14,.0f}")
    ratios = [f / b for f, b in zip(full, bare)]
    print(f"ratio engine / bare consumer: {mf / mb:.2f} of the medians; per round "
          f"{', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}); "
          "target >= 0.75")
    if insert:
        print(f"ratio engine / per-message INSERT: {mf / insert[0]:.1f}x")


if __name__ == "__main__":
    main()
