"""The vendor report's per-device query over a synthetic year, against the query of another
revision (`--baseline-rev`, main by default) over the same rows, with a same-figures check.

    .venv/bin/python -m benchmarks.report --devices 1000 --baseline      # both, same figures
    .venv/bin/python -m benchmarks.report --devices 100000 --days-only   # a year at full size

A synthetic fleet in a fresh plain database: 80 % of devices with hourly slots (heard in
~95 % of hours), 18 % daily (3 hours a day), 1 % each a 2-hour and a 5-hour slot (the
latter counted hour by hour); an event in ~2 % of hours; a battery level a week. Every
device is with a citizen from before the period; 10 % move once in it (a stay that ends,
another that starts days later, at odd hours). The period ends at 13:30, as a report run
"until now" does. The days of readings and of events are made as 0022 kept them
(`readings_daily`, `events_daily`: the benchmark makes these tables where 0023 dropped them,
so a baseline from before 0023 reads them), and `device_daily` and `device_weekly` from them
as 0023 does.
Without --days-only the hourly tables hold every hour and the days are made from them;
with it the days are written directly, and hours only where the report reads them (a
stay's partial days), so a year at 100,000 devices builds in minutes. Prints the medians,
the ratio, and whether both queries gave the same rows. `--keep` leaves the database for
`--url` to time again without building it. `--fold` times the report, folds the hours
older than HOURS_KEPT before the period's end as the prune does (`hours_fold`), and times
it again: the time of the fold, the tables' sizes before and after (the hourly tables
VACUUM FULL after the fold, as they stand once the freed space is reused), and whether the
report gave the same rows.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
from benchmarks.drain import drop_database, fresh_database

from vagt.app import retention
from vagt.app.device_hours import DAY, HOUR_BIT
from vagt.devices import report
from vagt.devices.catalogue import Catalogue, Model, load_catalogue
from vagt.devices.report_query import DAY_SLOT_HOURS, period_weeks, slots_sql

START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 1, 13, 30, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]

# (vendor, model, share of devices, share of hours heard); the last two are not in the
# shipped catalogue: slots of 2 and 5 hours
FLEET = [("Evondos", "E300", 0.5, 0.95), ("Tunstall", "Lifeline Vi+", 0.3, 0.95),
         ("A&D", "UA-651BLE", 0.18, 3 / 24), ("Bench", "Two-hourly", 0.01, 0.5),
         ("Bench", "Five-hourly", 0.01, 0.5)]


def catalogue() -> Catalogue:
    extra = [Model("Bench", "Two-hourly", "scale", 7200, "aa", ()),
             Model("Bench", "Five-hourly", "scale", 18000, "aa", ())]
    return Catalogue([*load_catalogue(), *extra], "benchmark")


def _fleet(conn: psycopg.Connection, devices: int) -> None:
    rows, i = [], 0
    for vendor, model, share, p in FLEET:
        for _ in range(max(1, round(devices * share))):
            rows.append((f"b-{i:06d}", vendor, model, p))
            i += 1
    conn.execute("CREATE TABLE bench_devices (device_id text, vendor text, model text, "
                 "p float8, moved bool)")
    with conn.cursor().copy("COPY bench_devices (device_id, vendor, model, p, moved) "
                            "FROM STDIN") as copy:
        for n, (d, v, m, p) in enumerate(rows):
            copy.write_row((d, v, m, p, n % 10 == 3))
    conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, status) "
                 "SELECT device_id, vendor, model, 'scale', 'Aarhus', 'deployed' "
                 "FROM bench_devices")
    # the first stay from before the period; a moved device's ends at an odd hour and the
    # next begins 1-3 days and some hours later
    conn.execute("""
        CREATE TABLE bench_moves AS
        SELECT device_id,
               %(start)s::timestamptz + make_interval(days => 20 + (hashtext(device_id) & 255),
                                                      hours => hashtext(device_id) & 15,
                                                      mins => 17) AS until
        FROM bench_devices WHERE moved""", {"start": START})
    conn.execute("""
        INSERT INTO device_assignments (device_id, citizen_ref, municipality, since, until)
        SELECT b.device_id, 'cit-' || b.device_id, 'Aarhus',
               %(start)s::timestamptz - INTERVAL '100 days', m.until
        FROM bench_devices b LEFT JOIN bench_moves m USING (device_id)""", {"start": START})
    conn.execute("""
        INSERT INTO device_assignments (device_id, citizen_ref, municipality, since)
        SELECT device_id, 'cit2-' || device_id, 'Skive',
               until + make_interval(days => 1 + (hashtext(device_id) & 1), hours => 7)
        FROM bench_moves""")
    conn.execute("""
        INSERT INTO readings (time, device_id, metric, value, unit, received_at)
        SELECT t, device_id, 'battery', 50 + (hashtext(device_id) & 31), '%%', t
        FROM generate_series(%(start)s::timestamptz, %(end)s, INTERVAL '7 days') t
        CROSS JOIN bench_devices""", {"start": START, "end": END})


# hours (t) of devices (b) drawn from {source}
_HOURS = ["""INSERT INTO readings_hourly (bucket, device_id, readings, measurements)
SELECT t, b.device_id, 2, 1 FROM {source} WHERE random() < b.p""",
          """INSERT INTO events_hourly (bucket, device_id, events, faults)
SELECT t, b.device_id, 1, (random() < 0.1)::int FROM {source} WHERE random() < 0.02"""]


def _hours(conn: psycopg.Connection, source: str, params: dict[str, Any] | None) -> None:
    for sql in _HOURS:
        conn.execute(sql.format(source=source), params)
_EVERY_DEVICE = """generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz - INTERVAL '1 hour',
                     INTERVAL '1 hour') t CROSS JOIN bench_devices b"""
# a moved device's day of leaving and the three after (the next stay begins in them)
_MOVED = """bench_moves m JOIN bench_devices b USING (device_id)
CROSS JOIN LATERAL generate_series(date_trunc('day', m.until, 'UTC'),
    date_trunc('day', m.until, 'UTC') + INTERVAL '4 days' - INTERVAL '1 hour',
    INTERVAL '1 hour') t"""


# 0022's daily tables (0023 made one of them on plain PostgreSQL and dropped these): the
# days are drawn for them, readings' and events' apart, and a baseline before 0023 reads them
_DAYS_0022 = """
CREATE TABLE IF NOT EXISTS readings_daily (
    day timestamptz NOT NULL, device_id text NOT NULL, measurements bigint NOT NULL,
    heard integer NOT NULL, PRIMARY KEY (device_id, day));
CREATE TABLE IF NOT EXISTS events_daily (
    day timestamptz NOT NULL, device_id text NOT NULL, events bigint NOT NULL,
    faults bigint NOT NULL, heard integer NOT NULL, PRIMARY KEY (device_id, day))"""

# readings' and events' days together, and their weeks, as migration 0023 makes them
_DEVICE_DAILY = """
INSERT INTO device_daily (day, device_id, measurements, events, faults, heard)
SELECT day, device_id, coalesce(r.measurements, 0), coalesce(v.events, 0),
       coalesce(v.faults, 0), coalesce(r.heard, 0) | coalesce(v.heard, 0)
FROM readings_daily r FULL JOIN events_daily v USING (device_id, day)
ORDER BY day"""
_DEVICE_WEEKLY = f"""
INSERT INTO device_weekly
SELECT date_bin(INTERVAL '7 days', day, TIMESTAMPTZ '2000-01-03 00:00+00'), device_id,
       sum(measurements), sum(events), sum(faults),
       {", ".join(f"sum({slots_sql('heard', n)})" for n in DAY_SLOT_HOURS)}
FROM device_daily GROUP BY 1, 2"""


def _all_hours(conn: psycopg.Connection) -> None:
    """Every hour of the period in the hourly tables, the days made from them as 0022 did."""
    _hours(conn, _EVERY_DEVICE, {"lo": START, "hi": END})
    conn.execute(f"INSERT INTO readings_daily SELECT {DAY}, device_id, sum(measurements), "
                 f"bit_or({HOUR_BIT}) FROM readings_hourly GROUP BY 1, 2")
    conn.execute(f"INSERT INTO events_daily SELECT {DAY}, device_id, sum(events), "
                 f"sum(faults), bit_or({HOUR_BIT}) FROM events_hourly GROUP BY 1, 2")


def _days_and_edges(conn: psycopg.Connection) -> None:
    """The period's days written directly (hour masks drawn like the hours), and hours only
    for the partial days a report of the period reads: the last, and a move's."""
    days = {"lo": START, "hi": END.replace(hour=0, minute=0)}
    conn.execute("""
        INSERT INTO readings_daily (day, device_id, measurements, heard)
        SELECT day, b.device_id, 20, m.heard
        FROM generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz - INTERVAL '1 day',
                             INTERVAL '1 day') day
        CROSS JOIN bench_devices b
        CROSS JOIN LATERAL (SELECT bit_or(1 << h) AS heard FROM generate_series(0, 23) h
                            WHERE random() < b.p) m
        WHERE m.heard IS NOT NULL""", days)
    conn.execute("""
        INSERT INTO events_daily (day, device_id, events, faults, heard)
        SELECT day, b.device_id, 1, (random() < 0.1)::int, 1 << floor(random() * 24)::int
        FROM generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz - INTERVAL '1 day',
                             INTERVAL '1 day') day
        CROSS JOIN bench_devices b
        WHERE random() < 0.4""", days)
    _hours(conn, _EVERY_DEVICE, {"lo": days["hi"], "hi": END})
    _hours(conn, _MOVED, None)


def _baseline_query(rev: str) -> str:
    """The per-device query of the report at `rev`: vagt.devices.report_query.PER_DEVICE, or
    before that module report._PER_DEVICE (an f-string there since 0022: the module is run
    to build it)."""
    for path, name in (("src/vagt/devices/report_query.py", "PER_DEVICE"),
                       ("src/vagt/devices/report.py", "_PER_DEVICE")):
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT,
                               capture_output=True, text=True)
        if shown.returncode != 0:
            continue
        module = types.ModuleType(f"baseline_{rev}_{Path(path).stem}")
        sys.modules[module.__name__] = module       # dataclasses look their module up there
        try:
            exec(compile(shown.stdout, f"{rev}:{path}", "exec"), module.__dict__)
        finally:
            del sys.modules[module.__name__]
        query = getattr(module, name, None)
        if isinstance(query, str):
            return query
    raise SystemExit(f"no per-device query of the report at {rev}")


def _params(cat: Catalogue) -> dict[str, Any]:
    models = list(cat)
    w0, w1 = period_weeks(START, END)
    return {"start": START, "end": END, "w0": w0, "w1": w1, "municipality": None,
            "vendors": [m.vendor for m in models], "models": [m.model for m in models],
            "heartbeats": [float(m.heartbeat_s) for m in models],
            "slot_hours": [report.day_slot_hours(m.heartbeat_s) for m in models]}


def _timed(conn: psycopg.Connection, query: str, params: dict[str, Any],
           repeat: int) -> tuple[float, pd.DataFrame]:
    times, rows = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = conn.execute(query, params).fetchall()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), pd.DataFrame(rows, columns=report.PER_DEVICE_COLUMNS)


def _build(url: str, devices: int, days_only: bool) -> None:
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        _fleet(conn, devices)
        conn.execute(_DAYS_0022)
        (_days_and_edges if days_only else _all_hours)(conn)
        conn.execute(_DEVICE_DAILY)
        conn.execute(_DEVICE_WEEKLY)
        conn.execute("VACUUM ANALYZE")
    print(f"built in {time.perf_counter() - t0:.0f} s")


_TABLES = ("'readings_hourly', 'events_hourly', 'readings_daily', 'events_daily', "
           "'device_daily', 'device_weekly', 'device_hours_folded', 'readings', "
           "'device_assignments'")


def _sizes(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(
            f"SELECT relname, reltuples::bigint FROM pg_class WHERE relname IN ({_TABLES})"
        ).fetchall())


def _bytes(url: str) -> dict[str, int]:
    """pg_total_relation_size (heap, indexes, TOAST) of the report's tables."""
    with psycopg.connect(url) as conn:
        return dict(conn.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
            f"WHERE relname IN ({_TABLES}) AND relkind = 'r'").fetchall())


def _print_bytes(label: str, sizes: dict[str, int]) -> None:
    print(f"{label}: " + ", ".join(f"{k} {v / 2**20:,.1f} MB" for k, v in sorted(sizes.items())))


def _report_query(conn: psycopg.Connection, cat: Catalogue,
                  repeat: int) -> tuple[float, pd.DataFrame]:
    """The report's own call (its query, with the settings it runs it with)."""
    period = report.Period(START.timestamp(), END.timestamp())
    times, frame = [], pd.DataFrame()
    for _ in range(repeat):
        t0 = time.perf_counter()
        frame = report.per_device(conn, cat, period)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", action="store_true",
                    help="also --baseline-rev's query, over the same rows, in turn with this one")
    ap.add_argument("--baseline-rev", default="main")
    ap.add_argument("--days-only", action="store_true",
                    help="write days directly and hours only at stays' edges")
    ap.add_argument("--url", default=None, help="a database this benchmark built and kept")
    ap.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    ap.add_argument("--fold", action="store_true",
                    help="time the report before and after folding the old hours")
    args = ap.parse_args()
    url = args.url or fresh_database()
    print(f"database {url}")
    cat = catalogue()
    try:
        if args.url is None:
            _build(url, args.devices, args.days_only)
        sizes = _sizes(url)
        print(", ".join(f"{k} {v:,}" for k, v in sorted(sizes.items())))
        (_fold if args.fold else _compare)(url, cat, args)
    finally:
        if not args.keep and args.url is None:
            drop_database(url)


def _compare(url: str, cat: Catalogue, args: argparse.Namespace) -> None:
    params = _params(cat)
    old_query = _baseline_query(args.baseline_rev) if args.baseline else None
    after: list[float] = []
    before: list[float] = []
    new = old = pd.DataFrame()
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(args.repeat):     # in turn: the machine's speed changes by the minute
            t, new = _report_query(conn, cat, 1)
            after.append(t)
            if old_query is not None:
                t, old = _timed(conn, old_query, params, 1)
                before.append(t)
    print(f"this revision: median {statistics.median(after):.2f} s of {args.repeat} "
          f"({', '.join(f'{t:.2f}' for t in after)}), {len(new):,} devices")
    if old_query is None:
        return
    print(f"{args.baseline_rev}: median {statistics.median(before):.2f} s of {args.repeat} "
          f"({', '.join(f'{t:.2f}' for t in before)})")
    print(f"ratio: {statistics.median(before) / statistics.median(after):.1f}x faster")
    cols = [c for c in report.PER_DEVICE_COLUMNS if c != "in_catalogue"]
    same = old[cols].fillna(-1).equals(new[cols].fillna(-1))
    print(f"same per-device figures: {same}")
    for vendor, rows in report.summary(new, "vendor").groupby("vendor"):
        print(f"  {vendor}: heard_share {float(rows['heard_share'].iloc[0]):.4f}")


def _fold(url: str, cat: Catalogue, args: argparse.Namespace) -> None:
    """The report before and after the prune folds the hours, its figures the same."""
    _print_bytes("before", _bytes(url))
    with psycopg.connect(url, autocommit=True) as conn:
        _report_query(conn, cat, 1)     # each timed with its tables read once before
        t_before, before = _report_query(conn, cat, args.repeat)
        t0 = time.perf_counter()
        done = retention.prune(conn, END)
        fold_s = time.perf_counter() - t0
        conn.execute("VACUUM FULL readings_hourly, events_hourly")
        conn.execute("VACUUM ANALYZE")
        print(f"folded {done.hours_folded:,} hourly rows before {done.hours_before} in "
              f"{fold_s:.1f} s")
        _print_bytes("after", _bytes(url))
        _report_query(conn, cat, 1)
        t_after, after = _report_query(conn, cat, args.repeat)
    print(f"report: before the fold median {t_before:.2f} s, after {t_after:.2f} s "
          f"(of {args.repeat}), {len(after):,} devices")
    print(f"same per-device figures: {before.fillna(-1).equals(after.fillna(-1))}")


if __name__ == "__main__":
    main()
