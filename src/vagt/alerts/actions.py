"""What operators do to alerts: list, get, claim, next, acknowledge, resolve, note.

Each action locks the alert's row (FOR UPDATE), checks the transition, writes the audit row
and the outbox entry in one transaction, so two operators never hold the same alert and the
call centre's systems hear of every change. `next` takes the most urgent claimable alert
with FOR UPDATE SKIP LOCKED: operators asking at once get different alerts, without waiting.

A municipality scope (`municipality=`) limits an action to that municipality's alerts; an
alert outside it is reported as not found, so its existence is not disclosed. Notes and
operator names go to the audit trail and to the call centre's systems: one holding a CPR
number is refused (`vagt.privacy.HoldsCpr`), as everywhere in vagt.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.rows import kwargs_row
from psycopg.types.json import Jsonb

from vagt.alerts import outbox
from vagt.alerts.policy import AlertPolicy, current_policy
from vagt.alerts.suppression import is_inhibition_source, reconcile
from vagt.privacy import mask_cpr, without_cpr
from vagt.text import plain_spaces, shown, unprintable_problem

MAX_OPERATOR_LENGTH = 100
MAX_NOTE = outbox.MAX_NOTE
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


class InvalidNote(AlertError):
    """A note longer than MAX_NOTE, or with a character in it that is not printable."""


class InvalidResolution(AlertError):
    """A resolution without a known resolution code or without a note."""


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
    extra_queues: list[str]
    route: str | None
    base_priority: int | None
    queued_at: datetime | None
    time_to_claim: timedelta | None
    claim_deadline: datetime | None
    breaches: int
    escalated_at: datetime | None
    reopen_count: int
    reopened_at: datetime | None
    resolution_code: str | None
    suppressed_at: datetime | None
    suppressed_reason: str | None
    municipality: str | None

    def to_json(self) -> dict[str, object]:
        """The row as JSON-ready values: datetimes become ISO 8601 strings."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value) if isinstance(value, StrEnum) else value


def _alert_row(**columns: Any) -> AlertRow:
    return AlertRow(**{**columns, "status": AlertStatus(columns["status"])})


_COLUMNS = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(AlertRow))


# --- listing -----------------------------------------------------------------------------


def list_alerts(conn: psycopg.Connection, *, status: str | Sequence[str] | None = None,
                queue: str | None = None, limit: int = 500,
                municipality: str | None = None) -> list[AlertRow]:
    """Alerts most urgent first (priority 1 first, then the longest in the queue: the order
    `next` hands them out in), filtered exactly.

    `queue` also finds alerts listed in that queue through a `continue` route.
    """
    if limit < 1:
        raise AlertError(f"limit must be at least 1, got {limit}")
    conditions: list[sql.Composable] = []
    params: list[object] = []
    if status is not None:
        conditions.append(sql.SQL("status = ANY(%s)"))
        params.append(_statuses(status))
    if queue is not None:
        conditions.append(sql.SQL("(queue = %s OR %s = ANY(extra_queues))"))
        params.extend([queue, queue])
    if municipality is not None:
        conditions.append(sql.SQL("municipality = %s"))
        params.append(municipality)
    query = sql.SQL("SELECT {} FROM alerts WHERE {} ORDER BY priority, waiting_since, id LIMIT %s")
    where = sql.SQL(" AND ").join(conditions or [sql.SQL("true")])
    with conn.cursor(row_factory=kwargs_row(_alert_row)) as cur:
        return cur.execute(query.format(_COLUMNS, where), [*params, limit]).fetchall()


def get_alert(conn: psycopg.Connection, alert_id: int,
              municipality: str | None = None) -> AlertRow:
    with conn.cursor(row_factory=kwargs_row(_alert_row)) as cur:
        row = cur.execute(sql.SQL("SELECT {} FROM alerts WHERE id = %s AND "
                                  "(%s::text IS NULL OR municipality = %s)").format(_COLUMNS),
                          (alert_id, municipality, municipality)).fetchone()
    if row is None:
        raise AlertNotFound(f"there is no alert {alert_id}; `vagt alerts list` shows them")
    return row


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str
    note: str | None
    details: dict[str, object]

    def to_json(self) -> dict[str, object]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


def audit_trail(conn: psycopg.Connection, alert_id: int) -> list[AuditEntry]:
    """Every step of the alert, oldest first: who, when, from, to."""
    with conn.cursor(row_factory=kwargs_row(AuditEntry)) as cur:
        return cur.execute("SELECT at, actor, action, from_status, to_status, note, details "
                           "FROM alert_audit WHERE alert_id = %s ORDER BY at, id",
                           (alert_id,)).fetchall()


def _as_given(text: str) -> str:
    """What a caller gave, in a refusal that repeats it (the API's answer, the command's
    error): short, a CPR number masked, what is not printable escaped (a lone surrogate
    could not even be written into the answer)."""
    return shown(mask_cpr(text[:40])[0])


def _statuses(status: str | Sequence[str]) -> list[str]:
    wanted = [status] if isinstance(status, str) else list(status)
    known = [s.value for s in AlertStatus]
    for s in wanted:
        if s not in known:
            raise AlertError(f"unknown alert status '{_as_given(s)}'; one of "
                             f"{', '.join(known)}")
    return wanted


# --- actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Action:
    audit_name: str     # alert_audit.action
    verb: str           # as a person says it
    event: str          # the outbox event
    to_status: AlertStatus | None   # None: the status does not change (a note)
    from_statuses: frozenset[AlertStatus]
    allowed: str        # what the rule is, for refusals
    at_column: str | None
    by_column: str | None


_HELD = frozenset({AlertStatus.CLAIMED, AlertStatus.ACKNOWLEDGED})

_CLAIM = _Action("claim", "claim", "claimed", AlertStatus.CLAIMED,
                 frozenset({AlertStatus.OPEN}),
                 "only an open alert can be claimed", "claimed_at", "claimed_by")
_ACK = _Action("ack", "acknowledge", "acknowledged", AlertStatus.ACKNOWLEDGED,
               frozenset({AlertStatus.CLAIMED}),
               "only a claimed alert can be acknowledged, by the operator who claimed it",
               "acknowledged_at", "acknowledged_by")
_RESOLVE = _Action("resolve", "resolve", "resolved", AlertStatus.RESOLVED,
                   frozenset({AlertStatus.OPEN, *_HELD}),
                   "only an open, claimed or acknowledged alert can be resolved "
                   "(a held one by its holder)", "resolved_at", "resolved_by")
_NOTE = _Action("note", "add a note to", "note", None, frozenset(AlertStatus),
                "", None, None)
_RELEASE = _Action("release", "release", "released", AlertStatus.OPEN, _HELD,
                   "only a claimed or acknowledged alert can be released, by its holder or "
                   "a supervisor", None, None)


def claim(conn: psycopg.Connection, alert_id: int, operator: str, *,
          municipality: str | None = None, via: str | None = None) -> AlertRow:
    """Take an open alert: from now on only `operator` can acknowledge or resolve it."""
    return _apply(conn, _CLAIM, alert_id, operator, None, municipality=municipality, via=via)


def acknowledge(conn: psycopg.Connection, alert_id: int, operator: str,
                note: str | None = None, *, municipality: str | None = None,
                via: str | None = None) -> AlertRow:
    """Acknowledge an alert `operator` has claimed."""
    return _apply(conn, _ACK, alert_id, operator, note, municipality=municipality, via=via)


def resolve(conn: psycopg.Connection, alert_id: int, operator: str,
            note: str | None = None, *, code: str | None = None,
            municipality: str | None = None, policy: AlertPolicy | None = None,
            via: str | None = None) -> AlertRow:
    """Resolve an open alert, or one `operator` holds, with a resolution code and a note.

    Resolved is final; a new firing soon after reopens it (the engine does that).
    """
    policy = policy or current_policy()
    if code is None or code not in policy.resolution_codes:
        given = "none was given" if code is None else f"got '{_as_given(code)}'"
        raise InvalidResolution(f"a resolution code is required, one of "
                                f"{', '.join(policy.resolution_codes)}; {given}")
    if not _cleaned_note(note):
        raise InvalidResolution("a resolution needs a note saying what was done")
    return _apply(conn, _RESOLVE, alert_id, operator, note, code=code,
                  municipality=municipality, policy=policy, via=via)


def release(conn: psycopg.Connection, alert_id: int, operator: str, note: str | None = None,
            *, supervisor: bool = False, municipality: str | None = None,
            via: str | None = None) -> AlertRow:
    """Give a held alert back to its queue (open, claimable, a new time to claim): the holder
    cannot finish it, or a supervisor takes it from an operator who has gone (with a note
    saying why: the audit trail keeps it)."""
    return _apply(conn, _RELEASE, alert_id, operator, note, municipality=municipality,
                  override=supervisor, via=via)


def add_note(conn: psycopg.Connection, alert_id: int, operator: str, note: str, *,
             municipality: str | None = None, via: str | None = None) -> AlertRow:
    """Write a note on an alert (any status); the status does not change."""
    if not _cleaned_note(note):
        raise AlertError("the note is empty")
    return _apply(conn, _NOTE, alert_id, operator, note, municipality=municipality, via=via)


_NEXT = sql.SQL("""
    SELECT id FROM alerts
    WHERE status = 'open' AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s)
                               OR extra_queues && %(queues)s)
      AND (%(municipality)s::text IS NULL OR municipality = %(municipality)s)
    ORDER BY priority, waiting_since, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED""")


def next_alert(conn: psycopg.Connection, operator: str, queues: Sequence[str] | None = None, *,
               municipality: str | None = None, via: str | None = None) -> AlertRow | None:
    """Claim the most urgent open alert of `queues` (all when None) for `operator`.

    Alerts other operators are taking right now are skipped, not waited for; None when
    there is nothing to take.
    """
    operator = checked_operator(operator)
    with conn.transaction():
        row = conn.execute(_NEXT, {"queues": list(queues) if queues else None,
                                   "municipality": municipality}).fetchone()
        if row is None:
            return None
        return claim(conn, int(row[0]), operator, municipality=municipality, via=via)


def _apply(conn: psycopg.Connection, action: _Action, alert_id: int, operator: str,
           note: str | None, *, code: str | None = None, municipality: str | None = None,
           policy: AlertPolicy | None = None, override: bool = False,
           via: str | None = None) -> AlertRow:
    """Lock, check, update, audit, outbox: one transaction (a savepoint inside the caller's).

    `via`: how the operator came (`cli:USER`, the command's login), for the audit trail
    only: the call centre's systems are not sent the centre's staff logins."""
    operator = checked_operator(operator)
    note = _cleaned_note(note)
    with conn.transaction(), conn.cursor(row_factory=kwargs_row(_alert_row)) as cur:
        before = _locked(cur, alert_id, municipality)
        _check(before, action, operator, override)
        after = _updated(cur, before.id, action, operator, note, code)
        details: dict[str, object] = {"resolution_code": code} if code else {}
        if override and before.claimed_by not in (None, operator):
            if note is None:   # the trail must say why the holder no longer holds it
                raise AlertError(f"taking alert {before.id} from {before.claimed_by} needs a "
                                 "note saying why (e.g. \"anna's shift ended\")")
            details["taken_from"] = before.claimed_by   # a supervisor acted on another's alert
        _audit(cur, before, after, action, operator, note,
               {**details, **({"via": via} if via else {})})
        outbox.enqueue(conn, [after.id], action.event, operator,
                       {**details, **({"note": note} if note else {})})
        if action is _RESOLVE and is_inhibition_source(after.labels, policy or current_policy()):
            reconcile(conn, policy=policy)
    return after


def checked_operator(operator: str) -> str:
    """The operator's name without surrounding spaces, in Unicode's NFC (`søren` typed on
    any keyboard is one name, as the API reads it); refused unless 1-100 printable
    characters, or when it holds a CPR number (checked first: the refusals below repeat it)."""
    name = unicodedata.normalize("NFC", without_cpr(operator, "operator name").strip())
    if not 0 < len(name) <= MAX_OPERATOR_LENGTH or not name.isprintable():
        problem = unprintable_problem(name, "it")
        raise InvalidOperator(f"the operator name {operator[:MAX_OPERATOR_LENGTH]!r} is not "
                              f"valid: use 1 to {MAX_OPERATOR_LENGTH} printable characters"
                              + (f" ({problem})" if problem else ""))
    return name


def _cleaned_note(note: str | None) -> str | None:
    """The note without surrounding spaces, its line breaks '\\n', its spaces ' ', or None;
    HoldsCpr when it holds a CPR number, InvalidNote when it is longer than MAX_NOTE or
    holds a character that is not printable but a line break or a tab (vagt.text): the call
    centre's systems, the console and `vagt alerts show` show it. A no-break space, pasted
    with the rest from a mail or a web page, is a space: the operator cannot see it."""
    cleaned = without_cpr(plain_spaces((note or "").replace("\r\n", "\n")).strip(),
                          "note") or None
    if cleaned is None:
        return None
    if len(cleaned) > MAX_NOTE:
        raise InvalidNote(f"the note has {len(cleaned)} characters; at most {MAX_NOTE} are "
                          "kept (it goes to the call centre's systems with each later event)")
    if problem := unprintable_problem(cleaned, "the note", line_breaks=True):
        raise InvalidNote(problem)
    return cleaned


def _locked(cur: psycopg.Cursor[AlertRow], alert_id: int, municipality: str | None) -> AlertRow:
    # SET LOCAL: ends with the transaction (the caller's, when this runs inside one).
    cur.connection.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
    # The scope is in the query, so a row outside it is neither locked nor waited for: busy,
    # another municipality's alert would answer 503 where one that does not exist answers 404.
    try:
        cur.execute(sql.SQL("SELECT {} FROM alerts WHERE id = %s AND "
                            "(%s::text IS NULL OR municipality = %s) FOR UPDATE"
                            ).format(_COLUMNS), (alert_id, municipality, municipality))
    except errors.LockNotAvailable as e:
        raise AlertBusy(f"alert {alert_id} is being changed by another session; try again "
                        "in a moment") from e
    row = cur.fetchone()
    if row is None:
        raise AlertNotFound(f"there is no alert {alert_id}; `vagt alerts list` shows them")
    return row


def _check(alert: AlertRow, action: _Action, operator: str, override: bool = False) -> None:
    if alert.status not in action.from_statuses:
        raise _refusal(alert, action, operator)
    holder = alert.claimed_by
    if (action.to_status is not None and alert.status in _HELD and holder != operator
            and not override):
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
                      note = coalesce(%(note)s, note),
                      resolution_code = coalesce(%(code)s, resolution_code)
    WHERE id = %(id)s RETURNING {columns}""")
_UPDATE_NOTE = sql.SQL("UPDATE alerts SET note = %(note)s WHERE id = %(id)s RETURNING {columns}")
# A released alert is claimable again from now (`queued_at`: its time to claim begins
# again), and keeps its place in the queue (`waiting_since`, migration 0016): the citizen
# behind it has waited longer than those behind alerts that came while it was held.
_UPDATE_RELEASE = sql.SQL("""
    UPDATE alerts SET status = 'open', claimed_at = NULL, claimed_by = NULL,
                      acknowledged_at = NULL, acknowledged_by = NULL,
                      note = coalesce(%(note)s, note),
                      queued_at = clock_timestamp(),
                      claim_deadline = clock_timestamp()
                                       + coalesce(time_to_claim, interval '1 hour')
    WHERE id = %(id)s RETURNING {columns}""")


def _updated(cur: psycopg.Cursor[AlertRow], alert_id: int, action: _Action, operator: str,
             note: str | None, code: str | None) -> AlertRow:
    # clock_timestamp(), not now(): the time the lock was held, so the audit trail's order
    # is the order the actions really happened in, whenever each transaction began.
    if action.to_status is None:
        cur.execute(_UPDATE_NOTE.format(columns=_COLUMNS), {"note": note, "id": alert_id})
    elif action is _RELEASE:
        cur.execute(_UPDATE_RELEASE.format(columns=_COLUMNS), {"note": note, "id": alert_id})
    else:
        assert action.at_column and action.by_column
        query = _UPDATE.format(at=sql.Identifier(action.at_column),
                               by=sql.Identifier(action.by_column), columns=_COLUMNS)
        cur.execute(query, {"to": action.to_status.value, "operator": operator, "note": note,
                            "code": code, "id": alert_id})
    row = cur.fetchone()
    assert row is not None, "the row is locked: it cannot have gone"
    return row


def _audit(cur: psycopg.Cursor[AlertRow], before: AlertRow, after: AlertRow, action: _Action,
           operator: str, note: str | None, details: dict[str, object]) -> None:
    at = getattr(after, action.at_column) if action.at_column else None
    cur.execute("INSERT INTO alert_audit (alert_id, at, actor, action, from_status, to_status, "
                "note, details) VALUES (%s, coalesce(%s, clock_timestamp()), %s, %s, %s, %s, "
                "%s, %s)",
                (after.id, at, operator, action.audit_name, before.status.value,
                 after.status.value, note, Jsonb(details)))
