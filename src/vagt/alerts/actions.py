"""What operators do to alerts: list, claim, acknowledge, resolve. Each change is audited.

Each action locks the alert's row (FOR UPDATE), checks the transition and writes the audit
row in one transaction, so two operators never hold the same alert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.rows import kwargs_row

MAX_OPERATOR_LENGTH = 100
LOCK_TIMEOUT = "5s"  # an operator waits this long for an alert the engine is updating


class AlertStatus(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    SUPPRESSED = "suppressed"


class AlertError(ValueError):
    """A request about alerts was refused; the message says why and what is allowed."""


class AlertNotFound(AlertError):
    """No alert has that id."""


class InvalidTransition(AlertError):
    """The alert's status (or who holds it) does not allow the action."""


class InvalidOperator(AlertError):
    """The operator's name is empty, too long or not printable."""


class AlertBusy(AlertError):
    """The alert stayed locked by another transaction longer than LOCK_TIMEOUT."""


@dataclass(frozen=True)
class AlertRow:
    """An alert as stored, with the times and operators of each step."""

    id: int
    fingerprint: str
    rule: str
    device_id: str | None
    labels: dict[str, object]
    summary: str
    severity: str
    priority: int
    queue: str
    status: AlertStatus
    opened_at: datetime
    created_at: datetime
    last_fired_at: datetime
    repeat_count: int
    claimed_at: datetime | None
    claimed_by: str | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    note: str | None

    def to_json(self) -> dict[str, object]:
        """The row as JSON-ready values: datetimes become ISO 8601 strings."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value) if isinstance(value, StrEnum) else value


def _alert_row(**columns: Any) -> AlertRow:
    return AlertRow(**{**columns, "status": AlertStatus(columns["status"])})


_COLUMNS = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(AlertRow))


# --- listing -----------------------------------------------------------------------------


def list_alerts(conn: psycopg.Connection, *, status: str | Sequence[str] | None = None,
                queue: str | None = None, limit: int = 500) -> list[AlertRow]:
    """Alerts most urgent first (priority 1 first, then the oldest), filtered exactly."""
    if limit < 1:
        raise AlertError(f"limit must be at least 1, got {limit}")
    conditions: list[sql.Composable] = []
    params: list[object] = []
    if status is not None:
        conditions.append(sql.SQL("status = ANY(%s)"))
        params.append(_statuses(status))
    if queue is not None:
        conditions.append(sql.SQL("queue = %s"))
        params.append(queue)
    query = sql.SQL("SELECT {} FROM alerts WHERE {} ORDER BY priority, opened_at, id LIMIT %s")
    where = sql.SQL(" AND ").join(conditions or [sql.SQL("true")])
    with conn.cursor(row_factory=kwargs_row(_alert_row)) as cur:
        return cur.execute(query.format(_COLUMNS, where), [*params, limit]).fetchall()


def _statuses(status: str | Sequence[str]) -> list[str]:
    wanted = [status] if isinstance(status, str) else list(status)
    known = [s.value for s in AlertStatus]
    for s in wanted:
        if s not in known:
            raise AlertError(f"unknown alert status '{s}'; one of {', '.join(known)}")
    return wanted


# --- actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Action:
    audit_name: str     # alert_audit.action
    verb: str           # as a person says it
    to_status: AlertStatus
    from_statuses: frozenset[AlertStatus]
    allowed: str        # what the rule is, for refusals
    at_column: str
    by_column: str


_HELD = frozenset({AlertStatus.CLAIMED, AlertStatus.ACKNOWLEDGED})

_CLAIM = _Action("claim", "claim", AlertStatus.CLAIMED, frozenset({AlertStatus.OPEN}),
                 "only an open alert can be claimed", "claimed_at", "claimed_by")
_ACK = _Action("ack", "acknowledge", AlertStatus.ACKNOWLEDGED,
               frozenset({AlertStatus.CLAIMED}),
               "only a claimed alert can be acknowledged, by the operator who claimed it",
               "acknowledged_at", "acknowledged_by")
_RESOLVE = _Action("resolve", "resolve", AlertStatus.RESOLVED,
                   frozenset({AlertStatus.OPEN, *_HELD}),
                   "only an open, claimed or acknowledged alert can be resolved "
                   "(a held one by its holder)", "resolved_at", "resolved_by")


def claim(conn: psycopg.Connection, alert_id: int, operator: str) -> AlertRow:
    """Take an open alert: from now on only `operator` can acknowledge or resolve it."""
    return _apply(conn, _CLAIM, alert_id, operator, None)


def acknowledge(conn: psycopg.Connection, alert_id: int, operator: str,
                note: str | None = None) -> AlertRow:
    """Acknowledge an alert `operator` has claimed."""
    return _apply(conn, _ACK, alert_id, operator, note)


def resolve(conn: psycopg.Connection, alert_id: int, operator: str,
            note: str | None = None) -> AlertRow:
    """Resolve an open alert, or one `operator` holds. Resolved is final."""
    return _apply(conn, _RESOLVE, alert_id, operator, note)


def _apply(conn: psycopg.Connection, action: _Action, alert_id: int, operator: str,
           note: str | None) -> AlertRow:
    """Lock, check, update, audit: one transaction (a savepoint inside the caller's)."""
    operator = _checked_operator(operator)
    note = _cleaned_note(note)
    with conn.transaction(), conn.cursor(row_factory=kwargs_row(_alert_row)) as cur:
        before = _locked(cur, alert_id)
        _check(before, action, operator)
        after = _updated(cur, before.id, action, operator, note)
        _audit(cur, before, after, action, operator, note)
    return after


def _checked_operator(operator: str) -> str:
    name = operator.strip()
    if not 0 < len(name) <= MAX_OPERATOR_LENGTH or not name.isprintable():
        raise InvalidOperator(f"the operator name {operator[:MAX_OPERATOR_LENGTH]!r} is not "
                              f"valid: use 1 to {MAX_OPERATOR_LENGTH} printable characters")
    return name


def _cleaned_note(note: str | None) -> str | None:
    return (note or "").strip() or None


def _locked(cur: psycopg.Cursor[AlertRow], alert_id: int) -> AlertRow:
    # SET LOCAL: ends with the transaction (the caller's, when this runs inside one).
    cur.connection.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
    try:
        cur.execute(sql.SQL("SELECT {} FROM alerts WHERE id = %s FOR UPDATE").format(_COLUMNS),
                    (alert_id,))
    except errors.LockNotAvailable as e:
        raise AlertBusy(f"alert {alert_id} is being changed by another session; try again "
                        "in a moment") from e
    row = cur.fetchone()
    if row is None:
        raise AlertNotFound(f"there is no alert {alert_id}; `vagt alerts list` shows them")
    return row


def _check(alert: AlertRow, action: _Action, operator: str) -> None:
    if alert.status not in action.from_statuses:
        raise _refusal(alert, action, operator)
    holder = alert.claimed_by
    if alert.status in _HELD and holder != operator:
        raise InvalidTransition(f"alert {alert.id} is {_state(alert)}: {operator} cannot "
                                f"{action.verb} it; only {holder}, who holds it, can")


def _refusal(alert: AlertRow, action: _Action, operator: str) -> InvalidTransition:
    if action is _CLAIM and alert.status is AlertStatus.CLAIMED:
        you = " (you)" if alert.claimed_by == operator else ""
        return InvalidTransition(
            f"alert {alert.id} is already {_state(alert)}{you}: {operator} cannot claim it; "
            "one operator holds an alert at a time")
    return InvalidTransition(f"alert {alert.id} is {_state(alert)}: cannot {action.verb} it; "
                             f"{action.allowed}")


def _state(alert: AlertRow) -> str:
    """The alert's status as a person reads it: who, since when."""
    if alert.status is AlertStatus.CLAIMED:
        return f"claimed by {alert.claimed_by} since {_when(alert.claimed_at)}"
    if alert.status is AlertStatus.ACKNOWLEDGED:
        return f"acknowledged by {alert.acknowledged_by} since {_when(alert.acknowledged_at)}"
    if alert.status is AlertStatus.RESOLVED:
        by = f" by {alert.resolved_by}" if alert.resolved_by else ""
        return f"resolved{by} at {_when(alert.resolved_at)}, which is final"
    return alert.status.value


def _when(at: datetime | None) -> str:
    return "an unknown time" if at is None else f"{at:%Y-%m-%d %H:%M:%S %Z}".strip()


_UPDATE = sql.SQL("""
    UPDATE alerts SET status = %(to)s, {at} = clock_timestamp(), {by} = %(operator)s,
                      note = coalesce(%(note)s, note)
    WHERE id = %(id)s RETURNING {columns}""")


def _updated(cur: psycopg.Cursor[AlertRow], alert_id: int, action: _Action, operator: str,
             note: str | None) -> AlertRow:
    # clock_timestamp(), not now(): the time the lock was held, so the audit trail's order
    # is the order the actions really happened in, whenever each transaction began.
    query = _UPDATE.format(at=sql.Identifier(action.at_column),
                           by=sql.Identifier(action.by_column), columns=_COLUMNS)
    cur.execute(query, {"to": action.to_status.value, "operator": operator, "note": note,
                        "id": alert_id})
    row = cur.fetchone()
    assert row is not None, "the row is locked: it cannot have gone"
    return row


def _audit(cur: psycopg.Cursor[AlertRow], before: AlertRow, after: AlertRow, action: _Action,
           operator: str, note: str | None) -> None:
    at = getattr(after, action.at_column)
    cur.execute("INSERT INTO alert_audit (alert_id, at, actor, action, from_status, to_status, "
                "note) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (after.id, at, operator, action.audit_name, before.status.value,
                 after.status.value, note))
