"""The outbox: what happened to an alert, written in the transaction that made it happen.

One outbox row per event, and one delivery row per enabled target, in the same statement:
whatever commits the change commits the promise to deliver it, so a receiver (or the
engine) that is down loses nothing. The delivery worker (`delivery`) sends them later.
The targets are registered from the policy when the engine starts (`register_targets`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import orjson
import psycopg

from vagt.alerts.policy import DeliveryPolicy
from vagt.privacy import without_cpr

_ENQUEUE = """
WITH announced AS (   -- opened or reopened: the receivers know of this episode (0016)
    UPDATE alerts SET announced = true, ever_announced = true
    WHERE %(announces)s AND id = ANY(%(ids)s) AND NOT announced
), ev AS (
    INSERT INTO alert_outbox (alert_id, event, payload)
    SELECT a.id, %(event)s::text,
           jsonb_build_object('event', %(event)s::text, 'at', clock_timestamp(),
                              'actor', %(actor)s::text,
                              'details', %(details)s::jsonb,
                              'alert', to_jsonb(a) - 'municipality' - 'announced'
                                       - 'ever_announced'
                                       -- one stored before notes were bounded: bounded
                                       || jsonb_build_object('note',
                                                             left(a.note, %(max_note)s)))
    FROM alerts a WHERE a.id = ANY(%(ids)s)
    ORDER BY a.id
    RETURNING id, event
)
INSERT INTO alert_deliveries (outbox_id, target)
SELECT ev.id, t.name FROM ev
JOIN delivery_targets t ON t.enabled AND (t.events = '{}' OR ev.event = ANY(t.events))
"""


# The longest note an operator may write: it rides in the step's event twice (its details
# and the alert's latest note) and in every later event of the alert until another replaces
# it; a receiver refusing a large body (413) would make dead letters of them all, an
# escalation too. Room enough to say what was done.
MAX_NOTE = 2000

# The events that tell the call centre's systems of an alert's episode (see
# `suppression.reconcile`: one held back from its opening is told when it comes back).
ANNOUNCING = frozenset({"opened", "reopened"})


def enqueue(conn: psycopg.Connection, alert_ids: Iterable[int], event: str, actor: str,
            details: dict[str, object] | None = None) -> None:
    """Record `event` for each alert, with the alert as it is now, for every target."""
    ids = sorted(set(alert_ids))
    if not ids:
        return
    conn.execute(_ENQUEUE, {"ids": ids, "event": event, "actor": actor,
                            "details": orjson.dumps(details or {}).decode(),
                            "announces": event in ANNOUNCING, "max_note": MAX_NOTE})


def register_targets(conn: psycopg.Connection, delivery: DeliveryPolicy) -> list[str]:
    """Enable the policy's targets, disable the others (their undelivered rows stay, kept)."""
    targets: Sequence[tuple[str, str, tuple[str, ...]]] = [
        *((w.name, "webhook", w.events) for w in delivery.webhooks),
        *((m.name, "mqtt", m.events) for m in delivery.mqtt)]
    with conn.transaction():
        conn.execute("UPDATE delivery_targets SET enabled = false, updated_at = now() "
                     "WHERE enabled AND NOT name = ANY(%s)", ([t[0] for t in targets],))
        for name, kind, events in targets:
            conn.execute(
                "INSERT INTO delivery_targets (name, kind, events) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, events = EXCLUDED.events, "
                "enabled = true, updated_at = now()", (name, kind, list(events)))
    return [t[0] for t in targets]


def waiting_by_target(conn: psycopg.Connection) -> list[tuple[str, int, float | None]]:
    """Per enabled target: how many deliveries wait (neither delivered nor dead), and the
    age of the oldest of them by the database's clock (seconds; None when none waits)."""
    rows = conn.execute(
        "SELECT t.name, count(o.id), extract(epoch FROM now() - min(o.created_at))::float8 "
        "FROM delivery_targets t LEFT JOIN alert_deliveries d ON d.target = t.name "
        "AND d.delivered_at IS NULL AND d.dead_at IS NULL "
        "LEFT JOIN alert_outbox o ON o.id = d.outbox_id "
        "WHERE t.enabled GROUP BY t.name ORDER BY t.name").fetchall()
    return [(str(t), int(n), None if age is None else max(float(age), 0.0))
            for t, n, age in rows]


def undelivered(conn: psycopg.Connection, *, dead_only: bool = False,
                limit: int = 100) -> list[tuple[int, str, int, str, int, str | None, bool]]:
    """(outbox id, target, alert id, event, attempts, last error, dead) not delivered yet."""
    rows = conn.execute(
        "SELECT d.outbox_id, d.target, o.alert_id, o.event, d.attempts, d.last_error, "
        "d.dead_at IS NOT NULL FROM alert_deliveries d JOIN alert_outbox o ON o.id = d.outbox_id "
        "WHERE d.delivered_at IS NULL AND (NOT %s OR d.dead_at IS NOT NULL) "
        "ORDER BY d.outbox_id, d.target LIMIT %s", (dead_only, limit)).fetchall()
    return [(int(a), str(b), int(c), str(d), int(e), f, bool(g)) for a, b, c, d, e, f, g in rows]


def redeliver(conn: psycopg.Connection, outbox_id: int, target: str, *, actor: str,
              via: str | None = None) -> None:
    """Give a dead letter another round of tries (after the receiver was fixed); audited."""
    without_cpr(actor, "author")
    with conn.transaction():
        row = conn.execute("UPDATE alert_deliveries SET dead_at = NULL, attempts = 0, "
                           "refusals = 0, next_attempt_at = now() "
                           "WHERE outbox_id = %s AND target = %s AND dead_at IS NOT NULL "
                           "RETURNING 1", (outbox_id, target)).fetchone()
        if row is None:
            raise LookupError(f"there is no dead delivery of outbox entry {outbox_id} to "
                              f"'{target}'; `vagt alerts outbox --dead` lists them")
        conn.execute("INSERT INTO audit_log (actor, action, subject, details) VALUES "
                     "(%s, 'delivery.retry', %s, %s::jsonb)",
                     (actor, f"outbox {outbox_id}",
                      orjson.dumps({"target": target, **_via(via)}).decode()))


def give_up(conn: psycopg.Connection, outbox_id: int, target: str, *, actor: str,
            reason: str, via: str | None = None) -> None:
    """Make a waiting delivery that has failed a dead letter now, so that the target's
    events behind it go (a receiver that fails on this one event, with 5xx say, is otherwise
    tried until it takes it); audited, and `redeliver` can try it again. One never tried is
    refused: it is not what holds the others (a mistyped id would stop an alarm). A reason
    or author holding a CPR number is refused (HoldsCpr): the audit log keeps them."""
    without_cpr(actor, "author")
    without_cpr(reason, "reason")
    with conn.transaction():
        row = conn.execute(
            "UPDATE alert_deliveries SET dead_at = now(), "
            "last_error = %s || ' (last error: ' || coalesce(last_error, '-') || ')' "
            "WHERE outbox_id = %s AND target = %s AND delivered_at IS NULL "
            "AND dead_at IS NULL AND attempts > 0 RETURNING 1",
            (f"given up by {actor}: {reason}", outbox_id, target)).fetchone()
        if row is None:
            untried = conn.execute(
                "SELECT 1 FROM alert_deliveries WHERE outbox_id = %s AND target = %s "
                "AND delivered_at IS NULL AND dead_at IS NULL", (outbox_id, target)).fetchone()
            raise LookupError(
                f"the delivery of outbox entry {outbox_id} to '{target}' has not been tried "
                "yet: it waits behind another, not the other way round"
                if untried else f"no delivery of outbox entry {outbox_id} to '{target}' is "
                "waiting; `vagt alerts outbox` lists those that are")
        conn.execute("INSERT INTO audit_log (actor, action, subject, details) VALUES "
                     "(%s, 'delivery.give_up', %s, %s::jsonb)",
                     (actor, f"outbox {outbox_id}",
                      orjson.dumps({"target": target, "reason": reason,
                                    **_via(via)}).decode()))


def _via(via: str | None) -> dict[str, str]:
    """How the actor came (`cli:USER`, the command's login), for the audit log."""
    return {"via": via} if via else {}


_PRUNE = """
WITH old AS (
    SELECT o.id FROM alert_outbox o
    WHERE o.created_at < %s
      AND NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.outbox_id = o.id
                      AND d.delivered_at IS NULL AND d.dead_at IS NULL)
    ORDER BY o.id LIMIT %s
), gone AS (
    DELETE FROM alert_deliveries d USING old WHERE d.outbox_id = old.id
)
DELETE FROM alert_outbox o USING old WHERE o.id = old.id
"""


def prune(conn: psycopg.Connection, before: datetime, limit: int = 10_000) -> int:
    """Forget outbox entries older than `before` that are delivered or dead everywhere.

    Entries still being tried are kept whatever their age: nothing undelivered is dropped.
    """
    return conn.execute(_PRUNE, (before, limit)).rowcount
