"""The hourly, daily and weekly per-device counts the vendor report reads (`readings_hourly`,
`events_hourly`, migration 0019; `device_daily`, `device_weekly`, 0023): brought up to date
for a period before a report reads them.

TimescaleDB: continuous aggregates (daily ones on the hourly ones, 0022; `device_daily` a
view joining the daily ones; no weekly counts), refreshed over the period (their policies
keep the last days; late rows older than that wait for a refresh that covers them). Plain
PostgreSQL: tables, to which each refresh adds the rows stored since the last one, told
apart by transaction snapshot (see 0019), so no row is counted twice or missed, however
late its transaction commits; the hours it adds go into the days and the weeks.
"""

from __future__ import annotations

import logging
import math

import psycopg

from vagt.app.hours_fold import REFRESH_LOCK_KEY
from vagt.app.retention import READINGS_RETENTION
from vagt.devices.report_query import DAY_SLOT_HOURS, slots_sql

log = logging.getLogger("vagt.device_hours")

HOUR_S = 3600
DAY_S = 86400
_NAME = "device_hours"

# The hour as time_bucket makes it (UTC; time_bucket's origin, 2000-01-03, is on the hour).
BUCKET = "date_bin(INTERVAL '1 hour', time, TIMESTAMPTZ '2000-01-03 00:00+00')"

# The day as time_bucket makes it (UTC midnight), and the bit of an hour in its day's mask.
DAY = "date_bin(INTERVAL '1 day', bucket, TIMESTAMPTZ '2000-01-03 00:00+00')"
HOUR_BIT = f"1 << (extract(epoch FROM bucket - {DAY}) / 3600)::integer"

WEEK = "date_bin(INTERVAL '7 days', a.day, TIMESTAMPTZ '2000-01-03 00:00+00')"


def _adding(counts: tuple[str, ...]) -> str:
    """SQL (CTE `added`: the new hours' days, with `counts` and `heard`) that adds them to
    the days (0023) and to their weeks: counts added, masks OR-ed, and each slot count moved
    by what the day's new mask counts more than its old one (the old: as the statement
    found it; a day not there yet: none)."""
    slots = [f"slots_{n}h" for n in DAY_SLOT_HOURS]
    moved = ",\n           ".join(
        f"sum({slots_sql('(coalesce(d.heard, 0) | a.heard)', n)} "
        f"- {slots_sql('coalesce(d.heard, 0)', n)})" for n in DAY_SLOT_HOURS)
    columns = ("measurements", "events", "faults")
    added = ", ".join(f"sum(a.{c})" if c in counts else "0" for c in columns)
    return f"""weekly AS (
    INSERT INTO device_weekly AS w (week, device_id, {", ".join(columns)}, {", ".join(slots)})
    SELECT {WEEK}, a.device_id, {added},
           {moved}
    FROM added a LEFT JOIN device_daily d ON d.device_id = a.device_id AND d.day = a.day
    GROUP BY 1, 2
    ON CONFLICT (week, device_id) DO UPDATE
    SET {", ".join(f"{c} = w.{c} + excluded.{c}" for c in (*counts, *slots))}
)
INSERT INTO device_daily AS d (day, device_id, {", ".join(columns)}, heard)
SELECT day, device_id, {", ".join(c if c in counts else "0" for c in columns)}, heard
FROM added
ON CONFLICT (device_id, day) DO UPDATE
SET {", ".join(f"{c} = d.{c} + excluded.{c}" for c in counts)}, heard = d.heard | excluded.heard
"""


# The same counts as the continuous aggregates' SELECTs in 0019_device_hours.timescale.sql,
# added to the hourly table, and the same hours added to the day and the week of readings
# and events together (0023). One statement, so all see the same new rows. The events'
# statement runs after the readings', and finds the days as those left them. Each writes
# the days and the weeks in every refresh, rows or none: 0027 lets the snapshot move only in
# a transaction that did (a refresh of 0019's release, on a host not yet upgraded, did not).
_READINGS = f"""
WITH new AS (
    SELECT {BUCKET} AS bucket, device_id, count(*) AS readings,
           sum(CASE WHEN metric IN ('battery', 'signal') THEN 0 ELSE 1 END) AS measurements
    FROM readings WHERE {{new}}
    GROUP BY 1, 2
), hourly AS (
    INSERT INTO readings_hourly AS h (bucket, device_id, readings, measurements)
    SELECT bucket, device_id, readings, measurements FROM new
    ON CONFLICT (bucket, device_id) DO UPDATE
    SET readings = h.readings + excluded.readings,
        measurements = h.measurements + excluded.measurements
), added AS (
    SELECT {DAY} AS day, device_id, sum(measurements) AS measurements,
           bit_or({HOUR_BIT}) AS heard
    FROM new
    GROUP BY 1, 2
), {_adding(("measurements",))}"""

_EVENTS = f"""
WITH new AS (
    SELECT {BUCKET} AS bucket, device_id, count(*) AS events,
           sum(CASE WHEN starts_with(code, 'fault.') THEN 1 ELSE 0 END) AS faults
    FROM events WHERE {{new}}
    GROUP BY 1, 2
), hourly AS (
    INSERT INTO events_hourly AS h (bucket, device_id, events, faults)
    SELECT bucket, device_id, events, faults FROM new
    ON CONFLICT (bucket, device_id) DO UPDATE
    SET events = h.events + excluded.events, faults = h.faults + excluded.faults
), added AS (
    SELECT {DAY} AS day, device_id, sum(events) AS events, sum(faults) AS faults,
           bit_or({HOUR_BIT}) AS heard
    FROM new
    GROUP BY 1, 2
), {_adding(("events", "faults"))}"""

# Every row the transaction sees (the first refresh), or those the last refresh's snapshot
# did not: stored by a transaction that was not yet committed when it read.
_ALL = "true"
_SINCE = ("stored_xid >= %(xmin)s "
          "AND NOT pg_visible_in_snapshot(stored_xid::text::xid8, %(last)s::pg_snapshot)")


class NotMigrated(RuntimeError):
    """The database has not had migrations 0023 and 0026 yet (its engines not yet
    upgraded)."""


def flavour(conn: psycopg.Connection) -> str:
    """'timescale' or 'plain': how migration 0023 (the report's days and weeks; its hours
    are 0019's, their folded days 0026's) was applied here."""
    row = conn.execute("SELECT flavour, EXISTS (SELECT FROM schema_migrations "
                       "WHERE version = 26) FROM schema_migrations WHERE version = 23").fetchone()
    if row is None:
        raise NotMigrated("the database has not the vendor report's daily and weekly device "
                          "counts (migration 0023) yet: run `vagt db migrate`")
    if not row[1]:
        raise NotMigrated("the database has not the vendor report's folded hours (migration "
                          "0026) yet: run `vagt db migrate`")
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
    row = conn.execute(f"SELECT extract(epoch FROM now() - INTERVAL '{READINGS_RETENTION}' "
                       f"+ INTERVAL '{CHUNK_INTERVAL}')::float8").fetchone()
    assert row is not None
    for view, a, b in aggregate_windows(start, end, oldest_kept=float(row[0])):
        conn.execute(f"CALL refresh_continuous_aggregate('{view}', "
                     "to_timestamp(%s), to_timestamp(%s))", (a, b))


# The chunk width of readings and events (0002_timeseries.timescale.sql): retention drops a
# chunk once all of it is older than the horizon, so rows up to this much older may remain.
CHUNK_INTERVAL = "7 days"


def aggregate_windows(start: float, end: float,
                      oldest_kept: float) -> list[tuple[str, float, float]]:
    """The continuous aggregates to refresh for a report of [start, end), and over what.

    Only the buckets wholly inside a window are refreshed: the hours over the period's whole
    days (those the days are made of), then the days. The report reads no day that `end`
    cuts, so the days stop before it. Never before `oldest_kept` (the retention horizon and
    a chunk): a refresh over a range whose raw rows retention dropped deletes the
    aggregate's rows there too (TimescaleDB's "Data retention with continuous aggregates"),
    and the counts that outlive the raw rows are what a report of past years reads."""
    lo = max(math.floor(start / DAY_S), math.ceil(oldest_kept / DAY_S)) * DAY_S
    hi = math.ceil(end / DAY_S) * DAY_S
    whole_days_end = math.floor(end / DAY_S) * DAY_S
    windows = [("readings_hourly", lo, hi), ("events_hourly", lo, hi),
               ("readings_daily", lo, whole_days_end), ("events_daily", lo, whole_days_end)]
    return [(view, a, b) for view, a, b in windows if b > a]


def _refresh_tables(conn: psycopg.Connection) -> None:
    # The lock before the transaction: a refresh that waited for another must read with a
    # snapshot taken after that one committed, or it would add the same rows again.
    conn.execute("SELECT pg_advisory_lock(%s)", (REFRESH_LOCK_KEY,))
    try:
        _index_stored_xid(conn)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():   # one snapshot for every statement below
            _add_new_rows(conn)
    finally:
        conn.isolation_level = None
        conn.execute("SELECT pg_advisory_unlock(%s)", (REFRESH_LOCK_KEY,))


# Rows go in roughly in transaction order: a block's range of ids is small, and BRIN enough
# for the refresh's `stored_xid >= xmin`.
_XID_INDEXES = {"readings": "readings_stored_xid_brin", "events": "events_stored_xid_brin"}


# How long building an index waits for the transactions that began before it (a build
# CONCURRENTLY waits for each): a refresh goes on without the index rather than wait for a
# transaction left open, and the next refresh tries again.
INDEX_WAIT = "10s"


def _index_stored_xid(conn: psycopg.Connection) -> None:
    """Build the stored_xid indexes the first time (migration 0019 leaves them to us), without
    a lock that holds the lanes' inserts: CONCURRENTLY, outside a transaction. A build cut
    short leaves its index invalid: it is dropped and built again. Without them the refresh
    is right, and reads the whole table."""
    for table, name in _XID_INDEXES.items():
        row = conn.execute("SELECT i.indisvalid FROM pg_index i "
                           "WHERE i.indexrelid = to_regclass(%s)", (name,)).fetchone()
        if row is not None and row[0]:
            continue
        log.info("event=device_hours_index_building index=%s", name)
        conn.execute(f"SET lock_timeout = '{INDEX_WAIT}'")
        try:
            if row is not None:
                conn.execute(f"DROP INDEX CONCURRENTLY {name}")
            conn.execute(f"CREATE INDEX CONCURRENTLY {name} ON {table} USING brin (stored_xid)")
        except psycopg.errors.LockNotAvailable:
            log.warning("event=device_hours_index_waiting index=%s note=a_transaction_open_"
                        "since_before_it_next_refresh_tries_again", name)
        finally:
            conn.execute("RESET lock_timeout")


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
    log.info("event=device_hours_refreshed reading_days=%d event_days=%d first=%s",
             readings, events, row is None)
