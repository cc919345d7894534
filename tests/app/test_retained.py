"""Retained messages, through `vagt run` on the real broker: the copy Mosquitto keeps of a
device's last retained message is sent again at every subscribe, and must never be stored as
a new alarm or a new sign of life."""

from __future__ import annotations

import time
import uuid

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.app.conftest import EngineProcess, query, scalar, topic, wait_for
from tests.support import Broker

SETTLE_S = 3.0   # the broker sends retained copies right after the subscribe: in milliseconds


def publish_retained(port: int, messages: list[tuple[str, bytes]]) -> None:
    """As a misconfigured device does: QoS 1 with the retain flag set."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                    protocol=paho.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for t, p in messages:
            info = c.publish(t, p, qos=1, retain=True)
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


def clear_retained(port: int, topics: list[str]) -> None:
    """The broker is shared by the tests: an empty retained message removes the copy."""
    publish_retained(port, [(t, b"") for t in topics])


@pytest.mark.parametrize("protocol", [5, 4], ids=["mqtt5", "mqtt311"])
def test_a_retained_alarm_and_status_are_not_taken_as_new_at_each_engine_start(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices,
        protocol: int) -> None:
    engine.env["VAGT_MQTT_PROTOCOL"] = str(protocol)
    alarm_topic = topic(topic_root, "ALM-0001", "alarm")
    status_topic = topic(topic_root, "ALM-0001", "status")
    engine.start().wait_ready()
    # Published while the engine is subscribed: this copy is live (it comes without the
    # flag) and is stored. Neither names its time: each takes its arrival's.
    publish_retained(broker.port, [
        (alarm_topic, orjson.dumps({"events": [{"code": "alarm.fall"}]})),
        (status_topic, orjson.dumps({"status": {"battery": 80}})),   # then the device dies
    ])
    try:
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM events") == 1
                 and scalar(database_url, "SELECT count(*) FROM readings") == 1,
                 what="the live alarm and status, stored")
        # the alarm lane writes the device's state after its own commit: last seen, once both
        # no row until it is written: waited for (scalar() of no row raised at once)
        [(seen,)] = wait_for(lambda: query(
            database_url, "SELECT last_seen FROM devices WHERE device_id = 'ALM-0001' AND "
                          "last_seen = (SELECT max(time) FROM (SELECT time FROM events UNION ALL "
                          "SELECT time FROM readings) AS t)"), what="the device's last seen")
        alerts = query(database_url, "SELECT id, rule, repeat_count, last_fired_at FROM alerts")

        for _ in range(2):          # the engine restarts; the broker still holds the copies
            assert engine.terminate() == 0
            time.sleep(1.1)         # so that a copy taken as new would have a later time
            engine.start().wait_ready()
            time.sleep(SETTLE_S)

        # one fall, one alert, and the device silent since the status it really sent
        assert query(database_url, "SELECT code FROM events") == [("alarm.fall",)]
        assert scalar(database_url, "SELECT count(*) FROM readings") == 1
        assert query(database_url, "SELECT id, rule, repeat_count, last_fired_at FROM alerts "
                                   "WHERE rule <> 'unreadable_alarm'") == alerts
        assert scalar(database_url,
                      "SELECT last_seen FROM devices WHERE device_id = 'ALM-0001'") == seen
        dead = query(database_url, "SELECT topic, reason, detail FROM dead_letters ORDER BY 1")
        if protocol == 5:
            # asked not to be sent retained copies at a subscribe: none came
            assert dead == []
        else:
            # MQTT 3.1.1 cannot ask: the copies come at every connection, flagged; each is
            # kept once as a dead letter that says what to do
            assert [(t, r) for t, r, _ in dead] == [(alarm_topic, "retained"),
                                                    (status_topic, "retained")]
            assert all("publish with retain=false" in d for _, _, d in dead)
            # an alarm not read is one a person looks at (pipeline's unreadable_alarm)
            [(device, summary)] = query(database_url, "SELECT device_id, summary FROM alerts "
                                                      "WHERE rule = 'unreadable_alarm'")
            assert device == "ALM-0001" and summary.startswith(
                "an old retained copy of an alarm from ALM-0001 came when vagt subscribed")
            # told once: the copy at the second start is the one kept at the first
            assert scalar(database_url, "SELECT repeat_count FROM alerts "
                                        "WHERE rule = 'unreadable_alarm'") == 1
    finally:
        clear_retained(broker.port, [alarm_topic, status_topic])


def test_an_alarm_left_retained_before_the_engine_first_subscribed_is_heard_once(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices) -> None:
    """A device left an alarm retained while vagt had no session (its first start, or a
    session that expired): the copy may be the only trace of someone who pressed the
    button. MQTT 5 asks for it when the subscription is new: a dead letter and the
    personal alarm's queue hears of it; a restart with the session kept does not again."""
    alarm_topic = topic(topic_root, "ALM-0001", "alarm")
    publish_retained(broker.port, [(alarm_topic,
                                    orjson.dumps({"events": [{"code": "alarm.fall"}]}))])
    try:
        engine.start().wait_ready()
        wait_for(lambda: query(database_url, "SELECT rule FROM alerts") == [
            ("unreadable_alarm",)], what="the retained copy's alert")
        assert query(database_url, "SELECT reason FROM dead_letters") == [("retained",)]
        assert engine.terminate() == 0
        engine.start().wait_ready()
        time.sleep(SETTLE_S)
        assert scalar(database_url, "SELECT repeat_count FROM alerts") == 1
        assert scalar(database_url, "SELECT count(*) FROM events") == 0
    finally:
        clear_retained(broker.port, [alarm_topic])
