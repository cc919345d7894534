"""Decoding cost per message: the drain's backlog in the vendors' mixed formats against the
same messages all in canonical JSON, through `decode_batch` in the engine's batches, in turn
in one process (no broker, no database).

    .venv/bin/python -m benchmarks.decode [--messages 200000] [--devices 100000] [--rounds 5]

Each round decodes the whole backlog once per format, from a fresh process state for what
the decoders remember (a drain's engine starts with nothing remembered either).
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.drain import make_backlog

from vagt.app import heap
from vagt.app.config import IngestConfig
from vagt.ingest.decode import decode_batch
from vagt.ingest.model import RawMessage

ROOT = "bench/v1"


def decode_all(messages: list[RawMessage], batch: int, now: float) -> tuple[float, int]:
    """Seconds to decode `messages` in batches of `batch`, and the readings they gave."""
    limit = IngestConfig().max_payload_bytes
    readings = 0
    start = time.perf_counter()
    for k in range(0, len(messages), batch):
        out = decode_batch(messages[k:k + batch], topic_root=ROOT, max_payload_bytes=limit,
                           now=now)
        readings += out.n_readings
    return time.perf_counter() - start, readings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=IngestConfig().bulk_batch_max)
    args = ap.parse_args()
    now = time.time()
    kinds = {name: [RawMessage(t, p, now) for t, p in make_backlog(
                 ROOT, args.messages, args.devices, canonical_only=name == "canonical")]
             for name in ("mixed", "canonical")}
    heap.settle()   # as the engine's process does after start-up
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for r in range(args.rounds):
        for name in (kinds if r % 2 == 0 else list(kinds)[::-1]):
            seconds, readings = decode_all(kinds[name], args.batch, now)
            times[name].append(seconds / args.messages * 1e6)
            print(f"round {r + 1} {name}: {times[name][-1]:.1f} µs a message "
                  f"({readings:,} readings)", flush=True)
    mixed, canonical = (statistics.median(times[k]) for k in ("mixed", "canonical"))
    print(f"median: mixed {mixed:.1f} µs a message, canonical {canonical:.1f} µs, "
          f"{mixed / canonical:.2f}x")


if __name__ == "__main__":
    main()
