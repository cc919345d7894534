"""Operators' actions on alerts: each transition allowed or refused with its reason, audited."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable

import psycopg
import pytest

from vagt.alerts import (
    AlertBusy,
    AlertError,
    AlertNotFound,
    AlertRow,
    InvalidOperator,
    InvalidTransition,
    acknowledge,
    actions,
    claim,
    list_alerts,
)

_numbers = itertools.count(1)
RESOLVED_NOTE = "home carer on site"


def resolve(conn: psycopg.Connection, alert_id: int, operator: str,
            note: str = RESOLVED_NOTE, *, code: str = "visit_arranged") -> AlertRow:
    """An operator's resolution: it always has a code and a note (tests of that are below)."""
    return actions.resolve(conn, alert_id, operator, note, code=code)


def new_alert(database_url: str, queue: str = "emergency", priority: int = 1,
              fp: str | None = None, *, status: str = "open",
              opened_at: str = "2024-05-01T10:00:00Z") -> int:
    """An alert as the engine would open it (inserted directly: the engine is not under test),
    queued when it opened."""
    device = f"ALM-{next(_numbers):04d}"
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO alerts (fingerprint, rule, device_id, summary, severity, priority, "
            "queue, status, opened_at, last_fired_at, queued_at, waiting_since) VALUES (%s, "
            "'personal_alarm', %s, %s, 'critical', %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (fp or f"personal_alarm|{device}", device, f"alarm.fall from {device}", priority,
             queue, status, opened_at, opened_at, opened_at, opened_at)).fetchone()
    assert row is not None
    return int(row[0])


Action = Callable[..., AlertRow]
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+"

# How each status is reached: through the operators' own actions, as in real life.
SETUP: dict[str, list[tuple[Action, str]]] = {
    "open": [],
    "claimed": [(claim, "anna")],
    "acknowledged": [(claim, "anna"), (acknowledge, "anna")],
    "resolved": [(resolve, "anna")],
}


def alert_in(database_url: str, conn: psycopg.Connection, status: str) -> int:
    if status == "suppressed":  # only the engine suppresses
        return new_alert(database_url, status="suppressed")
    alert_id = new_alert(database_url)
    for action, operator in SETUP[status]:
        action(conn, alert_id, operator)
    return alert_id


def audit_trail(conn: psycopg.Connection, alert_id: int) -> list[tuple[object, ...]]:
    return conn.execute("SELECT actor, action, from_status, to_status, note FROM alert_audit "
                        "WHERE alert_id = %s ORDER BY at, id", (alert_id,)).fetchall()


# --- allowed transitions -----------------------------------------------------------------


@pytest.mark.parametrize(("status", "action", "audited_as", "to_status", "by_column", "note"), [
    ("open", claim, "claim", "claimed", "claimed_by", None),
    ("claimed", acknowledge, "ack", "acknowledged", "acknowledged_by", None),
    ("open", resolve, "resolve", "resolved", "resolved_by", RESOLVED_NOTE),
    ("claimed", resolve, "resolve", "resolved", "resolved_by", RESOLVED_NOTE),
    ("acknowledged", resolve, "resolve", "resolved", "resolved_by", RESOLVED_NOTE),
], ids=["open-claim", "claimed-ack", "open-resolve", "claimed-resolve", "acknowledged-resolve"])
def test_an_allowed_transition_changes_the_status_and_is_audited(
        database_url, conn, status, action, audited_as, to_status, by_column, note):
    alert_id = alert_in(database_url, conn, status)
    after = action(conn, alert_id, "anna")
    assert (after.status, getattr(after, by_column)) == (to_status, "anna")
    assert audit_trail(conn, alert_id)[-1] == ("anna", audited_as, status, to_status, note)


def test_claim_then_ack_then_resolve_leaves_three_audit_rows(database_url, conn):
    alert_id = new_alert(database_url)
    claim(conn, alert_id, "anna")
    acknowledge(conn, alert_id, "anna", "called the citizen")
    resolve(conn, alert_id, "anna", "home carer on site")
    assert audit_trail(conn, alert_id) == [
        ("anna", "claim", "open", "claimed", None),
        ("anna", "ack", "claimed", "acknowledged", "called the citizen"),
        ("anna", "resolve", "acknowledged", "resolved", "home carer on site"),
    ]


def test_each_step_records_its_time_in_order(database_url, conn):
    alert_id = new_alert(database_url)
    claim(conn, alert_id, "anna")
    acknowledge(conn, alert_id, "anna")
    done = resolve(conn, alert_id, "anna")
    assert done.claimed_at and done.acknowledged_at and done.resolved_at
    assert done.claimed_at <= done.acknowledged_at <= done.resolved_at


def test_the_alerts_note_is_the_latest_one_given(database_url, conn):
    alert_id = alert_in(database_url, conn, "claimed")
    assert acknowledge(conn, alert_id, "anna", "called the citizen").note == "called the citizen"
    assert resolve(conn, alert_id, "anna", "carer on site").note == "carer on site"


def test_an_acknowledgement_without_a_note_keeps_the_earlier_note(database_url, conn):
    alert_id = alert_in(database_url, conn, "claimed")
    actions.add_note(conn, alert_id, "anna", "called the citizen")
    assert acknowledge(conn, alert_id, "anna").note == "called the citizen"


def test_the_operator_name_is_stored_without_surrounding_spaces(database_url, conn):
    alert_id = new_alert(database_url)
    assert claim(conn, alert_id, "  anna ").claimed_by == "anna"
    assert acknowledge(conn, alert_id, "anna").status == "acknowledged"


# --- refused transitions -----------------------------------------------------------------

CLAIM_RULE = "only an open alert can be claimed"
ACK_RULE = "only a claimed alert can be acknowledged, by the operator who claimed it"
RESOLVE_RULE = ("only an open, claimed or acknowledged alert can be resolved (a held one by its "
                "holder)")


@pytest.mark.parametrize(("status", "action", "operator", "message"), [
    ("open", acknowledge, "anna", f"alert {{id}} is open: cannot acknowledge it; {ACK_RULE}"),
    ("claimed", claim, "bo", "alert {id} is already claimed by anna since {time}: bo cannot "
                             "claim it; one operator holds an alert at a time"),
    ("claimed", claim, "anna", "alert {id} is already claimed by anna since {time} (you): anna "
                               "cannot claim it; one operator holds an alert at a time"),
    ("claimed", acknowledge, "bo", "alert {id} is claimed by anna since {time}: bo cannot "
                                   "acknowledge it; only anna, who holds it, can"),
    ("claimed", resolve, "bo", "alert {id} is claimed by anna since {time}: bo cannot resolve "
                               "it; only anna, who holds it, can"),
    ("acknowledged", claim, "bo", "alert {id} is acknowledged by anna since {time}: cannot "
                                  f"claim it; {CLAIM_RULE}"),
    ("acknowledged", acknowledge, "anna", "alert {id} is acknowledged by anna since {time}: "
                                          f"cannot acknowledge it; {ACK_RULE}"),
    ("acknowledged", resolve, "bo", "alert {id} is acknowledged by anna since {time}: bo "
                                    "cannot resolve it; only anna, who holds it, can"),
    ("resolved", claim, "anna", "alert {id} is resolved by anna at {time}, which is final: "
                                f"cannot claim it; {CLAIM_RULE}"),
    ("resolved", acknowledge, "anna", "alert {id} is resolved by anna at {time}, which is "
                                      f"final: cannot acknowledge it; {ACK_RULE}"),
    ("resolved", resolve, "anna", "alert {id} is resolved by anna at {time}, which is final: "
                                  f"cannot resolve it; {RESOLVE_RULE}"),
    ("suppressed", claim, "anna", f"alert {{id}} is suppressed: cannot claim it; {CLAIM_RULE}"),
    ("suppressed", acknowledge, "anna", "alert {id} is suppressed: cannot acknowledge it; "
                                        f"{ACK_RULE}"),
    ("suppressed", resolve, "anna", "alert {id} is suppressed: cannot resolve it; "
                                    f"{RESOLVE_RULE}"),
], ids=["open-ack", "claimed-claim-by-another", "claimed-claim-by-holder",
        "claimed-ack-by-another", "claimed-resolve-by-another", "acknowledged-claim",
        "acknowledged-ack-again", "acknowledged-resolve-by-another", "resolved-claim",
        "resolved-ack", "resolved-resolve", "suppressed-claim", "suppressed-ack",
        "suppressed-resolve"])
def test_a_refused_transition_says_what_the_alert_is_and_what_is_allowed(
        database_url, conn, status, action, operator, message):
    alert_id = alert_in(database_url, conn, status)
    with pytest.raises(InvalidTransition) as refused:
        action(conn, alert_id, operator)
    pattern = re.escape(message).replace(re.escape("{time}"), TIME)
    assert re.fullmatch(pattern.replace(re.escape("{id}"), str(alert_id)), str(refused.value))


def test_a_claim_by_a_second_operator_is_refused_naming_the_holder(database_url, conn):
    alert_id = new_alert(database_url)
    claim(conn, alert_id, "anna")
    with pytest.raises(InvalidTransition, match=f"alert {alert_id} is already claimed by anna "
                                                 "since"):
        claim(conn, alert_id, "bo")
    assert list_alerts(conn)[0].claimed_by == "anna"


def test_a_refused_action_changes_nothing_and_writes_no_audit_row(database_url, conn):
    alert_id = alert_in(database_url, conn, "claimed")
    before = list_alerts(conn)
    with pytest.raises(InvalidTransition):
        resolve(conn, alert_id, "bo", "not mine")
    assert list_alerts(conn) == before
    assert [row[1] for row in audit_trail(conn, alert_id)] == ["claim"]


def test_an_unknown_alert_is_reported_as_such(conn):
    with pytest.raises(AlertNotFound, match="there is no alert 999"):
        claim(conn, 999, "anna")


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "anna\nbo"],
                         ids=["empty", "spaces", "101-characters", "line-break"])
def test_an_operator_name_must_be_1_to_100_printable_characters(database_url, conn, name):
    alert_id = new_alert(database_url)
    with pytest.raises(InvalidOperator, match="use 1 to 100 printable characters"):
        claim(conn, alert_id, name)


def test_an_operator_name_of_100_characters_is_accepted(database_url, conn):
    alert_id = new_alert(database_url)
    assert claim(conn, alert_id, "x" * 100).claimed_by == "x" * 100


def test_an_alert_locked_too_long_elsewhere_is_reported_busy(database_url, conn, monkeypatch):
    monkeypatch.setattr(actions, "LOCK_TIMEOUT", "100ms")
    alert_id = new_alert(database_url)
    with psycopg.connect(database_url) as engine, engine.transaction():
        engine.execute("SELECT 1 FROM alerts WHERE id = %s FOR UPDATE", (alert_id,))
        with pytest.raises(AlertBusy, match=f"alert {alert_id} is being changed"):
            claim(conn, alert_id, "anna")


def test_of_eight_operators_claiming_at_once_exactly_one_gets_the_alert(database_url):
    alert_id = new_alert(database_url)
    barrier = threading.Barrier(8)
    winners: list[str] = []
    refusals: list[str] = []

    def try_claim(name: str) -> None:
        with psycopg.connect(database_url) as conn:
            barrier.wait()
            try:
                claim(conn, alert_id, name)
                winners.append(name)
            except InvalidTransition as e:
                refusals.append(str(e))

    threads = [threading.Thread(target=try_claim, args=(f"op{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert len(refusals) == 7
    assert all(f"already claimed by {winners[0]}" in r for r in refusals)
    with psycopg.connect(database_url) as conn:
        assert audit_trail(conn, alert_id) == [(winners[0], "claim", "open", "claimed", None)]


# --- listing -------------------------------------------------------------------------------


def test_list_is_most_urgent_first_then_oldest(database_url, conn):
    late_urgent = new_alert(database_url, priority=1, opened_at="2024-05-01T12:00:00Z")
    low = new_alert(database_url, priority=4, opened_at="2024-05-01T08:00:00Z")
    early_urgent = new_alert(database_url, priority=1, opened_at="2024-05-01T09:00:00Z")
    assert [a.id for a in list_alerts(conn)] == [early_urgent, late_urgent, low]


def test_list_filters_by_one_status(database_url, conn):
    claimed = alert_in(database_url, conn, "claimed")
    alert_in(database_url, conn, "open")
    assert [a.id for a in list_alerts(conn, status="claimed")] == [claimed]


def test_list_filters_by_several_statuses(database_url, conn):
    ids = {s: alert_in(database_url, conn, s) for s in ("open", "claimed", "resolved")}
    listed = {a.id for a in list_alerts(conn, status=["open", "claimed"])}
    assert listed == {ids["open"], ids["claimed"]}


def test_list_filters_by_queue(database_url, conn):
    technical = new_alert(database_url, queue="technical")
    new_alert(database_url, queue="emergency")
    assert [a.id for a in list_alerts(conn, queue="technical")] == [technical]


def test_list_returns_at_most_limit_alerts(database_url, conn):
    for _ in range(3):
        new_alert(database_url)
    assert len(list_alerts(conn, limit=2)) == 2


def test_list_refuses_an_unknown_status_naming_the_known_ones(conn):
    with pytest.raises(AlertError, match="unknown alert status 'opne'; one of open, claimed, "
                                         "acknowledged, resolved, suppressed"):
        list_alerts(conn, status="opne")


def test_list_refuses_a_limit_below_one(conn):
    with pytest.raises(AlertError, match="limit must be at least 1, got 0"):
        list_alerts(conn, limit=0)


def test_the_json_form_has_plain_status_and_iso_8601_times(database_url, conn):
    new_alert(database_url)
    conn.execute("SET TIME ZONE 'UTC'")
    doc = list_alerts(conn)[0].to_json()
    assert (doc["status"], type(doc["status"])) == ("open", str)
    assert doc["opened_at"] == "2024-05-01T10:00:00+00:00"
    assert doc["claimed_at"] is None
