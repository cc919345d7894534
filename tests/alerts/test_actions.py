"""Operators' actions on alerts: each transition allowed or refused with its reason, audited."""

from __future__ import annotations

import threading

import psycopg
import pytest
from tests.app.conftest import query

from vagt.alerts import AlertNotFound, InvalidTransition, acknowledge, claim, list_alerts, resolve


def new_alert(database_url: str, queue: str = "emergency", priority: int = 1,
              fp: str = "personal_alarm|ALM-0001") -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO alerts (fingerprint, rule, device_id, summary, severity, priority, "
            "queue, opened_at, last_fired_at) VALUES (%s, 'personal_alarm', 'ALM-0001', "
            "'alarm.fall from ALM-0001', 'critical', %s, %s, now(), now()) RETURNING id",
            (fp, priority, queue)).fetchone()
    assert row is not None
    return int(row[0])


def act(database_url: str, fn, *args):
    with psycopg.connect(database_url) as conn:
        return fn(conn, *args)


def test_claim_then_ack_then_resolve_is_audited_step_by_step(database_url):
    a = new_alert(database_url)
    assert act(database_url, claim, a, "anna").status == "claimed"
    assert act(database_url, acknowledge, a, "anna", "called the citizen").status == "acknowledged"
    done = act(database_url, resolve, a, "anna", "home carer on site")
    assert (done.status, done.resolved_by, done.note) == ("resolved", "anna", "home carer on site")
    assert query(database_url, "SELECT actor, action, from_status, to_status FROM alert_audit "
                               "ORDER BY id") == [("anna", "claim", "open", "claimed"),
                                                  ("anna", "ack", "claimed", "acknowledged"),
                                                  ("anna", "resolve", "acknowledged", "resolved")]


def test_an_alert_claimed_by_one_operator_cannot_be_claimed_by_another(database_url):
    a = new_alert(database_url)
    act(database_url, claim, a, "anna")
    with pytest.raises(InvalidTransition, match=f"alert {a} is already claimed by anna since"):
        act(database_url, claim, a, "bo")


def test_only_the_holder_can_acknowledge_or_resolve_a_claimed_alert(database_url):
    a = new_alert(database_url)
    act(database_url, claim, a, "anna")
    with pytest.raises(InvalidTransition, match="held by anna; only they can acknowledge"):
        act(database_url, acknowledge, a, "bo")
    with pytest.raises(InvalidTransition, match="held by anna; only they can resolve"):
        act(database_url, resolve, a, "bo")


def test_an_open_alert_cannot_be_acknowledged_before_it_is_claimed(database_url):
    a = new_alert(database_url)
    with pytest.raises(InvalidTransition, match="is open; only a claimed alert"):
        act(database_url, acknowledge, a, "anna")


def test_an_open_alert_can_be_resolved_directly(database_url):
    a = new_alert(database_url)
    assert act(database_url, resolve, a, "anna", "false alarm").status == "resolved"


def test_resolved_is_final(database_url):
    a = new_alert(database_url)
    act(database_url, resolve, a, "anna")
    for fn in (claim, acknowledge, resolve):
        with pytest.raises(InvalidTransition, match="is resolved"):
            act(database_url, fn, a, "anna")


def test_a_refused_action_writes_no_audit_row(database_url):
    a = new_alert(database_url)
    with pytest.raises(InvalidTransition):
        act(database_url, acknowledge, a, "anna")
    assert query(database_url, "SELECT count(*) FROM alert_audit") == [(0,)]


def test_an_unknown_alert_is_reported_as_such(database_url):
    with pytest.raises(AlertNotFound, match="there is no alert 999"):
        act(database_url, claim, 999, "anna")


def test_of_eight_operators_claiming_at_once_exactly_one_gets_the_alert(database_url):
    a = new_alert(database_url)
    barrier = threading.Barrier(8)
    winners, refused = [], []

    def try_claim(name: str) -> None:
        with psycopg.connect(database_url) as conn:
            barrier.wait()
            try:
                claim(conn, a, name)
                winners.append(name)
            except InvalidTransition:
                refused.append(name)

    threads = [threading.Thread(target=try_claim, args=(f"op{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 7
    assert query(database_url, "SELECT claimed_by FROM alerts") == [(winners[0],)]


def test_list_is_most_urgent_first_and_filters_by_status_and_queue(database_url):
    low = new_alert(database_url, queue="technical", priority=4, fp="a|1")
    high = new_alert(database_url, queue="emergency", priority=1, fp="b|1")
    act(database_url, claim, high, "anna")
    with psycopg.connect(database_url) as conn:
        assert [r.id for r in list_alerts(conn)] == [high, low]
        assert [r.id for r in list_alerts(conn, status="open")] == [low]
        assert [r.id for r in list_alerts(conn, queue="emergency")] == [high]
