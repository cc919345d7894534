"""An alert's audit trail lists its steps in the order they happened, the engine's and the
operators' alike, though the engine's batch transaction began before an operator acted."""

from __future__ import annotations

import time

import psycopg
from tests.alerts.support import POLICY, T0, add_device, fire, firing

from vagt.alerts import actions
from vagt.alerts.store import clear_alerts, record_firings


def steps(conn: psycopg.Connection, alert_id: int) -> list[str]:
    return [e.action for e in actions.audit_trail(conn, alert_id)]


def test_a_rules_clear_after_an_acknowledgement_is_listed_after_it(database_url, conn):
    add_device(database_url, "OXI-0001")
    [(alert_id, _)] = fire(database_url, ("spo2_low", "OXI-0001", T0))
    actions.claim(conn, alert_id, "anna")
    with psycopg.connect(database_url) as engine:
        engine.execute("SELECT 1")                  # the engine's batch transaction begins
        time.sleep(0.05)
        actions.acknowledge(conn, alert_id, "anna", "calling the citizen")
        clear_alerts(engine, ["spo2_low|OXI-0001"], [T0 + 60], policy=POLICY)
    assert steps(conn, alert_id) == ["open", "claim", "ack", "resolve"]
    row = actions.get_alert(conn, alert_id)
    assert row.resolved_at > row.acknowledged_at


def test_a_reopen_after_an_operators_resolve_is_listed_after_it(database_url, conn):
    add_device(database_url, "OXI-0001")
    [(alert_id, _)] = fire(database_url, ("spo2_low", "OXI-0001", T0))
    with psycopg.connect(database_url) as engine:
        engine.execute("SELECT 1")
        time.sleep(0.05)
        actions.resolve(conn, alert_id, "anna", "called, all well", code="resolved",
                        policy=POLICY)
        record_firings(engine, [firing(engine, "spo2_low", "OXI-0001", T0 + 60)], POLICY)
    assert steps(conn, alert_id) == ["open", "resolve", "reopen"]
    assert actions.get_alert(conn, alert_id).status == "open"
