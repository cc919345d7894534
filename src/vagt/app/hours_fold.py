"""Folding the vendor report's old hourly counts into per-day arrays (`device_hours_folded`,
migration 0026) and deleting them, with nothing lost; and the lock that keeps this and the
refresh of the counts (`device_hours`) apart.
"""

from __future__ import annotations

import threading
from datetime import datetime

import psycopg

# The advisory lock of the plain tables' counts: a refresh holds it for its session, each
# fold's transaction for itself, so a refresh never finds an hour gone that its snapshot
# saw (REPEATABLE READ would fail on it). "vagt" "hrs" in ASCII.
REFRESH_LOCK_KEY = 0x76616774_687273

_ORIGIN = "TIMESTAMPTZ '2000-01-03 00:00+00'"
_COLUMNS = ("readings", "measurements", "events", "faults")

# At most a batch of an hourly table's rows before `before`, from the key after the last
# batch's (each batch goes on where the last stopped: the deleted rows are not read again),
# deleted, and their counts added to their days' arrays (the other table's left as they are,
# NULL in a new row). Returns how many, and the last key.
_FOLD = f"""
WITH gone AS (
    DELETE FROM {{table}} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {{table}}
        WHERE (device_id, bucket) > (%(device)s, %(bucket)s) AND bucket < %(before)s
        ORDER BY device_id, bucket LIMIT %(rows)s))
    RETURNING device_id, bucket, {{a}}, {{b}}
), hours AS (
    SELECT device_id, date_bin(INTERVAL '1 day', bucket, {_ORIGIN}) AS day, bucket, {{a}}, {{b}}
    FROM gone
), days AS (
    SELECT d.device_id, d.day,
           array_agg(coalesce(h.{{a}}, 0)::integer ORDER BY k) AS {{a}},
           array_agg(coalesce(h.{{b}}, 0)::integer ORDER BY k) AS {{b}}
    FROM (SELECT DISTINCT device_id, day FROM hours) d
    CROSS JOIN generate_series(0, 23) k
    LEFT JOIN hours h ON h.device_id = d.device_id AND h.day = d.day
                     AND h.bucket = d.day + make_interval(hours => k)
    GROUP BY 1, 2
), folded AS (
    INSERT INTO device_hours_folded AS f (day, device_id, {", ".join(_COLUMNS)})
    SELECT day, device_id, {{values}} FROM days
    ON CONFLICT (device_id, day) DO UPDATE
    SET {{a}} = vagt_add_hours(f.{{a}}, excluded.{{a}}),
        {{b}} = vagt_add_hours(f.{{b}}, excluded.{{b}})
)
SELECT n.n, last.device_id, last.bucket
FROM (SELECT count(*) AS n FROM gone) n
LEFT JOIN LATERAL (SELECT device_id, bucket FROM gone
                   ORDER BY device_id DESC, bucket DESC LIMIT 1) last ON true
"""


def _fold_sql(table: str, a: str, b: str) -> str:
    values = ", ".join(c if c in (a, b) else "NULL" for c in _COLUMNS)
    return _FOLD.format(table=table, a=a, b=b, values=values)


_FOLDS = [_fold_sql("readings_hourly", "readings", "measurements"),
          _fold_sql("events_hourly", "events", "faults")]


def fold(conn: psycopg.Connection, before: datetime, batch_rows: int,
         stop: threading.Event) -> int:
    """Fold the hours before `before` (plain PostgreSQL), `batch_rows` hourly rows per
    transaction, in key order, once through each table; how many hourly rows were folded.
    A row that comes late behind the walk is folded by the next prune. `conn`: autocommit."""
    total = 0
    for sql in _FOLDS:
        device, bucket = "", datetime.min.replace(tzinfo=before.tzinfo)
        while not stop.is_set():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (REFRESH_LOCK_KEY,))
                row = conn.execute(sql, {"device": device, "bucket": bucket, "before": before,
                                         "rows": batch_rows}).fetchone()
            assert row is not None
            n, device, bucket = row
            total += n
            if n < batch_rows:
                break
    return total
