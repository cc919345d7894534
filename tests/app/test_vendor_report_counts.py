"""The vendor report's per-device figures against a count of the raw rows themselves, over
random fleets: stays at odd times, readings and events in random hours (days with events
and no reading among them), late rows added after a refresh, slots of every kind (dividing
a day or not, shorter and longer than one), and periods that begin and end inside an hour,
with whole weeks in them or not.

The count here knows nothing of hours tables, days, weeks or masks: it takes each reading
and event, its hour, and the stays, as the README defines the figures.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from vagt.app import db, device_hours
from vagt.devices import report
from vagt.devices.catalogue import Catalogue, Model

MIGRATIONS = Path(__file__).resolve().parents[2] / "src/vagt/app/migrations"
WINDOW = datetime(2026, 3, 1, tzinfo=UTC)      # the fleet's data: 30 days from here
DAYS = 30
HOUR_US = 3_600_000_000

# (vendor, model, heartbeat_s): slots of 1 h (a quarter-hour heartbeat), 2, 3, 4, 6, 8, 12
# hours and a day (dividing a day), 5 h, 1.5 h and a week (not); "Other" is in no catalogue
# (an hour)
MODELS = [("T", "Quarter", 900), ("T", "Two", 7200), ("T", "Eight", 28800),
          ("T", "Daily", 86400), ("T", "Five", 18000), ("T", "NinetyMin", 5400),
          ("T", "Weekly", 604800), ("Other", "Unknown", 0), ("T", "Three", 10800),
          ("T", "Four", 14400), ("T", "Six", 21600), ("T", "Twelve", 43200)]
CATALOGUE = Catalogue([Model(v, m, "scale", hb, "aa", ()) for v, m, hb in MODELS
                       if v != "Other"], "test")
MEASURES = ["weight", "spo2", "pulse"]


@dataclass(frozen=True)
class Stay:
    device_id: str
    municipality: str
    since: datetime
    until: datetime | None


@dataclass(frozen=True)
class Fleet:
    devices: dict[str, tuple[str, str, int]]     # device_id: vendor, model, seq_gaps
    stays: list[Stay]
    readings: list[tuple[datetime, str, str, float, bool]]   # time, device, metric, value, bad
    events: list[tuple[datetime, str, str]]                  # time, device, code


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _at(rng: random.Random, lo: datetime, hours: float) -> datetime:
    return lo + timedelta(microseconds=rng.randrange(int(hours * HOUR_US)))


def random_fleet(rng: random.Random) -> Fleet:
    devices, stays, readings, events = {}, [], [], []
    for i in range(16):
        vendor, model, _ = MODELS[i % len(MODELS)]
        device = f"D-{i:02d}"
        devices[device] = (vendor, model, rng.randrange(5))
        # up to three stays one after another, from before the window to after it, some
        # a few minutes apart (within one hour), the last one open or not; one device in
        # three with a citizen from before the window, for weeks
        t = WINDOW + timedelta(hours=rng.uniform(-48, 24 * DAYS) if i % 3 else -72)
        for _ in range(rng.randrange(0 if i % 3 else 1, 4)):
            until = t + timedelta(hours=rng.choice([0.1, 5, 30, 24 * 6, 24 * 20, 24 * 40]) *
                                  rng.uniform(0.3, 1))
            last = until > WINDOW + timedelta(days=DAYS)
            stays.append(Stay(device, rng.choice(["Aarhus", "Odense"]), t,
                              None if last and rng.random() < 0.7 else until))
            if last:
                break
            t = until + timedelta(minutes=rng.choice([7, 90, 60 * 50]))
        share = rng.choice([0.03, 0.3, 0.9, 1.0])       # of the hours heard
        for h in range(-24, 24 * (DAYS + 1)):
            hour = WINDOW + timedelta(hours=h)
            if rng.random() < share:
                for _ in range(rng.randrange(1, 3)):
                    metric = rng.choice([*MEASURES, "battery", "signal"])
                    bad = metric in MEASURES and rng.random() < 0.1
                    readings.append((_at(rng, hour, 1), device, metric,
                                     float(rng.randrange(100)), bad))
            if rng.random() < 0.05:        # events, in hours and days without readings too
                events.append((_at(rng, hour, 1), device,
                               rng.choice(["fault.jam", "dose.taken", "fault.cuff"])))
    return Fleet(devices, stays, _distinct(readings), events)


def _distinct(readings: list[tuple[datetime, str, str, float, bool]]
              ) -> list[tuple[datetime, str, str, float, bool]]:
    """One reading per (device, metric, time), as the table keeps them."""
    return list({(r[1], r[2], r[0]): r for r in readings}.values())


def store(conn: psycopg.Connection, fleet: Fleet,
          readings: Iterable[tuple[datetime, str, str, float, bool]],
          events: Iterable[tuple[datetime, str, str]]) -> None:
    with conn.cursor() as cur:
        with cur.copy("COPY readings (time, device_id, metric, value, unit, received_at) "
                      "FROM STDIN") as copy:
            for t, device, metric, value, _ in readings:
                copy.write_row((t, device, metric, value, "1", t))
        with cur.copy("COPY events (time, device_id, code, severity, received_at) "
                      "FROM STDIN") as copy:
            for t, device, code in events:
                copy.write_row((t, device, code, "major", t))
    conn.execute("INSERT INTO bad_readings (time, device_id, metric, value, vendor, model) "
                 "SELECT r.time, r.device_id, r.metric, r.value, d.vendor, d.model "
                 "FROM readings r JOIN devices d USING (device_id) "
                 "WHERE (r.device_id, r.metric, r.time) IN (SELECT * FROM unnest("
                 "%s::text[], %s::text[], %s::timestamptz[])) "
                 "ON CONFLICT DO NOTHING",
                 [[r[1] for r in fleet.readings if r[4]], [r[2] for r in fleet.readings if r[4]],
                  [r[0] for r in fleet.readings if r[4]]])


def register(conn: psycopg.Connection, fleet: Fleet) -> None:
    for device, (vendor, model, gaps) in fleet.devices.items():
        conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, "
                     "status, seq_gaps) VALUES (%s, %s, %s, 'scale', '', 'deployed', %s)",
                     (device, vendor, model, gaps))
    for s in fleet.stays:
        conn.execute("INSERT INTO device_assignments (device_id, citizen_ref, municipality, "
                     "since, until) VALUES (%s, %s, %s, %s, %s)",
                     (s.device_id, f"ref-{s.device_id}", s.municipality, s.since, s.until))


def overlaps(t: int, s: int, e: int) -> bool:
    """Whether the hour of a row at `t` overlaps the stay [s, e) (microseconds)."""
    hour = t - t % HOUR_US
    return hour + HOUR_US > s and hour < e


def counted(fleet: Fleet, start: datetime, end: datetime,
            municipality: str | None) -> list[tuple[object, ...]]:
    """The per-device figures, from the rows themselves (PER_DEVICE_COLUMNS but vendor,
    model and type). A row counts if its hour overlaps a stay: once, if two stays of its
    device share the hour."""
    heartbeat = {(v, m): hb for v, m, hb in MODELS if v != "Other"}
    out = []
    for device, (vendor, model, gaps) in sorted(fleet.devices.items()):
        spans = [(max(_us(s.since), _us(start)),
                  min(_us(s.until) if s.until else math.inf, _us(end)))
                 for s in fleet.stays if s.device_id == device
                 and municipality in (None, s.municipality)]
        spans = [(s, int(e)) for s, e in spans if e > s]
        if not spans:
            continue
        slot_us = max(heartbeat.get((vendor, model), 3600), 3600) * 1_000_000
        reads = [(_us(t), m, bad) for t, d, m, _, bad in fleet.readings if d == device]
        evs = [(_us(t), code) for t, d, code in fleet.events if d == device]
        figures = dict.fromkeys(["measurements", "events", "faults", "bad", "slots",
                                 "slots_heard"], 0)
        deployed_us, checked, heard_at_end = 0, False, False
        def with_citizen(t: int, spans: list[tuple[int, int]] = spans) -> bool:
            return any(overlaps(t, s, e) for s, e in spans)   # once, if two stays
        figures["measurements"] = sum(1 for t, m, _ in reads
                                      if m in MEASURES and with_citizen(t))
        figures["bad"] = sum(1 for t, _, bad in reads if bad and with_citizen(t))
        figures["events"] = sum(1 for t, _ in evs if with_citizen(t))
        figures["faults"] = sum(1 for t, c in evs if c.startswith("fault.") and with_citizen(t))
        for s, e in spans:
            deployed_us += e - s
            first, stop = -(-s // slot_us), e // slot_us     # whole slots inside the stay
            figures["slots"] += max(stop - first, 0)
            hours = {t - t % HOUR_US for t in [r[0] for r in reads] + [v[0] for v in evs]
                     if overlaps(t, s, e)}
            figures["slots_heard"] += len({h // slot_us for h in hours
                                           if first <= h // slot_us < stop})
            if e >= _us(end) and e - s >= slot_us:   # with the citizen at the end: checked
                checked = True
                heard_at_end = any(h > e - slot_us - HOUR_US for h in hours)
        in_spans = [(t, v) for (t, d, m, v, _) in fleet.readings if d == device
                    and m == "battery" and any(s <= _us(t) < e for s, e in spans)]
        battery = max(in_spans)[1] if in_spans else None
        out.append((device, deployed_us / 1e6, figures["measurements"], figures["events"],
                    figures["faults"], figures["bad"], figures["slots"],
                    figures["slots_heard"], (not heard_at_end) if checked else None,
                    (vendor, model) in heartbeat, battery, gaps))
    return out


def reported(conn: psycopg.Connection, start: datetime, end: datetime,
             municipality: str | None, weeks: bool = True) -> list[tuple[object, ...]]:
    devices = report.per_device(conn, CATALOGUE, report.Period(
        start.timestamp(), end.timestamp(), municipality), weeks)
    rows = devices.drop(columns=["vendor", "model", "type"]).astype(object)
    return [tuple(None if v is None or v != v else v for v in row)
            for row in rows.itertuples(index=False)]


def _periods(rng: random.Random) -> list[tuple[datetime, datetime, str | None]]:
    """Three periods: one of some four weeks (three whole ones in it, at least), two of an
    hour to 26 days; all of the fleet or of one municipality."""
    out = []
    for longest in (24 * 28, 24 * 26, 24 * 26):
        start = _at(rng, WINDOW - timedelta(days=1), 24 * (2 if longest > 24 * 26 else 5))
        shortest = 24 * 25 if longest > 24 * 26 else 1
        end = start + timedelta(microseconds=rng.randrange(shortest * HOUR_US,
                                                           longest * HOUR_US))
        out.append((start, end, rng.choice([None, None, "Aarhus"])))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_report_counts_what_a_count_of_the_rows_gives(database_url, seed):
    """On plain PostgreSQL: rows stored in two goes, a refresh between (late rows into days
    and hours the first refresh made), three periods each."""
    rng = random.Random(seed)
    fleet = random_fleet(rng)
    first = set(rng.sample(range(len(fleet.readings)), len(fleet.readings) // 2))
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, fleet)
        store(conn, fleet, [r for i, r in enumerate(fleet.readings) if i in first],
              fleet.events[::2])
        device_hours.refresh(conn, WINDOW.timestamp(), WINDOW.timestamp() + DAYS * 86400)
        store_the_rest_and_compare(conn, fleet, first, rng)


def test_the_days_read_by_range_or_by_key_count_alike(database_url, monkeypatch):
    """Which days are read in ranges for every span and which by key for some is the
    period's whole weeks (`period_weeks`); anywhere else, the figures are the same."""
    rng = random.Random(8)
    fleet = random_fleet(rng)
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, fleet)
        store(conn, fleet, fleet.readings, fleet.events)
        device_hours.refresh(conn, WINDOW.timestamp(), WINDOW.timestamp() + DAYS * 86400)
        for start, end, municipality in _periods(rng):
            bounds = sorted(_at(rng, start - timedelta(days=3), 24 * 30) for _ in range(2))
            monkeypatch.setattr(report, "period_weeks", lambda s, e, b=bounds: tuple(b))
            assert reported(conn, start, end, municipality) == counted(
                fleet, start, end, municipality), (start, end, municipality, bounds)


def _aggregate_selects() -> dict[str, str]:
    """The continuous aggregates' SELECTs (0019's hours, 0022's days), by name."""
    found: dict[str, str] = {}
    for name in ("0019_device_hours", "0022_device_days"):
        text = (MIGRATIONS / f"{name}.timescale.sql").read_text()
        found.update(re.findall(r"CREATE MATERIALIZED VIEW (\w+)\s+WITH \([^)]*\) AS\s+"
                                r"(SELECT.*?)\s+WITH NO DATA;", text, flags=re.S))
    return found


_TIME_BUCKET = ("CREATE FUNCTION time_bucket(width interval, ts timestamptz) "
                "RETURNS timestamptz LANGUAGE sql IMMUTABLE AS "
                "$$ SELECT date_bin(width, ts, TIMESTAMPTZ '2000-01-03 00:00+00') $$")


def test_after_0023_the_report_counts_what_a_count_of_the_rows_gives(empty_database_url,
                                                                      monkeypatch):
    """A database on 0022 whose hours and days hold half the rows (as its refresh left
    them), migrated: 0023's days and weeks are made from 0022's, and a refresh adds the
    rest to them."""
    rng = random.Random(7)
    fleet = random_fleet(rng)
    first = set(rng.sample(range(len(fleet.readings)), len(fleet.readings) // 2))
    everything = db.list_migrations()
    monkeypatch.setattr(db, "list_migrations", lambda: [m for m in everything if m.version < 23])
    db.migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        register(conn, fleet)
        store(conn, fleet, [r for i, r in enumerate(fleet.readings) if i in first],
              fleet.events[::2])
        conn.execute(_TIME_BUCKET)
        for table, select in _aggregate_selects().items():   # hours, then days from them
            conn.execute(f"INSERT INTO {table} {select}")
        conn.execute("INSERT INTO hourly_refresh (name, snapshot) "
                     "VALUES ('device_hours', pg_current_snapshot())")
    monkeypatch.setattr(db, "list_migrations", lambda: everything)
    assert "0023_device_days_and_weeks (plain)" in db.migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        store_the_rest_and_compare(conn, fleet, first, rng)


def _timescale_views(conn: psycopg.Connection) -> None:
    """The continuous aggregates' SELECTs (0019, 0022) as views over the raw rows, and 0023's
    view of the days over them, in place of the plain tables (time_bucket as TimescaleDB
    has it for an hour and a day)."""
    conn.execute(_TIME_BUCKET)
    conn.execute("DROP TABLE readings_hourly, events_hourly, device_daily, device_weekly")
    for view, select in _aggregate_selects().items():
        conn.execute(f"CREATE VIEW {view} AS {select}")
    text = (MIGRATIONS / "0023_device_days_and_weeks.timescale.sql").read_text()
    for view in re.findall(r"^CREATE VIEW \w+ AS\s.*?;$", text, flags=re.S | re.M):
        conn.execute(view)


@pytest.mark.parametrize("seed", [5, 6])
def test_on_timescaledb_the_report_counts_what_a_count_of_the_rows_gives(database_url, seed):
    rng = random.Random(seed)
    fleet = random_fleet(rng)
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, fleet)
        store(conn, fleet, fleet.readings, fleet.events)
        _timescale_views(conn)
        for start, end, municipality in _periods(rng):
            assert reported(conn, start, end, municipality, weeks=False) == counted(
                fleet, start, end, municipality), (start, end, municipality)


def store_the_rest_and_compare(conn: psycopg.Connection, fleet: Fleet, first: set[int],
                               rng: random.Random) -> None:
    """The readings not in `first` and the other half of the events stored, the counts
    refreshed: every period the report can be asked for counts what the rows say."""
    store(conn, fleet, [r for i, r in enumerate(fleet.readings) if i not in first],
          fleet.events[1::2])
    device_hours.refresh(conn, WINDOW.timestamp(), WINDOW.timestamp() + DAYS * 86400)
    for start, end, municipality in _periods(rng):
        assert reported(conn, start, end, municipality) == counted(
            fleet, start, end, municipality), (start, end, municipality)
