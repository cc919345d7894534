"""Where the engine's memory goes in a drain (issue 6: under 400 MB with 100,000 devices).

The suite's drain (`benchmarks.suite --drain-only`) with the resident memory of the engine and
of each child process sampled every 0.1 s: after start-up, at its highest, and when the
backlog is drained; in turn for the vendors' mixed formats and for canonical JSON alone
(`canonical_only`), the same messages otherwise, in one run. With `--probe`, the engine runs
under benchmarks/memtrace.py: glibc's allocator totals (in use, and free but held by its
arenas) at the end of each drain; with `--trace N` also tracemalloc (N frames a trace; it
slows the engine several times, so its rates and resident memory are not the engine's) and
the largest allocation sites at the end and at the highest. Usage:

    .venv/bin/python -m benchmarks.memory [--messages 200000] [--devices 100000] [--rounds 1]
        [--probe] [--trace 1] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.drain import (
    drop_database,
    fresh_database,
    make_backlog,
    own_broker,
    publish_backlog,
)
from benchmarks.suite import (
    EngineProc,
    engines,
    prepare_sessions,
    register_fleet,
    wait_acked,
)
from tests.support import Broker

from vagt.sim import make_fleet

MB = 1024.0


def _rss_kb(pid: int) -> int:
    try:
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


@dataclass
class RssSampler:
    """Resident memory of the engine and its children every `interval` s, by part."""

    engine: EngineProc
    interval: float = 0.1
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def parts(self) -> dict[str, int]:
        pids = {"engine": self.engine.process.pid}
        for child in self.engine.children():
            pids[self.engine.child_name(child) or f"child {child}"] = child
        return {name: _rss_kb(pid) for name, pid in pids.items()}

    @contextmanager
    def running(self) -> Iterator[RssSampler]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.perf_counter(), self.parts()))

    def peak(self) -> dict[str, int]:
        """Each part's highest sample (not necessarily at the same moment)."""
        out: dict[str, int] = {}
        for _, parts in self.samples:
            for k, v in parts.items():
                out[k] = max(out.get(k, 0), v)
        return out

    def timeline(self, every: float = 1.0) -> str:
        """The engine's resident memory, one sample a second: how it grows over a drain."""
        if not self.samples:
            return ""
        start, shown, last = self.samples[0][0], [], -every
        for t, parts in self.samples:
            if t - start >= last + every:
                last = t - start
                shown.append(f"{parts.get('engine', 0) / MB:.0f}")
        return " ".join(shown)


def mb(parts: dict[str, int]) -> str:
    return f"{sum(parts.values()) / MB:.0f} MB (" + ", ".join(
        f"{k} {v / MB:.0f}" for k, v in parts.items()) + ")"


def environment(ap: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    """`--env NAME=VALUE ...` as a dict; the parser's error for one without '='."""
    if any("=" not in kv for kv in pairs):
        ap.error("--env takes NAME=VALUE")
    return dict(kv.split("=", 1) for kv in pairs)


def ask_probe(directory: Path, label: str, timeout: float = 300) -> dict[str, Any]:
    (directory / "request").write_text(label)
    deadline = time.monotonic() + timeout
    while not (found := directory / f"{label}.json").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the engine's probe did not answer {label!r}")
        time.sleep(0.05)
    return json.loads(found.read_text())  # type: ignore[no-any-return]


def show_probe(label: str, report: dict[str, Any]) -> None:
    st, m, py = report["status_kb"], report["malloc"], report["pymalloc"]
    heaps = [h for h in m["heaps"] if h["system"] >= 2**20]
    print(f"    {label}: resident {st['VmRSS'] / MB:.0f} MB (anonymous {st['RssAnon'] / MB:.0f},"
          f" files {st['RssFile'] / MB:.0f}); pymalloc {py['arenas_bytes'] / 2**20:.0f} MB of "
          f"arenas, {py['used_bytes'] / 2**20:.0f} MB in use; glibc "
          f"{m['in_use_bytes'] / 2**20:.0f} MB in use + {m['mmap_bytes'] / 2**20:.0f} MB mmap, "
          f"{m['free_bytes'] / 2**20:.0f} MB free in its arenas ({len(heaps)} over 1 MB: "
          + ", ".join(f"{h['system'] / 2**20:.0f}/{h['free'] / 2**20:.0f}" for h in heaps)
          + " MB held/free)", flush=True)
    if "connections" in report:
        print("      connections by the port at their other end: "
              + (", ".join(f"{port} {n}" for port, n in sorted(report["connections"].items()))
                 or "none"), flush=True)
    if "rule_arrays" in report:
        r = report["rule_arrays"]
        print(f"      the rules' state: {r['bytes'] / 2**20:.1f} MB in {r['arrays']} arrays "
              f"({r['engines']} rules engine(s)); most: "
              + ", ".join(f"{name} {size / 2**20:.1f} MB/{n}" for name, size, n in r["by_rule"]),
              flush=True)
        print(f"        rules with rows only for the devices they apply to: "
              f"{r['rules_by_device']} of {r['rules']}; rows only where a value is not the "
              f"fill would take {r['held_bytes'] / 2**20:.1f} MB; the arrays of their rows "
              f"{r.get('rows_bytes', 0) / 2**20:.1f} MB", flush=True)
    if "renewed" in report:
        r = report["renewed"]
        print(f"      the connections of {r['pools']} pool(s) closed and opened again: glibc in "
              f"use (with mmap) {r['in_use_before_bytes'] / 2**20:.0f} -> "
              f"{r['in_use_after_bytes'] / 2**20:.0f} MB", flush=True)
    if "trimmed_kb" in report:
        before, after = report["trimmed_kb"]
        print(f"      malloc_trim(0): resident {before / MB:.0f} -> {after / MB:.0f} MB", flush=True)
    if "garbage" in report:
        g = report["garbage"]
        print(f"      a full collection: {g['unreachable']:,} unreachable objects, resident "
              f"{g['rss_before_kb'] / MB:.0f} -> {g['rss_after_kb'] / MB:.0f} MB; "
              + ", ".join(f"{k} {v:,}" for k, v in g["types"][:12]), flush=True)
        print("      tracked objects alive after it: "
              + ", ".join(f"{k} {v:,}" for k, v in g["live"][:12]), flush=True)
        print(f"      messages received and not yet taken by the bulk lane: {g['waiting']}",
              flush=True)
    if "traced_bytes" in report:
        print(f"      traced by tracemalloc {report['traced_bytes'] / 2**20:.1f} MB (peak "
              f"{report['traced_peak'] / 2**20:.1f} MB); by file:", flush=True)
        for name, size in report["files"][:15]:
            print(f"        {size / 2**20:7.2f} MB  {name}")
        print("      largest sites:")
        for s in report["sites"][:25]:
            print(f"        {s['size'] / 2**20:7.2f} MB {s['count']:>9,}  "
                  + " <- ".join(s["where"][::-1][:4]))


def drain(broker: Broker, fleet: list[Any], traffic: Callable[[str], list[tuple[str, bytes]]],
          n: int, work: Path, probe: int | None, env: dict[str, str], after: float,
          memray: Path | None) -> None:
    url = fresh_database()
    try:
        register_fleet(url, fleet)
        root = f"bench{uuid.uuid4().hex[:6]}/v1"
        one = [f"bench-mem-{uuid.uuid4().hex[:6]}"]
        prepare_sessions(broker, root, one, "")
        publish_backlog(broker.port, traffic(root))
        probe_dir = Path(tempfile.mkdtemp(dir=work))
        wrap: tuple[str, ...] = ()
        if probe is not None:
            wrap = ("-m", "benchmarks.memtrace", str(probe_dir), str(probe))
        elif memray is not None:    # (pip install memray; not one of vagt's dependencies)
            wrap = ("-m", "memray", "run", "--aggregate", "--trace-python-allocators", "-q",
                    "-f", "-o", str(memray))
        reports: dict[str, Any] = {}
        with engines(1, broker=broker, root=root, url=url, client_ids=one, share_group="",
                     workdir=work, wrap=wrap, env=env) as procs:
            sampler = RssSampler(procs[0])
            ready = sampler.parts()
            with sampler.running():
                if probe is not None:   # halfway: what the engine holds while it drains
                    wait_acked(procs, n // 2)
                    acked = procs[0].scrape("vagt_messages_acked_total", "bulk")
                    reports["halfway"] = ask_probe(probe_dir, "gc-halfway")
                    print(f"    halfway: {acked:,.0f} acknowledged before, "
                          f"{procs[0].scrape('vagt_messages_acked_total', 'bulk'):,.0f} after "
                          "the probe", flush=True)
                seconds = wait_acked(procs, n)
                end = sampler.parts()
                if probe is not None:
                    reports |= {"end": ask_probe(probe_dir, "end"),
                                "gc": ask_probe(probe_dir, "gc-end")}
                time.sleep(after)
                later = sampler.parts()
                if probe is not None:   # after the rules' first ticks
                    reports["after"] = ask_probe(probe_dir, "trim-after")
            peak = sampler.peak()
        print(f"    drained {n:,} in {seconds:.1f} s ({n / seconds:,.0f} msg/s)")
        print(f"    resident after start-up {mb(ready)}")
        print(f"    highest                {mb(peak)}")
        print(f"    drained                {mb(end)}")
        print(f"    {after:.0f} s after{'':<14}{mb(later)}")
        print(f"    the engine over the drain, MB a second: {sampler.timeline()}", flush=True)
        if (probe_dir / "peak.json").exists():
            reports["peak"] = json.loads((probe_dir / "peak.json").read_text())
        for label, report in reports.items():
            show_probe(label, report)
    finally:
        drop_database(url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1, help="mixed then canonical, then the "
                    "other way round, ...")
    ap.add_argument("--probe", action="store_true",
                    help="glibc's allocator totals at the end of each drain")
    ap.add_argument("--trace", type=int, default=0, metavar="FRAMES",
                    help="tracemalloc with this many frames a trace (implies --probe)")
    ap.add_argument("--only", choices=("mixed", "canonical"),
                    help="drain only this traffic")
    ap.add_argument("--after", type=float, default=3.0,
                    help="seconds the engine runs on after the drain (its rules' timer ticks "
                         "every 15 s: the absence sweep over the fleet)")
    ap.add_argument("--memray", type=Path, metavar="FILE",
                    help="run the engine under memray (aggregated: what it held at its "
                         "highest; `memray tree FILE`)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in the engine's environment (e.g. MALLOC_ARENA_MAX=2)")
    args = ap.parse_args()
    n = args.messages
    probe = args.trace if args.trace else (0 if args.probe else None)
    env = environment(ap, args.env)
    fleet = make_fleet(args.devices, 1)
    base = "bench/v1"
    kinds = {"mixed": make_backlog(base, n, args.devices),
             "canonical": make_backlog(base, n, args.devices, canonical_only=True)}
    for name, messages in kinds.items():
        size = sum(len(p) for _, p in messages)
        print(f"{name}: {n:,} messages, {size / n:.0f} bytes of payload a message on average")

    def rooted(messages: list[tuple[str, bytes]]) -> Callable[[str], list[tuple[str, bytes]]]:
        return lambda root: [(root + t[len(base):], p) for t, p in messages]

    with own_broker() as (broker, work):
        order = [args.only] if args.only else ["mixed", "canonical"]
        for k in range(args.rounds):
            for name in order if k % 2 == 0 else order[::-1]:
                print(f"round {k + 1}, {name}:", flush=True)
                drain(broker, fleet, rooted(kinds[name]), n, work, probe, env, args.after,
                      args.memray.with_suffix(f".{name}{k + 1}.bin") if args.memray
                      else None)


if __name__ == "__main__":
    main()
