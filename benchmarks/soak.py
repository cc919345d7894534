"""Hours of a fleet's ordinary traffic in minutes: does the engine stay as it started?

The suite's figures are of a drain, minutes long. An engine runs for weeks. Here one engine
(`vagt run`, as in production) takes the live traffic of a simulated fleet (`vagt simulate`
in a process of its own: heartbeats, measurements, doses, faults, falls), its simulated time
running `--speed` times real time, so that `--hours` of the fleet's day pass in
`hours / speed` of real time: the citizens' mornings and evenings, the rules' deadlines and
the timer's ticks, the absence sweep. Beside it an alarm from a device of its own every
`--alarm-every` seconds, timed from publish to the committed alert (the suite's probe).

Every `--window` seconds it prints what an operator of the engine would watch: messages
acknowledged per second, resident memory of the engine and its children, alarm latency,
the machine's CPU, the database's size, the alerts open. At the end: memory's growth per
hour of real time over the second half (a least-squares line through the samples), the
alarms and messages sent against those committed and acknowledged (nothing may be lost).
With `--probe` the engine runs under benchmarks/memtrace.py (no tracemalloc: at its own
speed), and each window's line is followed by what its memory was made of then (glibc's
arenas, in use and free; pymalloc's), the last after a full collection, then after its
pools' connections were closed and opened again, then after `malloc_trim`; with
`--probe-frames N` also tracemalloc's largest allocation sites (the engine slower; with
`--probe-frames-from MINUTES`, of what was allocated from then on). Usage:

    .venv/bin/python -m benchmarks.soak [--devices 100000] [--hours 12] [--speed 36]
        [--alarm-every 2] [--window 120] [--probe [--probe-frames N [--probe-frames-from M]]]
        [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from benchmarks.drain import drop_database, fresh_database, own_broker, v5_client
from benchmarks.memory import ask_probe, environment, show_probe
from benchmarks.suite import (
    AlarmProbe,
    EngineProc,
    busy_since,
    cpu_times,
    engines,
    prepare_sessions,
    register_fleet,
)
from tests.support import Broker

from vagt.sim import make_fleet


@dataclass
class Sample:
    at: float            # seconds since the traffic began
    acked: float         # messages acknowledged so far, both lanes
    rss: list[float]     # MB: the engine, then each child
    busy: float          # the machine's CPU busy share since the sample before
    db_mb: float
    open_alerts: int


def register_probes(url: str, ids: list[str]) -> None:
    """Personal alarms of the probe's own, which the simulator never sends for."""
    with psycopg.connect(url) as conn:
        with conn.cursor().copy("COPY devices (device_id, vendor, model, type, municipality, "
                                "status) FROM STDIN") as cp:
            for d in ids:
                cp.write_row((d, "Tunstall", "Lifeline Vi+", "personal_alarm", "Skive",
                              "deployed"))


def acked(e: EngineProc) -> float:
    """Messages the bulk lane acknowledged: every one published under the devices' topics
    (its subscription is `{root}/dev/#`; an alarm's copy, which the alarm lane takes, it
    acknowledges and skips)."""
    return e.scrape("vagt_messages_acked_total", "bulk")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--hours", type=float, default=12.0,
                    help="hours of the fleet's time to send (default: 12)")
    ap.add_argument("--speed", type=float, default=36.0,
                    help="simulated seconds per real second (default: 36: 12 h in 20 min)")
    ap.add_argument("--faults", type=float, default=1.0, help="the simulator's fault rates, "
                    "times its defaults")
    ap.add_argument("--alarm-every", type=float, default=2.0, help="seconds between alarms")
    ap.add_argument("--window", type=float, default=120.0, help="seconds a printed line covers")
    ap.add_argument("--operators", type=int, default=8,
                    help="call-centre operators taking the most urgent alert and resolving it, "
                         "each an alert every --handle seconds at most (0: nobody answers, "
                         "and the open alerts grow)")
    ap.add_argument("--handle", type=float, default=1.0,
                    help="seconds an operator spends on an alert")
    ap.add_argument("--logs", type=Path, default=None,
                    help="copy the engine's and the simulator's logs into this directory")
    ap.add_argument("--probe", action="store_true",
                    help="what the engine's memory is made of, at each window")
    ap.add_argument("--probe-frames", type=int, default=0, metavar="N",
                    help="with --probe, tracemalloc on from the engine's start, N frames a "
                         "trace: the largest allocation sites at each window (Python's and "
                         "numpy's, not libpq's; the engine runs slower)")
    ap.add_argument("--probe-frames-from", type=float, default=0.0, metavar="MINUTES",
                    help="with --probe-frames, tracemalloc on only from this minute of the "
                         "soak: the sites of what is allocated after it and kept (the engine "
                         "at its own speed until then)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in the engine's environment (e.g. MALLOC_ARENA_MAX=2)")
    args = ap.parse_args()
    if args.probe_frames and not args.probe:
        ap.error("--probe-frames goes with --probe")
    if args.probe_frames_from and not args.probe_frames:
        ap.error("--probe-frames-from goes with --probe-frames")
    env = environment(ap, args.env)
    real_s = args.hours * 3600 / args.speed
    print(f"vagt soak, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {platform.machine()}, "
          f"{os.cpu_count()} cores: {args.devices:,} devices, {args.hours:g} h of their "
          f"time at {args.speed:g}x, {real_s / 60:.0f} min", flush=True)
    probes = [f"PRB-{k:06d}" for k in range(int(real_s / args.alarm_every) + 10)]
    url = fresh_database()
    try:
        register_fleet(url, make_fleet(args.devices, 1))
        register_probes(url, probes)
        with own_broker() as (broker, work):
            root = f"soak{uuid.uuid4().hex[:6]}/v1"
            cid = f"soak-{uuid.uuid4().hex[:6]}"
            # the engine's sessions before it starts, as in production: "ready" comes
            # before its lanes have subscribed, and what came between would go to no one
            prepare_sessions(broker, root, [cid], "")
            probe_dir = Path(tempfile.mkdtemp(dir=work)) if args.probe else None
            at_start = 0 if args.probe_frames_from else args.probe_frames
            wrap = ("-m", "benchmarks.memtrace", str(probe_dir),
                    str(at_start)) if probe_dir else ()
            with engines(1, broker=broker, root=root, url=url, client_ids=[cid],
                         share_group="", workdir=work, wrap=wrap, env=env) as procs:
                run(args, procs[0], broker, root, url, probes, real_s, work, probe_dir)
    finally:
        drop_database(url)


def run(args: argparse.Namespace, engine: EngineProc, broker: Broker, root: str, url: str,
        probes: list[str], real_s: float, work: Path, probe_dir: Path | None) -> None:
    env = {**os.environ, "VAGT_MQTT_URL": broker.url, "VAGT_MQTT_TOPIC_ROOT": root}
    sim_log = work / "simulate.log"
    sim = subprocess.Popen(
        [sys.executable, "-m", "vagt.app.cli", "simulate", "--devices", str(args.devices),
         "--history", f"{args.hours:g}", "--speed", f"{args.speed:g}", "--rate", "100000",
         "--faults", f"{args.faults:g}", "--duration", f"{real_s + 5:.0f}"],
        env=env, stdout=sim_log.open("wb"), stderr=subprocess.STDOUT)
    # what the broker hands a bare subscriber of everything, beside the engine
    bare: collections.Counter[str] = collections.Counter()
    watcher = v5_client(f"soak-watch-{uuid.uuid4().hex[:6]}")
    watcher.on_message = lambda _c, _u, m: bare.update([m.topic.rsplit("/", 1)[1]])
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    watcher.subscribe(f"{root}/#", qos=1)
    probe = AlarmProbe(broker, root, url, probes, interval=args.alarm_every)
    start = time.perf_counter()
    probe.run()
    done = threading.Event()
    handled: list[int] = []
    crew = [threading.Thread(target=operator, args=(url, f"soak-operator-{k}", args.handle,
                                                   done, handled), daemon=True)
            for k in range(args.operators)]
    for t in crew:
        t.start()
    samples: list[Sample] = []
    cpu = cpu_times()
    print(f"{'minutes':>9} {'msg/s':>7} {'RSS MB: engine + children':>28} {'alarm p50/p99 ms':>17}"
          f" {'CPU':>5} {'DB MB':>7} {'open':>6}", flush=True)
    trace_from = args.probe_frames_from * 60 if args.probe_frames_from else None
    with psycopg.connect(url, autocommit=True) as conn:
        last_line = 0.0
        while sim.poll() is None:
            time.sleep(5)
            now = time.perf_counter() - start
            if probe_dir is not None and trace_from is not None and now >= trace_from:
                ask_probe(probe_dir, f"tracestart-{args.probe_frames}")
                print(f"    tracemalloc on in the engine at {now / 60:.1f} min", flush=True)
                trace_from = None
            row = conn.execute(
                "SELECT pg_database_size(current_database()) / 1048576.0, "
                "(SELECT count(*) FROM alerts WHERE status <> 'resolved')").fetchone()
            assert row is not None
            size, open_ = row
            samples.append(Sample(now, acked(engine), engine.memory_mb(), busy_since(cpu),
                                  float(size), int(open_)))
            cpu = cpu_times()
            if now - last_line >= args.window:
                print_window(samples, probe, start, last_line, now)
                if probe_dir is not None:
                    show_probe("memory", ask_probe(probe_dir, f"window-{len(samples)}"))
                last_line = now
            if engine.process.poll() is not None:
                raise RuntimeError(f"the engine exited; see {engine.log}")
        print_window(samples, probe, start, last_line, time.perf_counter() - start)
    probe.stop()
    done.set()
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(engine.log, args.logs / "engine.log")
        shutil.copy(sim_log, args.logs / "simulate.log")
    m = re.search(r"sent (\d+) messages", sim_log.read_text(errors="replace"))
    sent = f"{int(m.group(1)):,}" if m else f"? (see {sim_log})"

    def taken() -> tuple[float, float]:   # by the bulk lane (not alarms), by the alarm lane
        return (engine.scrape("vagt_messages_received_total", "bulk"),
                engine.scrape("vagt_messages_received_total", "alarm"))
    wanted = (sum(bare.values()) - bare["alarm"], bare["alarm"])
    deadline = time.monotonic() + 120
    while taken() < wanted and time.monotonic() < deadline:
        time.sleep(1)
    watcher.disconnect()
    watcher.loop_stop()
    if probe_dir is not None:      # once the engine has taken what was sent
        for label in ("gc-end", "pools-end", "trim-end"):
            show_probe(label, ask_probe(probe_dir, label))
    summary(samples, probe)
    print(f"operators: {args.operators}, {len(handled):,} alerts taken and resolved")
    bulk, alarm = taken()
    print(f"messages: the simulator sent {sent} and the probe {len(probe.sent)} alarms; a "
          f"bare subscriber got {wanted[0]:,} and {wanted[1]:,} alarms, the engine "
          f"{bulk:,.0f} (bulk lane) and {alarm:,.0f} (alarm lane)"
          + ("" if (bulk, alarm) == wanted else "  NOT THE SAME"))
    missing = sorted(probe.sent.keys() - probe.seen.keys())
    if missing:
        with psycopg.connect(url) as conn:
            print(f"alarms without an alert: {', '.join(missing)}; their dead letters:",
                  conn.execute("SELECT device_id, reason, detail FROM dead_letters "
                               "WHERE device_id = ANY(%s)", (missing,)).fetchall(),
                  "their events:",
                  conn.execute("SELECT device_id, code, time FROM events "
                               "WHERE device_id = ANY(%s)", (missing,)).fetchall(),
                  "their alerts:",
                  conn.execute("SELECT device_id, rule, status, suppressed_reason FROM alerts "
                               "WHERE device_id = ANY(%s)", (missing,)).fetchall())
    kinds = collections.Counter(
        (m.group(1), m.group(2)) for line in engine.log.read_text(errors="replace").splitlines()
        if (m := re.search(r"level=(WARNING|ERROR) .*?event=(\S+)", line)))
    print("the engine's warnings and errors: " + (", ".join(
        f"{n} {event} ({level.lower()})" for (level, event), n in kinds.most_common())
        or "none"))


def operator(url: str, name: str, handle_s: float, done: threading.Event,
             handled: list[int]) -> None:
    """A call-centre operator: takes the most urgent open alert (`next_alert`, as the API's
    POST /alerts/next), spends `handle_s` on it, resolves it, as the console would."""
    from vagt.alerts import actions
    from vagt.alerts.policy import current_policy

    code = current_policy().resolution_codes[0]
    with psycopg.connect(url, autocommit=True) as conn:
        while not done.is_set():
            alert = actions.next_alert(conn, name, via="soak")
            if alert is None:
                done.wait(1.0)
                continue
            done.wait(handle_s)
            try:
                actions.resolve(conn, alert.id, name, note="handled in the soak", code=code,
                                via="soak")
            except actions.AlertError:   # the engine resolved it meanwhile (its clear)
                continue
            handled.append(alert.id)


def print_window(samples: list[Sample], probe: AlarmProbe, start: float, a: float,
                 b: float) -> None:
    inside = [s for s in samples if a < s.at <= b]
    if len(inside) < 2:
        return
    first, last = inside[0], inside[-1]
    rate = (last.acked - first.acked) / max(last.at - first.at, 1e-9)
    lat = sorted((probe.seen[d] - t) * 1000 for d, t in list(probe.sent.items())
                 if d in probe.seen and a < t - start <= b)
    p = (f"{lat[len(lat) // 2]:.0f}/{lat[int(0.99 * (len(lat) - 1))]:.0f}" if lat else "-")
    rss = " + ".join(f"{x:.0f}" for x in last.rss)
    busy = statistics.mean(s.busy for s in inside)
    print(f"{a / 60:4.1f}-{b / 60:<4.1f} {rate:7,.0f} {rss:>28} {p:>17} {busy:5.0%} "
          f"{last.db_mb:7,.0f} {last.open_alerts:6,}", flush=True)


def summary(samples: list[Sample], probe: AlarmProbe) -> None:
    half = [s for s in samples if s.at >= samples[-1].at / 2]
    t = np.array([s.at for s in half]) / 3600
    total_rss = np.array([sum(s.rss) for s in half])
    slope = float(np.polyfit(t, total_rss, 1)[0]) if len(half) > 2 else float("nan")
    lat = probe.latencies_ms()
    print()
    print(f"resident memory (engine and children): {sum(samples[0].rss):.0f} MB at the start, "
          f"{max(sum(s.rss) for s in samples):.0f} MB at most, {sum(samples[-1].rss):.0f} MB "
          f"at the end; over the second half {slope:+.1f} MB per hour (least squares)")
    if lat:
        print(f"alarms: {len(probe.sent)} sent, {len(probe.seen.keys() & probe.sent.keys())} "
              f"committed; p50 {lat[len(lat) // 2]:.0f} ms, p99 "
              f"{lat[int(0.99 * (len(lat) - 1))]:.0f} ms, max {lat[-1]:.0f} ms")
    print(f"database: {samples[0].db_mb:,.0f} MB to {samples[-1].db_mb:,.0f} MB; alerts open "
          f"at the end {samples[-1].open_alerts:,}")


if __name__ == "__main__":
    main()
