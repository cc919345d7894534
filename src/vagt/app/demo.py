"""`vagt demo` and `vagt simulate`: simulated devices, and the whole engine with nothing installed.

The demo starts an embedded MQTT broker and (unless a database is configured) an embedded
PostgreSQL, registers a simulated fleet, runs the engine and prints alerts as they open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import psycopg

from vagt.app import db
from vagt.app.config import Config
from vagt.app.embedded import embedded_broker, embedded_postgres, free_port
from vagt.devices.registry import import_csv
from vagt.sim import Traffic, fleet_csv, make_fleet

log = logging.getLogger("vagt.demo")


def wall_clock() -> Iterator[float]:
    while True:
        yield time.time()


async def publish(url: str, messages: Iterator[tuple[str, bytes]], *, rate: float,
                  stop: threading.Event, protocol: int = 5,
                  count: int | None = None) -> int:
    """Publish at QoS 1 with aiomqtt, `rate` messages a second, until `stop` or `count`."""
    u = urllib.parse.urlsplit(url)
    version = aiomqtt.ProtocolVersion.V5 if protocol == 5 else aiomqtt.ProtocolVersion.V311
    sent = 0
    async with aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883,
                              username=u.username, password=u.password,
                              protocol=version) as client:
        start = time.monotonic()
        for topic, payload in messages:
            if stop.is_set() or (count is not None and sent >= count):
                break
            await client.publish(topic, payload, qos=1)
            sent += 1
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return sent


def run_simulate(url: str, topic_root: str, devices: int, rate: float,
                 duration: float | None, seed: int, fleet_file: Path | None = None,
                 protocol: int = 5) -> int:
    """Send simulated traffic to any broker (the devices must be registered: see --fleet-csv)."""
    fleet = make_fleet(devices, seed)
    if fleet_file is not None:
        fleet_file.write_text(fleet_csv(fleet), encoding="utf-8")
        print(f"wrote the simulated fleet to {fleet_file}; register it with "
              f"`vagt devices import {fleet_file}`")
    traffic = Traffic(fleet, seed=seed, topic_root=topic_root)
    stop = threading.Event()
    count = None if duration is None else int(duration * rate)
    sent = asyncio.run(publish(url, traffic.messages(wall_clock()), rate=rate, stop=stop,
                               protocol=protocol, count=count))
    print(f"sent {sent} messages")
    return 0


def run_demo(config: Config, *, devices: int, duration: float | None, seed: int,
             stop: threading.Event,
             run_engine: Callable[[Config, threading.Event], None]) -> int:
    """Everything in one process until `stop` (Ctrl-C) or `duration` seconds."""
    data_dir = Path(config.data_dir)
    fleet = make_fleet(devices, seed)
    rate = max(5.0, devices / 20)  # each device about every 20 s: a lively demo
    with embedded_broker(free_port()) as mqtt_url, _database(config, data_dir) as db_url:
        db.migrate(db_url)
        with psycopg.connect(db_url) as conn:
            result = import_csv(conn, "simulated-fleet.csv", actor="demo", text=fleet_csv(fleet))
        print(f"vagt demo: {len(fleet)} simulated devices in 19 municipalities "
              f"({result.created} newly registered); {rate:.0f} messages/s; Ctrl-C stops")
        engine_config = dataclasses.replace(
            config,
            mqtt=dataclasses.replace(config.mqtt, url=mqtt_url, protocol=4,
                                     client_id="vagt-demo"),
            database=dataclasses.replace(config.database, url=db_url))
        engine_stop = threading.Event()
        engine = threading.Thread(target=run_engine, args=(engine_config, engine_stop),
                                  name="vagt-engine")
        engine.start()
        traffic = Traffic(fleet, seed=seed, topic_root=config.mqtt.topic_root)
        sim = threading.Thread(target=lambda: asyncio.run(publish(
            mqtt_url, traffic.messages(wall_clock()), rate=rate, stop=stop, protocol=4)),
            name="vagt-simulator", daemon=True)
        sim.start()
        try:
            _show_alerts(db_url, stop, time.monotonic() + duration if duration else None)
        finally:
            stop.set()
            sim.join(10)
            engine_stop.set()
            engine.join(60)
    return 0


def _database(config: Config, data_dir: Path) -> contextlib.AbstractContextManager[str]:
    if config.database.url:
        return contextlib.nullcontext(config.database.url)
    return embedded_postgres(data_dir)


def _show_alerts(db_url: str, stop: threading.Event, until: float | None) -> None:
    """Print each new alert, and once in a while what has been stored."""
    last_id, tick = 0, 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        while not stop.wait(1.0) and (until is None or time.monotonic() < until):
            rows = conn.execute(
                "SELECT id, opened_at, queue, priority, severity, labels->>'municipality', "
                "summary FROM alerts WHERE id > %s ORDER BY id", (last_id,)).fetchall()
            for aid, opened, queue, prio, sev, place, summary in rows:
                print(f"ALERT {aid:>5}  {opened:%H:%M:%S}  P{prio} {queue:<10} {sev:<8} "
                      f"{place or '':<18} {summary}", flush=True)
                last_id = aid
            tick += 1
            if tick % 10 == 0:
                readings, dead, open_ = conn.execute(
                    "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM dead_letters),"
                    " (SELECT count(*) FROM alerts WHERE status <> 'resolved')").fetchone() \
                    or (0, 0, 0)
                print(f"-- {readings} readings stored, {open_} alerts not resolved, "
                      f"{dead} dead letters", flush=True)
