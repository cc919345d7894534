"""A backtest replays stored history through the same rules and counts the same alerts that
live evaluation of that stream opened and cleared; and its command line."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import psycopg
from tests.app.conftest import query, register, telemetry

from vagt.app import store
from vagt.app.cli import main
from vagt.app.pipeline import Pipeline
from vagt.ingest.model import RawMessage
from vagt.rules import load_rules

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
    raw = [RawMessage(f"{ROOT}/dev/{d}/{ch}", p, time.time()) for _, d, ch, p in msgs]
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
    assert lines[1].split() == ["rule", "municipality", "opened", "cleared", "open", "at", "end"]
    assert lines[2:] == sorted(lines[2:])  # a row per rule and municipality, in order
    assert any(line.split()[:2] == ["mains", "Randers"] for line in lines)
    assert query(database_url, "SELECT count(*) FROM alerts") == [(len(alerts),)]  # wrote none


def test_backtest_refuses_times_in_the_wrong_order(database_url, capsys):
    assert main(["rules", "backtest", "--from", "2026-11-02", "--to", "2026-11-01",
                 "--database-url", database_url]) == 2
    assert "--to must be after --from" in capsys.readouterr().err
