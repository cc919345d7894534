"""What the ingest tests share: a fixed clock and a one-message decode."""

from __future__ import annotations

from typing import Any

import orjson

from vagt.ingest import DecodedBatch, RawMessage
from vagt.ingest.decode import decode_batch

NOW = 1795340000.0  # 2026-11-22T09:33:20Z
RECEIVED = NOW - 1.0
ROOT = "vagt/v1"


def decode(payload: bytes | dict[str, Any] | list[Any], device: str = "OXI-1",
           channel: str = "telemetry", *, limit: int = 65536, root: str = ROOT) -> DecodedBatch:
    """Decode one message published on `device`'s `channel` topic."""
    if not isinstance(payload, bytes):
        payload = orjson.dumps(payload)
    return decode_batch([RawMessage(f"{root}/dev/{device}/{channel}", payload, RECEIVED)],
                        topic_root=root, max_payload_bytes=limit, now=NOW)


def dead_reason(payload: bytes | dict[str, Any] | list[Any], **kw: Any) -> str:
    """The reason of the one dead letter the message became (fails if it was not refused)."""
    out = decode(payload, **kw)
    assert len(out.dead) == 1, f"expected a dead letter, got {out.n_readings} readings"
    return out.dead[0].reason.value


def dead_detail(payload: bytes | dict[str, Any] | list[Any], **kw: Any) -> str:
    out = decode(payload, **kw)
    assert len(out.dead) == 1, f"expected a dead letter, got {out.n_readings} readings"
    return out.dead[0].detail


def readings(out: DecodedBatch) -> list[tuple[str, float, str, float]]:
    return list(zip(out.r_metric, out.r_value, out.r_unit, out.r_time))
