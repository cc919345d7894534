"""`vagt rules backtest` with the built-in rules over a synthetic store, this revision's code
against another revision's (`--baseline-rev`, main by default), in turn, over the same rows.

    .venv/bin/python -m benchmarks.backtest --days 2 --days 7     # periods ending at the end

A fresh plain database: pulse oximeters (spo2 and pulse every 15 minutes), medicine
dispensers (a dose due every 6 hours, every fifth not taken), scales (a weighing a day, the
weight_gain rule's metric), each heard 2 s after its device time, `--history` days of it,
all deployed from before. Each period ends at the store's end. The other revision's code is
taken with `git archive` into a temporary folder and run from there, both as a subprocess
of the command line (`--json`). Prints per period the medians, the ratio, and the reports'
row counts. `--keep` leaves the database for `--url` to time again without building it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import orjson
import psycopg
from benchmarks.drain import drop_database, fresh_database

from vagt.devices.registry import import_csv

ROOT = Path(__file__).resolve().parents[1]
FLEET = [("OXI", "Nonin", "3230", "pulse_oximeter", "Aarhus", 500),
         ("DSP", "Evondos", "E300", "medicine_dispenser", "Skive", 300),
         ("SCL", "Withings", "Body+", "scale", "Viborg", 200)]


def _build(url: str, days: int, end: float) -> None:
    start = end - days * 86400
    rows = [f"{p}-{i:05d},{vendor},{model},{kind},{place},cit-{p.lower()}{i}"
            for p, vendor, model, kind, place, n in FLEET for i in range(n)]
    with psycopg.connect(url) as conn:
        import_csv(conn, "bench.csv", actor="bench",
                   at=datetime.fromtimestamp(start - 30 * 86400, UTC),
                   text="device_id,vendor,model,type,municipality,citizen_ref\n"
                        + "\n".join(rows) + "\n")
        conn.execute("""
            INSERT INTO readings (time, device_id, metric, value, unit, received_at)
            SELECT to_timestamp(%(s)s + 900 * k + d), 'OXI-' || lpad(d::text, 5, '0'), m,
                   CASE WHEN m = 'spo2' THEN 88 + (k * 7 + d) %% 11 ELSE 70 END,
                   CASE WHEN m = 'spo2' THEN '%%' ELSE 'bpm' END,
                   to_timestamp(%(s)s + 900 * k + d + 2)
            FROM generate_series(0, %(q)s) k, generate_series(0, 499) d,
                 unnest(ARRAY['spo2', 'pulse']) m ORDER BY k""",
                     {"s": start, "q": days * 96 - 1})
        conn.execute("""
            INSERT INTO readings (time, device_id, metric, value, unit, received_at)
            SELECT to_timestamp(%(s)s + 86400 * k + 30 * d), 'SCL-' || lpad(d::text, 5, '0'),
                   'weight', 80 + (k * 3 + d) %% 4, 'kg',
                   to_timestamp(%(s)s + 86400 * k + 30 * d + 2)
            FROM generate_series(0, %(n)s) k, generate_series(0, 199) d ORDER BY k""",
                     {"s": start, "n": days - 1})
        conn.execute("""
            INSERT INTO events (time, device_id, code, severity, received_at)
            SELECT to_timestamp(%(s)s + 21600 * k + 10 * d + off),
                   'DSP-' || lpad(d::text, 5, '0'), c, 'info',
                   to_timestamp(%(s)s + 21600 * k + 10 * d + off + 2)
            FROM generate_series(0, %(n)s) k, generate_series(0, 299) d,
                 (VALUES ('dose.due', 0), ('dose.taken', 600)) AS x(c, off)
            WHERE c = 'dose.due' OR (k + d) %% 5 <> 0 ORDER BY k""",
                     {"s": start, "n": days * 4 - 1})
        conn.execute("ANALYZE readings")
        conn.execute("ANALYZE events")


def _store_end(url: str) -> float:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM max(time))::float8 FROM readings"
                           ).fetchone()
    assert row is not None and row[0] is not None, "an empty store"
    return float(row[0]) // 3600 * 3600 + 3600


def source_of(rev: str, into: Path) -> Path:
    """`rev`'s src/ unpacked into `into`."""
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _timed(src: Path, url: str, start: float, end: float) -> tuple[float, int]:
    """Seconds the command took with the code in `src`, and its report's rows."""
    begun = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from vagt.app.cli import main; "
                               "sys.exit(main(sys.argv[1:]))",
         "rules", "backtest", "--from", str(start), "--to", str(end), "--database-url", url,
         "--json"], env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}, check=True,
        capture_output=True).stdout
    return time.perf_counter() - begun, len(orjson.loads(out)["alerts"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--history", type=int, default=10, help="days of rows stored")
    ap.add_argument("--days", type=float, action="append",
                    help="a period's length in days, ending at the store's end (repeatable)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-rev", default="main")
    ap.add_argument("--url", default=None, help="a database this benchmark built and kept")
    ap.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    args = ap.parse_args()
    url = args.url or fresh_database()
    print(f"database {url}")
    try:
        if args.url is None:
            _build(url, args.history, float(int(time.time()) // 3600 * 3600 - 6 * 3600))
        end = _store_end(url)
        with tempfile.TemporaryDirectory() as tmp:
            sources = {"this revision": ROOT / "src",
                       args.baseline_rev: source_of(args.baseline_rev, Path(tmp))}
            for days in args.days or [2.0]:
                _compare(url, sources, end - days * 86400, end, days, args.repeat)
    finally:
        if not args.keep and args.url is None:
            drop_database(url)


def _compare(url: str, sources: dict[str, Path], start: float, end: float, days: float,
             repeat: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in sources}
    rows: dict[str, int] = {}
    for _ in range(repeat):     # in turn: the machine's speed changes by the minute
        for name, src in sources.items():
            t, rows[name] = _timed(src, url, start, end)
            times[name].append(t)
    print(f"{days:g} days:")
    for name, ts in times.items():
        print(f"  {name}: median {statistics.median(ts):.1f} s of {repeat} "
              f"({', '.join(f'{t:.1f}' for t in ts)}), {rows[name]} report rows")
    this, other = (statistics.median(ts) for ts in times.values())
    print(f"  ratio: {this / other:.2f}x the baseline's time")


if __name__ == "__main__":
    main()
