"""Retention on plain PostgreSQL: `vagt db prune` and the engine's daily prune keep what
TimescaleDB's policies keep (readings and events for 3 years), marks of bad readings with
their readings, dead letters for 90 days; alerts and their audit trail stay."""

from __future__ import annotations

import getpass
import hashlib
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from tests.alerts.test_actions import new_alert
from tests.app.conftest import query

from vagt.app import retention
from vagt.app.cli import main

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CUTOFF = datetime(2023, 11, 20, 12, 0, tzinfo=UTC)          # NOW - 3 years
DEAD_CUTOFF = datetime(2026, 8, 22, 12, 0, tzinfo=UTC)      # NOW - 90 days
JUST = timedelta(microseconds=1)


def add_reading(conn: psycopg.Connection, t: datetime, device: str = "SCL-0001",
                bad: bool = False) -> None:
    conn.execute("INSERT INTO readings (time, device_id, metric, value, unit, received_at) "
                 "VALUES (%s, %s, 'weight', 70.2, 'kg', %s)", (t, device, t))
    if bad:
        conn.execute("INSERT INTO bad_readings (time, device_id, metric, value, vendor, "
                     "model) VALUES (%s, %s, 'weight', 70.2, 'A&D', 'UC-352BLE')", (t, device))


def add_event(conn: psycopg.Connection, t: datetime) -> None:
    conn.execute("INSERT INTO events (time, device_id, code, severity, received_at) "
                 "VALUES (%s, 'ALM-0001', 'alarm.fall', 'critical', %s)", (t, t))


def add_dead_letter(conn: psycopg.Connection, received: datetime) -> None:
    payload = received.isoformat().encode()
    conn.execute("INSERT INTO dead_letters (received_at, topic, payload, reason, detail, "
                 "digest) VALUES (%s, 'x/dev/ALM-0001/alarm', %s, 'bad_json', 'test', %s)",
                 (received, payload, hashlib.sha256(payload).digest()))


@pytest.fixture
def aged(database_url: str) -> str:
    """Rows just before and exactly at each cutoff, and some well inside."""
    with psycopg.connect(database_url) as conn:
        for t in (CUTOFF - timedelta(days=400), CUTOFF - JUST, CUTOFF, NOW - timedelta(days=1)):
            add_reading(conn, t, bad=True)
            add_event(conn, t)
        for t in (DEAD_CUTOFF - timedelta(days=30), DEAD_CUTOFF - JUST, DEAD_CUTOFF, NOW):
            add_dead_letter(conn, t)
    return database_url


def times(url: str, sql: str) -> list[datetime]:
    return [r[0] for r in query(url, sql)]


def test_prune_deletes_rows_older_than_the_retention_and_keeps_the_cutoff_itself(aged):
    with psycopg.connect(aged, autocommit=True) as conn:
        done = retention.prune(conn, NOW)
    kept = [CUTOFF, NOW - timedelta(days=1)]
    assert times(aged, "SELECT time FROM readings ORDER BY time") == kept
    assert times(aged, "SELECT time FROM events ORDER BY time") == kept
    assert times(aged, "SELECT time FROM bad_readings ORDER BY time") == kept
    assert times(aged, "SELECT received_at FROM dead_letters ORDER BY received_at") == \
        [DEAD_CUTOFF, NOW]
    assert (done.readings, done.events, done.bad_readings, done.dead_letters) == (2, 2, 2, 2)
    assert (done.readings_before, done.dead_letters_before) == (CUTOFF, DEAD_CUTOFF)


def test_prune_goes_in_batches_until_nothing_old_is_left(database_url):
    with psycopg.connect(database_url) as conn:
        for i in range(7):
            add_reading(conn, CUTOFF - timedelta(days=i + 1), bad=i % 2 == 0)
        add_reading(conn, CUTOFF)
    with psycopg.connect(database_url, autocommit=True) as conn:
        done = retention.prune(conn, NOW, batch_rows=2)
    assert (done.readings, done.bad_readings) == (7, 4)
    assert times(database_url, "SELECT time FROM readings") == [CUTOFF]
    assert query(database_url, "SELECT count(*) FROM bad_readings") == [(0,)]


def test_a_mark_stays_while_its_reading_does(database_url):
    """On TimescaleDB a reading past the retention stays until its whole chunk is dropped:
    its mark must stay with it (here: a reading put back after the prune of readings)."""
    with psycopg.connect(database_url) as conn:
        add_reading(conn, CUTOFF - timedelta(days=1), bad=True)
        conn.execute("UPDATE schema_migrations SET flavour = 'timescale' WHERE flavour = "
                     "'plain'")   # as on TimescaleDB: readings are left to its policies
    with psycopg.connect(database_url, autocommit=True) as conn:
        done = retention.prune(conn, NOW)
    assert (done.readings, done.events, done.bad_readings) == (None, None, 0)
    assert query(database_url, "SELECT count(*) FROM bad_readings") == [(1,)]
    assert "TimescaleDB's retention policies drop them" in retention.describe(done)


def test_alerts_and_their_audit_trail_are_not_pruned(database_url):
    alert = new_alert(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE alerts SET opened_at = %s, created_at = %s, last_fired_at = %s",
                     (CUTOFF - timedelta(days=900),) * 3)
        conn.execute("INSERT INTO alert_audit (alert_id, at, actor, action, to_status) "
                     "VALUES (%s, %s, 'rule:personal_alarm', 'open', 'open')",
                     (alert, CUTOFF - timedelta(days=900)))
    with psycopg.connect(database_url, autocommit=True) as conn:
        retention.prune(conn, NOW)
    assert query(database_url, "SELECT id FROM alerts") == [(alert,)]
    assert query(database_url, "SELECT count(*) FROM alert_audit") == [(1,)]


def test_only_one_process_prunes_at_a_time(aged):
    with psycopg.connect(aged, autocommit=True) as other, \
            psycopg.connect(aged, autocommit=True) as conn:
        other.execute("SELECT pg_advisory_lock(%s)", (retention.PRUNE_LOCK_KEY,))
        assert retention.prune_if_first(conn, NOW) is None
        assert query(aged, "SELECT count(*) FROM readings") == [(4,)]
        other.execute("SELECT pg_advisory_unlock(%s)", (retention.PRUNE_LOCK_KEY,))
        assert retention.prune_if_first(conn, NOW) is not None
    assert query(aged, "SELECT count(*) FROM readings") == [(2,)]


def test_the_engines_pruner_prunes_by_its_clock(aged):
    pruner = retention.Pruner(aged, clock=NOW.timestamp)
    done = pruner.prune_once(threading.Event())
    assert done is not None and done.readings == 2
    assert times(aged, "SELECT min(time) FROM readings") == [CUTOFF]


def test_db_prune_command_says_what_it_deleted(database_url, monkeypatch, capsys):
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    now = datetime.now(UTC)
    with psycopg.connect(database_url) as conn:
        add_reading(conn, now - timedelta(days=3 * 366 + 1))
        add_reading(conn, now - timedelta(days=3 * 365 - 1))
    assert main(["db", "prune"]) == 0
    assert capsys.readouterr().out.startswith("deleted 1 readings and 0 events")
    assert query(database_url, "SELECT count(*) FROM readings") == [(1,)]


def test_db_prune_command_is_audited_with_who_ran_it_and_what_went(database_url, monkeypatch,
                                                                     capsys):
    """Citizens' measurements deleted on demand: the audit log says who, when and how many."""
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    with psycopg.connect(database_url) as conn:
        add_reading(conn, datetime.now(UTC) - timedelta(days=3 * 366 + 1))
    assert main(["db", "prune", "--actor", "sofie"]) == 0
    # asked, before anything went (it commits batch by batch), then what went
    assert [a for a, in query(database_url, "SELECT action FROM audit_log ORDER BY id")] == [
        "db.prune.asked", "db.prune"]
    [(actor, details)] = query(database_url, "SELECT actor, details FROM audit_log "
                                             "WHERE action = 'db.prune'")
    assert actor == "sofie"
    assert details["readings"] == 1 and details["dead_letters"] == 0
    assert details["via"] == f"cli:{getpass.getuser()}"
    assert details["readings_before"]


def test_db_prune_with_an_actor_the_audit_log_refuses_deletes_nothing(database_url,
                                                                      monkeypatch, capsys):
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    with psycopg.connect(database_url) as conn:
        add_reading(conn, datetime.now(UTC) - timedelta(days=3 * 366 + 1))
    assert main(["db", "prune", "--actor", "x" * 200]) == 2
    assert query(database_url, "SELECT count(*) FROM readings") == [(1,)]
    assert query(database_url, "SELECT count(*) FROM audit_log") == [(0,)]
