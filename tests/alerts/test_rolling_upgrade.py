"""An engine of the release before migration 0016 shares the database while the engines are
upgraded one by one: what it writes must keep the queue's order and announcements right."""

from __future__ import annotations

import orjson
import psycopg
from tests.alerts.support import T0, add_device, fire, rows
from tests.alerts.test_store import silence

from vagt.alerts import actions
from vagt.alerts.silences import expire_silence


def old_engine_opens(database_url: str, device_id: str) -> int:
    """A fall alarm as the release before 0016 opened it: its INSERT names neither
    `waiting_since` nor the announced flags, and its outbox event sets nothing on the
    alert."""
    labels = {"rule": "personal_alarm", "device_id": device_id, "municipality": "Randers",
              "type": "personal_alarm", "vendor": "Acme", "model": "X1", "code": "alarm.fall"}
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO alerts (fingerprint, rule, device_id, labels, summary, severity, "
            "priority, base_priority, queue, extra_queues, route, time_to_claim, queued_at, "
            "claim_deadline, opened_at, last_fired_at, repeat_count) VALUES (%s, "
            "'personal_alarm', %s, %s::jsonb, 'alarm.fall', 'critical', 1, 1, 'emergency', "
            "'{}', 'emergency', interval '2 minutes', now(), now() + interval '2 minutes', "
            "to_timestamp(%s), to_timestamp(%s), 1) RETURNING id",
            (f"personal_alarm|{device_id}", device_id, orjson.dumps(labels).decode(), T0,
             T0)).fetchone()
        assert row is not None
        conn.execute("INSERT INTO alert_outbox (alert_id, event, payload) SELECT a.id, "
                     "'opened', jsonb_build_object('event', 'opened', 'alert', to_jsonb(a)) "
                     "FROM alerts a WHERE a.id = %s", (row[0],))
    return int(row[0])


def test_an_older_engines_alarm_keeps_its_place_before_a_later_one(database_url, conn):
    add_device(database_url, "ALM-0002", "personal_alarm", "Randers")
    older = old_engine_opens(database_url, "ALM-0001")          # 10:00, the older engine
    [(newer, _)] = fire(database_url, ("personal_alarm", "ALM-0002", T0 + 300),
                        code="alarm.fall")                      # 10:05, an upgraded one
    assert [a.id for a in actions.list_alerts(conn, status="open")] == [older, newer]
    assert actions.next_alert(conn, "bo").id == older  # type: ignore[union-attr]


def test_an_older_engines_announced_alarm_is_not_announced_opened_again(database_url, conn):
    add_device(database_url, "ALM-0001", "personal_alarm", "Randers")
    alert = old_engine_opens(database_url, "ALM-0001")
    s = silence(conn, 'device_id="ALM-0001"')
    expire_silence(conn, s.id, by="sofie")
    assert [e for (e,) in rows(database_url, "SELECT event FROM alert_outbox "
                                             "WHERE alert_id = %s ORDER BY id", (alert,))] == \
        ["opened", "suppressed", "unsuppressed"]


def test_an_older_engines_reopening_waits_from_then_and_is_not_yet_told(database_url, conn):
    """Its reopening sets `queued_at` and the count, nothing of 0016's: the alert waits from
    its reopening, and a silence that holds it back and lets it go announces `reopened`."""
    add_device(database_url, "ALM-0001", "personal_alarm", "Randers")
    alert = old_engine_opens(database_url, "ALM-0001")
    actions.claim(conn, alert, "anna")
    actions.resolve(conn, alert, "anna", "a false alarm", code="resolved")
    with psycopg.connect(database_url) as old:
        old.execute("UPDATE alerts SET status = 'open', queued_at = clock_timestamp(), "
                    "reopen_count = reopen_count + 1, reopened_at = clock_timestamp(), "
                    "claimed_at = NULL, claimed_by = NULL, acknowledged_at = NULL, "
                    "acknowledged_by = NULL, resolved_at = NULL, resolved_by = NULL, "
                    "resolution_code = NULL WHERE id = %s", (alert,))
    [(waiting, queued)] = rows(database_url, "SELECT waiting_since, queued_at FROM alerts "
                                             "WHERE id = %s", (alert,))
    assert waiting == queued
    s = silence(conn, 'device_id="ALM-0001"')
    expire_silence(conn, s.id, by="sofie")
    assert rows(database_url, "SELECT event FROM alert_outbox WHERE alert_id = %s "
                              "ORDER BY id DESC LIMIT 1", (alert,)) == [("reopened",)]
