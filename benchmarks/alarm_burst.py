"""Many personal alarms at once, as when a region's devices reconnect after an outage and
send what they held: how fast the alarm lane takes them, and how long a fresh alarm waits
behind them.

    .venv/bin/python -m benchmarks.alarm_burst --burst 2000 [--backlog 200000] [--rounds 3]

An engine (`vagt run`, 100,000 registered devices) gets `--burst` alarms from as many
personal alarms, published flat out; from the same moment, a fresh alarm every 100 ms from
other personal alarms. Idle otherwise, or with `--backlog N`: N messages of the fleet's
bulk traffic queued for it before it starts (its readings held through the outage), which
it drains meanwhile. Each alarm is timed from its publish to its committed
alert. Beside the engine, a bare paho subscriber to the same alarms (a session of its own)
only notes when each one reaches it: the baseline, how fast the broker hands the burst out
in the same run. Printed: how long the burst took to be committed and to reach the bare
subscriber, the ratio of the two rates, the latencies, the fresh alarms' latencies during
the burst, and the alarm lane's CPU per alarm; with `--rounds N`, for each round (an
engine, a broker and a database of its own) and their medians.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.drain import (
    drop_database,
    fresh_database,
    make_backlog,
    own_broker,
    publish_backlog,
    v5_client,
)
from benchmarks.suite import AlarmProbe, _cpu_seconds, engines, prepare_sessions, register_fleet

from vagt.sim import make_fleet


def _percentiles(ms: list[float]) -> str:
    if not ms:
        return "none committed"
    return (f"p50 {ms[len(ms) // 2]:,.0f} ms, p99 {ms[min(len(ms) - 1, len(ms) * 99 // 100)]:,.0f}"
            f" ms, max {ms[-1]:,.0f} ms ({len(ms):,} alarms)")


class BareSubscriber:
    """Notes when each device's alarm reaches it (QoS 1, paho's own loop)."""

    def __init__(self, port: int, root: str) -> None:
        self.seen: dict[str, float] = {}
        self._subscribed = threading.Event()
        self._c = v5_client(f"bench-bare-{uuid.uuid4().hex[:6]}")
        self._c.on_message = self._on_message
        self._c.on_subscribe = lambda *a: self._subscribed.set()
        self._c.on_connect = lambda c, *a: c.subscribe(f"{root}/dev/+/alarm", qos=1)
        self._c.connect("127.0.0.1", port)
        self._c.loop_start()
        if not self._subscribed.wait(10):
            raise SystemExit("the bare subscriber was not subscribed within 10 s")

    def _on_message(self, c: Any, userdata: Any, msg: Any) -> None:
        self.seen.setdefault(msg.topic.split("/")[-2], time.perf_counter())

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


@dataclass(frozen=True)
class Round:
    burst: list[float]      # ms from publish to committed alert, sorted
    bare: list[float]       # ms from publish to the bare subscriber, sorted
    fresh: list[float]      # ms, the fresh alarms published while the burst was committed
    took_s: float           # from the first publish to the last of the burst committed
    bare_s: float           # ... to the last of the burst at the bare subscriber
    published_s: float
    cpu_ms: float           # the alarm lane's CPU an alarm


def one_round(args: argparse.Namespace, fleet: list[Any], alarms: list[str]) -> Round:
    """A broker, a database and an engine of its own; the burst, the fresh alarms."""
    with own_broker() as (broker, work):
        url = fresh_database()
        try:
            register_fleet(url, fleet)
            root, cid = f"bench{uuid.uuid4().hex[:6]}/v1", f"burst-{uuid.uuid4().hex[:6]}"
            prepare_sessions(broker, root, [cid], "")
            if args.backlog:
                publish_backlog(broker.port, make_backlog(root, args.backlog, args.devices))
            with engines(1, broker=broker, root=root, url=url, client_ids=[cid],
                         share_group="", workdir=work) as procs:
                lane = next(p for p in procs[0].children()
                            if procs[0].child_name(p) == "alarm lane")
                burst = AlarmProbe(broker, root, url, alarms[:args.burst], interval=0.0,
                                   commit_probe=False)
                fresh = AlarmProbe(broker, root, url, alarms[args.burst:], interval=0.1)
                bare = BareSubscriber(broker.port, root)
                spy = None if args.profile is None else subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(lane),
                     "-r", "250", "-f", "raw", "-o", str(args.profile), "--nonblocking"])
                if spy is not None:
                    time.sleep(1)   # py-spy attached
                cpu = _cpu_seconds(lane)
                start = time.perf_counter()
                fresh.run()
                burst.run().join()   # every alarm of the burst published
                burst.stop()         # waits (30 s at most) for each to be committed
                took = max(burst.seen.values(), default=start) - start
                fresh.stop()
                cpu = _cpu_seconds(lane) - cpu
                bare.close()
                if spy is not None:
                    spy.send_signal(signal.SIGINT)   # it writes what it has
                    spy.wait(30)
                log = procs[0].log.read_text(errors="replace").splitlines()
        finally:
            drop_database(url)   # 100,000 devices: not one to leave behind
    lat = burst.latencies_ms()
    if len(lat) < args.burst:
        print(*log[-20:], sep="\n")
        raise SystemExit(f"only {len(lat):,} of {args.burst:,} alarms committed within 30 s "
                         "(the engine's log's last lines above)")
    reached = [bare.seen[d] for d in burst.sent if d in bare.seen]
    if len(reached) < args.burst:
        raise SystemExit(f"only {len(reached):,} of {args.burst:,} alarms reached the bare "
                         "subscriber")
    return Round(
        burst=lat,
        bare=sorted((bare.seen[d] - burst.sent[d]) * 1000 for d in burst.sent),
        fresh=sorted((fresh.seen[d] - fresh.sent[d]) * 1000 for d in fresh.seen
                     if d in fresh.sent and fresh.sent[d] <= start + took),
        took_s=took, bare_s=max(reached) - start,
        published_s=max(burst.sent.values()) - start,
        cpu_ms=cpu / (len(burst.sent) + len(fresh.sent)) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--burst", type=int, default=2000, help="alarms published at once")
    ap.add_argument("--backlog", type=int, default=0,
                    help="bulk messages queued for the engine before it starts")
    ap.add_argument("--rounds", type=int, default=1, help="each with its own engine")
    ap.add_argument("--profile", type=Path,
                    help="py-spy's raw samples of the alarm lane over the burst here "
                         "(the last round's)")
    args = ap.parse_args()
    fleet = make_fleet(args.devices, 1)
    alarms = [d.device_id for d in fleet if d.type == "personal_alarm"]
    if len(alarms) < args.burst + 100:
        raise SystemExit(f"the fleet has {len(alarms):,} personal alarms: too few for a "
                         f"burst of {args.burst:,} and the fresh ones")
    rounds = []
    for i in range(args.rounds):
        r = one_round(args, fleet, alarms)
        rounds.append(r)
        print(f"round {i + 1}: a burst of {args.burst:,} alarms, all published in "
              f"{r.published_s:.2f} s")
        print(f"  the bare subscriber had all {r.bare_s:.2f} s after the first was published, "
              f"{args.burst / r.bare_s:,.0f} alarms/s; {_percentiles(r.bare)}")
        print(f"  the engine had all committed {r.took_s:.2f} s after, "
              f"{args.burst / r.took_s:,.0f} alarms/s, ratio to bare {r.bare_s / r.took_s:.2f}; "
              f"{_percentiles(r.burst)}")
        print(f"  fresh alarms published during it, committed: {_percentiles(r.fresh)}")
        print(f"  the alarm lane's CPU: {r.cpu_ms:.2f} ms an alarm", flush=True)
    if len(rounds) > 1:
        median = statistics.median
        print(f"medians of {len(rounds)} rounds: the burst committed in "
              f"{median([r.took_s for r in rounds]):.2f} s (the bare subscriber "
              f"{median([r.bare_s for r in rounds]):.2f} s, ratio "
              f"{median([r.bare_s / r.took_s for r in rounds]):.2f}); a fresh alarm at most "
              f"{median([max(r.fresh, default=0.0) for r in rounds]):,.0f} ms; "
              f"the lane's CPU {median([r.cpu_ms for r in rounds]):.2f} ms an alarm")


if __name__ == "__main__":
    main()
