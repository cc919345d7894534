"""The whole path on real parts: a device publishes to Mosquitto, `vagt run` stores it in
PostgreSQL, alarms become alerts, bad input becomes dead letters, and nothing is lost."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import orjson
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tests.app.conftest import (
    EngineProcess,
    alarm,
    publish,
    query,
    register,
    scalar,
    telemetry,
    topic,
    wait_for,
)
from tests.support import Broker, free_port

T0 = time.time() - 3600  # an hour ago: every reading is in the past, as a device's would be


def test_published_telemetry_becomes_readings_and_device_state(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    publish(broker.port, [
        (topic(topic_root, "OXI-0001", "telemetry"),
         telemetry("OXI-0001", T0, spo2=97, pulse=64)),
        (topic(topic_root, "OXI-0001", "status"), orjson.dumps(
            {"time": T0 + 1, "status": {"battery": 81, "signal": -71, "firmware": "2.4.1"}})),
    ])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == 4,
             what="4 readings")
    rows = query(database_url, "SELECT metric, value, unit FROM readings ORDER BY metric")
    assert rows == [("battery", 81.0, "%"), ("pulse", 64.0, "/min"), ("signal", -71.0, "dB[mW]"),
                    ("spo2", 97.0, "%")]
    state = query(database_url, "SELECT battery, signal, firmware, last_seen IS NOT NULL "
                                "FROM devices WHERE device_id = 'OXI-0001'")
    assert state == [(81.0, -71.0, "2.4.1", True)]


def test_an_alarm_becomes_an_open_alert_in_the_emergency_queue(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))])
    alert = wait_for(lambda: query(
        database_url, "SELECT status, queue, priority, severity, device_id, labels->>'municipality'"
                      " FROM alerts"), what="an alert")
    assert alert == [("open", "emergency", 1, "critical", "ALM-0001", "Randers")]
    audit = query(database_url, "SELECT action, to_status FROM alert_audit")
    assert audit == [("open", "open")]


def test_each_kind_of_bad_input_is_a_dead_letter_with_its_reason_and_the_engine_goes_on(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    senml_unknown_unit = orjson.dumps([{"bn": "OXI-0001/", "n": "spo2", "u": "furlong",
                                        "v": 97, "t": T0}])
    bad = [
        (topic(topic_root, "OXI-0001", "telemetry"), b'{"readings": [{"metric": "spo2",'),
        (topic(topic_root, "OXI-0001", "telemetry"), b"x" * (4 * 1024 * 1024)),
        (topic(topic_root, "OXI-0001", "telemetry"), senml_unknown_unit),
        (topic(topic_root, "OXI-0001", "telemetry"), telemetry("OXI-0002", T0, spo2=97)),
        (topic(topic_root, "NOPE-0001", "telemetry"), telemetry("NOPE-0001", T0, spo2=97)),
    ]
    publish(broker.port, bad)
    publish(broker.port, [(topic(topic_root, "OXI-0002", "telemetry"),
                           telemetry("OXI-0002", T0, spo2=95))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM dead_letters") == 5
             and scalar(database_url, "SELECT count(*) FROM readings") == 1,
             what="5 dead letters and the good reading after them")
    reasons = query(database_url, "SELECT reason, topic, length(payload) FROM dead_letters "
                                  "ORDER BY id")
    assert [r[0] for r in reasons] == ["malformed", "payload_too_large", "unknown_unit",
                                       "device_mismatch", "unknown_device"]
    # 4 MiB: its first 64 KiB (the limit) are kept, not all of it: a device sending
    # megabytes must not fill the engine's memory or the table
    assert reasons[1][2] == 64 * 1024
    details = [r[0] for r in query(database_url, "SELECT detail FROM dead_letters ORDER BY id")]
    assert details[1].startswith(f"the payload of {4 * 1024 * 1024} bytes is over the limit "
                                 f"of {64 * 1024} bytes (ingest.max_payload_bytes); its first "
                                 f"{64 * 1024} bytes are kept")
    assert "furlong" in details[2]
    assert "NOPE-0001" in details[4]
    assert engine.proc is not None and engine.proc.poll() is None


def test_the_same_message_delivered_twice_is_stored_once(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    msg = [(topic(topic_root, "OXI-0001", "telemetry"), telemetry("OXI-0001", T0, spo2=97)),
           (topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))]
    publish(broker.port, msg)
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1, what="alert")
    publish(broker.port, msg)
    publish(broker.port, [(topic(topic_root, "OXI-0002", "telemetry"),
                           telemetry("OXI-0002", T0, spo2=90))])  # a marker after the repeats
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == 2, what="marker")
    assert scalar(database_url, "SELECT count(*) FROM readings WHERE device_id = 'OXI-0001'") == 1
    assert scalar(database_url, "SELECT count(*) FROM events") == 1
    assert query(database_url, "SELECT repeat_count FROM alerts") == [(1,)]


def test_an_alarm_is_not_held_up_by_an_earlier_alarm_whose_device_is_locked(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """An alarm's state is written after its alert, and waits while a bulk batch holds the
    device's row; the next alarm must not wait behind it."""
    engine.start().wait_ready()
    with psycopg.connect(database_url) as busy:  # as a long bulk batch would
        busy.execute("SELECT 1 FROM devices WHERE device_id = 'ALM-0001' FOR NO KEY UPDATE")
        publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))])
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1,
                 what="the first alert")
        publish(broker.port, [(topic(topic_root, "OXI-0002", "alarm"), alarm("OXI-0002", T0))])
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 2,
                 what="the second alert while the first alarm's device is held")
        assert scalar(database_url, "SELECT last_seen FROM devices "
                                    "WHERE device_id = 'ALM-0001'") is None  # still waiting
    wait_for(lambda: scalar(database_url, "SELECT last_seen IS NOT NULL FROM devices "
                                          "WHERE device_id = 'ALM-0001'"),
             what="the first alarm's device state once the row is free")


def test_sigkill_in_the_middle_loses_nothing_and_stores_everything_once(
        engine: EngineProcess, broker: Broker, database_url, topic_root):
    ids = [f"OXI-{i:04d}" for i in range(50)]
    register(database_url, [(d, "Nonin", "3230", "pulse_oximeter", "Aarhus") for d in ids])
    n_per_device = 100
    telemetry_msgs = [(topic(topic_root, d, "telemetry"), telemetry(d, T0 + k, seq=k, spo2=97))
                      for k in range(n_per_device) for d in ids]
    alarms = [(topic(topic_root, d, "alarm"), alarm(d, T0 + 0.5)) for d in ids[:10]]
    # batches of 250: on a quiet machine the engine took all 5,000 in one batch (up to
    # 10,000 by default), and the kill came after it
    engine.env["VAGT_BULK_BATCH_MAX"] = "250"
    engine.start().wait_ready()
    engine.terminate()  # the sessions now exist at the broker; everything below queues there
    publish(broker.port, telemetry_msgs + alarms)
    engine.start()
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") > 500,
             what="the engine to be part-way through")
    engine.kill()
    partial = scalar(database_url, "SELECT count(*) FROM readings")
    assert partial < len(telemetry_msgs), "the kill came too late to test anything"
    engine.start()
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == len(telemetry_msgs),
             timeout=60, what="every reading")
    # (the oximeters' constant 97 % also trips the default oximeter_stuck rule: not counted)
    alarms_sql = "FROM alerts WHERE rule = 'personal_alarm'"
    wait_for(lambda: scalar(database_url, f"SELECT count(*) {alarms_sql}") == 10, what="alerts")
    assert scalar(database_url, f"SELECT sum(repeat_count) {alarms_sql}") == 10
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 0
    assert scalar(database_url, "SELECT sum(seq_gaps) FROM devices") == 0
    assert scalar(database_url, "SELECT min(last_seq) FROM devices") == n_per_device - 1


def test_sigterm_commits_and_acknowledges_the_batch_in_hand_then_exits(
        engine: EngineProcess, broker: Broker, database_url, topic_root):
    ids = [f"BPM-{i:04d}" for i in range(20)]
    register(database_url, [(d, "A&D", "UA-651BLE", "bp_monitor", "Viborg") for d in ids])
    msgs = [(topic(topic_root, d, "telemetry"), telemetry(d, T0 + k, bp_systolic=120 + k % 9))
            for k in range(1000) for d in ids]
    engine.start().wait_ready()
    engine.terminate()
    publish(broker.port, msgs)
    engine.start()
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") > 0, what="progress")
    assert engine.terminate() == 0
    assert "event=engine_stopped" in engine.log()
    stored = {(d, round(t, 3)) for d, t in query(
        database_url, "SELECT device_id, extract(epoch FROM time)::float8 FROM readings")}
    assert 0 < len(stored) < len(msgs), "SIGTERM came too late to test anything"
    # What the broker still holds for the engine's session must be exactly what is not stored:
    # a committed message that was not acknowledged would come again, a lost one would not.
    redelivered = drain_session(broker, engine.env["VAGT_MQTT_CLIENT_ID"] + "-bulk",
                                expect=len(msgs) - len(stored))
    assert len(redelivered) == len(msgs) - len(stored)
    assert redelivered.isdisjoint(stored)


def drain_session(broker: Broker, client_id: str, expect: int) -> set[tuple[str, float]]:
    """Connect as the engine's session and collect what the broker delivers to it."""
    got: set[tuple[str, float]] = set()

    def on_message(_c: object, _u: object, m: paho.MQTTMessage) -> None:
        doc = orjson.loads(m.payload)
        got.add((doc["device_id"], round(float(doc["time"]), 3)))

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 60
    c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
    c.loop_start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(got) < expect:
            time.sleep(0.05)
        time.sleep(0.5)  # anything beyond `expect` would be a duplicate: give it time to show
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def test_an_alarm_is_committed_while_a_telemetry_backlog_is_still_draining(
        engine: EngineProcess, broker: Broker, database_url, topic_root):
    ids = [f"SCL-{i:04d}" for i in range(100)]
    register(database_url, [(d, "A&D", "UC-352BLE", "scale", "Herning") for d in ids]
             + [("ALM-0009", "Tunstall", "Lifeline Vi+", "personal_alarm", "Herning")])
    backlog = [(topic(topic_root, d, "telemetry"), telemetry(d, T0 + k, weight=70 + k % 5))
               for k in range(200) for d in ids]
    engine.start().wait_ready()
    engine.terminate()
    publish(broker.port, backlog)                 # 20,000 telemetry messages queued first,
    publish(broker.port, [(topic(topic_root, "ALM-0009", "alarm"), alarm("ALM-0009", T0))])
    engine.start()                                # then the alarm, behind them
    # the scales' weight swings open clinical alerts of their own as the backlog goes in
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts "
                            "WHERE device_id = 'ALM-0009' AND queue = 'emergency'") == 1,
             what="the alarm's alert")
    readings_when_alarm_committed = scalar(database_url, "SELECT count(*) FROM readings")
    assert readings_when_alarm_committed < len(backlog)
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == len(backlog),
             timeout=90, what="the backlog")


def test_the_engine_reconnects_after_the_broker_restarts_and_goes_on(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    broker.restart()
    publish(broker.port, [(topic(topic_root, "OXI-0001", "telemetry"),
                           telemetry("OXI-0001", T0, spo2=96))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == 1, timeout=40,
             what="a reading after the restart")


def test_metrics_count_what_happened(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    publish(broker.port, [
        (topic(topic_root, "OXI-0001", "telemetry"), telemetry("OXI-0001", T0, spo2=97)),
        (topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0)),
        (topic(topic_root, "OXI-0001", "telemetry"), b"not json"),
    ])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM dead_letters") == 1, what="dl")
    url = f"http://127.0.0.1:{engine.env['VAGT_METRICS_PORT']}/metrics"

    def scrape() -> str:
        return urllib.request.urlopen(url, timeout=5).read().decode()

    text = wait_for(lambda: (t := scrape()) and 'vagt_alerts_opened_total{queue="emergency"} 1.0'
                    in t and t, what="metrics after the batches")
    assert 'vagt_dead_letters_total{reason="malformed"} 1.0' in text
    assert 'vagt_messages_received_total{lane="alarm"} 1.0' in text
    assert 'vagt_messages_received_total{lane="bulk"} 2.0' in text
    assert 'vagt_open_alerts{queue="emergency"} 1.0' in text
    assert 'vagt_received_to_committed_seconds_bucket{lane="alarm",le="0.25"}' in text


def test_the_metrics_exposition_passes_promtool(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1, what="alert")
    url = f"http://127.0.0.1:{engine.env['VAGT_METRICS_PORT']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_user_and_password_in_the_url_log_in_and_never_reach_the_log(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.env["VAGT_MQTT_URL"] = broker.auth_url
    engine.start().wait_ready()
    publish_as(broker, [(topic(topic_root, "OXI-0001", "telemetry"),
                         telemetry("OXI-0001", T0, spo2=97))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == 1, what="reading")
    assert broker.password not in engine.log()


def publish_as(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.username_pw_set(broker.user, broker.password)
    c.connect("127.0.0.1", broker.auth_port)
    c.loop_start()
    for t, p in messages:
        c.publish(t, p, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_two_engines_in_a_share_group_split_the_stream_and_store_each_message_once(
        engine: EngineProcess, broker: Broker, database_url, topic_root, tmp_path):
    ids = [f"GLU-{i:04d}" for i in range(20)]
    register(database_url, [(d, "Roche", "Accu-Chek Guide", "glucose_meter", "Odder") for d in ids])
    engine.env["VAGT_MQTT_SHARE_GROUP"] = "vagt"
    second = EngineProcess(dict(engine.env, VAGT_MQTT_CLIENT_ID=engine.env["VAGT_MQTT_CLIENT_ID"]
                                + "b", VAGT_METRICS_PORT=str(free_port())),
                           tmp_path / "engine2.log")
    try:
        engine.start().wait_ready()
        second.start().wait_ready()
        msgs = [(topic(topic_root, d, "telemetry"), telemetry(d, T0 + k, glucose=6.1))
                for k in range(50) for d in ids]
        publish(broker.port, msgs)
        # an engine counts a batch after its commit (and, in the bulk lane, after the
        # batch's rules' state is written in a second transaction): the readings can all be
        # there while the counters are still behind
        wait_for(lambda: sum(received_by(e) for e in (engine, second)) >= len(msgs),
                 what="every message counted as received")
        shares = [received_by(e) for e in (engine, second)]
        assert sum(shares) == len(msgs) and min(shares) > 0
        assert scalar(database_url, "SELECT count(*) FROM readings") == len(msgs)
    finally:
        second.stop()


def received_by(e: EngineProcess) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{e.env['VAGT_METRICS_PORT']}/metrics",
                                  timeout=5).read().decode()
    line = next((x for x in text.splitlines()
                 if x.startswith('vagt_messages_received_total{lane="bulk"}')), None)
    return 0 if line is None else int(float(line.split()[-1]))   # none: none counted yet
