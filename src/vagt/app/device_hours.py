"""The hourly per-device counts the vendor report reads (`readings_hourly`, `events_hourly`,
migration 0019): brought up to date for a period before a report reads them.

TimescaleDB: continuous aggregates, refreshed over the period (their policy keeps the last
days; late rows older than that wait for a refresh that covers them). Plain PostgreSQL:
tables, to which each refresh adds the rows stored since the last one, told apart by
transaction snapshot (see the migration), so no row is counted twice or missed, however late
its transaction commits.
"""

from __future__ import annotations

import logging
import math

import psycopg

log = logging.getLogger("vagt.device_hours")

HOUR_S = 3600
# the session-level advisory lock that keeps two refreshes of the plain tables apart:
# "vagt" "hrs" in ASCII
REFRESH_LOCK_KEY = 0x76616774_687273
_NAME = "device_hours"

# The hour as time_bucket makes it (UTC; time_bucket's origin, 2000-01-03, is on the hour).
BUCKET = "date_bin(INTERVAL '1 hour', time, TIMESTAMPTZ '2000-01-03 00:00+00')"

# The same counts as the continuous aggregates' SELECTs in 0019_device_hours.timescale.sql.
_READINGS = f"""
INSERT INTO readings_hourly AS h (bucket, device_id, readings, measurements)
SELECT {BUCKET}, device_id, count(*),
       sum(CASE WHEN metric IN ('battery', 'signal') THEN 0 ELSE 1 END)
FROM readings WHERE {{new}}
GROUP BY 1, 2
ON CONFLICT (bucket, device_id) DO UPDATE
SET readings = h.readings + excluded.readings,
    measurements = h.measurements + excluded.measurements
"""

_EVENTS = f"""
INSERT INTO events_hourly AS h (bucket, device_id, events, faults)
SELECT {BUCKET}, device_id, count(*), sum(CASE WHEN starts_with(code, 'fault.') THEN 1 ELSE 0 END)
FROM events WHERE {{new}}
GROUP BY 1, 2
ON CONFLICT (bucket, device_id) DO UPDATE
SET events = h.events + excluded.events, faults = h.faults + excluded.faults
"""

# Every row the transaction sees (the first refresh), or those the last refresh's snapshot
# did not: stored by a transaction that was not yet committed when it read.
_ALL = "true"
_SINCE = ("stored_xid >= %(xmin)s "
          "AND NOT pg_visible_in_snapshot(stored_xid::text::xid8, %(last)s::pg_snapshot)")


def flavour(conn: psycopg.Connection) -> str:
    """'timescale' or 'plain': how migration 0019 was applied here."""
    row = conn.execute("SELECT flavour FROM schema_migrations WHERE version = 19").fetchone()
    if row is None:
        raise RuntimeError("the database has no hourly device counts (migration 0019) yet: "
                           "run `vagt db migrate`")
    return str(row[0])


def refresh(conn: psycopg.Connection, start: float, end: float) -> None:
    """Bring the hourly counts of [start, end) (epoch seconds) up to date.

    `conn` must be in autocommit mode: TimescaleDB refreshes outside a transaction, and the
    plain refresh takes its lock before its snapshot.
    """
    if not conn.autocommit:
        raise ValueError("device_hours.refresh needs an autocommit connection")
    if flavour(conn) == "timescale":
        _refresh_aggregates(conn, start, end)
    else:
        _refresh_tables(conn)


def _refresh_aggregates(conn: psycopg.Connection, start: float, end: float) -> None:
    # only the buckets wholly inside the window are refreshed: widen it to whole hours
    lo = math.floor(start / HOUR_S) * HOUR_S
    hi = math.ceil(end / HOUR_S) * HOUR_S
    for view in ("readings_hourly", "events_hourly"):
        conn.execute(f"CALL refresh_continuous_aggregate('{view}', "
                     "to_timestamp(%s), to_timestamp(%s))", (lo, hi))


def _refresh_tables(conn: psycopg.Connection) -> None:
    # The lock before the transaction: a refresh that waited for another must read with a
    # snapshot taken after that one committed, or it would add the same rows again.
    conn.execute("SELECT pg_advisory_lock(%s)", (REFRESH_LOCK_KEY,))
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():   # one snapshot for every statement below
            _add_new_rows(conn)
    finally:
        conn.isolation_level = None
        conn.execute("SELECT pg_advisory_unlock(%s)", (REFRESH_LOCK_KEY,))


def _add_new_rows(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT snapshot::text, pg_snapshot_xmin(snapshot)::text::bigint "
                       "FROM hourly_refresh WHERE name = %s", (_NAME,)).fetchone()
    if row is None:
        new, params = _ALL, None
    else:
        new, params = _SINCE, {"last": row[0], "xmin": row[1]}
    readings = conn.execute(_READINGS.format(new=new), params).rowcount
    events = conn.execute(_EVENTS.format(new=new), params).rowcount
    conn.execute("INSERT INTO hourly_refresh (name, snapshot) "
                 "VALUES (%s, pg_current_snapshot()) "
                 "ON CONFLICT (name) DO UPDATE SET snapshot = excluded.snapshot, at = now()",
                 (_NAME,))
    log.info("event=device_hours_refreshed reading_hours=%d event_hours=%d first=%s",
             readings, events, row is None)
