"""The alarm lane's process over weeks: each personal alarm's first alarm since it started.

    .venv/bin/python -m benchmarks.alarm_devices [--devices 30000] [--renew-after 2000]
        [--batch 4] [--resolve-every 1000] [--every 5000]

The alarm lane's process takes in each device as its first alarm comes and, without
renewal, keeps it: over weeks, most of a country's 30,000 personal alarms. Here its pipeline
(`AlarmPipeline` over `Pipeline.load(whole_fleet=False)`, as `run_alarm_lane` builds it)
takes alarms from `--devices` distinct personal alarms of a registered 100,000-device fleet,
`--batch` at a time, each batch committed, its state written apart and settled as the lane
does, and `renewed()` asked between batches as the idle lane asks it. The call centre
resolves the open alerts every `--resolve-every` devices (an alert open holds its device);
then too, where the database's autovacuum is off, the tables are analyzed and vacuumed as
the engine's `StatisticsKeeper` would every minute (without, each alarm reads every alert
ever raised: see vagt.app.statistics).

Twice, each in a process of its own and on a database of its own: never renewed (0), and
renewed every `--renew-after` devices. Printed every `--every` devices: the median and 90th
percentile of a batch's time since the last line, and the process's resident memory.
No MQTT: what is measured is what the lane does with an alarm once it has it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import psycopg
from benchmarks.drain import drop_database, fresh_database
from benchmarks.suite import register_fleet

from vagt.app import heap, statistics
from vagt.app.alarm_process import AlarmPipeline
from vagt.app.config import load_config
from vagt.app.engine import load_engine_files, open_engine_pool
from vagt.app.pipeline import Pipeline
from vagt.ingest.model import RawMessage
from vagt.rules import Rule
from vagt.sim import make_fleet

FLEET = 100_000
ROOT = "bench/v1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=30_000, help="personal alarms that alarm")
    ap.add_argument("--renew-after", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=4, help="alarms a batch")
    ap.add_argument("--resolve-every", type=int, default=1000)
    ap.add_argument("--every", type=int, default=5000, help="devices between lines")
    ap.add_argument("--child", help=argparse.SUPPRESS)    # a database: measure one mode there
    args = ap.parse_args()
    if args.child:
        measure(args.child, args)
        return
    runs = {}
    for renew_after in (0, args.renew_after):
        url = fresh_database()
        try:
            register_fleet(url, make_fleet(FLEET, 1))
            argv = [sys.executable, "-m", "benchmarks.alarm_devices", "--child", url,
                    "--devices", str(args.devices), "--renew-after", str(renew_after),
                    "--batch", str(args.batch), "--resolve-every", str(args.resolve_every),
                    "--every", str(args.every)]
            out = subprocess.run(argv, check=True, capture_output=True, text=True,
                                 cwd=Path(__file__).parent.parent).stdout
        finally:
            drop_database(url)
        runs[renew_after] = [json.loads(line) for line in out.splitlines()
                             if line.startswith("{")]
        print(f"renew_after={renew_after}: done", flush=True)
    table(runs, args.renew_after)


def table(runs: dict[int, list[dict[str, float]]], renew_after: int) -> None:
    never, renewed = runs[0], runs[renew_after]
    print(f"\n{'devices':>8} | {'batch ms p50 / p90':^31} | {'resident MB':^17} | "
          f"{'held':>6} {'renewals':>8}")
    print(f"{'':>8} | {'never':^15} {'renewed':^15} | {'never':>8} {'renewed':>8} |")
    for a, b in zip(never, renewed):
        print(f"{a['devices']:>8,} | {a['p50']:>6.1f} / {a['p90']:<6.1f} "
              f"{b['p50']:>6.1f} / {b['p90']:<6.1f} | {a['rss']:>8.1f} {b['rss']:>8.1f} | "
              f"{b['held']:>6,} {b['renewals']:>8}")
    last_a, last_b = never[-1], renewed[-1]
    print(f"\nat {last_a['devices']:,} devices: a batch {last_b['p50'] / last_a['p50']:.2f} "
          f"times the time never renewed (median), resident memory "
          f"{last_b['rss'] - last_a['rss']:+.1f} MB; each renewal {last_b['renew_ms']:.0f} ms "
          "at the median")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(url: str, args: argparse.Namespace) -> None:
    config = load_config(None)
    rules, catalogue, _ = load_engine_files(config)
    alarms = [d.device_id for d in make_fleet(FLEET, 1) if d.type == "personal_alarm"]
    alarms = alarms[:args.devices]
    with open_engine_pool(url, config, size=(1, 2)) as pool, pool.connection() as conn:

        def load(rules: list[Rule]) -> Pipeline:
            with pool.connection() as own:
                return Pipeline.load(own, topic_root=ROOT, rules=rules, clock=time.time,
                                     catalogue=catalogue, whole_fleet=False)

        lane = AlarmPipeline(load, rules, args.renew_after)
        upkeep = not statistics.autovacuum_on(conn)
        heap.settle()
        spans: list[float] = []
        renewals: list[float] = []
        for start in range(0, len(alarms), args.batch):
            now = time.time()
            batch = [RawMessage(f"{ROOT}/dev/{d}/alarm", orjson.dumps(
                {"device_id": d, "time": now, "events": [{"code": "alarm.fall"}]}), now)
                for d in alarms[start:start + args.batch]]
            began = time.perf_counter()
            p = lane.pipeline
            out = p.process(conn, batch, True)
            conn.commit()
            p.write_state(conn, out)
            conn.commit()
            p.after_commit(out)
            spans.append(time.perf_counter() - began)
            del p, out             # as the lane lets go of it (see AlarmPipeline.renewed)
            began = time.perf_counter()
            if lane.renewed() is not None:
                renewals.append(time.perf_counter() - began)
            done = start + len(batch)
            if done % args.resolve_every < args.batch:
                resolve_all(conn)
                if upkeep:
                    with psycopg.connect(url, autocommit=True) as own:
                        statistics.keep_up(own)
            if done % args.every < args.batch or done == len(alarms):
                print(json.dumps({
                    "devices": done, "p50": float(np.median(spans)) * 1000,
                    "p90": float(np.percentile(spans, 90)) * 1000, "rss": rss_mb(),
                    "held": len(lane.pipeline.fleet), "renewals": len(renewals),
                    "renew_ms": float(np.median(renewals)) * 1000 if renewals else 0.0}),
                    flush=True)
                spans.clear()


def resolve_all(conn: psycopg.Connection) -> None:
    """The call centre has handled the alarms: every open alert resolved."""
    conn.execute("UPDATE alerts SET status = 'resolved', resolved_at = now(), "
                 "resolved_by = 'benchmark' WHERE status <> 'resolved'")
    conn.commit()


if __name__ == "__main__":
    main()
