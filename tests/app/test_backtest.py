"""A backtest replays stored history through the same rules and counts the same alerts that
live evaluation of that stream opened and cleared; and its command line."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import orjson
import psycopg
from tests.app.conftest import query, register, telemetry

from vagt.alerts.actions import resolve
from vagt.app import store
from vagt.app.cli import main
from vagt.app.pipeline import Pipeline
from vagt.devices import deploy, return_device
from vagt.devices import register as register_device
from vagt.devices.catalogue import load_catalogue
from vagt.ingest.model import RawMessage
from vagt.rules import load_rules
from vagt.rules.config import default_rules_path

ROOT = "vagt/v1"
T0 = float(int(time.time()) - 30 * 86400)
RULES = """
[[rule]]
name = "spo2_low"
kind = "threshold"
metric = "spo2"
below = 90
clear_at = 93
for = "10m"

[[rule]]
name = "mains"
kind = "event"
codes = ["power.mains_lost"]
clear_codes = ["power.mains_restored"]

[[rule]]
name = "missed_dose"
kind = "sequence"
first = ["dose.due"]
then = ["dose.taken"]
within = "30m"

[[rule]]
name = "weight_gain"
kind = "rate"
metric = "weight"
rise = 2
window = "3d"

[[rule]]
name = "silent"
kind = "absence"
after = "6h"
types = ["scale"]
"""
DEVICES = [
    ("OXI-A", "Nonin", "3230", "pulse_oximeter", "Aarhus"),
    ("OXI-B", "Nonin", "3230", "pulse_oximeter", "Samsø"),
    ("DSP-A", "Evondos", "E300", "medicine_dispenser", "Randers"),
    ("SCL-A", "Withings", "Body+", "scale", "Viborg"),
]


def events(device_id: str, t: float, code: str) -> bytes:
    return orjson.dumps({"device_id": device_id, "time": t, "events": [{"code": code}]})


def stream() -> list[list[RawMessage]]:
    """A day of traffic, in batches of uneven sizes."""
    msgs: list[tuple[float, str, str, bytes]] = []
    for k in range(0, 24 * 12):  # every 5 minutes
        t = T0 + k * 300
        low = 80 <= k < 90 or 200 <= k < 202  # 50 minutes low, then 10 (too short for `for`)
        msgs.append((t, "OXI-A", "telemetry", telemetry("OXI-A", t, spo2=88 if low else 96)))
        msgs.append((t + 1, "OXI-B", "telemetry", telemetry("OXI-B", t + 1, spo2=95)))
        if k % 24 == 0:
            msgs.append((t, "DSP-A", "telemetry", events("DSP-A", t, "dose.due")))
        if k % 24 == 3 and k // 24 % 3 != 1:  # every third dose is missed
            msgs.append((t, "DSP-A", "telemetry", events("DSP-A", t, "dose.taken")))
        if k in (50, 150):
            msgs.append((t, "DSP-A", "alarm", events("DSP-A", t, "power.mains_lost")))
        if k in (60,):
            msgs.append((t, "DSP-A", "alarm", events("DSP-A", t, "power.mains_restored")))
        if k % 36 == 0 and k < 150:  # the scale weighs, gains, then falls silent
            msgs.append((t, "SCL-A", "telemetry", telemetry("SCL-A", t, weight=80 + k / 30)))
    msgs.sort(key=lambda m: m[0])
    # received as sent: live, silence goes by when a device was heard, and the ticks below
    # come at the stream's times
    raw = [RawMessage(f"{ROOT}/dev/{d}/{ch}", p, t) for t, d, ch, p in msgs]
    sizes = [7, 50, 3, 200, 1, 120]
    batches, i = [], 0
    while i < len(raw):
        n = sizes[len(batches) % len(sizes)]
        batches.append(raw[i:i + n])
        i += n
    return batches


def live(database_url: str, tmp_path) -> None:
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = Pipeline.load(conn, topic_root=ROOT, rules=load_rules(rules_file), clock=time.time)
        for batch in stream():
            out = p.process(conn, batch)
            conn.commit()
            p.after_commit(out)
            now = max(orjson.loads(m.payload)["time"] for m in batch)
            out = p.tick(conn, now, sweep=True)
            conn.commit()
            p.after_commit(out)


def test_a_backtest_counts_the_alerts_live_evaluation_of_the_same_stream_made(
        database_url, tmp_path, capsys):
    register(database_url, DEVICES)
    live(database_url, tmp_path)
    muni = {d[0]: d[4] for d in DEVICES}
    alerts = query(database_url, "SELECT rule, device_id, status FROM alerts")
    # an alert that fires again soon after it cleared is reopened, not opened twice: count
    # the rule's steps in the audit trail, not the rows
    steps = query(database_url, "SELECT a.rule, a.device_id, u.action FROM alert_audit u "
                                "JOIN alerts a ON a.id = u.alert_id WHERE u.actor LIKE 'rule:%%'")
    opened = Counter((r, muni[d]) for r, d, act in steps if act in ("open", "reopen"))
    cleared = Counter((r, muni[d]) for r, d, act in steps if act == "resolve")
    assert {r for r, _ in opened} == {"spo2_low", "mains", "missed_dose", "weight_gain",
                                      "silent"}  # the stream exercises every rule

    assert main(["rules", "backtest", "--rules", str(tmp_path / "rules.toml"),
                 "--from", str(T0 - 1), "--to", str(T0 + 2 * 86400),
                 "--database-url", database_url, "--batch", "97", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert {(a["rule"], a["municipality"]): a["opened"] for a in report["alerts"]
            if a["opened"]} == dict(opened)
    assert {(a["rule"], a["municipality"]): a["cleared"] for a in report["alerts"]
            if a["cleared"]} == dict(cleared)

    assert main(["rules", "backtest", "--rules", str(tmp_path / "rules.toml"),
                 "--from", "1970-01-01", "--to", str(T0 + 2 * 86400),
                 "--database-url", database_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    table, note = lines[:lines.index("")], lines[lines.index("") + 1:]
    assert table[1].split() == ["rule", "municipality", "opened", "cleared", "open", "at", "end"]
    assert table[2:] == sorted(table[2:])  # a row per rule and municipality, in order
    # the rules' state: every row of the day before, the weight's of the rate's 3 days
    assert note[:2] == ["rules' state from every row dated from 1969-12-31 00:00 UTC "
                        "(24 h before --from),", "and from 1969-12-29 00:00 UTC those of the "
                        "rules that reach further (weight_gain);"]
    assert any(line.startswith("silence and clocks judged by") for line in note)
    assert any(line.split()[:2] == ["mains", "Randers"] for line in table)
    assert query(database_url, "SELECT count(*) FROM alerts") == [(len(alerts),)]  # wrote none


def test_backtest_refuses_times_in_the_wrong_order(database_url, capsys):
    assert main(["rules", "backtest", "--from", "2026-11-02", "--to", "2026-11-01",
                 "--database-url", database_url]) == 2
    assert "--to must be after --from" in capsys.readouterr().err


TO_A, TO_B = T0, T0 + 86400   # a scale's deployments: to citizen A, then to citizen B


def scale_given_to_a_then_b(database_url: str, rules_file, a_weighs: list[tuple[float, float]],
                            b_weighs: list[tuple[float, float]],
                            others: list[RawMessage] = ()) -> None:
    """SCL-A goes to citizen A in Aarhus at TO_A and weighs `a_weighs` (time, kg); an
    operator resolves what the rules raised; it goes back to the centre, and to citizen B in
    Odder at TO_B, and weighs `b_weighs`. Then the `others` messages come. Live, through the
    engine's pipeline."""
    with psycopg.connect(database_url) as conn:
        register_device(conn, "SCL-A", "Withings", "Body+", catalogue=load_catalogue(),
                        actor="staff", at=_utc(TO_A - 3600))
        deploy(conn, "SCL-A", citizen_ref="cit-a", municipality="Aarhus", actor="staff",
               at=_utc(TO_A))
        store.prepare_connection(conn)
        p = Pipeline.load(conn, topic_root=ROOT, rules=load_rules(rules_file), clock=time.time)

        def send(messages: list[RawMessage]) -> None:
            out = p.process(conn, messages)
            conn.commit()
            p.after_commit(out)

        def weigh(t: float, kg: float) -> None:   # heard when weighed
            send([RawMessage(f"{ROOT}/dev/SCL-A/telemetry", telemetry("SCL-A", t, weight=kg),
                             t)])

        for t, kg in a_weighs:
            weigh(t, kg)
        for (alert_id,) in query(database_url, "SELECT id FROM alerts"):
            resolve(conn, alert_id, "anna", "called A's GP", code="resolved")
        return_device(conn, "SCL-A", actor="staff", at=_utc(TO_B - 60))
        deploy(conn, "SCL-A", citizen_ref="cit-b", municipality="Odder", actor="staff",
               at=_utc(TO_B))
        conn.commit()
        p.fleet.refresh(conn)                  # as the engine's refresh does, every 30 s
        for t, kg in b_weighs:
            weigh(t, kg)
        if others:
            send(list(others))


def backtest(database_url: str, rules_file, start: float, end: float, capsys, *more: str
             ) -> dict[tuple[str, str], tuple[int, int, int]]:
    """The backtest's report: (rule, municipality) -> (opened, cleared, open at end)."""
    assert main(["rules", "backtest", "--rules", str(rules_file), "--from", str(start),
                 "--to", str(end), "--database-url", database_url, "--json", *more]) == 0
    return {(a["rule"], a["municipality"]): (a["opened"], a["cleared"], a["open_at_end"])
            for a in orjson.loads(capsys.readouterr().out)["alerts"]}


def oximeter_hourly(database_url: str, hours: int) -> list[RawMessage]:
    """An oximeter in Aarhus (registered here) reading every hour from TO_A, each heard when
    it was read: messages that make the backtest's batches (with --batch 1) and its sweeps,
    an hour apart."""
    register(database_url, [("OXI-A", "Nonin", "3230", "pulse_oximeter", "Aarhus")])
    return [RawMessage(f"{ROOT}/dev/OXI-A/telemetry",
                       telemetry("OXI-A", TO_A + k * 3600, spo2=96), TO_A + k * 3600)
            for k in range(hours)]


def test_a_device_given_to_another_citizen_begins_anew_in_the_backtest_as_it_does_live(
        database_url, tmp_path, capsys):
    """Citizen A gains weight (an alert, resolved by an operator); the scale goes to citizen B,
    who weighs 11 kg more than A and gains two days later. Live, B's first weighing is not a
    gain (the rules began anew at the deployment); the backtest counts as live did, each
    alert in the municipality it was raised in."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    scale_given_to_a_then_b(database_url, rules_file,
                            [(TO_A + 3600, 70.0), (TO_A + 7200, 72.5)],   # A gains 2.5 kg
                            [(TO_B + 3600, 83.5), (TO_B + 7200, 83.6),    # B: 11 kg more
                             (TO_B + 2 * 86400, 86.2)])                   # B gains 2.6 kg
    assert query(database_url, "SELECT a.rule, count(*) FROM alert_audit u JOIN alerts a "
                               "ON a.id = u.alert_id WHERE u.action IN ('open', 'reopen') "
                               "GROUP BY a.rule") == [("weight_gain", 2)]

    # A's alert counts in Aarhus, cleared when the scale went to B (live, it was resolved
    # first); B's in Odder, once: B's first weighing is not a gain on A's. (B's scale is
    # silent from 6 hours after its last weighing, a day before the period's end: live
    # sweeps found that by then.)
    assert backtest(database_url, rules_file, TO_A - 86400, TO_B + 3 * 86400, capsys) == {
        ("weight_gain", "Aarhus"): (1, 1, 0), ("weight_gain", "Odder"): (1, 0, 1),
        ("silent", "Odder"): (1, 0, 1)}
    # B's first day, from after the deployment: the weight window's history, read from the
    # store, is B's alone, so there is no gain (only the silence since B's second weighing)
    assert backtest(database_url, rules_file, TO_B + 1800, TO_B + 86400, capsys) == {
        ("silent", "Odder"): (1, 0, 1)}


def test_in_the_backtest_a_device_given_to_another_citizen_is_silent_from_its_deployment(
        database_url, tmp_path, capsys):
    """A weighs 5.5 hours before the scale goes to B, who weighs 2 hours after: the scale is not
    silent (the `silent` rule: 6 hours) at B's in between, as silence counts from the
    deployment live. (A was silent for a while, and that alert counts in Aarhus.) An
    oximeter's hourly readings make the backtest's batches."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    hourly = oximeter_hourly(database_url, 48)
    scale_given_to_a_then_b(database_url, rules_file,
                            [(TO_A + 3600, 70.0), (TO_B - 5.5 * 3600, 70.0)],
                            [(TO_B + 2 * 3600, 70.0)], hourly)
    assert backtest(database_url, rules_file, TO_A - 86400, TO_B + 5 * 3600, capsys,
                    "--batch", "1") == {("silent", "Aarhus"): (1, 1, 0)}


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def test_a_rule_for_one_municipality_counts_where_the_device_was_then(
        database_url, tmp_path, capsys):
    """A rule for Odder's citizens: A's gain in Aarhus is none of its business, B's in Odder
    is. The rules apply by where the device was at each time, as live."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text('[[rule]]\nname = "gain_odder"\nkind = "rate"\nmetric = "weight"\n'
                          'rise = 2\nwindow = "3d"\nmunicipalities = ["Odder"]\n')
    scale_given_to_a_then_b(database_url, rules_file,
                            [(TO_A + 3600, 70.0), (TO_A + 7200, 72.5)],
                            [(TO_B + 3600, 83.5), (TO_B + 2 * 86400, 86.2)])
    assert query(database_url, "SELECT rule, municipality FROM alerts") == [
        ("gain_odder", "Odder")]
    assert backtest(database_url, rules_file, TO_A - 86400, TO_B + 3 * 86400, capsys) == {
        ("gain_odder", "Odder"): (1, 0, 1)}


def test_a_device_deployed_and_never_heard_is_silent_from_its_deployment_as_live(
        database_url, tmp_path, capsys):
    """Live, a device deployed and never heard is silent once its limit has passed since
    its deployment (`test_never_heard`): a scale whose first weighing is 10 hours after its
    deployment was silent (the `silent` rule: 6 hours) from 6 hours on, until it weighed."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    hourly = oximeter_hourly(database_url, 20)
    scale_given_to_a_then_b(database_url, rules_file, [(TO_A + 10 * 3600, 70.0)],
                            [(TO_B + 3600, 70.0)], hourly)
    assert backtest(database_url, rules_file, TO_A - 3600, TO_A + 12 * 3600, capsys,
                    "--batch", "1") == {("silent", "Aarhus"): (1, 1, 0)}


def test_a_device_that_spoke_before_the_period_is_not_taken_for_never_heard(
        database_url, tmp_path, capsys):
    """The scale weighs an hour after its deployment, before the period, and again 7 hours
    after: live it was never silent (6 hours from its first weighing had not passed), and
    the backtest, which does not read when it was heard before the period, does not call it
    silent from its deployment either."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    hourly = oximeter_hourly(database_url, 20)
    scale_given_to_a_then_b(database_url, rules_file,
                            [(TO_A + 3600, 70.0), (TO_A + 7 * 3600, 70.0)],
                            [(TO_B + 3600, 70.0)], hourly)
    assert backtest(database_url, rules_file, TO_A + 2 * 3600, TO_A + 9 * 3600, capsys,
                    "--batch", "1") == {}


def test_a_device_back_at_the_centre_is_in_its_stock_and_not_silent(database_url, tmp_path,
                                                                    capsys):
    """Returned and not deployed again: what it raises at the centre (a test weighing)
    counts in the centre's stock, and it is not silent there, as live."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    hourly = oximeter_hourly(database_url, 30)
    with psycopg.connect(database_url) as conn:
        register_device(conn, "SCL-A", "Withings", "Body+", catalogue=load_catalogue(),
                        actor="staff", at=_utc(TO_A - 3600))
        deploy(conn, "SCL-A", citizen_ref="cit-a", municipality="Aarhus", actor="staff",
               at=_utc(TO_A))
        return_device(conn, "SCL-A", actor="staff", at=_utc(TO_A + 10 * 3600))
        store.prepare_connection(conn)
        p = Pipeline.load(conn, topic_root=ROOT, rules=load_rules(rules_file), clock=time.time)
        messages = hourly + [
            RawMessage(f"{ROOT}/dev/SCL-A/telemetry", telemetry("SCL-A", t, weight=kg), t)
            for t, kg in ((TO_A + 3600, 70.0), (TO_A + 11 * 3600, 80.0),
                          (TO_A + 12 * 3600, 83.0))]
        out = p.process(conn, messages)
        conn.commit()
        p.after_commit(out)
    # silent in Aarhus from 7 hours on, until it went back (then: the centre's, not silent)
    assert backtest(database_url, rules_file, TO_A - 3600, TO_A + 29 * 3600, capsys,
                    "--batch", "1") == {("silent", "Aarhus"): (1, 1, 0),
                                        ("weight_gain", ""): (1, 0, 1)}


def test_the_built_in_spo2_rules_backtest_as_they_run_live(database_url, capsys):
    """Spot checks (82 %, then 94 %; 86 %; 89 % twice, hours apart) and a continuous monitor's
    10 minutes at 89 %: each level's alert opens as often in the backtest as live."""
    register(database_url, [("OXI-A", "Nonin", "3230", "pulse_oximeter", "Aarhus")])
    readings = [(0, 82), (3600, 94), (5 * 3600, 86), (6 * 3600, 95), (8 * 3600, 89),
                (13.5 * 3600, 89), (14 * 3600, 95)]
    readings += [(20 * 3600 + 60 * k, 89) for k in range(12)] + [(21 * 3600, 95)]
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = Pipeline.load(conn, topic_root=ROOT, rules=load_rules(None), clock=time.time)
        for dt, value in readings:
            out = p.process(conn, [RawMessage(f"{ROOT}/dev/OXI-A/telemetry",
                                              telemetry("OXI-A", T0 + dt, spo2=value),
                                              time.time())])
            conn.commit()
            p.after_commit(out)
    opened = Counter(r for r, act in query(
        database_url, "SELECT a.rule, u.action FROM alert_audit u JOIN alerts a "
                      "ON a.id = u.alert_id WHERE u.actor LIKE 'rule:%%'")
        if act in ("open", "reopen"))
    assert opened == {"spo2_critical": 1, "spo2_low": 2, "spo2_low_sustained": 1}
    report = backtest(database_url, default_rules_path(), T0 - 60, T0 + 86400, capsys)
    assert {rule: n for (rule, _), (n, _, _) in report.items() if n} == opened


def test_rows_a_device_kept_from_its_last_citizen_are_not_evaluated_as_live(
        database_url, tmp_path, capsys):
    """A's scale weighed 2.5 kg more two hours before it went to B, and that weighing
    reached us from B's home three hours after (a buffer flushed): live, it was stored and
    not evaluated (dated more than an hour before the deployment it reached us in), so no
    gain was raised. The backtest, replaying it at its device time in A's stay, raised one
    in Aarhus."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    flushed = RawMessage(f"{ROOT}/dev/SCL-A/telemetry",
                         telemetry("SCL-A", TO_B - 7200, weight=72.5), TO_B + 3 * 3600)
    scale_given_to_a_then_b(database_url, rules_file, [(TO_A + 3600, 70.0)],
                            [(TO_B + 3600, 70.0), (TO_B + 7200, 70.0)], [flushed])
    assert query(database_url, "SELECT count(*) FROM readings WHERE device_id = 'SCL-A' "
                               "AND value = 72.5") == [(1,)]       # stored
    assert query(database_url, "SELECT rule FROM alerts") == []    # and raised nothing
    counts = backtest(database_url, rules_file, TO_A - 86400, TO_B + 6 * 3600, capsys)
    assert ("weight_gain", "Aarhus") not in counts
