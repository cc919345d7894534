"""The rules engine of this working tree against another revision's (`--rev`, HEAD by
default) over the same stream: are the alerts and the state the same?

    .venv/bin/python -m benchmarks.rules_same --devices 20000 --messages 200000 --batch 5000

For a change to how the rules keep or evaluate their state that must not change what they
decide. No broker and no database: the messages of `benchmarks/rules.py` (its 30 rules,
devices of every type in seven municipalities) in batches through `RuleEngine.evaluate`
and `apply`; alerts open in the queue seeded at the start; now and then devices moved to
another municipality between a batch's evaluation and its apply (what an engine sees when
the registry changes meanwhile), a timer tick and the absence sweep; and a share of the
devices with a broken sensor (`--faulty`), whose runs of implausible values open and close
sensor-fault alerts. Each revision runs in
a subprocess of its own (the other's `src/` taken with `git archive`) and reports digests
of every fire and clear, in order, and of every device's state packed at the end
(`vagt.rules.persist.pack`, the rows the `rule_state` table would get). Exits 1 if they
differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from benchmarks.backtest import ROOT, source_of
from benchmarks.rules import MUNICIPALITIES, batch_of, decoded, make_messages, thirty_rules

from vagt.devices.catalogue import load_catalogue
from vagt.rules import RuleEngine
from vagt.rules.persist import pack

MOVE_EVERY = 7       # batches between devices moved while a batch is in hand
TICK_EVERY = 10      # batches between a tick with the sweep
MOVED = 50           # devices moved each time
SEEDED = 40          # alerts open in the queue at the start
T0 = 1_780_000_000.0  # the stream's first device time (2026-05-28), the same in both runs


def run(devices: int, messages: int, batch: int, seed: int, faulty: float) -> dict[str, Any]:
    """This process's engine (vagt as its PYTHONPATH has it) over the stream: counts and
    digests."""
    fleet, msgs = make_messages(devices, messages, seed, t0=T0, faulty=faulty)
    rng = random.Random(seed)
    engine = RuleEngine(thirty_rules(), fleet, load_catalogue())
    index = {d: k for k, d in enumerate(fleet.ids)}
    t0 = msgs[0].received_at
    engine.seed([(name, fleet.ids[rng.randrange(devices)], t0 - 600)
                 for name in ("personal_alarm", "battery_low", "spo2_low", "tamper")
                 for _ in range(SEEDED // 4)])
    digest = hashlib.sha256()
    fires = clears = 0
    last_seen = np.full(devices, np.nan)
    for k, start in enumerate(range(0, len(msgs), batch)):
        b = batch_of(decoded(msgs[start:start + batch], now=T0 + 86400), index)
        ev = engine.evaluate(b)
        if k % MOVE_EVERY == MOVE_EVERY - 1:
            for _ in range(MOVED):
                fleet.move(fleet.ids[rng.randrange(devices)], rng.choice(MUNICIPALITIES))
        engine.apply(ev)
        np.fmax.at(last_seen, b.m_device, b.m_time)
        fires, clears = _digest(digest, ev, fires, clears)
        if k % TICK_EVERY == TICK_EVERY - 1:
            now = float(np.max(b.m_time)) + 900
            for tick in (engine.tick(now), engine.sweep_absence(now, last_seen, [])):
                engine.apply(tick)
                fires, clears = _digest(digest, tick, fires, clears)
    with engine.lock:
        packed = pack(engine, np.arange(devices, dtype=np.int64))
    state = hashlib.sha256(packed.layout.spec.encode())
    for part in (packed.slots, packed.values):
        state.update(b"".join(part))
    state.update(json.dumps(packed.texts).encode())
    return {"fires": fires, "clears": clears, "transitions": digest.hexdigest(),
            "state": state.hexdigest()}


def _digest(digest: Any, ev: Any, fires: int, clears: int) -> tuple[int, int]:
    """Every fire and clear of `ev` into `digest`; the counts so far."""
    f, c = ev.transitions.fires(), ev.transitions.clears()
    for column in (*f[:5], *f[6:], *c):
        digest.update(np.ascontiguousarray(column).tobytes())
    digest.update("\0".join(map(str, f[5])).encode())
    return fires + len(f[0]), clears + len(c[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="HEAD", help="the revision to compare with")
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--faulty", type=float, default=0.02,
                    help="the share of devices with a broken sensor")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run(args.devices, args.messages, args.batch, args.seed, args.faulty)))
        return
    stream = ["--devices", str(args.devices), "--messages", str(args.messages),
              "--batch", str(args.batch), "--seed", str(args.seed),
              "--faulty", str(args.faulty)]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, src in (("working tree", ROOT / "src"), (args.rev, source_of(args.rev, Path(tmp)))):
            env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{ROOT}")
            out = subprocess.run([sys.executable, "-m", "benchmarks.rules_same", "--worker",
                                  *stream], env=env, cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout
            results[name] = json.loads(out)
            print(f"{name:>14}: {results[name]}")
    a, b = results.values()
    print("the same" if a == b else "DIFFERENT")
    sys.exit(0 if a == b else 1)


if __name__ == "__main__":
    main()
