"""One batch through decode, devices, store, rules and alerts, on the real database (no MQTT)."""

from __future__ import annotations

import dataclasses
import random
import time

import orjson
import psycopg
import pytest
from tests.app.conftest import DEVICES, alarm, query, register, scalar, telemetry

from vagt.alerts import policy
from vagt.app import store
from vagt.app.pipeline import Pipeline
from vagt.ingest.decode import decode_batch
from vagt.ingest.model import RawMessage
from vagt.privacy import contains_cpr
from vagt.rules import load_rules

ROOT = "vagt/v1"
T0 = time.time() - 3600


def make_pipeline(conn: psycopg.Connection) -> Pipeline:
    return Pipeline.load(conn, topic_root=ROOT, rules=load_rules(None), clock=time.time)


def msg(device_id: str, channel: str, payload: bytes) -> RawMessage:
    return RawMessage(f"{ROOT}/dev/{device_id}/{channel}", payload, time.time())


def run_batches(database_url: str, *batches: list[RawMessage]) -> Pipeline:
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = make_pipeline(conn)
        for batch in batches:
            out = p.process(conn, batch)
            conn.commit()
            p.after_commit(out)
    return p


def battery(device_id: str, t: float, level: float) -> RawMessage:
    return msg(device_id, "status",
               orjson.dumps({"time": t, "status": {"battery": level}}))


def test_a_repeated_low_battery_updates_the_open_alert_instead_of_opening_another(database_url):
    register(database_url, DEVICES)
    run_batches(database_url, [battery("OXI-0001", T0, 12)], [battery("OXI-0001", T0 + 60, 10)])
    assert query(database_url, "SELECT rule, status, repeat_count FROM alerts") == [
        ("battery_low", "open", 2)]


def test_a_recharged_battery_resolves_its_alert_and_the_audit_says_the_rule_did(database_url):
    register(database_url, DEVICES)
    run_batches(database_url, [battery("OXI-0001", T0, 12)], [battery("OXI-0001", T0 + 60, 20)],
                [battery("OXI-0001", T0 + 120, 90)])
    assert query(database_url, "SELECT status, resolved_by FROM alerts") == [
        ("resolved", "rule:battery_low")]
    assert query(database_url, "SELECT action, from_status, to_status FROM alert_audit "
                               "ORDER BY id") == [("open", None, "open"),
                                                  ("resolve", "open", "resolved")]


def test_battery_low_again_soon_after_it_was_resolved_reopens_the_alert(database_url):
    register(database_url, DEVICES)
    run_batches(database_url, [battery("OXI-0001", T0, 12)], [battery("OXI-0001", T0 + 60, 90)],
                [battery("OXI-0001", T0 + 120, 11)])
    assert query(database_url, "SELECT status, reopen_count, repeat_count FROM alerts") == [
        ("open", 1, 2)]


def test_battery_low_again_after_the_reopen_window_opens_a_new_alert(database_url,
                                                                     monkeypatch):
    monkeypatch.setattr(policy, "_installed", policy.AlertPolicy(reopen_window_s=0))
    register(database_url, DEVICES)
    run_batches(database_url, [battery("OXI-0001", T0, 12)], [battery("OXI-0001", T0 + 60, 90)],
                [battery("OXI-0001", T0 + 120, 11)])
    assert query(database_url, "SELECT status FROM alerts ORDER BY id") == [("resolved",),
                                                                           ("open",)]


def test_rows_of_an_unknown_device_are_not_stored_and_its_message_is_a_dead_letter(database_url):
    register(database_url, DEVICES)
    run_batches(database_url, [msg("OXI-0001", "telemetry", telemetry("OXI-0001", T0, spo2=97)),
                               msg("GHOST-1", "telemetry", telemetry("GHOST-1", T0, spo2=97)),
                               msg("GHOST-1", "alarm", alarm("GHOST-1", T0 + 1))])
    assert scalar(database_url, "SELECT count(*) FROM readings") == 1
    assert scalar(database_url, "SELECT count(*) FROM events") == 0
    assert query(database_url, "SELECT reason, device_id FROM dead_letters ORDER BY id") == [
        ("unknown_device", "GHOST-1"), ("unknown_device", "GHOST-1")]
    # the service centre hears of the unknown device; its alarm also goes to the call centre
    assert query(database_url, "SELECT rule, device_id, queue, repeat_count FROM alerts "
                               "ORDER BY rule") == [
        ("unknown_device", "GHOST-1", "service_centre", 2),
        ("unregistered_alarm", "GHOST-1", "emergency", 1)]


def test_an_unknown_device_that_differs_from_a_registered_one_only_in_case_is_told_so(
        database_url):
    """Device ids are case-sensitive: the service centre finds OXI-0001 in the registry and
    must be told why oxi-0001 is not it."""
    register(database_url, DEVICES)
    run_batches(database_url, [msg("oxi-0001", "telemetry", telemetry("oxi-0001", T0, spo2=97)),
                               msg("GHOST-1", "telemetry", telemetry("GHOST-1", T0, spo2=97))])
    details = dict(query(database_url, "SELECT device_id, detail FROM dead_letters"))
    assert details["oxi-0001"].endswith(
        "is not registered; the registry has 'OXI-0001', which differs from it only in case: "
        "device ids are case-sensitive, so the device must send as 'OXI-0001'")
    assert "differs" not in details["GHOST-1"]
    summaries = dict(query(database_url, "SELECT device_id, summary FROM alerts"))
    assert "the registry has 'OXI-0001', which differs from it only in case" in summaries[
        "oxi-0001"]


def test_a_device_id_shaped_like_a_cpr_number_reaches_no_alert_and_no_outbox(database_url):
    """An installer may name a device by its citizen's CPR number; the registry refuses such
    an id, but a device can still send under it. Its alarm reaches the emergency queue, the
    number does not reach the alerts nor the call centre's systems (the dead letter keeps
    the message whole, for `vagt privacy scan` and `scrub`)."""
    register(database_url, DEVICES)
    run_batches(database_url, [msg("010190-1234", "alarm", alarm("010190-1234", T0)),
                               msg("0101901234", "telemetry", telemetry("0101901234", T0,
                                                                        spo2=97))])
    assert query(database_url, "SELECT rule, device_id, queue FROM alerts ORDER BY rule") == [
        ("unknown_device", "[cpr removed]", "service_centre"),
        ("unregistered_alarm", "[cpr removed]", "emergency")]
    stored = query(database_url, "SELECT fingerprint, summary, labels::text FROM alerts "
                                 "UNION ALL SELECT '', '', payload::text FROM alert_outbox")
    assert not any(contains_cpr(text) for row in stored for text in row)
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 2


def test_a_cpr_number_in_an_alarms_event_code_reaches_neither_alert_nor_outbox(database_url):
    """A code may hold digits ("alarm.0101901234", or SenML's `vs` "0101901234"): the alarm
    reaches the emergency queue, the number not the call centre's systems."""
    register(database_url, DEVICES)
    run_batches(database_url, [msg("ALM-0001", "alarm", orjson.dumps(
        {"time": T0, "events": [{"code": "alarm.0101901234"}]}))])
    stored = query(database_url, "SELECT rule, summary, labels::text FROM alerts "
                                 "UNION ALL SELECT '', '', payload::text FROM alert_outbox")
    assert [r[0] for r in stored if r[0]] == ["personal_alarm"]
    assert not any(contains_cpr(text) for row in stored for text in row), stored


def test_a_cpr_number_with_a_no_break_space_in_a_topic_reaches_no_alert(database_url):
    """The summary quotes the topic as `repr` writes it (`\\xa0`), after which the number
    was not seen as one."""
    register(database_url, DEVICES)
    run_batches(database_url, [RawMessage(f"{ROOT}/dev/010190\u00a01234/alarm",
                                          alarm("ALM-0001", T0), time.time())])
    stored = query(database_url, "SELECT rule, device_id, summary FROM alerts ORDER BY rule")
    assert stored and not any("010190" in text for row in stored for text in row), stored


@pytest.mark.parametrize("payload", [
    {"time": T0, "readings": [{"metric": "spo2", "value": 97, "unit": "%"},
                              {"metric": "spo2", "value": 80, "unit": "%"}]},
    [{"bt": T0, "n": "spo2", "v": 97}, {"n": "spo2", "v": 80}],            # SenML, no `t`
    {"time": T0, "readings": [{"metric": "battery", "value": 90, "unit": "%"}],
     "status": {"battery": 10}},
], ids=["canonical", "senml", "reading-and-status"])
def test_two_values_of_one_metric_at_one_time_are_a_dead_letter_not_one_dropped(database_url,
                                                                              payload):
    """The table holds one value a device, metric and time: the second was dropped unsaid,
    a saturation of 80 % stored as 97 % (or kept, by the order of the array)."""
    register(database_url, DEVICES)
    run_batches(database_url, [msg("OXI-0001", "telemetry", orjson.dumps(payload))])
    assert query(database_url, "SELECT count(*) FROM readings") == [(0,)]
    [(reason, detail)] = query(database_url, "SELECT reason, detail FROM dead_letters")
    assert reason == "schema" and "has two values at one time" in detail


def test_the_same_value_twice_at_one_time_is_stored_once(database_url):
    register(database_url, DEVICES)
    run_batches(database_url, [msg("OXI-0001", "telemetry", orjson.dumps(
        {"time": T0, "readings": [{"metric": "spo2", "value": 97, "unit": "%"},
                                  {"metric": "spo2", "value": 97, "unit": "%"}]}))])
    assert query(database_url, "SELECT value FROM readings") == [(97.0,)]
    assert query(database_url, "SELECT count(*) FROM dead_letters") == [(0,)]


def oximeter(t: float, **metrics: float) -> RawMessage:
    return msg("OXI-0001", "telemetry", telemetry("OXI-0001", t, **metrics))


def test_another_value_for_a_stored_reading_is_a_dead_letter_saying_what_was_stored(
        database_url):
    """ON CONFLICT DO NOTHING took it for a redelivery: a saturation of 80 % for a time that
    held 97 % was dropped unsaid (and the rules saw it, though it was never stored)."""
    register(database_url, DEVICES)
    second = oximeter(T0, spo2=80, pulse=61)
    run_batches(database_url, [oximeter(T0, spo2=97)], [second], [second])   # and redelivered
    [(reason, detail, payload)] = query(database_url,
                                        "SELECT reason, detail, payload FROM dead_letters")
    assert (reason, bytes(payload)) == ("conflict", second.payload)
    assert detail.startswith("metric 'spo2' at ")
    assert " is 80 % in this message, but 97 % is stored for that time, from an earlier " \
           "message; " in detail
    assert detail.endswith("(topic vagt/v1/dev/OXI-0001/telemetry); the rest of the message "
                           "was used, this reading was not")
    assert query(database_url, "SELECT metric, value FROM readings ORDER BY metric") == [
        ("pulse", 61.0), ("spo2", 97.0)]
    assert query(database_url, "SELECT rule FROM alerts") == []   # no spo2_critical at 80 %


def test_a_battery_level_other_than_the_stored_one_changes_neither_the_device_nor_alerts(
        database_url):
    register(database_url, DEVICES)
    run_batches(database_url, [battery("OXI-0001", T0, 90)], [battery("OXI-0001", T0, 10)])
    assert query(database_url, "SELECT reason FROM dead_letters") == [("conflict",)]
    assert scalar(database_url, "SELECT battery FROM devices WHERE device_id = 'OXI-0001'") == 90
    assert query(database_url, "SELECT rule FROM alerts") == []


def test_of_two_messages_in_a_batch_with_two_values_the_first_is_stored_the_other_kept_dead(
        database_url):
    register(database_url, DEVICES)
    first, second = oximeter(T0, spo2=97), oximeter(T0, spo2=80)
    run_batches(database_url, [first, second])
    assert query(database_url, "SELECT value FROM readings") == [(97.0,)]
    assert query(database_url, "SELECT reason, payload FROM dead_letters") == [
        ("conflict", second.payload)]


def test_a_message_sent_again_with_the_same_values_is_no_dead_letter(database_url):
    """A redelivery (or a device sending a reading again beside a new one) stores what is new
    and nothing else."""
    register(database_url, DEVICES)
    first = oximeter(T0, spo2=97)
    run_batches(database_url, [first], [first, oximeter(T0, spo2=97, pulse=61)])
    assert query(database_url, "SELECT metric, value FROM readings ORDER BY metric") == [
        ("pulse", 61.0), ("spo2", 97.0)]
    assert query(database_url, "SELECT count(*) FROM dead_letters") == [(0,)]


def test_a_conflict_is_found_beside_a_redelivery_and_new_readings_of_other_devices(
        database_url):
    """Only the devices with a reading not stored now are compared: each is found."""
    register(database_url, DEVICES)
    run_batches(database_url, [oximeter(T0, spo2=97),
                               msg("OXI-0002", "telemetry", telemetry("OXI-0002", T0, spo2=95))],
                [oximeter(T0, spo2=97),
                 msg("OXI-0002", "telemetry", telemetry("OXI-0002", T0, spo2=90)),
                 msg("BPM-0001", "telemetry", telemetry("BPM-0001", T0, pulse=70))])
    assert query(database_url, "SELECT device_id, reason FROM dead_letters") == [
        ("OXI-0002", "conflict")]
    assert query(database_url, "SELECT device_id, value FROM readings ORDER BY device_id") == [
        ("BPM-0001", 70.0), ("OXI-0001", 97.0), ("OXI-0002", 95.0)]


def test_an_alarm_with_a_reading_other_than_the_stored_one_is_still_the_alarm(database_url):
    register(database_url, DEVICES)
    run_batches(database_url, [battery("ALM-0001", T0, 90)], [msg("ALM-0001", "alarm", (
        orjson.dumps({"time": T0, "events": [{"code": "alarm.fall"}],
                      "readings": [{"metric": "battery", "value": 80, "unit": "%"}]})))])
    assert query(database_url, "SELECT rule, queue FROM alerts") == [
        ("personal_alarm", "emergency")]
    [detail] = [d for d, in query(database_url, "SELECT detail FROM dead_letters")]
    assert " is 80 % in this message, but 90 % is stored for that time" in detail


def sim_changed(details: dict[str, object], severity: str = "warning") -> RawMessage:
    return msg("OXI-0002", "status", orjson.dumps(
        {"time": T0, "events": [{"code": "power.sim_changed", "severity": severity,
                                 "details": details}]}))


def test_another_event_for_a_stored_device_code_and_time_is_a_dead_letter(database_url):
    """ON CONFLICT DO NOTHING took it for a redelivery: a SIM change reported again for the
    same second with another card's number was dropped unsaid. It is kept as a dead letter
    saying what was stored; sent again as it was, it is nothing (a redelivery)."""
    register(database_url, DEVICES)
    first = sim_changed({"iccid": "8945000000000000001"})
    second = sim_changed({"iccid": "8945000000000000002"}, severity="info")
    run_batches(database_url, [first], [first], [second], [second])
    [(reason, detail, payload)] = query(database_url,
                                        "SELECT reason, detail, payload FROM dead_letters")
    assert (reason, bytes(payload)) == ("conflict", second.payload)
    assert detail.startswith("event 'power.sim_changed' at ")
    assert ("has severity 'info' and details {\"iccid\": \"8945000000000000002\"} in this "
            "message, but severity 'warning' and details {\"iccid\": \"8945000000000000001\"}"
            " are stored for that time, from an earlier message; a device, code and time hold "
            "one event") in detail
    assert query(database_url, "SELECT details->>'iccid' FROM events") == [
        ("8945000000000000001",)]


def test_of_two_messages_in_a_batch_with_two_events_at_one_key_the_first_is_stored(
        database_url):
    register(database_url, DEVICES)
    first, second = sim_changed({"slot": 1}), sim_changed({"slot": 2})
    run_batches(database_url, [first, second])
    assert query(database_url, "SELECT details->>'slot' FROM events") == [("1",)]
    assert query(database_url, "SELECT reason, payload FROM dead_letters") == [
        ("conflict", second.payload)]


def test_an_iccid_sent_as_a_number_in_event_details_is_stored_with_every_digit(database_url):
    """orjson reads an integer wider than 64 bits as a float: 8.9450123456789e+19 was
    stored, the SIM card's number lost."""
    register(database_url, DEVICES)
    run_batches(database_url, [msg("OXI-0001", "status", b'{"time": %d, "events": [{"code": '
                                   b'"power.sim_changed", "details": {"iccid": '
                                   b'89450123456789012345, "slot": 1}}]}' % T0)])
    assert query(database_url, "SELECT details::text FROM events") == [
        ('{"slot": 1, "iccid": "89450123456789012345"}',)]


def test_an_alarm_from_an_unregistered_device_reaches_the_emergency_queue(database_url):
    """A personal alarm installed in someone's home but never recorded in the registry: its
    button must still reach a person, read or not, and only its alarms do."""
    register(database_url, DEVICES)
    run_batches(database_url, [
        msg("GHOST-1", "alarm", alarm("GHOST-1", T0)),
        msg("GHOST-2", "telemetry", telemetry("GHOST-2", T0, spo2=97)),   # not an alarm
    ], [msg("GHOST-1", "alarm", alarm("GHOST-1", T0 + 30)),
        msg("GHOST-1", "alarm", b'{"events": [')])                   # and one cut short
    rows = query(database_url, "SELECT device_id, queue, severity, priority, repeat_count, "
                               "summary FROM alerts WHERE rule = 'unregistered_alarm'")
    [(device, queue, severity, priority, repeats, summary)] = rows
    assert (device, queue, severity, priority, repeats) == (
        "GHOST-1", "emergency", "critical", 1, 3)
    assert summary.startswith("an alarm from GHOST-1, which is not registered: someone may "
                              "need help")
    assert query(database_url, "SELECT reason, count(*) FROM dead_letters "
                               "GROUP BY reason ORDER BY reason") == [
        ("malformed", 1), ("unknown_device", 3)]


def test_an_alarm_on_a_topic_with_no_device_id_reaches_the_emergency_queue(database_url):
    """The alarm subscription takes any topic level as the device: one with a space, a letter
    outside ASCII or too long is no device id, so no device can be registered under it,
    and its alarm would be heard by nobody. It reaches the emergency queue, quoting the
    level; a telemetry message on such a topic is the service centre's alone."""
    register(database_url, DEVICES)
    run_batches(database_url, [RawMessage(f"{ROOT}/dev/{level}/{channel}", payload, time.time())
                               for level in ("ALM 0002", "ALM-Ø002", "A" * 65)
                               for channel, payload in (
                                   ("alarm", alarm("ALM 0002", T0)),
                                   ("telemetry", telemetry("ALM 0002", T0, spo2=97)))])
    assert query(database_url, "SELECT rule, device_id, queue, severity, repeat_count "
                               "FROM alerts ORDER BY rule, device_id") == [
        ("bad_topic", "A" * 64, "service_centre", "warning", 2),
        ("bad_topic", "ALM 0002", "service_centre", "warning", 2),
        ("bad_topic", "ALM-Ø002", "service_centre", "warning", 2),
        ("unregistered_alarm", "A" * 64, "emergency", "critical", 1),
        ("unregistered_alarm", "ALM 0002", "emergency", "critical", 1),
        ("unregistered_alarm", "ALM-Ø002", "emergency", "critical", 1)]
    assert query(database_url, "SELECT reason, count(*) FROM dead_letters GROUP BY reason") \
        == [("bad_topic", 6)]


def test_a_message_on_a_channel_vagt_does_not_read_is_a_dead_letter_and_one_alert_per_device(
        database_url):
    """The bulk lane reads every device topic: a device set to a channel vagt does not read
    (or a level too many or too few) is kept, and the service centre hears of it, once,
    labelled as the device's other alerts are."""
    register(database_url, DEVICES)
    reading = telemetry("OXI-0001", T0, spo2=97)
    run_batches(database_url, [msg("OXI-0001", "measurements", reading),
                               msg("OXI-0001", "telemetry/extra", reading)],
                [RawMessage(f"{ROOT}/dev/OXI-0001", reading, time.time())])
    [(rule, device, queue, severity, repeats, municipality, summary)] = query(
        database_url, "SELECT rule, device_id, queue, severity, repeat_count, "
                      "labels->>'municipality', summary FROM alerts")
    assert (rule, device, queue, severity, repeats, municipality) == (
        "bad_topic", "OXI-0001", "service_centre", "warning", 3, "Aarhus")
    assert summary == (f"a message on '{ROOT}/dev/OXI-0001', a topic vagt does not read: set "
                       "the device that sent it (or its gateway) to publish on "
                       f"{ROOT}/dev/{{its id}}/telemetry, alarm or status, which vagt reads "
                       "(kept as a dead letter, which says what is wrong)")
    details = [d for d, in query(database_url, "SELECT detail FROM dead_letters ORDER BY id")]
    assert [d.split("; ")[0] for d in details] == [
        f"topic '{ROOT}/dev/OXI-0001/measurements' ends in channel 'measurements'",
        f"topic '{ROOT}/dev/OXI-0001/telemetry/extra' has 3 level(s) after '{ROOT}/dev/' "
        "where 2 belong",
        f"topic '{ROOT}/dev/OXI-0001' has 1 level(s) after '{ROOT}/dev/' where 2 belong"]
    assert all(f"{ROOT}/dev/{{device_id}}/{{telemetry|alarm|status}}" in d for d in details)
    assert scalar(database_url, "SELECT count(*) FROM readings") == 0


@pytest.mark.parametrize(("channel", "payload", "why"), [
    ("alarms", alarm("ALM-0001", T0), "a level of it begins with 'alarm'; it names alarm.fall"),
    ("Alarm", b"", "a level of it begins with 'alarm'"),
    ("alarm/fall", b'{"events": [', "a level of it begins with 'alarm'"),
    ("events", alarm("ALM-0001", T0, "alarm.panic"), "it names alarm.panic"),
    ("senml", orjson.dumps([{"bn": "ALM-0001:", "n": "alarm", "vs": "fall"}]),
     "it names alarm.fall"),
    # named by its base name alone, which SenML allows (RFC 8428: bn + n)
    ("senml", orjson.dumps([{"bn": "urn:dev:ow:ALM-0001:alarm", "vs": "fall"}]),
     "it names alarm.fall"),
], ids=["alarms", "Alarm-empty", "alarm-fall-broken", "events", "senml", "senml-bn"])   # T0 is now: a
# payload in the id differs between xdist's workers, which then refuse to run
def test_an_alarm_on_a_channel_vagt_does_not_read_reaches_the_personal_alarms_queue(
        database_url, channel, payload, why):
    """A personal alarm set to publish on 'alarms' (or alarm/fall, or with the right events on
    a wrong channel): someone may have pressed the button. The call centre hears of it as of
    an alarm that could not be read, with the device's labels; the service centre, that the
    device must be set right. Its events are not stored: the device is set wrong."""
    register(database_url, DEVICES)
    run_batches(database_url, [msg("ALM-0001", channel, payload)])
    rows = query(database_url, "SELECT rule, queue, severity, labels->>'municipality', summary "
                               "FROM alerts ORDER BY rule")
    assert [r[:4] for r in rows] == [("bad_topic", "service_centre", "warning", "Randers"),
                                     ("unreadable_alarm", "emergency", "critical", "Randers")]
    assert rows[1][4] == (f"a message from ALM-0001 that may be an alarm came on "
                          f"'{ROOT}/dev/ALM-0001/{channel}', a topic vagt does not read as an "
                          f"alarm ({why}): contact the citizen; the service centre is to set the "
                          f"device to publish alarms on {ROOT}/dev/ALM-0001/alarm (kept as a "
                          "dead letter)")
    assert scalar(database_url, "SELECT count(*) FROM events") == 0


def test_an_alarm_on_a_stray_topic_from_an_unregistered_device_reaches_the_emergency_queue(
        database_url):
    register(database_url, DEVICES)
    run_batches(database_url, [msg("GHOST-1", "alarms", alarm("GHOST-1", T0)),
                               msg("OXI-0001", "events", b'{"events": [{"code": "dose.taken"}]}')])
    assert query(database_url, "SELECT rule, device_id, queue FROM alerts ORDER BY rule, "
                               "device_id") == [
        ("bad_topic", "GHOST-1", "service_centre"), ("bad_topic", "OXI-0001", "service_centre"),
        ("unregistered_alarm", "GHOST-1", "emergency")]


def test_the_alarm_channels_copy_on_the_bulk_lane_is_left_to_the_alarm_lane(database_url):
    """One alarm, one event, one alert: the bulk lane's copy does nothing, not even count
    as a repeat."""
    register(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = make_pipeline(conn)
        fall = msg("ALM-0001", "alarm", alarm("ALM-0001", T0))
        alarm_lane = p.process(conn, [fall], state_apart=True)
        p.write_state(conn, alarm_lane)
        bulk_lane = p.process(conn, [fall, msg("ALM-0001", "alarm", b"not json")],
                              skip={"alarm"})
        conn.commit()
    assert (bulk_lane.skipped, bulk_lane.decoded, bulk_lane.dead) == (2, 0, [])
    assert query(database_url, "SELECT rule, repeat_count FROM alerts") == [("personal_alarm", 1)]
    assert scalar(database_url, "SELECT count(*) FROM events") == 1
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 0


def test_an_unknown_device_gets_one_alert_however_many_messages_it_sends(database_url):
    register(database_url, DEVICES)
    ghost = [msg(d, "telemetry", telemetry(d, T0 + k, spo2=97))
             for k in range(5) for d in ("GHOST-1", "GHOST-2")]
    later = [msg("GHOST-1", "telemetry", telemetry("GHOST-1", T0 + 60 + k, spo2=97))
             for k in range(3)]
    run_batches(database_url, ghost, later, later)  # the last one is a redelivery
    assert query(database_url, "SELECT device_id, status, repeat_count, summary FROM alerts "
                               "ORDER BY device_id") == [
        ("GHOST-1", "open", 8,
         f"unregistered device GHOST-1 is sending (last on {ROOT}/dev/GHOST-1/telemetry)"),
        ("GHOST-2", "open", 5,
         f"unregistered device GHOST-2 is sending (last on {ROOT}/dev/GHOST-2/telemetry)")]
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 13


def test_an_unknown_device_sending_the_same_heartbeat_after_its_alert_was_resolved_is_told_again(
        database_url):
    """A heartbeat without a time is the same bytes each time. The service centre resolved
    the unknown_device alert (it registered the device, it thought, under a typo): the
    device still sends, and the service centre hears of it again, not after the 90 days its
    first dead letter is kept. The copy does not count on an alert still open."""
    from vagt.alerts import resolve

    register(database_url, DEVICES)
    heartbeat = b'{"status": {"battery": 80}}'
    run_batches(database_url, [msg("GHOST-1", "status", heartbeat)],
                [msg("GHOST-1", "status", heartbeat)])
    assert query(database_url, "SELECT status, repeat_count FROM alerts") == [("open", 1)]
    with psycopg.connect(database_url) as conn:
        resolve(conn, 1, "anna", "registered it", code="resolved")
    run_batches(database_url, [msg("GHOST-1", "status", heartbeat)])
    assert query(database_url, "SELECT rule, device_id, status, reopen_count FROM alerts") == [
        ("unknown_device", "GHOST-1", "open", 1)]
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 1


def test_a_device_on_a_stray_topic_sending_the_same_bytes_after_its_alert_was_resolved_is_told_again(
        database_url):
    """The service centre resolved the bad_topic alert, believing the device set right; it
    still sends its heartbeat where vagt does not read, and the alert opens again."""
    from vagt.alerts import resolve

    register(database_url, DEVICES)
    heartbeat = b'{"status": {"battery": 80}}'
    run_batches(database_url, [msg("OXI-0001", "measurements", heartbeat)])
    with psycopg.connect(database_url) as conn:
        resolve(conn, 1, "anna", "set the device's topic", code="resolved")
    run_batches(database_url, [msg("OXI-0001", "measurements", heartbeat)])
    assert query(database_url, "SELECT rule, device_id, status, reopen_count FROM alerts") == [
        ("bad_topic", "OXI-0001", "open", 1)]


def test_a_device_registered_while_running_is_found_without_a_restart(database_url):
    register(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = make_pipeline(conn)
        p.process(conn, [msg("NEW-1", "telemetry", telemetry("NEW-1", T0, spo2=97))])
        conn.commit()
        register(database_url, [("NEW-1", "Nonin", "3230", "pulse_oximeter", "Struer")])
        p.process(conn, [msg("NEW-1", "telemetry", telemetry("NEW-1", T0 + 1, spo2=97))])
        conn.commit()
    assert scalar(database_url, "SELECT count(*) FROM readings") == 1
    assert scalar(database_url, "SELECT count(*) FROM dead_letters") == 1


def test_skipped_message_counters_are_counted_as_gaps_per_device(database_url):
    register(database_url, DEVICES)
    run_batches(database_url,
                [msg("OXI-0001", "telemetry", telemetry("OXI-0001", T0 + k, seq=k, spo2=97))
                 for k in (1, 2, 5)],
                [msg("OXI-0001", "telemetry", telemetry("OXI-0001", T0 + 9, seq=9, spo2=97)),
                 msg("OXI-0002", "telemetry", telemetry("OXI-0002", T0, seq=0, spo2=97))])
    assert query(database_url, "SELECT device_id, last_seq, seq_gaps FROM devices "
                               "WHERE last_seq IS NOT NULL ORDER BY device_id") == [
        ("OXI-0001", 9, 5), ("OXI-0002", 0, 0)]


def test_the_widest_counters_are_counted_and_a_wider_one_is_refused(database_url):
    """Counters go up to 2**62 - 1, so that the gaps of the widest jump fit the database's
    bigint: a device's first batch with 0 and the highest counts what lies between. A wider
    counter is a schema dead letter, saying what is allowed, not a failed batch."""
    register(database_url, DEVICES)
    top = 2**62 - 1
    run_batches(database_url, [msg("OXI-0001", "telemetry",
                                   telemetry("OXI-0001", T0 + k, seq=seq, spo2=97))
                               for k, seq in enumerate((0, top))],
                [msg("OXI-0002", "telemetry", telemetry("OXI-0002", T0, seq=2**63 - 1,
                                                        spo2=97))])
    assert query(database_url, "SELECT device_id, last_seq, seq_gaps FROM devices "
                               "WHERE last_seq IS NOT NULL") == [("OXI-0001", top, top - 1)]
    [(reason, detail)] = query(database_url, "SELECT reason, detail FROM dead_letters")
    assert reason == "schema" and f"seq must be a whole number from 0 to {top}" in detail


def counted(database_url: str, *batches: list[int], device: str = "OXI-0001") -> tuple[int, int]:
    """(last counter, gaps) of `device` after batches of messages with these counters."""
    run_batches(database_url, *[[msg(device, "telemetry", telemetry(device, T0 + k, seq=k,
                                                                      spo2=97)) for k in b]
                                for b in batches])
    return tuple(query(database_url, "SELECT last_seq, seq_gaps FROM devices "
                                     "WHERE device_id = %s", (device,))[0])  # type: ignore[return-value]


@pytest.mark.parametrize("batches, expected", [
    pytest.param([[1, 2, 5], [3, 4]], (5, 0), id="late messages fill their gaps"),
    pytest.param([[1, 2, 5], [3, 4], [3, 4, 5]], (5, 0), id="a redelivery fills nothing twice"),
    pytest.param([[1, 3, 5], [2], [7], [6]], (7, 1), id="only what never came is a gap"),
    pytest.param([[1000, 1002], [999]], (1002, 1), id="nothing before the first is missing"),
    pytest.param([[498, 500], [1, 2, 3], [501]], (501, 1), id="a counter that starts again"),
    pytest.param([list(range(1, 201))], (200, 0), id="a flush of 200 in one batch"),
    pytest.param([list(range(0, 101)), list(range(90, 201))], (200, 0),
                 id="a redelivery with a flush of 100 more in one batch"),
    pytest.param([list(range(0, 101)), [k for k in range(90, 201) if k != 150]], (200, 1),
                 id="a redelivery with a flush of 100 more, one missing"),
    pytest.param([list(range(0, 101)), list(range(30, 201))], (200, 0),
                 id="a redelivery from 70 below the top with a flush of 100 more"),
    pytest.param([[k for k in range(0, 101) if k != 95], list(range(90, 201))], (200, 0),
                 id="a flush that brings a missing one back with 100 more"),
    pytest.param([[0, 62], list(range(0, 200))], (199, 0),
                 id="a flush that fills the gaps of the first batch"),
    pytest.param([[k for k in range(1, 201) if k not in (50, 120, 121)]], (200, 3),
                 id="a flush of 200 missing 3"),
    # 2..199 missing, then 100..199 come: the 62 within 63 of the top fill their gaps, the
    # older ones are taken for a counter that started again (see migration 0013)
    pytest.param([[1], [200], list(range(100, 200))], (200, 136),
                 id="late ones more than 63 below the top fill nothing"),
])
def test_message_counters_that_never_came_are_gaps_whatever_the_order(database_url, batches,
                                                                    expected):
    register(database_url, DEVICES)
    assert counted(database_url, *batches) == expected


def test_two_engines_sharing_a_devices_messages_count_no_gaps(database_url):
    """With $share the broker hands a device's messages to either engine: each engine's
    batches have every other counter, and the other engine's come in between."""
    register(database_url, DEVICES)
    with psycopg.connect(database_url) as a, psycopg.connect(database_url) as b:
        engines = []
        for conn in (a, b):
            store.prepare_connection(conn)
            engines.append((conn, make_pipeline(conn)))
        for k in range(1, 41, 4):         # a: k, k+1; b: k+2, k+3; b commits first each time
            for (conn, p), seqs in ((engines[1], (k + 2, k + 3)), (engines[0], (k, k + 1))):
                out = p.process(conn, [msg("OXI-0001", "telemetry", telemetry(
                    "OXI-0001", T0 + s, seq=s, spo2=97)) for s in seqs])
                conn.commit()
                p.after_commit(out)
    assert query(database_url, "SELECT last_seq, seq_gaps FROM devices "
                               "WHERE device_id = 'OXI-0001'") == [(40, 0)]


def test_an_alarm_and_telemetry_in_one_batch_are_committed_together(database_url):
    register(database_url, DEVICES)
    run_batches(database_url, [msg("ALM-0001", "alarm", alarm("ALM-0001", T0, "alarm.panic")),
                               msg("OXI-0001", "telemetry", telemetry("OXI-0001", T0, pulse=60))])
    assert query(database_url, "SELECT summary, queue FROM alerts") == [
        ("alarm.panic from ALM-0001", "emergency")]
    assert scalar(database_url, "SELECT count(*) FROM readings") == 1


def test_a_redelivered_alarm_does_not_reopen_the_alert_an_operator_resolved(database_url):
    from vagt.alerts import resolve

    register(database_url, DEVICES)
    fall = [msg("ALM-0001", "alarm", alarm("ALM-0001", T0))]
    run_batches(database_url, fall)
    with psycopg.connect(database_url) as conn:
        resolve(conn, 1, "anna", "citizen is fine", code="false_alarm")
    run_batches(database_url, fall)  # the broker delivers the same message again
    assert query(database_url, "SELECT id, status, repeat_count FROM alerts") == [
        (1, "resolved", 1)]


def test_a_new_alarm_soon_after_the_resolved_one_reopens_it_for_the_call_centre(database_url):
    from vagt.alerts import resolve

    register(database_url, DEVICES)
    run_batches(database_url, [msg("ALM-0001", "alarm", alarm("ALM-0001", T0))])
    with psycopg.connect(database_url) as conn:
        resolve(conn, 1, "anna", "citizen is fine", code="false_alarm")
    run_batches(database_url, [msg("ALM-0001", "alarm", alarm("ALM-0001", T0 + 600))])
    assert query(database_url, "SELECT id, status, claimed_by, reopen_count FROM alerts") == [
        (1, "open", None, 1)]
    assert query(database_url, "SELECT actor, action, from_status, to_status FROM alert_audit "
                               "WHERE alert_id = 1 ORDER BY id DESC LIMIT 1") == [
        ("rule:personal_alarm", "reopen", "resolved", "open")]


def test_a_new_alarm_after_the_reopen_window_opens_a_new_alert(database_url, monkeypatch):
    from vagt.alerts import resolve

    monkeypatch.setattr(policy, "_installed",
                        dataclasses.replace(policy.load_policy(None), reopen_window_s=0.0))
    register(database_url, DEVICES)
    run_batches(database_url, [msg("ALM-0001", "alarm", alarm("ALM-0001", T0))])
    with psycopg.connect(database_url) as conn:
        resolve(conn, 1, "anna", "citizen is fine", code="false_alarm")
    run_batches(database_url, [msg("ALM-0001", "alarm", alarm("ALM-0001", T0 + 600))])
    assert query(database_url, "SELECT status FROM alerts ORDER BY id") == [("resolved",),
                                                                           ("open",)]


def test_a_redelivered_batch_changes_neither_alerts_nor_device_state(database_url):
    register(database_url, DEVICES)
    batch = [battery("OXI-0001", T0, 9), msg("ALM-0001", "alarm", alarm("ALM-0001", T0)),
             msg("OXI-0002", "telemetry", telemetry("OXI-0002", T0, seq=4, spo2=97))]
    # every column of the device but `seen_before`, the rules' note of how far they had
    # seen its rows before its latest batch (the redelivered one, then)
    devices = "SELECT to_jsonb(d) - 'seen_before' FROM devices d ORDER BY device_id"
    run_batches(database_url, batch)
    snapshot = (query(database_url, "SELECT * FROM alerts ORDER BY id"),
                query(database_url, devices),
                query(database_url, "SELECT count(*) FROM alert_audit"))
    run_batches(database_url, batch, batch)
    assert (query(database_url, "SELECT * FROM alerts ORDER BY id"),
            query(database_url, devices),
            query(database_url, "SELECT count(*) FROM alert_audit")) == snapshot


@pytest.mark.parametrize("state_apart", [False, True], ids=["bulk_lane", "alarm_lane"])
def test_an_alarm_delivered_again_with_a_newer_one_is_counted_once(database_url, state_apart):
    """The engine committed the first alarm and stopped before the broker had its
    acknowledgement: the broker sends it again, in one batch with the device's next alarm.
    The call centre sees two alarms, not three."""
    register(database_url, DEVICES)
    first = msg("ALM-0001", "alarm", alarm("ALM-0001", T0))
    run_batches(database_url, [first])
    with psycopg.connect(database_url) as conn:    # a new process: nothing in memory
        store.prepare_connection(conn)
        p = make_pipeline(conn)
        out = p.process(conn, [first, msg("ALM-0001", "alarm", alarm("ALM-0001", T0 + 30))],
                        state_apart=state_apart)
        if state_apart:
            conn.commit()
            p.write_state(conn, out)
        conn.commit()
    assert out.events == 1
    assert query(database_url, "SELECT rule, repeat_count, extract(epoch FROM last_fired_at)::float8 "
                               "FROM alerts") == [
        ("personal_alarm", 2, pytest.approx(T0 + 30, abs=1e-3))]


def test_an_alarm_sent_twice_in_one_batch_is_counted_once(database_url):
    register(database_url, DEVICES)
    fall = msg("ALM-0001", "alarm", alarm("ALM-0001", T0))
    run_batches(database_url,
                [fall, fall, msg("ALM-0001", "alarm", alarm("ALM-0001", T0 + 30, "alarm.button"))])
    assert scalar(database_url, "SELECT count(*) FROM events") == 2
    assert query(database_url, "SELECT rule, repeat_count FROM alerts") == [
        ("personal_alarm", 2)]


def test_a_batch_partly_stored_before_stores_only_its_new_rows_and_still_does_the_rest(
        database_url):
    """Readings go in with a plain INSERT first; one already stored (a redelivery mixed with
    new messages, a message sent twice in one batch) sends the batch through ON CONFLICT DO
    NOTHING instead, in the same transaction: nothing else of the batch is lost."""
    register(database_url, DEVICES)
    old = msg("OXI-0002", "telemetry", telemetry("OXI-0002", T0, spo2=97))
    old_event = msg("ALM-0001", "alarm", alarm("ALM-0001", T0))
    run_batches(database_url, [old, old_event])
    new = msg("OXI-0002", "telemetry", telemetry("OXI-0002", T0 + 60, spo2=96))
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = make_pipeline(conn)
        out = p.process(conn, [old, new, new, old_event, battery("OXI-0001", T0, 9)])
        conn.commit()
    assert (out.readings, out.events) == (2, 0)   # the new spo2 and the battery level
    assert query(database_url, "SELECT extract(epoch FROM time)::float8, value FROM readings "
                               "WHERE device_id = 'OXI-0002' ORDER BY time") == [
        (pytest.approx(T0, abs=1e-3), 97.0), (pytest.approx(T0 + 60, abs=1e-3), 96.0)]
    assert scalar(database_url, "SELECT count(*) FROM events") == 1
    assert query(database_url, "SELECT rule, device_id FROM alerts ORDER BY id") == [
        ("personal_alarm", "ALM-0001"), ("battery_low", "OXI-0001")]
    assert scalar(database_url, "SELECT extract(epoch FROM last_seen)::float8 FROM devices "
                                "WHERE device_id = 'OXI-0002'") == pytest.approx(T0 + 60, abs=1e-3)


def test_a_key_given_twice_is_a_dead_letter_naming_it_and_nothing_of_it_is_stored(
        database_url):
    register(database_url, DEVICES)
    t = int(T0)
    run_batches(database_url, [
        # a saturation of 82 followed by 97: the parser would keep 97 and hide the low one
        msg("OXI-0001", "telemetry", b'{"time": %d, "readings": '
                                     b'[{"metric": "spo2", "value": 82, "value": 97}]}' % t),
        msg("OXI-0002", "telemetry", b'[{"n": "spo2", "v": 82, "t": %d, "v": 97}]' % t),
        # another device's id, then its own: the device check would see only the second
        msg("OXI-0001", "telemetry", b'{"device_id": "OXI-0002", "device_id": "OXI-0001", '
                                     b'"time": %d, "readings": [{"metric": "pulse", '
                                     b'"value": 70}]}' % t),
        msg("OXI-0002", "telemetry", telemetry("OXI-0002", T0, spo2=96)),   # a good one
    ])
    assert query(database_url, "SELECT device_id, metric, value FROM readings") == [
        ("OXI-0002", "spo2", 96.0)]
    assert query(database_url, "SELECT device_id, reason, detail FROM dead_letters "
                               "ORDER BY received_at") == [
        ("OXI-0001", "schema", "key 'value' appears twice in one object; each key may appear "
         "once (which of the two counts would be a guess) (topic vagt/v1/dev/OXI-0001/telemetry)"),
        ("OXI-0002", "schema", "key 'v' appears twice in one object; each key may appear "
         "once (which of the two counts would be a guess) (topic vagt/v1/dev/OXI-0002/telemetry)"),
        ("OXI-0001", "schema", "key 'device_id' appears twice in one object; each key may "
         "appear once (which of the two counts would be a guess) "
         "(topic vagt/v1/dev/OXI-0001/telemetry)"),
    ]


def test_an_alarm_that_cannot_be_read_still_reaches_the_emergency_queue(database_url):
    """A registered personal alarm whose message is unreadable may still be someone who
    pressed the button: the message is a dead letter, and the call centre hears of it."""
    register(database_url, DEVICES)
    run_batches(database_url, [
        msg("ALM-0001", "alarm", b'{"events": [{"code": "alarm.fall"'),      # cut short
        msg("ALM-0001", "alarm", b'{"events": [{"code": "alarm.fall"'),      # and again
        msg("OXI-0001", "telemetry", b'{"readings": ['),           # not an alarm: no alert
        msg("NOPE-0001", "alarm", b'{"events": ['),    # not registered: see the test above
    ])
    assert query(database_url, "SELECT reason, device_id FROM dead_letters ORDER BY id") == [
        ("malformed", "ALM-0001"), ("malformed", "OXI-0001"), ("malformed", "NOPE-0001")]
    [(rule, device, queue, severity, repeats, summary)] = query(
        database_url, "SELECT rule, device_id, queue, severity, repeat_count, summary "
                      "FROM alerts WHERE device_id = 'ALM-0001'")
    assert (rule, device, queue, severity, repeats) == (
        "unreadable_alarm", "ALM-0001", "emergency", "critical", 2)
    assert query(database_url, "SELECT rule FROM alerts WHERE device_id = 'NOPE-0001'") == [
        ("unregistered_alarm",)]
    assert "could not be read (malformed): contact the citizen" in summary


def test_an_unreadable_alarm_names_the_codes_it_could_read(database_url):
    """A device whose clock reset to 1970 sends a fall: refused for its time, the call
    centre is still told it was a fall, not a panic."""
    register(database_url, DEVICES)
    run_batches(database_url, [msg("ALM-0001", "alarm", orjson.dumps(
        {"time": 0, "events": [{"code": "alarm.fall"}, {"code": "Not A Code"}]}))])
    [(rule, summary)] = query(database_url, "SELECT rule, summary FROM alerts")
    assert rule == "unreadable_alarm"
    assert summary.startswith("an alarm from ALM-0001 could not be read (bad_time; it names "
                              "alarm.fall): contact the citizen")


def test_an_empty_alarm_message_says_it_may_be_the_clearing_of_a_retained_copy(database_url):
    """The alert about a retained alarm says to clear the copy with an empty retained
    message, which the broker passes on to the engine: the operator is told it may be that."""
    register(database_url, DEVICES)
    run_batches(database_url, [msg("ALM-0001", "alarm", b"")])
    [(rule, queue, summary)] = query(database_url, "SELECT rule, queue, summary FROM alerts")
    assert (rule, queue) == ("unreadable_alarm", "emergency")
    assert summary.startswith("an empty message came on the alarm topic of ALM-0001 "
                              "(vagt/v1/dev/ALM-0001/alarm): if the service centre just "
                              "cleared a retained copy there")


def test_with_state_apart_the_alarm_commits_first_and_the_device_state_after(database_url):
    register(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = make_pipeline(conn)
        out = p.process(conn, [msg("ALM-0001", "alarm", alarm("ALM-0001", T0))],
                        state_apart=True)
        conn.commit()
        assert query(database_url, "SELECT rule FROM alerts") == [("personal_alarm",)]
        assert query(database_url, "SELECT last_seen FROM devices "
                                   "WHERE device_id = 'ALM-0001'") == [(None,)]
        p.write_state(conn, out)
        conn.rollback()  # its commit failed: the lane writes the same rows again
        p.write_state(conn, out)
        conn.commit()
        p.after_commit(out)
    assert scalar(database_url, "SELECT extract(epoch FROM last_seen)::float8 FROM devices "
                                "WHERE device_id = 'ALM-0001'") == pytest.approx(T0, abs=1e-3)


def test_a_lost_device_that_sends_is_stored_and_the_service_centre_hears_of_it(database_url):
    register(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE devices SET status = 'lost' WHERE device_id = 'OXI-0002'")
    run_batches(database_url,
                [msg("OXI-0002", "telemetry", telemetry("OXI-0002", T0 + k, spo2=96))
                 for k in range(3)] +
                [msg("OXI-0001", "telemetry", telemetry("OXI-0001", T0, spo2=96))])
    assert scalar(database_url, "SELECT count(*) FROM readings") == 4
    assert query(database_url, "SELECT rule, device_id, queue, repeat_count, summary "
                               "FROM alerts") == [
        ("device_out_of_service", "OXI-0002", "service_centre", 3,
         f"OXI-0002 is registered as lost but is sending (last on {ROOT}/dev/OXI-0002/telemetry)")]


def test_a_device_time_is_read_as_the_database_keeps_it_to_the_microsecond(database_url):
    """When late rows come, the rules evaluate a device's stored rows again, with the times
    the database gives back: the times of rows read from messages must be the same, to the
    last bit, or a 10-minute `for` held in one and not in the other."""
    register(database_url, DEVICES)
    rng = random.Random(1)
    times = [T0 + 60 * k + rng.random() * 1e-6 for k in range(300)]
    msgs = [msg("OXI-0001", "telemetry", telemetry("OXI-0001", t, spo2=95.0)) for t in times]
    decoded = decode_batch(msgs, topic_root=ROOT, max_payload_bytes=65536,
                           now=time.time()).r_time
    run_batches(database_url, msgs)
    stored = [r[0] for r in query(
        database_url, "SELECT extract(epoch FROM time)::float8 FROM readings "
                      "WHERE device_id = 'OXI-0001' ORDER BY time")]
    assert stored == sorted(decoded)
    assert sum(s != t for s, t in zip(stored, sorted(times))) > 20   # the test means it


def test_an_alert_of_a_rule_that_clears_after_a_time_is_not_cleared_from_under_its_operator(
        database_url):
    """`device_fault` clears 12 hours after the last fault event (`clear_after`): no news,
    not news that the fault is mended. An operator holding the alert (arranging a technician,
    say) resolves it; one nobody took is resolved, saying why."""
    from vagt.alerts import acknowledge, claim

    register(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = make_pipeline(conn)
        for device in ("OXI-0001", "OXI-0002"):
            out = p.process(conn, [msg(device, "alarm", alarm(device, T0, "fault.sensor"))])
            conn.commit()
            p.after_commit(out)
        claim(conn, 1, "anna")
        acknowledge(conn, 1, "anna", "technician booked for tomorrow")
        # 13 hours after we heard the faults (dated T0, an hour before: judged on their clock)
        out = p.tick(conn, time.time() + 13 * 3600, sweep=True)
        conn.commit()
        p.after_commit(out)
    # (the personal alarm, deployed and never heard, is silent by then: not this test's)
    assert query(database_url, "SELECT device_id, status, resolved_by, note FROM alerts "
                               "WHERE rule = 'device_fault' ORDER BY id") == [
        ("OXI-0001", "acknowledged", None, "technician booked for tomorrow"),
        ("OXI-0002", "resolved", "rule:device_fault",
         "cleared: no new event for 12 h (the rule's clear_after), which is not a sign that it "
         "ended")]
