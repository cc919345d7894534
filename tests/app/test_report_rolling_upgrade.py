"""A vendor report of the release that brought migration 0019, still running on a host not
yet upgraded, refreshes the plain tables' counts of a database at today's schema: it may fail,
never move the refresh snapshot past rows that the days and weeks (0023) did not get."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from vagt.app import device_hours

DAY = datetime(2026, 3, 2, tzinfo=UTC)      # a Monday: its week begins with it
LOCK_KEY = 0x76616774_687273                # the refresh's lock, as that release took it

# That release's refresh as it was (`git show 3628fcd:src/vagt/app/device_hours.py`, the
# same until 0022 came), its statement texts with their `{new}`, in one REPEATABLE READ
# transaction under its lock.
_OLD_BUCKET = "date_bin(INTERVAL '1 hour', time, TIMESTAMPTZ '2000-01-03 00:00+00')"
OLD_READINGS = f"""
INSERT INTO readings_hourly AS h (bucket, device_id, readings, measurements)
SELECT {_OLD_BUCKET}, device_id, count(*),
       sum(CASE WHEN metric IN ('battery', 'signal') THEN 0 ELSE 1 END)
FROM readings WHERE {{new}}
GROUP BY 1, 2
ON CONFLICT (bucket, device_id) DO UPDATE
SET readings = h.readings + excluded.readings,
    measurements = h.measurements + excluded.measurements
"""
OLD_EVENTS = f"""
INSERT INTO events_hourly AS h (bucket, device_id, events, faults)
SELECT {_OLD_BUCKET}, device_id, count(*), sum(CASE WHEN starts_with(code, 'fault.') THEN 1 ELSE 0 END)
FROM events WHERE {{new}}
GROUP BY 1, 2
ON CONFLICT (bucket, device_id) DO UPDATE
SET events = h.events + excluded.events, faults = h.faults + excluded.faults
"""
OLD_ALL = "true"
OLD_SINCE = ("stored_xid >= %(xmin)s "
             "AND NOT pg_visible_in_snapshot(stored_xid::text::xid8, %(last)s::pg_snapshot)")
OLD_SNAPSHOT = ("SELECT snapshot::text, pg_snapshot_xmin(snapshot)::text::bigint "
                "FROM hourly_refresh WHERE name = %s")
OLD_MOVE = ("INSERT INTO hourly_refresh (name, snapshot) "
            "VALUES (%s, pg_current_snapshot()) "
            "ON CONFLICT (name) DO UPDATE SET snapshot = excluded.snapshot, at = now()")


def old_release_refreshes(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                row = conn.execute(OLD_SNAPSHOT, ("device_hours",)).fetchone()
                if row is None:
                    new, params = OLD_ALL, None
                else:
                    new, params = OLD_SINCE, {"last": row[0], "xmin": row[1]}
                conn.execute(OLD_READINGS.format(new=new), params)
                conn.execute(OLD_EVENTS.format(new=new), params)
                conn.execute(OLD_MOVE, ("device_hours",))
        finally:
            conn.isolation_level = None
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def refresh(database_url: str) -> None:
    """A report of this release brings the counts up to date."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        device_hours.refresh(conn, DAY.timestamp(), (DAY + timedelta(days=1)).timestamp())


def store(database_url: str, hour: int) -> None:
    """A reading and a fault of the dispenser, in that hour of the day."""
    t = DAY + timedelta(hours=hour, minutes=5)
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO readings (time, device_id, metric, value, unit, received_at) "
                     "VALUES (%s, 'ev-1', 'doses_remaining', 40, '1', %s)", (t, t))
        conn.execute("INSERT INTO events (time, device_id, code, severity, received_at) "
                     "VALUES (%s, 'ev-1', 'fault.dispenser_jam', 'major', %s)", (t, t))


def counts(database_url: str) -> dict[str, tuple[int, ...]]:
    with psycopg.connect(database_url) as conn:
        hourly = conn.execute("SELECT coalesce(sum(measurements), 0) FROM readings_hourly"
                              ).fetchone()
        daily = conn.execute("SELECT measurements, faults, heard FROM device_daily "
                             "WHERE device_id = 'ev-1' AND day = %s", (DAY,)).fetchone()
        weekly = conn.execute("SELECT measurements, faults, slots_1h FROM device_weekly "
                              "WHERE device_id = 'ev-1' AND week = %s", (DAY,)).fetchone()
    return {"hourly": tuple(hourly or ()), "daily": tuple(daily or ()),
            "weekly": tuple(weekly or ())}


def snapshot(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT snapshot::text FROM hourly_refresh").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def dispenser(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality) "
                     "VALUES ('ev-1', 'Evondos', 'E300', 'medicine_dispenser', 'Aarhus')")
    return database_url


@pytest.mark.parametrize("refreshed_before", [True, False])
def test_rows_an_old_reports_refresh_meets_reach_the_days_and_weeks(dispenser,
                                                                    refreshed_before):
    """Rows stored since the last refresh (or, never refreshed, all of them): the old
    release's refresh adds them to the hours alone; the next refresh of this release must
    find them still new."""
    if refreshed_before:
        store(dispenser, 9)
        refresh(dispenser)
    store(dispenser, 10)
    with contextlib.suppress(psycopg.errors.ObjectNotInPrerequisiteState):
        old_release_refreshes(dispenser)
    refresh(dispenser)
    refresh(dispenser)                  # nothing new: counted once
    hours = (9, 10) if refreshed_before else (10,)
    n = len(hours)
    assert counts(dispenser) == {"hourly": (n,), "daily": (n, n, sum(1 << h for h in hours)),
                                 "weekly": (n, n, n)}


def test_an_old_reports_refresh_is_refused_saying_so_and_adds_nothing(dispenser):
    store(dispenser, 9)
    refresh(dispenser)
    store(dispenser, 10)
    before = snapshot(dispenser), counts(dispenser)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused:
        old_release_refreshes(dispenser)
    assert "release before 0023; nothing was added" in str(refused.value)
    assert refused.value.diag.message_hint == ("upgrade vagt on this host, or run the report "
                                               "on an upgraded one")
    assert (snapshot(dispenser), counts(dispenser)) == before
