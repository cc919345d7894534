"""Decode a batch of raw messages into columns: topic, size, JSON, canonical or SenML, units.

Every message ends up either wholly in the columns or as exactly one dead letter.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from vagt.ingest.canonical import Parsed, Reject, decode_canonical
from vagt.ingest.model import Channel, DeadLetter, DeadLetterReason, DecodedBatch, RawMessage
from vagt.ingest.senml import decode_senml
from vagt.ingest.topics import TopicError, parse_topic

EARLIEST = 946684800.0  # 2000-01-01T00:00:00Z: earlier times are a device clock not set


def decode_batch(messages: Sequence[RawMessage], *, topic_root: str, max_payload_bytes: int,
                 now: float, max_future_skew_s: float = 300) -> DecodedBatch:
    out = DecodedBatch()
    latest = now + max_future_skew_s
    for i, m in enumerate(messages):
        device_id, channel = "", ""
        try:
            device_id, ch = parse_topic(m.topic, topic_root)
            channel = ch.value
            parsed = _decode_one(m, device_id, ch, max_payload_bytes, now)
            _check_times(parsed, latest)
        except TopicError as e:
            _dead(out, i, m, DeadLetterReason.BAD_TOPIC, str(e), None, channel)
            continue
        except Reject as e:
            _dead(out, i, m, e.reason, f"{e.detail} (topic {m.topic})", device_id, channel)
            continue
        out.msg_device.append(device_id)
        out.msg_channel.append(channel)
        out.msg_seq.append(parsed.seq)
        for metric, value, unit, t in parsed.readings:
            out.r_device.append(device_id)
            out.r_metric.append(metric)
            out.r_value.append(value)
            out.r_unit.append(unit)
            out.r_time.append(t)
            out.r_msg.append(i)
        for code, severity, t, details in parsed.events:
            out.e_device.append(device_id)
            out.e_code.append(code)
            out.e_severity.append(severity)
            out.e_time.append(t)
            out.e_details.append(details)
            out.e_msg.append(i)
        if parsed.firmware is not None:
            out.f_device.append(device_id)
            out.f_firmware.append(parsed.firmware[0])
            out.f_time.append(parsed.firmware[1])
            out.f_msg.append(i)
    return out


def _decode_one(m: RawMessage, device_id: str, channel: Channel, limit: int,
                now: float) -> Parsed:
    if len(m.payload) > limit:
        raise Reject(DeadLetterReason.PAYLOAD_TOO_LARGE,
                     f"payload of {len(m.payload)} bytes is over the limit of {limit} bytes")
    try:
        doc = orjson.loads(m.payload)
    except orjson.JSONDecodeError as e:
        raise Reject(DeadLetterReason.MALFORMED, f"payload is not UTF-8 JSON: {e}") from None
    if isinstance(doc, dict):
        return decode_canonical(doc, device_id, channel, m.received_at)
    if isinstance(doc, list):
        return decode_senml(doc, device_id, channel, now)
    raise Reject(DeadLetterReason.SCHEMA, "payload must be a JSON object (canonical) or an "
                 f"array (SenML), got {type(doc).__name__}")


def _check_times(p: Parsed, latest: float) -> None:
    times = [r[3] for r in p.readings] + [e[2] for e in p.events]
    if p.firmware is not None:
        times.append(p.firmware[1])
    for t in times:
        if not EARLIEST <= t <= latest:  # also false for NaN
            raise Reject(DeadLetterReason.BAD_TIME,
                         f"time {t} is before 2000 or more than the allowed skew in the future; "
                         "is the device's clock set?")


def _dead(out: DecodedBatch, i: int, m: RawMessage, reason: DeadLetterReason, detail: str,
          device_id: str | None, channel: str) -> None:
    out.dead.append(DeadLetter(m.topic, m.payload, m.received_at, reason, detail,
                               device_id or None))
    out.dead_msg.append(i)
    out.msg_device.append(device_id or "")
    out.msg_channel.append(channel)
    out.msg_seq.append(-1)
