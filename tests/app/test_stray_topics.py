"""A device on a topic the engine does not read, through Mosquitto and a running engine: the
bulk lane reads every device topic, keeps such a message as a dead letter and raises an
alert; an alarm-looking one reaches the call centre's queue; the alarm channel's copy on the
bulk lane counts nothing twice; a broker that refuses the wide subscription leaves the
engine reading its three channels, saying so."""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.app.conftest import EngineProcess, alarm, query, scalar, telemetry, topic, wait_for
from tests.app.test_bad_input import metrics
from tests.app.test_receiver import receiver_pids
from tests.app.test_retained import clear_retained, publish_retained
from tests.support import Broker, free_port, start_mosquitto, stop_mosquitto

T0 = time.time() - 3600


def test_a_message_on_a_channel_the_engine_does_not_read_is_a_dead_letter_with_an_alert(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    publish_v311(broker.port, topic(topic_root, "OXI-0001", "measurements"),
                 telemetry("OXI-0001", T0, spo2=97))
    alert = wait_for(lambda: query(database_url, "SELECT rule, device_id, queue FROM alerts"),
                     what="the service centre's alert")
    assert alert == [("bad_topic", "OXI-0001", "service_centre")]
    assert query(database_url, "SELECT reason, device_id FROM dead_letters") == [
        ("bad_topic", None)]
    assert scalar(database_url, "SELECT count(*) FROM readings") == 0


def test_a_retained_message_on_a_stray_topic_is_one_dead_letter_and_one_count_on_its_alert(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """An MQTT 3.1.1 session cannot ask not to be sent retained copies: the broker sends
    a device's retained message again at every start of the engine. The service centre's
    alert counts the device's messages, not the engine's restarts, and ops see no new dead
    letters."""
    engine.env["VAGT_MQTT_PROTOCOL"] = "4"
    engine.start().wait_ready()
    stray = topic(topic_root, "OXI-0001", "measurements")
    publish_retained(broker.port, [(stray, telemetry("OXI-0001", T0, spo2=97))])
    try:
        wait_for(lambda: query(database_url, "SELECT rule, repeat_count FROM alerts") == [
            ("bad_topic", 1)], what="the service centre's alert")
        for _ in range(2):
            assert engine.terminate() == 0
            engine.start().wait_ready()
            # the receiver's acknowledgement is counted as it is sent, the batch's counts
            # after: a scrape may come between them
            counted = wait_for(lambda: (m := metrics(engine)).get(
                'vagt_messages_acked_total{lane="bulk"}') == 1 and m.get(
                'vagt_messages_received_total{lane="bulk"}') == 1 and m.get(
                'vagt_dead_letters_kept_before_total{reason="bad_topic"}') == 1 and m,
                what="the retained copy, taken, acknowledged and counted as kept before")
            assert counted.get('vagt_dead_letters_total{reason="bad_topic"}', 0) == 0
        assert query(database_url, "SELECT rule, repeat_count FROM alerts") == [
            ("bad_topic", 1)]
        assert query(database_url, "SELECT reason FROM dead_letters") == [("bad_topic",)]
    finally:
        clear_retained(broker.port, [stray])


def test_an_alarm_published_on_alarms_reaches_the_call_centres_queue(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """A personal alarm set to 'alarms', publishing at MQTT 3.1.1 as most home devices do:
    the broker tells it nothing either way, so only the engine can."""
    engine.start().wait_ready()
    publish_v311(broker.port, topic(topic_root, "ALM-0001", "alarms"), alarm("ALM-0001", T0))
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 2,
             what="the call centre's and the service centre's alerts")
    assert query(database_url, "SELECT rule, queue, severity, labels->>'municipality' "
                               "FROM alerts ORDER BY rule") == [
        ("bad_topic", "service_centre", "warning", "Randers"),
        ("unreadable_alarm", "emergency", "critical", "Randers")]


def test_an_alarm_on_its_channel_is_one_alert_and_one_event_though_the_bulk_lane_sees_it(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    publish_v311(broker.port, topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))
    publish_v311(broker.port, topic(topic_root, "OXI-0001", "telemetry"),
                 telemetry("OXI-0001", T0, spo2=97))     # after the copy, on the bulk lane
    # the acknowledgement is counted as it is sent, the batch's counts after it: a scrape
    # between the two saw received 0 (once in the full suite)
    counted = wait_for(lambda: (m := metrics(engine)).get(
        'vagt_messages_acked_total{lane="bulk"}') == 2 and sum(
            m.get(f'vagt_messages_{c}_total{{lane="bulk"}}', 0) for c in ("skipped", "received"))
        == 2 and m, what="the bulk lane's two, acknowledged and counted")
    assert counted['vagt_messages_skipped_total{lane="bulk"}'] == 1
    assert counted['vagt_messages_received_total{lane="bulk"}'] == 1
    assert counted['vagt_mqtt_subscriptions_refused{lane="bulk"}'] == 0
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1, what="the alert")
    assert query(database_url, "SELECT rule, repeat_count FROM alerts") == [("personal_alarm", 1)]
    assert scalar(database_url, "SELECT count(*) FROM events") == 1
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 0


# --- a broker whose ACL refuses the wide subscription ----------------------------------------


ENGINE_USER, ENGINE_PASSWORD = "vagt-engine", "engine-test-only-pw"
DEVICE_USER, DEVICE_PASSWORD = "device", "device-test-only-pw"


@dataclass
class DynsecBroker:
    """A Mosquitto of this test's own whose ACL (the dynamic security plugin's, which judges
    subscriptions: an `acl_file` grants every one and filters what it delivers) lets the
    engine's user subscribe to `{root}/dev/+/+` and nothing wider, as a hand-written ACL
    from before might."""

    directory: Path
    topic_root: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    engine_reads: str = "+/+"     # below {root}/dev/: "#" is the ACL widened as the log says

    def start(self) -> None:
        security = self.directory / "dynamic-security.json"
        security.write_text(json.dumps({
            "clients": [_client(ENGINE_USER, ENGINE_PASSWORD, "engine"),
                        _client(DEVICE_USER, DEVICE_PASSWORD, "device")],
            "roles": [
                {"rolename": "engine", "acls": [
                    {"acltype": "subscribePattern",
                     "topic": f"{self.topic_root}/dev/{self.engine_reads}",
                     "allow": True}]},
                {"rolename": "device", "acls": [
                    {"acltype": "publishClientSend", "topic": f"{self.topic_root}/dev/#",
                     "allow": True}]}],
            "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                                 "subscribe": False, "unsubscribe": True}}))
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so\n"
            f"plugin_opt_config_file {security}\n"
            f"user {getpass.getuser()}\n"
            f"log_dest file {self.directory}/mosquitto.log\n")
        self.process = start_mosquitto(conf, self.port, self.directory / "mosquitto.log")

    def stop(self) -> None:
        stop_mosquitto(self.process)


def _client(user: str, password: str, role: str) -> dict[str, object]:
    salt = hashlib.sha256(user.encode()).digest()[:12]
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return {"username": user, "password": base64.b64encode(key).decode(),
            "salt": base64.b64encode(salt).decode(), "iterations": 101,
            "roles": [{"rolename": role}]}


@pytest.fixture
def narrow_broker(tmp_path: Path, topic_root: str) -> Iterator[DynsecBroker]:
    if not Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so").exists():
        pytest.fail("Mosquitto's dynamic security plugin is not installed (Debian's "
                    "mosquitto package has it)")
    b = DynsecBroker(tmp_path, topic_root)
    b.start()
    yield b
    b.stop()


def test_an_engine_refused_the_wide_subscription_reads_its_three_channels_and_says_so(
        engine: EngineProcess, narrow_broker: DynsecBroker, database_url, topic_root, devices):
    engine.env["VAGT_MQTT_URL"] = \
        f"mqtt://{ENGINE_USER}:{ENGINE_PASSWORD}@127.0.0.1:{narrow_broker.port}"
    engine.start().wait_ready()
    line = wait_for(lambda: next((x for x in engine.log().splitlines()
                                  if "event=mqtt_subscription_refused" in x), None),
                    what="the refusal in the log")
    assert "level=WARNING" in line and f"filter={topic_root}/dev/#" in line
    assert (f"reading={topic_root}/dev/+/telemetry,{topic_root}/dev/+/status" in line)
    assert f"let the user read {topic_root}/dev/# in the broker's ACL" in line
    publish_v311(narrow_broker.port, topic(topic_root, "OXI-0001", "telemetry"),
                 telemetry("OXI-0001", T0, spo2=97), (DEVICE_USER, DEVICE_PASSWORD))
    publish_v311(narrow_broker.port, topic(topic_root, "ALM-0001", "alarm"),
                 alarm("ALM-0001", T0), (DEVICE_USER, DEVICE_PASSWORD))
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == 1,
             what="the reading, on the bulk lane's own filters")
    wait_for(lambda: query(database_url, "SELECT rule FROM alerts") == [("personal_alarm",)],
             what="the alarm's alert")
    counted = metrics(engine)
    assert counted['vagt_mqtt_subscriptions_refused{lane="bulk"}'] == 1
    assert counted['vagt_mqtt_subscriptions_refused{lane="alarm"}'] == 0
    assert engine.proc is not None and engine.proc.poll() is None


def test_the_refused_subscriptions_gauge_clears_once_a_new_receiver_is_let_read(
        engine: EngineProcess, narrow_broker: DynsecBroker, database_url, topic_root, devices):
    """Ops widen the ACL as the log says; the bulk lane's receiver process starts again (it
    died, say) and its subscribe is granted: `vagt_mqtt_subscriptions_refused` says 0, not
    the count of the receiver before, whose refusal no longer holds."""
    engine.env["VAGT_MQTT_URL"] = \
        f"mqtt://{ENGINE_USER}:{ENGINE_PASSWORD}@127.0.0.1:{narrow_broker.port}"
    engine.start().wait_ready()
    wait_for(lambda: metrics(engine).get('vagt_mqtt_subscriptions_refused{lane="bulk"}') == 1,
             what="the refusal on /metrics")
    narrow_broker.stop()
    [pid] = receiver_pids(engine)
    os.kill(pid, signal.SIGKILL)
    narrow_broker.engine_reads = "#"
    narrow_broker.start()
    wait_for(lambda: len(receiver_pids(engine)) == 2, what="the receiver started again")
    wait_for(lambda: metrics(engine).get('vagt_mqtt_connected{lane="bulk"}') == 1,
             what="the new receiver's session up")
    publish_v311(narrow_broker.port, topic(topic_root, "OXI-0001", "measurements"),
                 telemetry("OXI-0001", T0, spo2=97), (DEVICE_USER, DEVICE_PASSWORD))
    wait_for(lambda: query(database_url, "SELECT reason FROM dead_letters") == [("bad_topic",)],
             what="a stray topic read: the wide subscription granted")
    wait_for(lambda: metrics(engine).get('vagt_mqtt_subscriptions_refused{lane="bulk"}') == 0,
             what="no refusal on /metrics", timeout=10)


def publish_v311(port: int, where: str, payload: bytes,
                 login: tuple[str, str] | None = None) -> None:
    """One message at QoS 1 as an MQTT 3.1.1 device sends it, acknowledged by the broker."""
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if login is not None:
        c.username_pw_set(*login)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        info = c.publish(where, payload, qos=1)
        info.wait_for_publish(timeout=30)
        assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()
