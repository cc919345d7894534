"""Time to claim under a controlled clock: escalation raises the priority, moves the alert to
the escalation queue, counts the breach, audits it and tells the call centre."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from tests.alerts.support import add_device, fire, rows
from tests.app.db_proxy import DatabaseProxy

from vagt.alerts import actions
from vagt.alerts import escalation as escalation_module
from vagt.alerts.actions import AlertStatus
from vagt.alerts.escalation import Timer, escalate_overdue
from vagt.alerts.policy import load_policy
from vagt.alerts.suppression import reconcile
from vagt.app.db import open_pool
from vagt.app.metrics import EngineMetrics


@pytest.fixture
def alarm(database_url):
    """A personal alarm (priority 1, 2 minutes to claim) and its queued time."""
    add_device(database_url, "ALM-0001", "personal_alarm", "Randers")
    add_device(database_url, "OXI-0001", "pulse_oximeter", "Randers")
    (alert_id, _), = fire(database_url, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    (queued,) = rows(database_url, "SELECT queued_at FROM alerts WHERE id = %s", (alert_id,))[0]
    return alert_id, queued


def test_nothing_escalates_before_the_time_to_claim(alarm, conn):
    _, queued = alarm
    assert escalate_overdue(conn, queued + timedelta(seconds=119)) == []


def test_an_alert_not_claimed_in_time_escalates_once_per_deadline(database_url, conn):
    add_device(database_url, "OXI-0001", "pulse_oximeter", "Randers")
    (alert_id, _), = fire(database_url, ("battery_low", "OXI-0001"))  # priority 4: 4 hours
    (queued,) = rows(database_url, "SELECT queued_at FROM alerts")[0]
    late = queued + timedelta(hours=4, seconds=1)
    (breach,) = escalate_overdue(conn, late)
    assert (breach.from_queue, breach.to_queue, breach.from_priority, breach.to_priority) == (
        "technical", "escalation", 4, 3)
    assert rows(database_url, "SELECT queue, extra_queues, priority, base_priority, breaches, "
                              "claim_deadline - escalated_at FROM alerts") == [
        ("escalation", ["technical"], 3, 4, 1, timedelta(hours=1))]
    assert escalate_overdue(conn, late + timedelta(minutes=59)) == []
    assert len(escalate_overdue(conn, late + timedelta(hours=1))) == 1
    assert rows(database_url, "SELECT priority, breaches FROM alerts") == [(2, 2)]
    audit = actions.audit_trail(conn, alert_id)[-1]
    assert (audit.actor, audit.action, audit.details) == (
        "vagt", "escalate", {"from_queue": "escalation", "to_queue": "escalation",
                             "from_priority": 3, "to_priority": 2})


def _claimed_at(database_url, alert_id):
    return rows(database_url, "SELECT claimed_at FROM alerts WHERE id = %s", (alert_id,))[0][0]


def test_a_claimed_alert_is_not_escalated_for_its_time_to_claim(alarm, conn):
    alert_id, queued = alarm
    actions.claim(conn, alert_id, "anna")
    assert escalate_overdue(conn, queued + timedelta(minutes=9)) == []


def test_a_personal_alarm_claimed_and_not_acknowledged_in_10_minutes_escalates_once(
        alarm, database_url, conn):
    """A console that crashed after its claim: the supervisors see the alarm; anna keeps it."""
    alert_id, _ = alarm
    actions.claim(conn, alert_id, "anna")
    claimed = _claimed_at(database_url, alert_id)
    assert escalate_overdue(conn, claimed + timedelta(minutes=9, seconds=59)) == []
    metrics = EngineMetrics(CollectorRegistry())
    (breach,) = escalate_overdue(conn, claimed + timedelta(minutes=10), observer=metrics)
    assert (breach.alert_id, breach.from_queue, breach.to_queue, breach.claimed) == (
        alert_id, "emergency", "escalation", True)
    alert = actions.get_alert(conn, alert_id)
    assert (alert.status, alert.claimed_by, alert.queue, alert.extra_queues,
            alert.breaches) == ("claimed", "anna", "escalation", ["emergency"], 1)
    audit = actions.audit_trail(conn, alert_id)[-1]
    assert (audit.actor, audit.action, audit.from_status, audit.to_status, audit.note) == (
        "vagt", "escalate", "claimed", "claimed", "claimed by anna, not acknowledged in time")
    assert rows(database_url, "SELECT payload->'alert'->>'status', "
                              "payload->'alert'->>'claimed_by', payload->'alert'->>'queue' "
                              "FROM alert_outbox WHERE event = 'escalated'") == [
        ("claimed", "anna", "escalation")]
    assert metrics.registry.get_sample_value("vagt_alert_acknowledge_breaches_total",
                                             {"queue": "emergency"}) == 1.0
    assert metrics.registry.get_sample_value("vagt_alert_claim_breaches_total",
                                             {"queue": "emergency"}) is None
    # once per claim: not again for the same claim
    assert escalate_overdue(conn, claimed + timedelta(hours=2)) == []
    # anna can still acknowledge it
    assert actions.acknowledge(conn, alert_id, "anna").status is AlertStatus.ACKNOWLEDGED


def test_a_claim_taken_again_has_a_time_to_acknowledge_of_its_own(alarm, database_url, conn):
    alert_id, _ = alarm
    actions.claim(conn, alert_id, "anna")
    # anna claimed it 10 minutes ago, and her console went down
    conn.execute("UPDATE alerts SET claimed_at = claimed_at - interval '10 minutes'")
    assert len(escalate_overdue(conn, datetime.now(UTC))) == 1
    actions.release(conn, alert_id, "sofie", note="anna's console is down", supervisor=True)
    actions.claim(conn, alert_id, "bo")
    second = _claimed_at(database_url, alert_id)
    assert escalate_overdue(conn, second + timedelta(minutes=9)) == []
    (breach,) = escalate_overdue(conn, second + timedelta(minutes=10))
    assert breach.claimed and actions.get_alert(conn, alert_id).breaches == 2


def test_an_acknowledged_alert_never_escalates(alarm, database_url, conn):
    alert_id, _ = alarm
    actions.claim(conn, alert_id, "anna")
    actions.acknowledge(conn, alert_id, "anna")
    assert escalate_overdue(conn, _claimed_at(database_url, alert_id) + timedelta(days=1)) == []


def test_a_priority_without_a_time_to_acknowledge_keeps_its_claim_quietly(database_url, conn):
    add_device(database_url, "OXI-0001", "pulse_oximeter", "Randers")
    (alert_id, _), = fire(database_url, ("battery_low", "OXI-0001"))  # priority 4
    actions.claim(conn, alert_id, "anna")
    assert escalate_overdue(conn, _claimed_at(database_url, alert_id) + timedelta(days=3)) == []


def test_a_priority_1_alert_stays_at_1_and_its_breach_is_counted_in_metrics(alarm, conn):
    alert_id, queued = alarm
    metrics = EngineMetrics(CollectorRegistry())
    escalate_overdue(conn, queued + timedelta(minutes=3), observer=metrics)
    assert actions.get_alert(conn, alert_id).priority == 1
    assert metrics.registry.get_sample_value("vagt_alert_claim_breaches_total",
                                             {"queue": "emergency"}) == 1.0


def test_an_escalated_alert_is_still_in_its_operators_queue(alarm, conn):
    alert_id, queued = alarm
    escalate_overdue(conn, queued + timedelta(minutes=3))
    assert [a.id for a in actions.list_alerts(conn, queue="emergency")] == [alert_id]
    assert actions.next_alert(conn, "anna", ["emergency"]).id == alert_id  # type: ignore[union-attr]


def test_a_suppressed_alert_does_not_escalate_and_gets_a_new_deadline_when_released(
        alarm, database_url, conn):
    alert_id, queued = alarm
    conn.execute("UPDATE devices SET status = 'in_repair' WHERE device_id = 'ALM-0001'")
    reconcile(conn)
    assert escalate_overdue(conn, queued + timedelta(hours=1)) == []
    # back from repair (to stock: the registry's lifecycle allows no other way out)
    conn.execute("UPDATE devices SET status = 'in_stock' WHERE device_id = 'ALM-0001'")
    released = queued + timedelta(hours=1)
    reconcile(conn, now=released)
    assert rows(database_url, "SELECT status, claim_deadline FROM alerts WHERE id = %s",
                (alert_id,)) == [("open", released + timedelta(minutes=2))]


def test_the_timer_escalates_by_its_clock(alarm, database_url):
    alert_id, queued = alarm
    now = [(queued + timedelta(minutes=1)).timestamp()]
    with open_pool(database_url, 1, 2) as pool:
        timer = Timer(pool, load_policy(None), clock=lambda: now[0])
        assert timer.tick() == []
        now[0] = (queued + timedelta(minutes=2, seconds=1)).timestamp()
        (breach,) = timer.tick() or []
    assert breach.alert_id == alert_id
    assert rows(database_url, "SELECT escalated_at FROM alerts") == [
        (datetime.fromtimestamp(now[0], UTC),)]


def test_a_database_gone_silent_holds_the_timer_only_until_the_watchdog_cuts_it(
        alarm, database_url, caplog):
    """Its connection open and answering nothing: the escalations would wait for ever.
    The tick fails (the next tries again) and the pool's connections are replaced."""
    _, queued = alarm
    proxy = DatabaseProxy()
    proxy.up()
    try:
        with open_pool(proxy.url(database_url), 1, 1) as pool:
            proxy.go_silent()
            timer = Timer(pool, load_policy(None), transaction_limit_s=1,
                          clock=lambda: (queued + timedelta(hours=1)).timestamp())
            failed: list[BaseException] = []
            first = threading.Thread(target=lambda: _failing(timer.tick, failed), daemon=True)
            first.start()
            first.join(20)
            assert not first.is_alive(), "the tick still waits on the silent connection"
            assert [type(e) for e in failed] == [psycopg.OperationalError]
            assert "event=database_unresponsive thread=alert-timer" in caplog.text
            (breach,) = timer.tick() or []    # on a new connection
    finally:
        proxy.down()
    assert rows(database_url, "SELECT breaches FROM alerts") == [(1,)]


def _failing(work: Callable[[], object], errors: list[BaseException]) -> None:
    try:
        work()
    except BaseException as e:
        errors.append(e)


def test_only_one_process_runs_the_timer_at_a_time(alarm, database_url):
    _, queued = alarm
    with psycopg.connect(database_url) as other, other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(hashtext('vagt.alerts.timer'))")
        with open_pool(database_url, 1, 2) as pool:
            timer = Timer(pool, load_policy(None),
                          clock=lambda: (queued + timedelta(hours=1)).timestamp())
            assert timer.tick() is None
    assert rows(database_url, "SELECT breaches FROM alerts") == [(0,)]


def test_an_escalated_alert_released_to_the_queue_has_its_new_prioritys_time_to_claim(
        database_url, conn):
    """A priority-2 alert claimed from a console that crashed escalates to priority 1; the
    supervisor releases it: it is a priority-1 alert now, 2 minutes to claim, not 10."""
    add_device(database_url, "OXI-0001", "pulse_oximeter", "Randers")
    (alert_id, _), = fire(database_url, ("spo2_low", "OXI-0001"))   # priority 2: 10 minutes
    actions.claim(conn, alert_id, "anna")
    (breach,) = escalate_overdue(conn, _claimed_at(database_url, alert_id)
                                 + timedelta(minutes=30))
    assert (breach.claimed, breach.to_priority) == (True, 1)
    actions.release(conn, alert_id, "sofie", note="anna's console is down", supervisor=True)
    (queued,) = rows(database_url, "SELECT queued_at FROM alerts")[0]
    assert escalate_overdue(conn, queued + timedelta(minutes=1, seconds=59)) == []
    (again,) = escalate_overdue(conn, queued + timedelta(minutes=2))
    assert (again.alert_id, again.claimed) == (alert_id, False)


def test_an_escalated_alert_back_from_repair_has_its_new_prioritys_time_to_claim(
        database_url, conn):
    """Escalated to priority 1, then held back while its device was in repair: back, it has
    priority 1's 2 minutes to claim, not the 10 its route gave it at priority 2."""
    add_device(database_url, "OXI-0001", "pulse_oximeter", "Randers")
    (alert_id, _), = fire(database_url, ("spo2_low", "OXI-0001"))
    (queued,) = rows(database_url, "SELECT queued_at FROM alerts")[0]
    (breach,) = escalate_overdue(conn, queued + timedelta(minutes=10))
    assert breach.to_priority == 1
    conn.execute("UPDATE devices SET status = 'in_repair' WHERE device_id = 'OXI-0001'")
    reconcile(conn)
    conn.execute("UPDATE devices SET status = 'in_stock' WHERE device_id = 'OXI-0001'")
    back = queued + timedelta(hours=1)
    reconcile(conn, now=back)
    assert rows(database_url, "SELECT status, priority, claim_deadline FROM alerts") == [
        ("open", 1, back + timedelta(minutes=2))]


def test_escalating_never_gives_an_alert_longer_to_be_claimed_than_its_route_did(
        database_url, conn, tmp_path):
    """The centre gives its personal alarms 1 minute to claim (priority 1's is 2): an alarm
    still unclaimed after its escalation escalates again a minute later, not two."""
    p = tmp_path / "alerts.toml"
    p.write_text('[escalation]\nqueue = "escalation"\n[[route.routes]]\n'
                 'name = "personal_alarms"\nmatchers = [\'rule="personal_alarm"\']\n'
                 'queue = "emergency"\npriority = 1\ntime_to_claim = "1m"\n')
    policy = load_policy(p)
    add_device(database_url, "ALM-0001", "personal_alarm", "Randers")
    fire(database_url, ("personal_alarm", "ALM-0001"), policy=policy, code="alarm.fall")
    (queued,) = rows(database_url, "SELECT queued_at FROM alerts")[0]
    first = queued + timedelta(minutes=1)
    assert len(escalate_overdue(conn, first, policy)) == 1
    assert len(escalate_overdue(conn, first + timedelta(minutes=1), policy)) == 1
    assert rows(database_url, "SELECT priority, breaches FROM alerts") == [(1, 2)]


def test_an_escalation_rolled_back_with_its_tick_is_counted_once_when_it_commits(
        alarm, database_url, monkeypatch):
    """The tick's last step (the outbox's prune) fails: the escalation goes back with the
    tick, and the next tick escalates again. The breach metric counts it once, as the alert
    does, not once a try."""
    _, queued = alarm
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    real_prune = escalation_module.outbox.prune

    def failing(*args, **kwargs):
        raise psycopg.OperationalError("the connection was lost")

    with open_pool(database_url, 1, 2) as pool:
        timer = Timer(pool, load_policy(None), observer=metrics,
                      clock=lambda: (queued + timedelta(minutes=3)).timestamp())
        monkeypatch.setattr(escalation_module.outbox, "prune", failing)
        with pytest.raises(psycopg.OperationalError):
            timer.tick()
        assert rows(database_url, "SELECT breaches FROM alerts") == [(0,)]
        monkeypatch.setattr(escalation_module.outbox, "prune", real_prune)
        assert len(timer.tick() or []) == 1
    assert rows(database_url, "SELECT breaches FROM alerts") == [(1,)]
    assert registry.get_sample_value("vagt_alert_claim_breaches_total",
                                     {"queue": "emergency"}) == 1


def test_the_timer_reads_its_clock_once_it_holds_its_connection_and_lock(alarm, database_url):
    """Read before the pool gave it a connection (seconds while a backlog drains), a
    silence created meanwhile was judged not begun: the alert it had just suppressed was
    released and announced to the call centre for a tick."""
    _, queued = alarm
    held_at_read: list[int] = []

    def clock() -> float:
        with psycopg.connect(database_url) as other:
            held_at_read.append(other.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objid = hashtext('vagt.alerts.timer')::oid").fetchone()[0])
        return (queued + timedelta(minutes=1)).timestamp()

    with open_pool(database_url, 1, 2) as pool:
        assert Timer(pool, load_policy(None), clock=clock).tick() == []
    assert held_at_read == [1]
