"""What operators do to alerts: list, claim, acknowledge, resolve. Each change is audited.

Each action locks the alert's row (FOR UPDATE), checks the transition and writes the audit
row in the same transaction, so two operators never hold the same alert.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

ACTIVE = ("open", "claimed", "acknowledged")


class AlertError(ValueError):
    """An operator's action was refused; the message says why and what is allowed."""


class AlertNotFound(AlertError):
    pass


class InvalidTransition(AlertError):
    pass


@dataclass(frozen=True)
class AlertRow:
    id: int
    fingerprint: str
    rule: str
    device_id: str | None
    labels: dict[str, Any]
    summary: str
    severity: str
    priority: int
    queue: str
    status: str
    opened_at: datetime
    last_fired_at: datetime
    repeat_count: int
    claimed_at: datetime | None
    claimed_by: str | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    note: str | None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = v.isoformat()
        return d


_COLUMNS = ("id, fingerprint, rule, device_id, labels, summary, severity, priority, queue, "
            "status, opened_at, last_fired_at, repeat_count, claimed_at, claimed_by, "
            "acknowledged_at, acknowledged_by, resolved_at, resolved_by, note")


def list_alerts(conn: psycopg.Connection, *, status: str | list[str] | None = None,
                queue: str | None = None, limit: int = 500) -> list[AlertRow]:
    """Most urgent first: priority, then the oldest."""
    statuses = [status] if isinstance(status, str) else status
    rows = conn.execute(
        f"""SELECT {_COLUMNS} FROM alerts
            WHERE (%(s)s::text[] IS NULL OR status = ANY(%(s)s))
              AND (%(q)s::text IS NULL OR queue = %(q)s)
            ORDER BY priority, opened_at, id LIMIT %(n)s""",
        {"s": statuses, "q": queue, "n": limit}).fetchall()
    return [AlertRow(*r) for r in rows]


def claim(conn: psycopg.Connection, alert_id: int, operator: str) -> AlertRow:
    def check(a: AlertRow) -> None:
        if a.status == "claimed" and a.claimed_by != operator:
            raise InvalidTransition(
                f"alert {a.id} is already claimed by {a.claimed_by} since "
                f"{a.claimed_at:%Y-%m-%d %H:%M:%S %Z}; only an open alert can be claimed")
        if a.status != "open":
            raise InvalidTransition(f"alert {a.id} is {a.status}; only an open alert can be "
                                    "claimed")

    return _transition(conn, alert_id, operator, "claim", "claimed", check,
                       "claimed_at = now(), claimed_by = %(op)s")


def acknowledge(conn: psycopg.Connection, alert_id: int, operator: str,
                note: str | None = None) -> AlertRow:
    def check(a: AlertRow) -> None:
        if a.status != "claimed":
            raise InvalidTransition(f"alert {a.id} is {a.status}; only a claimed alert can be "
                                    "acknowledged, by the operator who claimed it")
        _holder_only(a, operator, "acknowledge")

    return _transition(conn, alert_id, operator, "ack", "acknowledged", check,
                       "acknowledged_at = now(), acknowledged_by = %(op)s, "
                       "note = coalesce(%(note)s, note)", note)


def resolve(conn: psycopg.Connection, alert_id: int, operator: str,
            note: str | None = None) -> AlertRow:
    def check(a: AlertRow) -> None:
        if a.status not in ACTIVE:
            raise InvalidTransition(f"alert {a.id} is {a.status}; only an open, claimed or "
                                    "acknowledged alert can be resolved")
        if a.status != "open":
            _holder_only(a, operator, "resolve")

    return _transition(conn, alert_id, operator, "resolve", "resolved", check,
                       "resolved_at = now(), resolved_by = %(op)s, "
                       "note = coalesce(%(note)s, note)", note)


def _holder_only(a: AlertRow, operator: str, action: str) -> None:
    if a.claimed_by != operator:
        raise InvalidTransition(f"alert {a.id} is held by {a.claimed_by}; only they can "
                                f"{action} it")


def _transition(conn: psycopg.Connection, alert_id: int, operator: str, action: str,
                to_status: str, check: Any, set_sql: str, note: str | None = None) -> AlertRow:
    operator = operator.strip()
    if not 0 < len(operator) <= 100:
        raise AlertError("the operator name must be 1 to 100 characters")
    with conn.transaction():
        row = conn.execute(f"SELECT {_COLUMNS} FROM alerts WHERE id = %s FOR UPDATE",
                           (alert_id,)).fetchone()
        if row is None:
            raise AlertNotFound(f"there is no alert {alert_id}")
        before = AlertRow(*row)
        check(before)
        params = {"id": alert_id, "op": operator, "note": note, "to": to_status}
        after = conn.execute(
            f"UPDATE alerts SET status = %(to)s, {set_sql} WHERE id = %(id)s "
            f"RETURNING {_COLUMNS}", params).fetchone()
        conn.execute("INSERT INTO alert_audit (alert_id, actor, action, from_status, to_status, "
                     "note) VALUES (%s, %s, %s, %s, %s, %s)",
                     (alert_id, operator, action, before.status, to_status, note))
    assert after is not None
    return AlertRow(*after)
