"""Operators taking work: `next`, concurrent claims from many connections, resolution codes,
notes, and the municipality scope."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import psycopg
import pytest
from tests.alerts.support import T0, add_device, fire
from tests.alerts.test_actions import new_alert

from vagt.alerts import actions
from vagt.alerts.actions import AlertNotFound, InvalidResolution


def test_next_gives_the_most_urgent_open_alert_of_the_operators_queues(database_url, conn):
    new_alert(database_url, "technical", 1, opened_at="2024-05-01T08:00:00Z")
    low = new_alert(database_url, "emergency", 3, opened_at="2024-05-01T07:00:00Z")
    urgent = new_alert(database_url, "emergency", 1, opened_at="2024-05-01T09:00:00Z")
    got = actions.next_alert(conn, "anna", ["emergency"])
    assert got is not None and (got.id, got.status, got.claimed_by) == (urgent, "claimed",
                                                                        "anna")
    assert actions.next_alert(conn, "bo", ["emergency"]).id == low  # type: ignore[union-attr]
    assert actions.next_alert(conn, "carl", ["emergency"]) is None


def test_next_takes_alerts_listed_in_a_queue_through_continue(database_url, conn):
    alert_id = new_alert(database_url, "logistics", 2)
    conn.execute("UPDATE alerts SET extra_queues = '{technical}' WHERE id = %s", (alert_id,))
    assert actions.next_alert(conn, "anna", ["technical"]).id == alert_id  # type: ignore[union-attr]


def test_next_skips_suppressed_and_held_alerts(database_url, conn):
    new_alert(database_url, status="suppressed")
    held = new_alert(database_url)
    actions.claim(conn, held, "anna")
    assert actions.next_alert(conn, "bo") is None


def test_operators_asking_next_at_once_never_get_the_same_alert(database_url):
    ids = {new_alert(database_url) for _ in range(6)}
    barrier = threading.Barrier(8)
    got: list[int] = []
    errors: list[BaseException] = []

    def take(name: str) -> None:
        try:
            with psycopg.connect(database_url) as conn:
                barrier.wait()
                while (alert := actions.next_alert(conn, name)) is not None:
                    got.append(alert.id)
        except BaseException as e:  # reported below: a thread's failure must fail the test
            errors.append(e)

    threads = [threading.Thread(target=take, args=(f"op{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(got) == sorted(ids)  # each alert exactly once
    with psycopg.connect(database_url) as conn:
        claims = conn.execute("SELECT alert_id, count(*) FROM alert_audit WHERE action = 'claim' "
                              "GROUP BY alert_id").fetchall()
    assert sorted(claims) == sorted((i, 1) for i in ids)


@pytest.mark.parametrize(("code", "note", "message"), [
    (None, "done", "a resolution code is required, one of resolved, false_alarm, "
                   "visit_arranged, device_replaced, no_action_needed, duplicate; none was "
                   "given"),
    ("fixed", "done", "a resolution code is required, .*; got 'fixed'"),
    ("resolved", "  ", "a resolution needs a note saying what was done"),
])
def test_a_resolution_without_a_known_code_or_a_note_is_refused(database_url, conn, code, note,
                                                                message):
    alert_id = new_alert(database_url)
    with pytest.raises(InvalidResolution, match=message):
        actions.resolve(conn, alert_id, "anna", note, code=code)
    assert actions.get_alert(conn, alert_id).status == "open"


def test_a_resolution_keeps_its_code_and_note_and_the_audit_says_who_when_from_to(database_url,
                                                                                  conn):
    alert_id = new_alert(database_url)
    actions.claim(conn, alert_id, "anna")
    done = actions.resolve(conn, alert_id, "anna", "carer on site", code="visit_arranged")
    assert (done.resolution_code, done.note) == ("visit_arranged", "carer on site")
    last = actions.audit_trail(conn, alert_id)[-1]
    assert (last.actor, last.action, last.from_status, last.to_status, last.note,
            last.details) == ("anna", "resolve", "claimed", "resolved", "carer on site",
                              {"resolution_code": "visit_arranged"})
    assert last.at == done.resolved_at


def test_a_note_is_audited_and_leaves_the_status_as_it_was(database_url, conn):
    alert_id = new_alert(database_url)
    actions.claim(conn, alert_id, "anna")
    after = actions.add_note(conn, alert_id, "bo", "the citizen's daughter called")
    assert (after.status, after.note, after.claimed_by) == (
        "claimed", "the citizen's daughter called", "anna")
    last = actions.audit_trail(conn, alert_id)[-1]
    assert (last.actor, last.action, last.from_status, last.to_status) == (
        "bo", "note", "claimed", "claimed")


def test_an_alert_of_another_municipality_is_not_found_for_a_municipal_operator(database_url,
                                                                                conn):
    alert_id = new_alert(database_url)
    conn.execute("""UPDATE alerts SET labels = '{"municipality": "Randers"}' WHERE id = %s""",
                 (alert_id,))
    with pytest.raises(AlertNotFound):
        actions.claim(conn, alert_id, "anna", municipality="Aarhus")
    with pytest.raises(AlertNotFound):
        actions.get_alert(conn, alert_id, municipality="Aarhus")
    assert actions.list_alerts(conn, municipality="Aarhus") == []
    assert actions.next_alert(conn, "anna", municipality="Aarhus") is None
    assert actions.claim(conn, alert_id, "anna", municipality="Randers").status == "claimed"


def test_the_holder_releases_an_alert_back_to_its_queue_for_another_operator(database_url,
                                                                            conn):
    alert_id = new_alert(database_url)
    actions.claim(conn, alert_id, "anna")
    actions.acknowledge(conn, alert_id, "anna")
    back = actions.release(conn, alert_id, "anna", "end of my shift")
    assert (back.status, back.claimed_by, back.acknowledged_by) == ("open", None, None)
    assert back.claim_deadline is not None and back.queued_at is not None
    assert back.claim_deadline > back.queued_at
    assert actions.next_alert(conn, "bo").id == alert_id  # type: ignore[union-attr]
    steps = [(e.actor, e.action, e.from_status, e.to_status)
             for e in actions.audit_trail(conn, alert_id)]
    assert steps[-2:] == [("anna", "release", "acknowledged", "open"),
                          ("bo", "claim", "open", "claimed")]


def test_another_operator_may_not_release_an_alert_but_a_supervisor_may(database_url, conn):
    alert_id = new_alert(database_url)
    actions.claim(conn, alert_id, "anna")
    with pytest.raises(actions.InvalidTransition, match="bo cannot release it; only anna"):
        actions.release(conn, alert_id, "bo")
    with pytest.raises(actions.AlertError, match="taking alert .* from anna needs a note"):
        actions.release(conn, alert_id, "sofie", supervisor=True)
    assert actions.release(conn, alert_id, "sofie", "anna went home",
                           supervisor=True).status == "open"
    last = actions.audit_trail(conn, alert_id)[-1]
    assert (last.actor, last.action, last.details) == ("sofie", "release",
                                                        {"taken_from": "anna"})


def test_an_open_alert_cannot_be_released(database_url, conn):
    alert_id = new_alert(database_url)
    with pytest.raises(actions.InvalidTransition, match="only a claimed or acknowledged alert "
                                                        "can be released"):
        actions.release(conn, alert_id, "anna", supervisor=True)


def test_a_released_alarm_keeps_its_place_and_the_list_shows_the_order_next_takes(
        database_url, conn):
    """Alarm A, pressed first, is claimed, then released (the operator's headset broke);
    alarm B came meanwhile. A's citizen has waited longest: A is listed first and handed
    out first; its time to claim begins again."""
    add_device(database_url, "ALM-0001", "personal_alarm", "Randers")
    add_device(database_url, "ALM-0002", "personal_alarm", "Randers")
    [(a, _)] = fire(database_url, ("personal_alarm", "ALM-0001", T0), code="alarm.fall")
    actions.claim(conn, a, "anna")
    [(b, _)] = fire(database_url, ("personal_alarm", "ALM-0002", T0 + 300), code="alarm.fall")
    back = actions.release(conn, a, "anna", "headset broke")
    # claimable from now: its time to claim (and the metric of it) begins again
    assert back.queued_at is not None and back.claim_deadline is not None
    assert back.queued_at > actions.get_alert(conn, b).queued_at  # type: ignore[operator]
    assert back.claim_deadline > datetime.now(UTC)
    assert [r.id for r in actions.list_alerts(conn, status="open")] == [a, b]
    assert actions.next_alert(conn, "bo").id == a  # type: ignore[union-attr]
