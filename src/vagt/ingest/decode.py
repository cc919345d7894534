"""Decode a batch of raw messages into columns: topic, size, JSON, canonical or SenML, units.

Every message ends up either wholly in the columns or as exactly one dead letter; but an
alarm refused only for what its events do not need, whose events are in the columns and
which is kept as a dead letter too (`DecodedBatch.apart`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from vagt.ingest.canonical import (
    ReadingRow,
    Reject,
    Rows,
    TimeWindow,
    decode_canonical,
    exact_details,
    got,
)
from vagt.ingest.model import Channel, DeadLetter, DeadLetterReason, DecodedBatch, RawMessage
from vagt.ingest.senml import decode_senml
from vagt.ingest.topics import TopicError, parser_for
from vagt.ingest.units import quote


def decode_batch(messages: Sequence[RawMessage], *, topic_root: str, max_payload_bytes: int,
                 now: float, max_future_skew_s: float = 300,
                 skip: Collection[str] = ()) -> DecodedBatch:
    """Columns of what `messages` said, and one dead letter per message that cannot be used.

    `now` (unix seconds) bounds device times (at most `max_future_skew_s` ahead, none before
    2000) and anchors SenML's relative times. A message without a time takes its
    `received_at`. A message that came retained is a dead letter (`retained`), whatever it
    says. An alarm used in part is in `apart` (see `_alarm`). A message on a channel in
    `skip` is another lane's (`skipped_msg`). Only input problems become dead letters: a bug
    raises.
    """
    out = DecodedBatch()
    rows = Rows()
    lookup = parser_for(topic_root).lookup  # TopicError here is a configuration error
    window = TimeWindow.around(now, max_future_skew_s)
    msg_device, msg_channel, msg_seq = out.msg_device, out.msg_channel, out.msg_seq
    readings, events, firmware, inexact = rows.readings, rows.events, rows.firmware, rows.inexact
    loads, dumps, json_error = orjson.loads, orjson.dumps, orjson.JSONDecodeError
    encode_error = orjson.JSONEncodeError
    alarm_channel = Channel.ALARM
    for i, m in enumerate(messages):
        try:
            device_id, channel, channel_name = lookup(m.topic)
        except TopicError as e:
            _dead(out, i, m, DeadLetterReason.BAD_TOPIC, str(e), "", "")
            continue
        if channel_name in skip:
            out.skipped_msg.append(i)
            msg_device.append("")
            msg_channel.append(channel_name)
            msg_seq.append(-1)
            continue
        mark = len(readings), len(events), len(firmware)
        # one message, inline: this loop runs for every message the engine receives
        try:
            if m.retained:
                raise _retained()
            payload = m.payload
            if len(payload) > max_payload_bytes or m.size > max_payload_bytes:
                raise _too_large(len(payload), m.size, max_payload_bytes)  # before parsing
            try:
                doc = loads(payload)
            except json_error as e:
                raise Reject(DeadLetterReason.MALFORMED,
                             f"the payload is not UTF-8 JSON: {e}") from None
            # orjson keeps the last of a key given twice ({"value": 82, "value": 97} is 97):
            # a low saturation hidden, another device's id passed. Every key has one ':'
            # after it, and the document written back has as many ':' in its strings as the
            # payload, so it has fewer only if a key was dropped: equal counts (~1.5 µs a
            # message of 3 readings) prove there is none, unless an escape (\u003a) wrote a
            # ':' the payload does not have. The exact search (~6 µs, the stdlib's parser)
            # runs only then or when the counts differ.
            colons = payload.count(b":")
            try:
                written = dumps(doc).count(b":")
            except encode_error:  # deeper than orjson writes (254 levels): SenML ignores
                written = -1      # such a field, so only the exact search can tell
            if (written != colons or b"\\u003" in payload) \
                    and (key := _duplicate_key(payload)) is not None:
                raise Reject(DeadLetterReason.SCHEMA,
                             f"key {quote(key)} appears twice in one object; each key may "
                             "appear once (which of the two counts would be a guess)")
            if type(doc) is dict:
                if channel is alarm_channel:
                    seq, refused = _alarm(doc, device_id, m.received_at, window, rows, i, mark)
                    if refused is not None:
                        out.apart.append(DeadLetter(
                            m.topic, m.payload, m.received_at, refused.reason,
                            f"{refused.detail} (topic {m.topic}); its events were used (an "
                            "alarm is not held back for a field it does not need), the rest "
                            "of the message was not", device_id))
                        out.apart_msg.append(i)
                else:
                    seq = decode_canonical(doc, device_id, False, m.received_at, window, rows,
                                           i)
            elif type(doc) is list:
                seq = decode_senml(doc, device_id, channel is alarm_channel, window, rows, i)
            else:
                raise Reject(DeadLetterReason.SCHEMA, "the payload must be a JSON object "
                             f"(canonical format) or an array (SenML), got {got(doc)}")
            n = len(readings) - mark[0]
            if n > 1:   # (two, the most common, compared inline: a microsecond a message)
                a, b = readings[-2], readings[-1]
                if (n > 2 or a[1] == b[1] and a[4] == b[4]) \
                        and (clash := _clash(readings, mark[0])):
                    raise Reject(DeadLetterReason.SCHEMA, clash)
            if inexact:   # details that may hold an integer wider than 64 bits
                exact_details(payload, rows)
        except Reject as e:
            rows.undo(mark)
            _dead(out, i, m, e.reason, f"{e.detail} (topic {m.topic})", device_id, channel_name)
            continue
        msg_device.append(device_id)
        msg_channel.append(channel_name)
        msg_seq.append(seq)
    rows.into(out)
    return out


# What an alarm's events need of a canonical message; the rest (readings, status, a field
# vagt does not know) is refused without holding the alarm back.
_ALARM_NEEDS = ("v", "device_id", "seq", "time", "events")


def _alarm(doc: dict[str, Any], device_id: str, received_at: float, window: TimeWindow,
           rows: Rows, msg: int, mark: tuple[int, int, int]) -> tuple[int, Reject | None]:
    """A canonical message on the alarm channel: its seq, and None when it was used whole;
    when only what its events do not need was refused, its events alone are used and the
    Reject of the whole comes back. Anything else refused refuses the whole (Reject)."""
    try:
        return decode_canonical(doc, device_id, True, received_at, window, rows, msg), None
    except Reject as whole:
        rows.undo(mark)
        needed = {k: doc[k] for k in _ALARM_NEEDS if k in doc}
        if len(needed) == len(doc):
            raise
        try:
            return decode_canonical(needed, device_id, True, received_at, window, rows,
                                    msg), whole
        except Reject:
            raise whole from None


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _duplicate_key(payload: bytes) -> str | None:
    """The first key given twice in one object of `payload` (JSON that orjson read), if any;
    Reject if it is nested too deeply to tell."""
    def pairs(items: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)

    try:
        json.loads(payload, object_pairs_hook=pairs)
    except _Duplicate as d:
        return d.key
    except RecursionError:  # orjson reads 1,024 levels, the stdlib ~1,000: unknowable here
        raise Reject(DeadLetterReason.SCHEMA,
                     "the payload is nested too deeply (about 1,000 levels) to be checked for "
                     "a key given twice; vagt's documents are a few levels deep") from None
    return None


def _clash(readings: list[ReadingRow], start: int) -> str:
    """What is wrong with a message's readings (from `start`) that give one metric two values
    at one time ('' if none): one is stored (the table holds a value per device, metric and
    time) and the other would be dropped unsaid, a saturation of 80 % behind one of 97 %."""
    seen: dict[tuple[str, float], float] = {}
    for _, metric, value, _, t, _ in readings[start:]:
        first = seen.setdefault((metric, t), value)
        if first != value:
            return (f"metric {quote(metric)} has two values at one time ({first:g} and "
                    f"{value:g}, a reading and a status, say, or two readings without a time "
                    "of their own); one value a time (which counts would be a guess)")
    return ""


def _too_large(kept: int, size: int, limit: int) -> Reject:
    """`size` is the payload's size as it arrived when only its first `kept` bytes came."""
    whole = size < 0
    return Reject(DeadLetterReason.PAYLOAD_TOO_LARGE,
                  f"the payload of {kept if whole else size} bytes is over the limit of "
                  f"{limit} bytes (ingest.max_payload_bytes)"
                  + ("" if whole else f"; its first {kept} bytes are kept"))


def _retained() -> Reject:
    """Not stored: an old copy stored as new would be an alarm raised again, or a silent
    device seen alive, at every start of the engine (the broker sends it at each subscribe)."""
    return Reject(DeadLetterReason.RETAINED,
                  "the message came with the retain flag: it is the old copy the broker keeps "
                  "for new subscribers, not a live message; devices must publish with "
                  "retain=false, and the copy is cleared by publishing an empty retained "
                  "message to the topic")


def _dead(out: DecodedBatch, i: int, m: RawMessage, reason: DeadLetterReason, detail: str,
          device_id: str, channel: str) -> None:
    out.dead.append(DeadLetter(m.topic, m.payload, m.received_at, reason, detail,
                               device_id or None))
    out.dead_msg.append(i)
    out.msg_device.append(device_id)
    out.msg_channel.append(channel)
    out.msg_seq.append(-1)
