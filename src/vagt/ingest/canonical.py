"""The canonical JSON payload (schemas/canonical.schema.json), validated by hand for speed.

Unknown fields are refused rather than ignored: a misspelt "readngs" in a medical device's
message must be seen, not silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from vagt.ingest.model import Channel, DeadLetterReason
from vagt.ingest.units import UnitError, normalize

EVENT_CODE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
SEVERITIES = frozenset({"critical", "major", "warning", "info"})
_TOP = frozenset({"v", "device_id", "seq", "time", "readings", "events", "status"})
_READING = frozenset({"metric", "value", "unit", "time"})
_EVENT = frozenset({"code", "severity", "time", "details"})
_STATUS = frozenset({"battery", "signal", "firmware", "time"})


class Reject(Exception):
    """The message is unusable input; it becomes a dead letter with this reason and detail."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Parsed:
    """What one message said, before it joins the batch's columns."""

    readings: list[tuple[str, float, str, float]] = field(default_factory=list)
    events: list[tuple[str, str, float, str]] = field(default_factory=list)
    firmware: tuple[str, float] | None = None
    seq: int = -1


def default_severity(code: str) -> str:
    if code.startswith("alarm."):
        return "critical"
    if code.startswith(("fault.", "power.")) or code == "tamper":
        return "warning"
    return "info"


def parse_time(value: Any, where: str) -> float:
    """Unix seconds from a number or an RFC 3339 string with an offset."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise Reject(DeadLetterReason.BAD_TIME,
                         f"{where} '{value}' is not an RFC 3339 time") from None
        if dt.tzinfo is None:
            raise Reject(DeadLetterReason.BAD_TIME,
                         f"{where} '{value}' has no UTC offset; add Z or +01:00")
        return dt.timestamp()
    raise Reject(DeadLetterReason.BAD_TIME,
                 f"{where} must be unix seconds or an RFC 3339 string, got {value!r}")


def unit_reject(e: UnitError, where: str) -> Reject:
    return Reject(DeadLetterReason(e.kind), f"{where}: {e}")


def decode_canonical(doc: dict[str, Any], device_id: str, channel: Channel,
                     received_at: float) -> Parsed:
    for k in doc:
        if k not in _TOP:
            raise Reject(DeadLetterReason.SCHEMA, f"unknown field '{k}'; allowed: "
                         f"{', '.join(sorted(_TOP))}")
    if doc.get("v", 1) != 1:
        raise Reject(DeadLetterReason.SCHEMA, f"format version v={doc['v']!r} is not supported; "
                     "this engine reads v=1")
    named = doc.get("device_id")
    if named is not None and named != device_id:
        raise Reject(DeadLetterReason.DEVICE_MISMATCH,
                     f"payload names device '{named}' but was published on the topic of "
                     f"'{device_id}'; a device may only speak for itself")
    out = Parsed()
    seq = doc.get("seq")
    if seq is not None:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise Reject(DeadLetterReason.SCHEMA, f"seq must be a whole number >= 0, got {seq!r}")
        out.seq = seq
    t = parse_time(doc["time"], "time") if "time" in doc else received_at
    _readings(doc.get("readings"), t, out)
    _events(doc.get("events"), t, out)
    _status(doc.get("status"), t, out)
    if not out.readings and not out.events and out.firmware is None:
        raise Reject(DeadLetterReason.SCHEMA, "the message has no readings, events or status")
    if channel is Channel.ALARM and not out.events:
        raise Reject(DeadLetterReason.SCHEMA, "a message on the alarm channel must carry at "
                     "least one event in 'events'")
    return out


def _readings(items: Any, t: float, out: Parsed) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        raise Reject(DeadLetterReason.SCHEMA, "readings must be a list")
    for i, r in enumerate(items):
        where = f"readings[{i}]"
        if not isinstance(r, dict):
            raise Reject(DeadLetterReason.SCHEMA, f"{where} must be an object")
        for k in r:
            if k not in _READING:
                raise Reject(DeadLetterReason.SCHEMA, f"{where} has unknown field '{k}'; "
                             f"allowed: metric, value, unit, time")
        metric, value, unit = r.get("metric"), r.get("value"), r.get("unit")
        if not isinstance(metric, str):
            raise Reject(DeadLetterReason.SCHEMA, f"{where}.metric must be a string")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise Reject(DeadLetterReason.SCHEMA, f"{where}.value must be a number, got {value!r}")
        if unit is not None and not isinstance(unit, str):
            raise Reject(DeadLetterReason.SCHEMA, f"{where}.unit must be a string")
        try:
            v, u = normalize(metric, float(value), unit)
        except UnitError as e:
            raise unit_reject(e, where) from None
        rt = parse_time(r["time"], f"{where}.time") if "time" in r else t
        out.readings.append((metric, v, u, rt))


def _events(items: Any, t: float, out: Parsed) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        raise Reject(DeadLetterReason.SCHEMA, "events must be a list")
    for i, e in enumerate(items):
        where = f"events[{i}]"
        if not isinstance(e, dict):
            raise Reject(DeadLetterReason.SCHEMA, f"{where} must be an object")
        for k in e:
            if k not in _EVENT:
                raise Reject(DeadLetterReason.SCHEMA, f"{where} has unknown field '{k}'; "
                             f"allowed: code, severity, time, details")
        code = e.get("code")
        if not isinstance(code, str) or not EVENT_CODE.match(code):
            raise Reject(DeadLetterReason.SCHEMA, f"{where}.code must be a dotted lowercase "
                         f"code such as 'alarm.fall', got {code!r}")
        severity = e.get("severity", default_severity(code))
        if severity not in SEVERITIES:
            raise Reject(DeadLetterReason.SCHEMA, f"{where}.severity must be one of "
                         f"{', '.join(sorted(SEVERITIES))}, got {severity!r}")
        details = e.get("details", {})
        if not isinstance(details, dict):
            raise Reject(DeadLetterReason.SCHEMA, f"{where}.details must be an object")
        et = parse_time(e["time"], f"{where}.time") if "time" in e else t
        out.events.append((code, severity, et, orjson.dumps(details).decode()))


def _status(s: Any, t: float, out: Parsed) -> None:
    if s is None:
        return
    if not isinstance(s, dict):
        raise Reject(DeadLetterReason.SCHEMA, "status must be an object")
    for k in s:
        if k not in _STATUS:
            raise Reject(DeadLetterReason.SCHEMA, f"status has unknown field '{k}'; "
                         f"allowed: battery, signal, firmware, time")
    st = parse_time(s["time"], "status.time") if "time" in s else t
    for metric in ("battery", "signal"):
        if metric in s:
            value = s[metric]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise Reject(DeadLetterReason.SCHEMA,
                             f"status.{metric} must be a number, got {value!r}")
            try:
                v, u = normalize(metric, float(value), None)
            except UnitError as e:
                raise unit_reject(e, f"status.{metric}") from None
            out.readings.append((metric, v, u, st))
    if "firmware" in s:
        fw = s["firmware"]
        if not isinstance(fw, str) or not 0 < len(fw) <= 64:
            raise Reject(DeadLetterReason.SCHEMA,
                         f"status.firmware must be a string of 1 to 64 characters, got {fw!r}")
        out.firmware = (fw, st)
