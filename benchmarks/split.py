"""The ceiling of receiving in one process and committing in another.

paho's packet handling is more than half of the engine's samples, and it shares the GIL with
the batch's work. One way past that (issue 6, "engine/bare >= 0.8") is to receive in a process
of its own: paho there, batches over a pipe to the process that commits, the acknowledgements
back over the pipe. This measures that design with nothing to commit: a receiver process (paho
with manual acknowledgement, batches of up to 5,000 or 50 ms) and a process that only counts
and sends each batch's packet ids back. What it drains is the most such an engine could.

Only paho here: the receiver is spawned, and imports this module and nothing of vagt.
"""

from __future__ import annotations

import collections
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BATCH_MAX = 5000
BATCH_WAIT_S = 0.05


def _receive(port: int, client_id: str, pipe: Connection, receive_maximum: int) -> None:
    inbox: collections.deque[tuple[str, bytes, int]] = collections.deque()
    cond = threading.Condition()

    def on_message(_c: object, _u: object, m: paho.MQTTMessage) -> None:
        with cond:
            inbox.append((m.topic, bytes(m.payload), m.mid))
            if len(inbox) == 1:
                cond.notify()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                    manual_ack=True)
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = receive_maximum
    stopping = threading.Event()

    def acks() -> None:
        while (mids := pipe.recv()) is not None:
            for mid in mids:
                c.ack(mid, 1)
        stopping.set()

    threading.Thread(target=acks, daemon=True).start()
    pipe.send(time.monotonic())   # CLOCK_MONOTONIC: the same clock in both processes
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    while not stopping.is_set():
        with cond:
            if not inbox:
                cond.wait(0.2)
                if not inbox:
                    continue
            deadline = time.monotonic() + BATCH_WAIT_S
            while len(inbox) < BATCH_MAX and (left := deadline - time.monotonic()) > 0:
                cond.wait(left)
            batch = [inbox.popleft() for _ in range(min(BATCH_MAX, len(inbox)))]
        pipe.send(batch)
    c.disconnect()
    c.loop_stop()


def drain_split(port: int, client_id: str, n: int, receive_maximum: int) -> float:
    """Messages per second, from the receiver's connect to the last batch handed over."""
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    p = ctx.Process(target=_receive, args=(port, client_id, there, receive_maximum))
    p.start()
    started: float = here.recv()
    got = 0
    while got < n:
        batch = here.recv()
        got += len(batch)
        here.send([mid for _, _, mid in batch])
    elapsed = time.monotonic() - started
    here.send(None)
    p.join(30)
    return n / elapsed
