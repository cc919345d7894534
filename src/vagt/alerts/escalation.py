"""Time to claim: an open alert not claimed by its deadline escalates; and time to
acknowledge: a claimed alert not acknowledged in time after its claim escalates, once per
claim, its operator keeping it (a console that crashed, an operator called away: the
supervisors see it in the escalation queue and can release it to another operator).

Escalating raises the priority by one (1 is the highest), moves the alert to the policy's
escalation queue (its own queue stays in `extra_queues`, so its operators still see it),
counts a breach, gives it the new priority's time to claim unless its own is shorter (the
deadline of an open alert, and of a held one when it is released or a suppression ends),
and is audited and sent to the outbox. The timer (`Timer`) runs it with the suppression
reconciliation, in one process at a time (a PostgreSQL advisory lock), under an injected
clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import ConnectionPool

from vagt.alerts import outbox
from vagt.alerts.observe import AlertObserver, NullObserver
from vagt.alerts.policy import AlertPolicy, current_policy
from vagt.alerts.routing import time_to_claim_for
from vagt.alerts.suppression import ENGINE_ACTOR, reconcile
from vagt.app.watchdog import guarded_connection
from vagt.errors import first_line

log = logging.getLogger("vagt.alerts.escalation")

TIMER_LOCK = "vagt.alerts.timer"


@dataclass(frozen=True)
class Breach:
    alert_id: int
    from_queue: str
    to_queue: str
    from_priority: int
    to_priority: int
    claimed: bool = False     # held by an operator: not acknowledged in time, not unclaimed


_OVERDUE = """
SELECT id, queue, priority, extra_queues FROM alerts
WHERE status = 'open' AND claim_deadline <= %s
ORDER BY priority, claim_deadline, id
FOR UPDATE SKIP LOCKED
"""

# A claimed alert's time to acknowledge, from the policy's table by its present priority;
# once per claim (an escalation after the claim is the one). Claims are few: the partial
# index (0025) finds them without reading the alerts of years.
_UNACKNOWLEDGED = """
SELECT a.id, a.queue, a.priority, a.extra_queues FROM alerts a
JOIN unnest(%(priority)s::int[], %(tta)s::float8[]) AS t(priority, tta) USING (priority)
WHERE a.status = 'claimed' AND a.claimed_at + make_interval(secs => t.tta) <= %(now)s
  AND (a.escalated_at IS NULL OR a.escalated_at < a.claimed_at)
ORDER BY a.priority, a.claimed_at, a.id
FOR UPDATE OF a SKIP LOCKED
"""

# The alert's time to claim becomes its new priority's, or stays its own if that is shorter
# (a route may give its alerts less than their priority's): escalating never gives it
# longer. A release or the end of a suppression queues it again by that (`time_to_claim`).
# The deadline to claim is set again only for an open alert (a claimed one has none).
_ESCALATE = """
WITH t AS (
    SELECT t.*, least(a.time_to_claim, make_interval(secs => t.ttc)) AS time_to_claim
    FROM unnest(%(ids)s::bigint[], %(queue)s::text[], %(priority)s::int[],
                %(ttc)s::float8[], %(from_queue)s::text[], %(from_priority)s::int[])
        AS t(id, queue, priority, ttc, from_queue, from_priority)
    JOIN alerts a USING (id)
), changed AS (
    UPDATE alerts a SET queue = t.queue, priority = t.priority, breaches = a.breaches + 1,
           escalated_at = %(now)s, time_to_claim = t.time_to_claim,
           claim_deadline = CASE WHEN a.status = 'open' THEN %(now)s + t.time_to_claim
                                 ELSE a.claim_deadline END,
           extra_queues = CASE WHEN t.from_queue <> t.queue
                                    AND NOT t.from_queue = ANY(a.extra_queues)
                               THEN array_append(a.extra_queues, t.from_queue)
                               ELSE a.extra_queues END
    FROM t WHERE a.id = t.id
    RETURNING a.id, a.status, a.claimed_by
)
INSERT INTO alert_audit (alert_id, at, actor, action, from_status, to_status, note, details)
SELECT t.id, %(now)s, 'vagt', 'escalate', changed.status, changed.status,
       CASE WHEN changed.status = 'open' THEN 'not claimed in time'
            ELSE 'claimed by ' || changed.claimed_by || ', not acknowledged in time' END,
       jsonb_build_object('from_queue', t.from_queue, 'to_queue', t.queue,
                          'from_priority', t.from_priority, 'to_priority', t.priority)
FROM t JOIN changed USING (id)
"""


def escalate_overdue(conn: psycopg.Connection, now: datetime,
                     policy: AlertPolicy | None = None,
                     observer: AlertObserver | None = None) -> list[Breach]:
    """Escalate every open alert whose time to claim has passed at `now`, and every claimed
    one whose time to acknowledge has; one transaction (a savepoint in the caller's). The
    breaches are told to `observer` (`tell`) if given, else the caller tells them once its
    transaction commits (the timer's tick): a breach counted before, and rolled back with a
    tick that failed after it, was counted again at the next."""
    policy = policy or current_policy()
    tta = sorted(policy.time_to_acknowledge_s.items())
    with conn.transaction():
        unclaimed = conn.execute(_OVERDUE, (now,)).fetchall()
        claimed = conn.execute(_UNACKNOWLEDGED, {
            "priority": [p for p, _ in tta], "tta": [s for _, s in tta], "now": now}).fetchall()
        breaches = []
        for held, rows in ((False, unclaimed), (True, claimed)):
            for alert_id, queue, priority, _extra in rows:
                breaches.append(Breach(int(alert_id), str(queue),
                                       policy.escalation_queue or str(queue), int(priority),
                                       max(1, int(priority) - 1), held))
        if not breaches:
            return []
        conn.execute(_ESCALATE, {
            "ids": [b.alert_id for b in breaches], "queue": [b.to_queue for b in breaches],
            "priority": [b.to_priority for b in breaches],
            "ttc": [time_to_claim_for(b.to_priority, policy.time_to_claim_s) for b in breaches],
            "from_queue": [b.from_queue for b in breaches],
            "from_priority": [b.from_priority for b in breaches], "now": now})
        outbox.enqueue(conn, [b.alert_id for b in breaches], "escalated", ENGINE_ACTOR)
    if observer is not None:
        tell(breaches, observer)
    return breaches


def tell(breaches: list[Breach], observer: AlertObserver) -> None:
    """Count and log escalations committed."""
    for b in breaches:
        if b.claimed:
            observer.unacknowledged(b.from_queue)
        else:
            observer.breached(b.from_queue)
        log.warning("event=alert_escalated alert_id=%d from_queue=%s to_queue=%s "
                    "priority=%d->%d reason=%s", b.alert_id, b.from_queue, b.to_queue,
                    b.from_priority, b.to_priority,
                    "not_acknowledged" if b.claimed else "not_claimed")


def run_timer_once(conn: psycopg.Connection, clock: Callable[[], datetime],
                   policy: AlertPolicy | None = None) -> list[Breach] | None:
    """One tick: silences that began or ended, repairs, escalations, and the outbox's old
    entries, in the caller's transaction; the escalations are the caller's to tell once it
    commits (`tell`). None if another process holds the timer (then it does the work).

    The time is read once the tick holds its connection and the timer's lock: read before
    (the pool's wait for a connection, seconds while a backlog drains), a silence created
    meanwhile was judged not begun, and the alert it had just suppressed was released and
    announced to the call centre for a tick."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))",
                       (TIMER_LOCK,)).fetchone()
    if row is None or not row[0]:
        return None
    now = clock()
    policy = policy or current_policy()
    with conn.transaction():
        reconcile(conn, now=now, policy=policy)
    breaches = escalate_overdue(conn, now, policy)
    with conn.transaction():
        outbox.prune(conn, now - timedelta(seconds=policy.delivery.retention_s))
    return breaches


class Timer:
    """The periodic job, in a thread of the engine: every `policy.escalation_interval_s`."""

    def __init__(self, pool: ConnectionPool, policy: AlertPolicy,
                 clock: Callable[[], float], observer: AlertObserver | None = None,
                 transaction_limit_s: float = 10.0) -> None:
        """`transaction_limit_s`: how long a pass may take before its connection is cut
        (`guarded_connection`): a database that stops answering would hold every
        escalation for ever."""
        self.pool = pool
        self.transaction_limit_s = transaction_limit_s
        self.policy = policy
        self.clock = clock
        self.observer = observer or NullObserver()

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.policy.escalation_interval_s):
            try:
                self.tick()
            except psycopg.OperationalError as e:
                log.error("event=alert_timer_failed error=%r note=retrying_next_tick",
                          first_line(e))

    def tick(self) -> list[Breach] | None:
        with guarded_connection(self.pool, self.transaction_limit_s,
                                "thread=alert-timer") as conn:
            with conn.transaction():
                breaches = run_timer_once(
                    conn, lambda: datetime.fromtimestamp(self.clock(), UTC), self.policy)
        tell(breaches or [], self.observer)
        return breaches
