"""The broker's own scale-out: bare consumers sharing a subscription (`$share`), one against two.

Issue 6 asks two engines sharing the subscription to drain 1.6 times what one does. Two
engines can get no more from Mosquitto than two consumers that only count, so this measures
that bound on this machine: the same backlog drained by one bare paho consumer in a process of
its own, and by two in processes of their own sharing the subscription, in turn. Mosquitto
sends from one thread; a second consumer adds what the broker and the cores left can give it.
Usage: .venv/bin/python -m benchmarks.broker_share [--messages 200000] [--devices 100000]
    [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import statistics
import time
import uuid
from multiprocessing.synchronize import Event

import paho.mqtt.client as paho
from benchmarks.drain import (
    BULK_CHANNELS,
    make_backlog,
    own_broker,
    publish_backlog,
    session,
    session_props,
    v5_client,
)
from tests.support import Broker

Message = tuple[str, bytes]
_SPAWN = mp.get_context("spawn")


def _count(port: int, client_id: str, ready: Event, go: Event, stop: Event,
           got: ctypes.c_longlong) -> None:
    """A bare consumer in a process of its own: says when it is `ready`, connects at `go`,
    counts into `got` (one unlocked store a message: the parent only reads it), leaves at
    `stop`."""
    n = 0

    def on_message(_c: object, _u: object, _m: paho.MQTTMessage) -> None:
        nonlocal n
        n += 1
        got.value = n

    c = v5_client(client_id)
    c.on_message = on_message
    ready.set()
    go.wait()
    c.connect("127.0.0.1", port, clean_start=False, properties=session_props())
    c.loop_start()
    stop.wait()
    c.disconnect()
    c.loop_stop()


def drain_shared(broker: Broker, traffic: list[Message], base: str, consumers: int) -> float:
    """Messages per second for `consumers` bare consumers, each in its own process, sharing
    the subscription (one consumer: a subscription of its own): from the moment they are told
    to connect to the moment their counts add up to the backlog (polled every 2 ms)."""
    root = f"share{uuid.uuid4().hex[:6]}/v1"
    group = f"g{uuid.uuid4().hex[:6]}"
    prefix = f"$share/{group}/" if consumers > 1 else ""
    ids = [f"bench-share-{uuid.uuid4().hex[:6]}-{i}" for i in range(consumers)]
    for cid in ids:
        session(broker.port, cid, [f"{prefix}{root}/dev/+/{ch}" for ch in BULK_CHANNELS])
    publish_backlog(broker.port, [(root + t[len(base):], p) for t, p in traffic])
    go, stop = _SPAWN.Event(), _SPAWN.Event()
    counts = [_SPAWN.RawValue("q", 0) for _ in ids]
    ready = [_SPAWN.Event() for _ in ids]
    procs = [_SPAWN.Process(target=_count, args=(broker.port, cid, r, go, stop, got),
                            daemon=True) for cid, r, got in zip(ids, ready, counts)]
    for p in procs:
        p.start()
    for r in ready:   # the interpreters started and imported before the clock does
        if not r.wait(120):
            raise TimeoutError("a consumer process did not start in 120 s")
    n = len(traffic)
    started = time.perf_counter()
    go.set()
    deadline = started + 600
    while sum(c.value for c in counts) < n:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{sum(c.value for c in counts):,} of {n:,} messages in 600 s")
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    stop.set()
    for p in procs:
        p.join(30)
    return n / elapsed


def measure(broker: Broker, traffic: list[Message], base: str, rounds: int
            ) -> list[tuple[float, float]]:
    """(one, two) consumers' rates for each round, in turn: one then two, two then one, ..."""
    pairs = []
    for k in range(rounds):
        order = (1, 2) if k % 2 == 0 else (2, 1)
        got = {c: drain_shared(broker, traffic, base, c) for c in order}
        pairs.append((got[1], got[2]))
        print(f"  round: one bare consumer {got[1]:,.0f} msg/s, two sharing {got[2]:,.0f} "
              f"msg/s, {got[2] / got[1]:.2f}x", flush=True)
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = "bench/v1"
    traffic = make_backlog(base, args.messages, args.devices)
    with own_broker() as (broker, _):
        pairs = measure(broker, traffic, base, args.rounds)
    ratios = sorted(two / one for one, two in pairs)
    print(f"one bare consumer {statistics.median(p[0] for p in pairs):,.0f} msg/s, two sharing "
          f"{statistics.median(p[1] for p in pairs):,.0f} msg/s (medians of {args.rounds}); "
          f"{statistics.median(ratios):.2f}x (" + ", ".join(f"{r:.2f}" for r in ratios) + ")")


if __name__ == "__main__":
    main()
