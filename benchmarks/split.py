"""The ceiling of the engine's receiving process: what it drains when the engine commits nothing.

The engine receives the bulk lane in a process of its own (`vagt.app.receiver`: its
`MqttSession`, batches over a pipe, the acknowledgements back). This drains a backlog through
that very process, with the engine's bulk-lane settings (batch size and waits), and a
consumer that only takes each batch and tells the process to acknowledge it: the most an
engine could drain, whatever its pipeline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from vagt.app.config import Config
from vagt.app.engine import lane_specs
from vagt.app.receiver import ReceiverProcess, ReceiverSettings
from vagt.ingest.consumer import SessionSettings


def drain_split(port: int, client_id: str, filters: list[str], n: int,
                receive_maximum: int) -> float:
    """Messages per second, from the receiving process's start to the last batch taken."""
    config = Config()
    config = replace(config, mqtt=replace(config.mqtt, receive_maximum=receive_maximum))
    bulk = next(s for s in lane_specs(config) if s.name == "bulk")
    session = SessionSettings(client_id=client_id, filters=tuple(filters), port=port,
                              session_expiry_s=3600, receive_maximum=receive_maximum)
    stop = threading.Event()
    got = 0
    started = time.monotonic()
    with ReceiverProcess(ReceiverSettings(session, bulk.batch_max, bulk.batch_wait_s)) as r:
        while got < n:
            if batch := r.take(bulk.batch_max, bulk.backlog_wait_s, stop):
                r.ack(batch)
                got += len(batch)
        elapsed = time.monotonic() - started
    return n / elapsed
