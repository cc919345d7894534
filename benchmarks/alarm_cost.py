"""The alarm lane's CPU per alarm on an idle engine, with some alerts open already.

    .venv/bin/python -m benchmarks.alarm_cost --open 5000

An engine (`vagt run`, 100,000 registered devices) gets a personal alarm every 100 ms for
25 s; the alarm lane's process is timed (user + system CPU) and, with --profile, sampled by
py-spy. `--open N` opens N `device_silent` alerts first, as after an outage: what each new
alert reads of the open ones shows here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from benchmarks.drain import drop_database, fresh_database, own_broker
from benchmarks.suite import (
    AlarmProbe,
    _cpu_seconds,
    engines,
    prepare_sessions,
    register_fleet,
)

from vagt.alerts.store import AlertFiring, record_firings
from vagt.sim import make_fleet

SECONDS = 25.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--open", type=int, default=0, help="device_silent alerts open first")
    ap.add_argument("--profile", type=Path, help="py-spy's raw samples of the alarm lane here")
    args = ap.parse_args()
    with own_broker() as (broker, work):
        fleet = make_fleet(args.devices, 1)
        url = fresh_database()
        try:
            register_fleet(url, fleet)
            if args.open:
                at = time.time() - 600
                with psycopg.connect(url) as conn:
                    record_firings(conn, [
                        AlertFiring("device_silent", d.device_id, "nothing heard", "warning", 4,
                                    "technical", at, at)
                        for d in fleet if d.type != "personal_alarm"][:args.open])
            alarms = [d.device_id for d in fleet if d.type == "personal_alarm"]
            root, cid = f"bench{uuid.uuid4().hex[:6]}/v1", f"cost-{uuid.uuid4().hex[:6]}"
            prepare_sessions(broker, root, [cid], "")
            with engines(1, broker=broker, root=root, url=url, client_ids=[cid],
                         share_group="", workdir=work) as procs:
                lane = next(p for p in procs[0].children()
                            if procs[0].child_name(p) == "alarm lane")
                probe = AlarmProbe(broker, root, url, alarms)
                probe.run()
                time.sleep(3)
                before, sent = _cpu_seconds(lane), len(probe.sent)
                if args.profile:
                    subprocess.run([str(Path(sys.executable).parent / "py-spy"), "record",
                                    "-p", str(lane), "-d", str(int(SECONDS)), "-f", "raw",
                                    "-o", str(args.profile), "--nonblocking"], check=True)
                else:
                    time.sleep(SECONDS)
                used, n = _cpu_seconds(lane) - before, len(probe.sent) - sent
                probe.stop()
        finally:
            drop_database(url)   # 100,000 devices: not one to leave behind
        lat = probe.latencies_ms()
        if n == 0 or not lat:
            raise SystemExit("no alarm was sent and committed: see the engine's log")
        print(f"{args.open:,} alerts open: the alarm lane spent {used / n * 1000:.1f} ms "
              f"of CPU per alarm ({n} alarms); latency p50 {lat[len(lat) // 2]:.0f} ms, "
              f"max {lat[-1]:.0f} ms")


if __name__ == "__main__":
    main()
