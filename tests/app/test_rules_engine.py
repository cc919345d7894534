"""Rules through the real engine on Mosquitto and PostgreSQL: a `for` duration across
batches, the absence sweep, a missed dose by the timer, and a SIGHUP reload that keeps state."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
from tests.app.conftest import (
    EngineProcess,
    publish,
    query,
    register,
    scalar,
    telemetry,
    topic,
    wait_for,
)
from tests.support import Broker

NOW = time.time()
SPO2_FOR = """
[[rule]]
name = "spo2_low"
kind = "threshold"
metric = "spo2"
below = 90
clear_at = 93
for = "10m"
"""
DEVICES = [
    ("OXI-0001", "Nonin", "3230", "pulse_oximeter", "Aarhus"),
    ("DSP-0001", "Evondos", "E300", "medicine_dispenser", "Randers"),
    ("GW-0001", "Telit", "HomeHub 4G", "gateway", "Viborg"),
]


def start(engine: EngineProcess, tmp_path: Path, rules: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(rules)
    engine.env.update({"VAGT_RULES": str(path), "VAGT_RULES_TICK_S": "0.2"})
    engine.start().wait_ready()
    return path


def spo2(broker: Broker, root: str, t: float, value: float, readings_before: int,
         database_url: str) -> None:
    """One reading, committed before the next is sent (so each is a batch of its own)."""
    publish(broker.port, [(topic(root, "OXI-0001", "telemetry"),
                           telemetry("OXI-0001", t, spo2=value))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM readings")
             == readings_before + 1, what="the reading")


def test_a_for_duration_held_across_batches_opens_the_alert_and_recovery_clears_it(
        engine, broker, database_url, topic_root, tmp_path):
    register(database_url, DEVICES)
    start(engine, tmp_path, SPO2_FOR)
    t0 = NOW - 3600
    for k, (dt, v) in enumerate([(0, 88), (300, 87)]):
        spo2(broker, topic_root, t0 + dt, v, k, database_url)
    assert scalar(database_url, "SELECT count(*) FROM alerts") == 0
    spo2(broker, topic_root, t0 + 600, 86, 2, database_url)
    assert wait_for(lambda: query(database_url, "SELECT rule, status FROM alerts"),
                    what="the alert") == [("spo2_low", "open")]
    spo2(broker, topic_root, t0 + 900, 95, 3, database_url)
    wait_for(lambda: query(database_url, "SELECT status FROM alerts") == [("resolved",)],
             what="the alert to resolve itself")


def test_the_absence_sweep_opens_an_alert_for_a_silent_device_and_its_message_clears_it(
        engine, broker, database_url, topic_root, tmp_path):
    register(database_url, DEVICES)
    with_seen = "UPDATE devices SET last_seen = to_timestamp(%s) WHERE device_id = 'GW-0001'"
    import psycopg

    with psycopg.connect(database_url) as conn:
        conn.execute(with_seen, (NOW - 7200,))
    start(engine, tmp_path, '[[rule]]\nname = "silent"\nkind = "absence"\nafter = "1h"\n'
                            'types = ["gateway"]\n')
    wait_for(lambda: query(database_url, "SELECT rule, device_id, status FROM alerts"),
             what="the sweep's alert")
    assert query(database_url, "SELECT rule, device_id, status FROM alerts") == [
        ("silent", "GW-0001", "open")]
    assert "event=absence_sweep_lock_taken" in engine.log()
    publish(broker.port, [(topic(topic_root, "GW-0001", "telemetry"),
                           telemetry("GW-0001", time.time() - 5, signal=-70))])
    wait_for(lambda: query(database_url, "SELECT status FROM alerts") == [("resolved",)],
             what="the alert to clear")


def heartbeat_now(broker: Broker, root: str, device_id: str) -> None:
    """A status dated now: the device's clock is right. (A device heard only with an old
    message may as well have a clock that far behind: its deadlines wait on its clock.)"""
    publish(broker.port, [(topic(root, device_id, "status"), orjson.dumps(
        {"time": time.time(), "status": {"battery": 80}}))])


def test_a_dose_due_and_never_taken_opens_a_missed_dose_alert_by_the_timer(
        engine, broker, database_url, topic_root, tmp_path):
    register(database_url, DEVICES)
    start(engine, tmp_path, '[[rule]]\nname = "missed_dose"\nkind = "sequence"\n'
                            'first = ["dose.due"]\nthen = ["dose.taken"]\nwithin = "30m"\n'
                            'queue = "home_care"\n')
    due = NOW - 3 * 3600
    publish(broker.port, [(topic(topic_root, "DSP-0001", "telemetry"), orjson.dumps(
        {"time": due, "events": [{"code": "dose.due"}]}))])
    heartbeat_now(broker, topic_root, "DSP-0001")
    alert = wait_for(lambda: query(
        database_url, "SELECT rule, queue, extract(epoch FROM opened_at)::float8 FROM alerts"),
        what="the missed dose")
    assert alert[0][:2] == ("missed_dose", "home_care")
    assert abs(alert[0][2] - (due + 1800)) < 1  # at the deadline, by device time


def test_sighup_reloads_rules_keeping_the_state_of_unchanged_ones_and_refuses_a_bad_file(
        engine, broker, database_url, topic_root, tmp_path):
    register(database_url, DEVICES)
    path = start(engine, tmp_path, SPO2_FOR)
    t0 = NOW - 3600
    spo2(broker, topic_root, t0, 88, 0, database_url)  # the `for` timer starts
    path.write_text(SPO2_FOR + '[[rule]]\nname = "alarm"\nkind = "event"\ncodes = ["alarm.*"]\n')
    assert engine.proc is not None
    engine.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=rules_reloaded rules=2 changed=alarm" in engine.log(),
             what="the reload")
    spo2(broker, topic_root, t0 + 600, 87, 1, database_url)  # 10 minutes: the timer survived
    wait_for(lambda: query(database_url, "SELECT rule FROM alerts") == [("spo2_low",)],
             what="spo2_low")
    path.write_text('[[rule]]\nname = "x"\nkind = "threshold"\nmetric = "spo2"\n')
    engine.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=rules_reload_refused" in engine.log(), what="the refusal")
    assert "'below' of rule 'x'" in engine.log()
    publish(broker.port, [(topic(topic_root, "OXI-0001", "alarm"), orjson.dumps(
        {"time": t0 + 700, "events": [{"code": "alarm.fall"}]}))])
    wait_for(lambda: ("alarm",) in query(database_url, "SELECT rule FROM alerts"),
             what="the alarm rule, still loaded")
    assert engine.proc.poll() is None
    # the rules decide which alarms reach the queue: each reload, and each refused, is in
    # the audit trail, with the host and login of the engine the signal reached
    audit = query(database_url, "SELECT actor, action, details->'changed', "
                                "details->>'error' LIKE %s, details ? 'login' FROM audit_log "
                                "WHERE subject = 'rules' ORDER BY id", ("%'below' of rule 'x'%",))
    assert audit == [("signal:SIGHUP", "rules.reload", ["alarm"], None, True),
                     ("signal:SIGHUP", "rules.reload_refused", None, True, True)]


def test_a_rules_file_saved_in_latin_1_is_refused_on_sighup_and_the_timer_goes_on(
        engine, broker, database_url, topic_root, tmp_path):
    # A file edited on a Windows desk ("Sønderborg" in CP1252/Latin-1): the reload is refused
    # naming the file, and the rules' timer, which reads it, keeps finding missed doses.
    register(database_url, DEVICES)
    missed_dose = ('[[rule]]\nname = "missed_dose"\nkind = "sequence"\nfirst = ["dose.due"]\n'
                   'then = ["dose.taken"]\nwithin = "30m"\nqueue = "home_care"\n')
    path = start(engine, tmp_path, missed_dose)
    path.write_bytes(("# Sønderborg\n" + missed_dose).encode("latin-1"))
    assert engine.proc is not None
    engine.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=rules_reload_refused" in engine.log(), what="the refusal")
    assert f"{path}: not UTF-8 text" in engine.log()
    publish(broker.port, [(topic(topic_root, "DSP-0001", "telemetry"), orjson.dumps(
        {"time": NOW - 3 * 3600, "events": [{"code": "dose.due"}]}))])
    heartbeat_now(broker, topic_root, "DSP-0001")
    wait_for(lambda: query(database_url, "SELECT rule FROM alerts") == [("missed_dose",)],
             what="the timer's missed dose after the refused reload")
    assert "event=thread_crashed" not in engine.log()
    assert engine.proc.poll() is None
