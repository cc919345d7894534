"""The servers that come from pip packages, and the demo that runs on them."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from vagt.app import db
from vagt.app.config import load_config
from vagt.app.demo import run_demo
from vagt.app.embedded import embedded_broker, embedded_postgres, free_port
from vagt.app.engine import run_engine


def test_the_embedded_postgres_starts_takes_the_schema_and_stops(tmp_path: Path):
    with embedded_postgres(tmp_path) as url:
        applied = db.migrate(url)
        assert applied[0].startswith("0001_core")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("vagt",)
    with embedded_postgres(tmp_path) as url:  # the same data directory, kept
        assert db.migrate(url) == []


def test_the_embedded_broker_carries_a_qos1_message(tmp_path: Path):
    got: list[bytes] = []
    arrived = threading.Event()
    with embedded_broker(free_port()) as url:
        port = int(url.rsplit(":", 1)[1])
        sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"s-{uuid.uuid4().hex[:6]}",
                          protocol=paho.MQTTv311)
        sub.on_message = lambda _c, _u, m: (got.append(m.payload), arrived.set())
        sub.on_connect = lambda c, *_: c.subscribe("vagt/v1/dev/+/alarm", qos=1)
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        time.sleep(0.5)
        pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish("vagt/v1/dev/ALM-1/alarm", b"help", qos=1).wait_for_publish(5)
        assert arrived.wait(5)
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
    assert got == [b"help"]


def test_the_demo_registers_the_fleet_and_alarms_become_alerts(database_url, tmp_path, capsys):
    config = load_config(None, env={"VAGT_DATABASE_URL": database_url,
                                    "VAGT_DATA_DIR": str(tmp_path), "VAGT_METRICS_PORT": "0"})
    stop = threading.Event()
    run_demo(config, devices=100, duration=12, seed=2, stop=stop, run_engine=run_engine)
    out = capsys.readouterr().out
    with psycopg.connect(database_url) as conn:
        devices = conn.execute("SELECT count(*) FROM devices").fetchone()
        readings = conn.execute("SELECT count(*) FROM readings").fetchone()
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    assert devices == (100,)
    assert readings is not None and readings[0] > 0
    assert dead == (0,)
    assert "100 simulated devices in 19 municipalities" in out
