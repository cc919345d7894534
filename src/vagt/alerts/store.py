"""The engine's writes to the alert queue: open or repeat alerts by fingerprint, clear them.

Runs inside the batch's transaction, so an alert exists exactly when the readings and events
that caused it are committed. One statement per batch, whatever the number of alerts.

Idempotent by device time: a firing changes an alert only if it happened after everything the
alert has already seen (`last_fired_at`), so a redelivered message changes nothing and an
alarm an operator resolved is not reopened by a copy of itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
import psycopg

ENGINE_ACTOR = "vagt"


@dataclass(frozen=True, slots=True)
class AlertFiring:
    """A rule's condition held for one device in one batch (`count` times)."""

    rule: str
    device_id: str
    summary: str
    severity: str
    priority: int
    queue: str
    first_time: float   # unix seconds, device time
    last_time: float
    count: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.device_id)


def fingerprint(rule: str, device_id: str) -> str:
    return f"{rule}|{device_id}"


_UPSERT = """
WITH incoming AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                         %s::text[], %s::int[], %s::text[], %s::float8[], %s::float8[], %s::int[])
        AS t(fingerprint, rule, device_id, labels, summary, severity, priority, queue,
             first_time, last_time, n)
), upserted AS (
    INSERT INTO alerts AS a (fingerprint, rule, device_id, labels, summary, severity, priority,
                             queue, opened_at, last_fired_at, repeat_count)
    SELECT fingerprint, rule, device_id, labels::jsonb, summary, severity, priority, queue,
           to_timestamp(first_time), to_timestamp(last_time), n
    FROM incoming i
    WHERE NOT EXISTS (SELECT 1 FROM alerts r
                      WHERE r.fingerprint = i.fingerprint AND r.status = 'resolved'
                        AND r.last_fired_at >= to_timestamp(i.last_time))
    ON CONFLICT (fingerprint) WHERE status <> 'resolved' DO UPDATE
       SET repeat_count = a.repeat_count + EXCLUDED.repeat_count,
           last_fired_at = EXCLUDED.last_fired_at,
           summary = EXCLUDED.summary
       WHERE EXCLUDED.last_fired_at > a.last_fired_at
    RETURNING a.id, a.rule, a.queue, (a.xmax = 0) AS opened
), audited AS (
    INSERT INTO alert_audit (alert_id, actor, action, from_status, to_status)
    SELECT id, 'rule:' || rule, 'open', NULL, 'open' FROM upserted WHERE opened
)
SELECT id, queue, opened FROM upserted
"""

_CLEAR = """
WITH incoming AS (
    SELECT * FROM unnest(%s::text[], %s::float8[]) AS t(fingerprint, at)
), target AS (
    SELECT a.id, a.rule, a.status FROM alerts a JOIN incoming i USING (fingerprint)
    WHERE a.status <> 'resolved' AND a.last_fired_at <= to_timestamp(i.at)
    FOR UPDATE OF a
), resolved AS (
    UPDATE alerts a SET status = 'resolved', resolved_at = now(),
                        resolved_by = 'rule:' || a.rule,
                        note = 'cleared: the condition no longer holds'
    FROM target WHERE a.id = target.id
    RETURNING a.id
), audited AS (
    INSERT INTO alert_audit (alert_id, actor, action, from_status, to_status, note)
    SELECT id, 'rule:' || rule, 'resolve', status, 'resolved', 'the condition no longer holds'
    FROM target
)
SELECT id FROM resolved
"""


def record_firings(conn: psycopg.Connection,
                   firings: Sequence[AlertFiring]) -> list[tuple[int, str]]:
    """Open an alert per new fingerprint, count a repeat on an open one.

    Returns (id, queue) of the alerts opened now.
    """
    if not firings:
        return []
    cols = (
        [f.fingerprint for f in firings], [f.rule for f in firings],
        [f.device_id for f in firings],
        [orjson.dumps(f.labels).decode() for f in firings],
        [f.summary for f in firings], [f.severity for f in firings],
        [f.priority for f in firings], [f.queue for f in firings],
        [f.first_time for f in firings], [f.last_time for f in firings],
        [f.count for f in firings],
    )
    rows = conn.execute(_UPSERT, cols).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows if r[2]]


def clear_alerts(conn: psycopg.Connection, fingerprints: Sequence[str],
                 times: Sequence[float]) -> list[int]:
    """Resolve the open alerts whose condition cleared at `times` (not before they last fired)."""
    if not fingerprints:
        return []
    rows = conn.execute(_CLEAR, (list(fingerprints), list(times))).fetchall()
    return [int(r[0]) for r in rows]
