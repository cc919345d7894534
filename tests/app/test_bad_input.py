"""Bad input through the real broker and a running engine: a dead letter with a reason the
service centre can read, the engine going on, every message acknowledged once its dead
letter is committed, and counted; an alarm is never lost to a field it does not need."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Iterator

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.app.conftest import (
    EngineProcess,
    publish,
    query,
    scalar,
    telemetry,
    topic,
    wait_for,
)
from tests.support import Broker

from vagt.alerts import actions

T0 = time.time() - 3600


def metrics(engine: EngineProcess) -> dict[str, float]:
    """The engine's counters and gauges by name and labels, as scraped."""
    url = f"http://127.0.0.1:{engine.env['VAGT_METRICS_PORT']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {name: float(value) for line in text.splitlines()
            if line and not line.startswith("#") for name, value in [line.rsplit(" ", 1)]}


def test_an_unreadable_alarm_is_in_its_citizens_municipality_for_its_operators(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """A Randers operator sees only Randers' alerts: an alarm that could not be read is one
    from a device the registry has deployed in Randers, and must be among them."""
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), orjson.dumps(
        {"time": T0, "events": [{"code": "Alarm Fall"}]}))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1, what="alert")
    with psycopg.connect(database_url) as conn:
        [alert] = actions.list_alerts(conn, municipality="Randers")
    assert (alert.rule, alert.queue, alert.device_id) == ("unreadable_alarm", "emergency",
                                                          "ALM-0001")
    assert alert.labels["type"] == "personal_alarm"


ALARM_BESIDE = {
    "battery": ({"status": {"battery": 120}}, "impossible_value", "status.battery: battery 120 %"),
    "reading": ({"readings": [{"metric": "pulse", "value": 71, "unit": "furlong"}]},
                "unknown_unit", "readings[0].unit: unit 'furlong'"),
    "field": ({"batery": 80}, "schema", "the message has unknown field 'batery'"),
    "firmware": ({"status": {"firmware": "\u202e9.2.1"}}, "schema",
                 "status.firmware must be a string of 1 to 64 printable characters, got "
                 "'\\u202e9.2.1': it holds U+202E RIGHT-TO-LEFT OVERRIDE (its character 1)"),
}


@pytest.mark.parametrize("beside", ALARM_BESIDE.values(), ids=list(ALARM_BESIDE))
def test_an_alarm_beside_a_bad_field_it_does_not_need_is_the_alarm_and_the_rest_a_dead_letter(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices, beside):
    """The call centre gets the alarm as an alarm (its code, its time, its routing), not an
    unreadable one, when only a reading, the status or an unknown field beside its event is
    bad; the message is kept whole as a dead letter saying what was refused and that its
    events were used."""
    extra, reason, words = beside
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), orjson.dumps(
        {"time": T0, "events": [{"code": "alarm.fall"}], **extra}))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1, what="alert")
    assert query(database_url, "SELECT rule, summary, queue, labels->>'municipality', "
                               "extract(epoch FROM opened_at)::float8 FROM alerts") == [
        ("personal_alarm", "alarm.fall from ALM-0001", "emergency", "Randers",
         pytest.approx(T0, abs=1e-3))]
    [(got, detail)] = query(database_url, "SELECT reason, detail FROM dead_letters")
    assert got == reason and detail.startswith(words)
    assert "its events were used" in detail
    assert scalar(database_url, "SELECT count(*) FROM readings") == 0
    # the alarm lane's process reports its counts to the engine's endpoint after the commit
    counted = wait_for(lambda: (m := metrics(engine)).get(
        'vagt_messages_acked_total{lane="alarm"}') == 1 and m, what="the alarm acknowledged")
    assert counted[f'vagt_dead_letters_total{{reason="{reason}"}}'] == 1


def test_odd_input_through_the_broker_is_each_a_dead_letter_saying_what_and_none_is_lost(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """What the decoders' own tests hold, here from a device through Mosquitto and a running
    engine: each message is a dead letter with a reason the service centre can read, every
    one is acknowledged and counted, and the good one after them is stored."""
    engine.env["VAGT_MAX_PAYLOAD_BYTES"] = "12000"
    engine.start().wait_ready()
    oxi = topic(topic_root, "OXI-0001", "telemetry")
    good = telemetry("OXI-0001", T0, spo2=97)
    at_limit = telemetry("OXI-0001", T0 + 1, pulse=60)
    at_limit += b" " * (12000 - len(at_limit))   # whitespace after the document is JSON's
    sent = [
        (oxi, b'{"readings": [{"metric": "spo2", "value": 97, "unit": "\xff"}]}',
         "malformed", "not UTF-8 JSON"),
        (oxi, good + b"\x00", "malformed", "unexpected content after document"),
        (oxi, b"\xef\xbb\xbf" + good, "malformed", "byte order mark"),
        (oxi, b"", "malformed", "empty document"),
        (oxi, b"[" * 5000 + b"]" * 5000, "malformed", "depth limit exceeded"),
        (oxi, b'{"readings": [{"metric": "spo2", "value": NaN}]}', "malformed", ""),
        (oxi, b'{"readings": [{"metric": "spo2", "value": 1e400}]}', "malformed", "infinity"),
        (oxi, b'{"seq": 1180591620717411303424, "readings": [{"metric": "spo2", "value": 97}]}',
         "schema", "seq must be a whole number from 0 to 4611686018427387903"),
        (oxi, b'{"readings": [{"metric": "spo2", "value": 1180591620717411303424}]}',
         "impossible_value", "readings[0].value: spo2 1.18059e+21 % is outside"),
        (oxi, b'"spo2 97"', "schema", "must be a JSON object (canonical format) or an array"),
        (oxi, b'{"readings": [{"metric": "spo2", "value": "97"}]}', "schema",
         "readings[0].value must be a number, got '97'"),
        (oxi, orjson.dumps({"time": T0 + 86400 * 365, "readings": [{"metric": "spo2",
                                                                     "value": 97}]}),
         "bad_time", "s in the future, more than the 300 s allowed"),
        (oxi, orjson.dumps({"time": -86400, "readings": [{"metric": "spo2", "value": 97}]}),
         "bad_time", "before 2000-01-01"),
        (oxi, b'[{"n": "spo2", "v": 82, "v": 97, "x": ' + b"[" * 300 + b"]" * 300 + b"}]",
         "schema", "key 'v' appears twice in one object"),
        (oxi, b"x" * 12001, "payload_too_large", "the payload of 12001 bytes is over the limit"),
        (topic(topic_root, "OXI\u20100001", "telemetry"), good, "bad_topic",
         "(U+2010 HYPHEN), is none of them"),
        (topic(topic_root, "X" * 5000, "telemetry"), good, "bad_topic", "it has 5000"),
        (topic(topic_root, "oxi-0001", "telemetry"), telemetry("oxi-0001", T0, spo2=97),
         "unknown_device", "the registry has 'OXI-0001', which differs from it only in case"),
    ]
    publish(broker.port, [(t, p) for t, p, _, _ in sent])
    publish(broker.port, [(t, p) for t, p, _, _ in sent[:3]])   # the same bytes again
    publish(broker.port, [(oxi, at_limit), (topic(topic_root, "OXI-0002", "telemetry"),
                                            telemetry("OXI-0002", T0, spo2=95))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings") == 2,
             what="the readings after the bad input")
    kept = query(database_url, "SELECT reason, detail FROM dead_letters ORDER BY id")
    assert [r for r, _ in kept] == [r for _, _, r, _ in sent]   # the same bytes kept once
    for (reason, detail), (_, _, _, words) in zip(kept, sent):
        assert words in detail, (reason, detail)
    assert scalar(database_url, "SELECT max(length(payload)) FROM dead_letters") == 12000
    n = len(sent) + 3 + 2
    # the receiving process counts its acknowledgements as the broker's socket takes them,
    # and the lane its messages after: either may be first on /metrics
    counted = wait_for(lambda: (m := metrics(engine)).get(
        'vagt_messages_acked_total{lane="bulk"}') == n and m.get(
        'vagt_messages_received_total{lane="bulk"}') == n and m,
        what="every one received and acknowledged")
    # dead letters kept: the same bytes again are counted apart, as kept before
    assert counted['vagt_dead_letters_total{reason="malformed"}'] == 7
    assert counted['vagt_dead_letters_kept_before_total{reason="malformed"}'] == 3
    assert counted['vagt_dead_letters_total{reason="bad_topic"}'] == 2
    assert engine.proc is not None and engine.proc.poll() is None


@contextlib.contextmanager
def storing_a_dead_letter_waits(database_url: str, broker: Broker,
                                topic_root: str) -> Iterator[None]:
    """Inside: a malformed message from OXI-0001 published, and the engine waiting for the
    dead_letters table (locked) to keep it: nothing of its batch committed or acknowledged.
    The lock goes at the end."""
    bad = (topic(topic_root, "OXI-0001", "telemetry"), b'{"readings": [')
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE dead_letters IN EXCLUSIVE MODE")
        publish(broker.port, [bad])
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM pg_stat_activity "
                                              "WHERE wait_event_type = 'Lock' "
                                              "AND datname = current_database()"),
                 what="the engine waiting to store the dead letter")
        yield


def test_a_dead_letter_is_acknowledged_only_once_committed_and_comes_again_if_it_was_not(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    engine.start().wait_ready()
    with storing_a_dead_letter_waits(database_url, broker, topic_root):
        assert metrics(engine).get('vagt_messages_acked_total{lane="bulk"}', 0) == 0
        engine.kill()
    engine.start().wait_ready()   # the broker sends it again (DUP), to the next run
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM dead_letters") == 1,
             what="the dead letter, from the message sent again")
    wait_for(lambda: metrics(engine).get('vagt_messages_acked_total{lane="bulk"}') == 1,
             what="acknowledged once committed")
    assert scalar(database_url, "SELECT reason FROM dead_letters") == "malformed"


def test_a_dead_letter_the_broker_delivers_again_is_counted_as_one_dead_letter(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """The engine committed the dead letter but its acknowledgement did not reach the broker
    (the connection went first): the broker sends it again, and the same process takes it
    again. Ops alerting on `vagt_dead_letters_total` must see one bad message, not two."""
    engine.start().wait_ready()
    with storing_a_dead_letter_waits(database_url, broker, topic_root):
        broker.restart()   # cleanly: the broker keeps the message it is owed an ack for
        wait_for(lambda: engine.log().count("event=mqtt_connected") >= 4,
                 what="both sessions connected again")
    # the lock is gone: the batch commits, its ack is for a connection that is gone
    counted = wait_for(lambda: (m := metrics(engine)).get(
        'vagt_messages_received_total{lane="bulk"}') == 2 and m.get(
        'vagt_messages_acked_total{lane="bulk"}') == 1 and m,
        what="the message taken twice, acknowledged once")
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 1
    assert counted['vagt_dead_letters_total{reason="malformed"}'] == 1
    assert counted['vagt_dead_letters_kept_before_total{reason="malformed"}'] == 1


def test_a_cpr_number_a_device_sends_never_reaches_the_engines_log(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """The log is read by people and kept elsewhere, beyond `vagt privacy scan`: a number
    in a topic or quoted in a dead letter's detail is masked there."""
    engine.start().wait_ready()
    publish(broker.port, [
        (topic(topic_root, "010190-1234", "alarm"), b'{"events": [{"code": "alarm.fall"}]}'),
        (topic(topic_root, "OXI-0001", "telemetry"),
         b'{"readings": [{"metric": "cpr 010190-1234", "value": 97}]}')])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM dead_letters") == 2,
             what="the dead letters")
    wait_for(lambda: engine.log().count("event=dead_letter") == 2, what="their log lines")
    assert "010190-1234" not in engine.log()
    assert "[cpr removed]" in engine.log()


def test_clearing_a_retained_alarm_as_the_alert_says_reaches_the_engine_and_is_named(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """Mosquitto passes an empty retained message on to its subscribers (MQTT: "processed
    normally"): the alert the engine raises for it says what it may be."""
    engine.start().wait_ready()
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.publish(topic(topic_root, "ALM-0001", "alarm"), b"", qos=1,
                  retain=True).wait_for_publish(timeout=30)
    finally:
        c.disconnect()
        c.loop_stop()
    summary = wait_for(lambda: scalar(database_url, "SELECT max(summary) FROM alerts"),
                       what="the alert")
    assert "if the service centre just cleared a retained copy there" in summary
    assert scalar(database_url, "SELECT reason FROM dead_letters") == "malformed"


def dead_letter_log_fields(engine: EngineProcess, broker: Broker, sent: str) -> dict[str, str]:
    """An empty message published on `sent`, and the key=value fields of the engine's log
    line about its dead letter (a quoted value as it is written, quotes and all)."""
    publish(broker.port, [(sent, b"{}")])
    line = wait_for(lambda: next((x for x in engine.log().splitlines()
                                  if "event=dead_letter" in x), None), what="the log line")
    return dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line))


def test_a_topic_with_spaces_and_equals_signs_is_one_field_of_the_dead_letters_log_line(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """Mosquitto takes any character but NUL and control characters in a topic: a device's
    topic must not pass for further key=value fields of the engine's structured log."""
    engine.start().wait_ready()
    sent = topic(topic_root, "x reason=unknown_device alert_id=7", "telemetry")
    fields = dead_letter_log_fields(engine, broker, sent)
    assert fields["reason"] == "bad_topic" and "alert_id" not in fields
    assert orjson.loads(fields["topic"]) == sent
    assert orjson.loads(fields["detail"]).startswith(f"topic {sent!r}")


def test_a_character_that_is_not_printable_in_a_topic_is_escaped_in_the_engines_log(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """Mosquitto passes a right-to-left override in a topic: a log viewer would show
    '.../\\u202e1000-IXO/telemetry' as a device 'OXI-0001' that is not there. The log line
    holds the escape, and the topic read back from it is the one sent."""
    engine.start().wait_ready()
    sent = topic(topic_root, "\u202e1000-IXO", "telemetry")
    fields = dead_letter_log_fields(engine, broker, sent)
    assert fields["reason"] == "bad_topic"
    assert fields["topic"] == json.dumps(sent) and orjson.loads(fields["topic"]) == sent
    assert "\u202e" not in engine.log()
