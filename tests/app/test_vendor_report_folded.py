"""The vendor report over days whose hours the prune folded (`hours_fold`, migration 0026):
the same figures as before the fold and as a count of the raw rows, for periods and stays
that begin or end in a folded day; a late row for a folded hour counts, before and after
the next prune folds it; the prune keeps its window of hours and folds nothing twice."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from tests.app.conftest import query
from tests.app.test_vendor_report_counts import (
    DAYS,
    WINDOW,
    Fleet,
    _periods,
    counted,
    random_fleet,
    register,
    reported,
    store,
)

from vagt.app import db, device_hours, hours_fold, retention

# The prune's clock: HOURS_KEPT (35 days) before it is WINDOW + 15 days 00:00 UTC, so the
# fleet's first 15 days (and the day before) are folded, the rest kept as hours.
NOW = WINDOW + timedelta(days=50, hours=13, minutes=20)
FOLDED_BEFORE = WINDOW + timedelta(days=15)
HOURS = ("readings_hourly", "events_hourly")


def _refresh(conn: psycopg.Connection) -> None:
    device_hours.refresh(conn, WINDOW.timestamp(), WINDOW.timestamp() + DAYS * 86400)


def _folded_periods(rng: random.Random) -> list[tuple[datetime, datetime, str | None]]:
    """The random periods of the count test, one inside the folded days, one across their
    end, and the Danish days (from 23:00 UTC the day before, CET) of a folded week."""
    inside = WINDOW + timedelta(hours=rng.uniform(30, 100))
    across = WINDOW + timedelta(hours=rng.uniform(0, 24 * 12))
    danish = datetime(2026, 3, 3, 23, tzinfo=UTC)
    return [*_periods(rng),
            (inside, inside + timedelta(hours=rng.uniform(1, 24 * 9)), None),
            (across, FOLDED_BEFORE + timedelta(hours=rng.uniform(1, 24 * 10)), "Aarhus"),
            (danish, danish + timedelta(days=7), None),
            (danish + timedelta(days=1), danish + timedelta(days=1, hours=1), None)]


def _stored(url: str, rng: random.Random) -> Fleet:
    fleet = random_fleet(rng)
    with psycopg.connect(url, autocommit=True) as conn:
        register(conn, fleet)
        store(conn, fleet, fleet.readings, fleet.events)
        _refresh(conn)
    return fleet


def _hours_before(url: str, t: datetime) -> int:
    return sum(query(url, f"SELECT count(*) FROM {table} WHERE bucket < %s", (t,))[0][0]
               for table in HOURS)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_folded_days_give_the_figures_of_their_hours_and_of_the_rows(database_url, seed):
    """Stays that begin and end at odd times in folded days, periods that cut them: the
    report reads their partial days from the folded counts and the hours left, as it read
    them from the hours alone (folded in batches that end inside a device's day)."""
    rng = random.Random(seed)
    fleet = _stored(database_url, rng)
    periods = _folded_periods(rng)
    with psycopg.connect(database_url, autocommit=True) as conn:
        before = [reported(conn, *p) for p in periods]
        done = retention.prune(conn, NOW, batch_rows=50)
        assert done.hours_before == FOLDED_BEFORE
        assert done.hours_folded and _hours_before(database_url, FOLDED_BEFORE) == 0
        _refresh(conn)
        for p, figures in zip(periods, before, strict=True):
            assert reported(conn, *p) == figures == counted(fleet, *p), p


def test_stays_dated_back_into_folded_days_count_what_the_rows_say(database_url):
    """Lifecycle actions can be dated back (`at`): stays that begin and end in days folded
    before they were written are read from the folded counts as well."""
    rng = random.Random(9)
    fleet = _stored(database_url, rng)
    with psycopg.connect(database_url, autocommit=True) as conn:
        retention.prune(conn, NOW)
        for other in (21, 22):     # the same devices, other stays
            moved = Fleet(fleet.devices, random_fleet(random.Random(other)).stays,
                          fleet.readings, fleet.events)
            conn.execute("DELETE FROM device_assignments")
            for st in moved.stays:
                conn.execute("INSERT INTO device_assignments (device_id, citizen_ref, "
                             "municipality, since, until) VALUES (%s, %s, %s, %s, %s)",
                             (st.device_id, f"ref-{st.device_id}", st.municipality, st.since,
                              st.until))
            for p in _folded_periods(rng):
                assert reported(conn, *p) == counted(moved, *p), (other, p)


def test_a_late_row_for_a_folded_hour_counts_before_and_after_it_is_folded(database_url):
    """The refresh adds a late row to an hour of its own (the folded hour's counts stay
    folded); the report adds the two, and the next prune folds the row into the day."""
    rng = random.Random(11)
    fleet = _stored(database_url, rng)
    with psycopg.connect(database_url, autocommit=True) as conn:
        retention.prune(conn, NOW)
    stay = next(s for s in fleet.stays if s.since < WINDOW + timedelta(days=3)
                and (s.until is None or s.until > WINDOW + timedelta(days=4)))
    late = WINDOW + timedelta(days=3, hours=7, minutes=41)    # a folded day, a stay's edge
    readings = [(late, stay.device_id, "weight", 71.0, False),
                (late + timedelta(seconds=1), stay.device_id, "battery", 80.0, False)]
    events = [(late, stay.device_id, "fault.jam")]
    late_fleet = Fleet(fleet.devices, fleet.stays, fleet.readings + readings,
                       fleet.events + events)
    # periods that make the late hour part of an edge (the stay's, cut by the period) and
    # of a whole day
    periods = [(late - timedelta(minutes=30), late + timedelta(hours=2), None),
               (WINDOW + timedelta(days=2, hours=5), late + timedelta(minutes=5), None),
               (WINDOW, WINDOW + timedelta(days=8), None)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        store(conn, late_fleet, readings, events)
        _refresh(conn)
        assert _hours_before(database_url, FOLDED_BEFORE) == 2
        for p in periods:
            assert reported(conn, *p) == counted(late_fleet, *p), p
        assert retention.prune(conn, NOW).hours_folded == 2
        assert _hours_before(database_url, FOLDED_BEFORE) == 0
        for p in periods:
            assert reported(conn, *p) == counted(late_fleet, *p), p


def test_pruning_twice_folds_nothing_the_second_time(database_url):
    _stored(database_url, random.Random(12))
    folded = "SELECT * FROM device_hours_folded ORDER BY device_id, day"
    with psycopg.connect(database_url, autocommit=True) as conn:
        first = retention.prune(conn, NOW, batch_rows=64)
        after_first = query(database_url, folded)
        second = retention.prune(conn, NOW, batch_rows=64)
    assert first.hours_folded and second.hours_folded == 0
    assert query(database_url, folded) == after_first


def test_the_prune_keeps_the_hours_of_its_window(database_url):
    """Only whole UTC days before HOURS_KEPT are folded: the hours from that midnight on,
    which the refresh and reports of recent weeks read, stay as they were."""
    _stored(database_url, random.Random(13))
    recent = ("SELECT bucket, device_id, readings, measurements FROM readings_hourly "
              "WHERE bucket >= %s UNION ALL SELECT bucket, device_id, events, faults "
              "FROM events_hourly WHERE bucket >= %s ORDER BY 1, 2, 3, 4")
    kept = query(database_url, recent, (FOLDED_BEFORE,) * 2)
    with psycopg.connect(database_url, autocommit=True) as conn:
        done = retention.prune(conn, NOW)
    assert query(database_url, recent, (FOLDED_BEFORE,) * 2) == kept
    assert _hours_before(database_url, FOLDED_BEFORE) == 0
    assert query(database_url, "SELECT min(day) >= %s, max(day) < %s FROM device_hours_folded",
                 (WINDOW - timedelta(days=1), FOLDED_BEFORE)) == [(True, True)]
    assert "of the report's hourly counts into their days" in retention.describe(done)


def test_the_fold_waits_for_a_refresh_in_progress(database_url):
    """A refresh reads in one REPEATABLE READ snapshot under its lock: an hour it saw must
    not be folded away under it (its ON CONFLICT update of that hour would fail)."""
    _stored(database_url, random.Random(15))
    hours = _hours_before(database_url, FOLDED_BEFORE)
    with psycopg.connect(database_url, autocommit=True) as refresh, \
            psycopg.connect(database_url, autocommit=True) as conn:
        refresh.execute("SELECT pg_advisory_lock(%s)", (hours_fold.REFRESH_LOCK_KEY,))
        pid = conn.info.backend_pid
        pruning = threading.Thread(target=retention.prune, args=(conn, NOW))
        pruning.start()
        while pruning.is_alive() and not query(
                database_url, "SELECT wait_event = 'advisory' FROM pg_stat_activity "
                "WHERE pid = %s", (pid,))[0][0]:
            time.sleep(0.01)
        assert _hours_before(database_url, FOLDED_BEFORE) == hours
        refresh.execute("SELECT pg_advisory_unlock(%s)", (hours_fold.REFRESH_LOCK_KEY,))
        pruning.join()
    assert _hours_before(database_url, FOLDED_BEFORE) == 0


def test_on_timescaledb_the_prune_folds_no_hours(database_url):
    """There the hours are continuous aggregates, which keep them (0026's comment)."""
    _stored(database_url, random.Random(14))
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE schema_migrations SET flavour = 'timescale' "
                     "WHERE flavour = 'plain'")
    hours = _hours_before(database_url, FOLDED_BEFORE)
    with psycopg.connect(database_url, autocommit=True) as conn:
        done = retention.prune(conn, NOW)
    assert done.hours_folded is None and _hours_before(database_url, FOLDED_BEFORE) == hours
    assert "kept in TimescaleDB's continuous aggregates" in retention.describe(done)


def test_a_report_on_a_database_without_0026_says_to_migrate(empty_database_url, monkeypatch):
    """Its query reads the folded hours: without them it would fail on a missing table."""
    everything = db.list_migrations()
    monkeypatch.setattr(db, "list_migrations", lambda: [m for m in everything if m.version < 26])
    db.migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn, \
            pytest.raises(device_hours.NotMigrated, match=r"\(migration 0026\)"):
        device_hours.flavour(conn)
