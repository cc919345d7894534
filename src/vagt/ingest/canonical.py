"""The canonical JSON payload (schemas/canonical.schema.json), validated by hand for speed, and
the checks SenML shares with it: rejection, times, event codes, firmware.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from vagt.ingest.model import DeadLetterReason, DecodedBatch
from vagt.ingest.units import FAST, METRICS, UnitError, normalize, quote
from vagt.text import unprintable_problem

EARLIEST = 946684800.0  # 2000-01-01T00:00:00Z: an earlier time is a device clock never set
EVENT_CODE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\Z")
EVENT_CODE_MAX = 64
SEVERITIES = frozenset({"critical", "major", "warning", "info"})
FIRMWARE_MAX = 64
RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                     r"([Zz]|[+-][0-9]{2}:[0-9]{2})\Z")
# Stored as bigint; the gaps between 0 and the highest must fit one too (0013)
SEQ_MAX = 2**62 - 1

_TOP = frozenset({"v", "device_id", "seq", "time", "readings", "events", "status"})
_READING = frozenset({"metric", "value", "unit", "time"})
_EVENT = frozenset({"code", "severity", "time", "details"})
_STATUS = frozenset({"battery", "signal", "firmware", "time"})
_NUMBER = (int, float)
_ABSENT: Any = object()  # a field not given, as opposed to one given as null

SCHEMA = DeadLetterReason.SCHEMA
BAD_TIME = DeadLetterReason.BAD_TIME


class Reject(Exception):
    """Bad input: the message becomes one dead letter with this reason and detail.

    Only the decoders' checks of input raise it. Any other exception is a bug in vagt and
    propagates; it is never turned into a dead letter.
    """

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """The times a batch accepts, [earliest, latest]; `now` anchors SenML's relative times."""

    now: float
    earliest: float
    latest: float

    @classmethod
    def around(cls, now: float, max_future_skew_s: float) -> TimeWindow:
        return cls(now, EARLIEST, now + max_future_skew_s)


ReadingRow = tuple[str, str, float, str, float, int]  # device, metric, value, unit, time, msg
EventRow = tuple[str, str, str, float, str, int]    # device, code, severity, time, details, msg
FirmwareRow = tuple[str, str, float, int]           # device, firmware, time, msg


class Rows:
    """A batch's rows as tuples, made into `DecodedBatch` columns at the end.

    One append a row is cheaper than one a column, and the rows of a refused message are
    undone with one `del` a kind.
    """

    __slots__ = ("readings", "events", "firmware", "inexact")

    def __init__(self) -> None:
        self.readings: list[ReadingRow] = []
        self.events: list[EventRow] = []
        self.firmware: list[FirmwareRow] = []
        # events whose details may hold an integer orjson read as a float (`_details`): their
        # index in `events` and in their message's `events`, until `exact_details` reads them
        self.inexact: list[tuple[int, int]] = []

    def undo(self, mark: tuple[int, int, int]) -> None:
        """Forget the rows added since the lengths were `mark`: a message goes in whole or
        not at all."""
        del self.readings[mark[0]:]
        del self.events[mark[1]:]
        del self.firmware[mark[2]:]
        inexact = self.inexact
        while inexact and inexact[-1][0] >= mark[1]:
            inexact.pop()

    def into(self, out: DecodedBatch) -> None:
        if self.readings:
            (out.r_device, out.r_metric, out.r_value, out.r_unit, out.r_time,
             out.r_msg) = (list(c) for c in zip(*self.readings))
            out.r_time = as_stored(out.r_time)
        if self.events:
            (out.e_device, out.e_code, out.e_severity, out.e_time, out.e_details,
             out.e_msg) = (list(c) for c in zip(*self.events))
            out.e_time = as_stored(out.e_time)
        if self.firmware:
            out.f_device, out.f_firmware, out.f_time, out.f_msg = (
                list(c) for c in zip(*self.firmware))
            out.f_time = as_stored(out.f_time)


def got(value: Any) -> str:
    """What a device sent, for a message: `got 'ninety'`, `got an object`."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, _NUMBER):
        return repr(value)
    return "an array" if isinstance(value, list) else "an object"


def is_number(value: Any) -> bool:
    t = type(value)
    return t is float or t is int  # not bool: JSON true is not a number


# --- times ----------------------------------------------------------------------------------

def parse_time(value: Any, where: str, window: TimeWindow) -> float:
    """Unix seconds from a number or an RFC 3339 string with an offset, inside the window."""
    t = type(value)
    if t is float or t is int:
        seconds = float(value)
    elif t is str:
        seconds = _rfc3339(value, where)
    else:
        raise Reject(BAD_TIME, f"{where} must be unix seconds (a number) or an RFC 3339 string "
                               f"such as '2026-11-22T07:31:05Z', got {got(value)}")
    if not window.earliest <= seconds <= window.latest:
        raise Reject(BAD_TIME, time_outside(seconds, where, window))
    return seconds


# PostgreSQL keeps a time to the microsecond, rounded as to_timestamp() rounds: from its own
# epoch, half to even. Device times are rounded so when they are read, so that the rules see
# the times the database gives back when they evaluate stored rows again (late rows): a run
# begun at 09:00:00.0000004 in memory and at 09:00:00 in the table once held its 10 minutes
# in one and 9:59.9999996 in the other, and the alert fired once less.
_PG_EPOCH = 946_684_800.0


def as_stored(seconds: list[float]) -> list[float]:
    """Unix seconds as the database stores and returns them (microseconds)."""
    t = np.asarray(seconds, dtype=np.float64)
    return ((np.rint((t - _PG_EPOCH) * 1e6) + _PG_EPOCH * 1e6) / 1e6).tolist()  # type: ignore[no-any-return]


def time_outside(seconds: float, where: str, window: TimeWindow) -> str:
    if seconds != seconds:
        return f"{where} is not a number"
    if seconds < window.earliest:
        return f"{where} {seconds:.0f} is before 2000-01-01; is the device's clock set?"
    hint = "; it looks like milliseconds, send seconds" if seconds > 1e11 else ""
    return (f"{where} {seconds:.0f} is {seconds - window.now:.0f} s in the future, more than "
            f"the {window.latest - window.now:.0f} s allowed; is the device's clock right{hint}?")


def _rfc3339(text: str, where: str) -> float:
    # fromisoformat alone would also take dates without a time, week dates and other ISO 8601
    # forms; the pattern keeps it to RFC 3339, which the schema documents
    m = RFC3339.match(text)
    if m is None:
        raise Reject(BAD_TIME, f"{where} {quote(text)} is not an RFC 3339 time with an offset, "
                               "such as '2026-11-22T07:31:05Z' or '2026-11-22T08:31:05+01:00'")
    offset = m.group(2)
    # fromisoformat reads +01:60 as +02:00, a time an hour off, and refuses +24:00 in words
    # of Python's (timedelta)
    if len(offset) > 1 and (offset[1:3] > "23" or offset[4:] > "59"):
        raise Reject(BAD_TIME, f"{where} {quote(text)} has the offset {offset}; an offset's "
                               "hours are 00 to 23 and its minutes 00 to 59")
    # RFC 3339 allows a leap second (23:59:60Z), which fromisoformat refuses; PostgreSQL
    # reads it as the next minute's first second, and so does this
    leap = text[17:19] == "60"
    try:
        seconds = datetime.fromisoformat(
            (f"{text[:17]}59{text[19:]}" if leap else text).upper()).timestamp()
    except ValueError as e:  # a 30 February, an hour 24
        raise Reject(BAD_TIME, f"{where} {quote(text)} is not a valid time: {e}") from None
    return seconds + 1 if leap else seconds


# --- events and firmware --------------------------------------------------------------------

_known_codes: dict[str, str] = {}  # event code → its default severity; codes repeat all day


def default_severity(code: str) -> str:
    if code.startswith("alarm."):
        return "critical"
    if code.startswith(("fault.", "power.")) or code == "tamper":
        return "warning"
    return "info"


def check_event_code(code: Any, where: str) -> str:
    """The default severity of a valid event code, or Reject saying what a code looks like."""
    if type(code) is str:
        severity = _known_codes.get(code)
        if severity is not None:
            return severity
        if len(code) <= EVENT_CODE_MAX and EVENT_CODE.match(code):
            if len(_known_codes) >= 10_000:
                _known_codes.clear()
            severity = _known_codes[code] = default_severity(code)
            return severity
    raise Reject(SCHEMA, f"{where} must be an event code of at most {EVENT_CODE_MAX} "
                         "lowercase letters, digits and '_' in dotted words, such as "
                         f"'alarm.fall' or 'fault.dispenser_jam', got {got(code)}")


def check_firmware(value: Any, where: str) -> str:
    """The firmware version: 1 to 64 printable characters (vagt.text). It is shown to people
    (`vagt devices list`, the API), where a right-to-left override, a zero-width space or a
    C1 control would make it read as another version, or a terminal do as it says."""
    if type(value) is str and 0 < len(value) <= FIRMWARE_MAX and value.isprintable():
        return value
    problem = unprintable_problem(value, "it") if type(value) is str else None
    raise Reject(SCHEMA, f"{where} must be a string of 1 to {FIRMWARE_MAX} printable "
                         f"characters, got {got(value)}" + (f": {problem}" if problem else ""))


def unit_reject(e: UnitError, where: str) -> Reject:
    return Reject(e.reason, f"{where}: {e}")


# --- the canonical document -----------------------------------------------------------------

def decode_canonical(doc: dict[str, Any], device_id: str, alarm: bool, received_at: float,
                     window: TimeWindow, rows: Rows, msg: int) -> int:
    """Add what the document says to `rows` (tagged `msg`); return its seq (-1: none).

    `alarm`: it came on the alarm channel. On Reject, rows may already have been added: the
    caller undoes them.
    """
    if not doc.keys() <= _TOP:
        raise unknown_field(doc, _TOP, "the message")
    # one get a field, and no calls for what is well formed: this runs for every message
    get = doc.get
    if "v" in doc:
        _check_version(doc["v"])
    named = get("device_id", device_id)
    if named != device_id:
        _check_device(named, device_id)
    seq = get("seq", _ABSENT)
    if seq is _ABSENT:
        seq = -1
    elif type(seq) is not int or not 0 <= seq <= SEQ_MAX:
        seq = _seq(seq)
    t = get("time", _ABSENT)
    if t is _ABSENT:
        t = received_at
    elif type(t) is float and window.earliest <= t <= window.latest:
        pass
    else:
        t = parse_time(t, "time", window)
    items = get("readings", _ABSENT)
    n_readings = 0 if items is _ABSENT else _readings(items, device_id, t, window, rows, msg)
    items = get("events", _ABSENT)
    n_events = 0 if items is _ABSENT else _events(items, device_id, t, window, rows, msg)
    items = get("status", _ABSENT)
    n_status = 0 if items is _ABSENT else _status(items, device_id, t, window, rows, msg)
    if n_readings + n_events + n_status == 0:
        raise Reject(SCHEMA, "the message carries nothing: give at least one reading, event "
                             "or status field")
    if alarm and n_events == 0:
        raise Reject(SCHEMA, "a message on the alarm channel must carry at least one event "
                             "in 'events'; send readings and status on telemetry or status")
    return seq


def unknown_field(obj: dict[str, Any], allowed: frozenset[str], where: str) -> Reject:
    extra = sorted(k for k in obj if k not in allowed)
    return Reject(SCHEMA, f"{where} has unknown field {quote(extra[0])}; allowed: "
                          f"{', '.join(sorted(allowed))} (unknown fields are refused, so that "
                          "a misspelt one is seen)")


def _check_version(v: Any) -> None:
    if not (is_number(v) and v == 1):
        raise Reject(SCHEMA, f"v (the format version) must be 1, got {got(v)}")


def _check_device(named: Any, device_id: str) -> None:
    """Called only when the payload's device_id differs from the topic's: it raises."""
    if type(named) is not str:
        raise Reject(SCHEMA, f"device_id must be a string, got {got(named)}")
    if named != device_id:
        raise Reject(DeadLetterReason.DEVICE_MISMATCH,
                     f"device_id {quote(named)} in the payload is not '{device_id}', the device "
                     "of the topic; a device may only speak for itself")


def _seq(seq: Any) -> int:
    if type(seq) is float and seq.is_integer():
        seq = int(seq)
    if type(seq) is not int or not 0 <= seq <= SEQ_MAX:
        raise Reject(SCHEMA, f"seq must be a whole number from 0 to {SEQ_MAX}, got {got(seq)}")
    return seq


def _readings(items: Any, device_id: str, t: float, window: TimeWindow, rows: Rows,
              msg: int) -> int:
    if type(items) is not list:
        raise Reject(SCHEMA, "readings must be an array of {metric, value, unit?, time?} "
                             f"objects, got {got(items)}")
    fast, add = FAST, rows.readings.append
    for k, r in enumerate(items):
        if type(r) is not dict:
            raise _bad_reading(r, k)
        name: Any = r.get("metric")
        value: Any = r.get("value")
        unit: Any = r.get("unit")
        has_time = "time" in r
        tv = type(value)
        # counting the fields is cheaper than a set comparison; a miss (an unknown field, a
        # null unit, a wrong type) goes to _bad_reading, which says exactly what is wrong
        if (type(name) is not str or (tv is not float and tv is not int)
                or (type(unit) is not str and unit is not None)
                or len(r) != 2 + (unit is not None) + has_time):
            raise _bad_reading(r, k)
        table = fast.get(name)
        row = table.get(unit) if table is not None else None
        if row is None:
            raise _bad_unit(name, value, unit, k)
        shift, mul, div, low, high, canonical = row
        v = (value + shift) * mul / div
        if not low <= v <= high:
            raise _bad_unit(name, value, unit, k)
        add((device_id, name, v, canonical,
             parse_time(r["time"], f"readings[{k}].time", window) if has_time else t, msg))
    return len(items)


def _bad_reading(r: Any, k: int) -> Reject:
    where = f"readings[{k}]"
    if type(r) is not dict:
        return Reject(SCHEMA, f"{where} must be an object {{metric, value, unit?, time?}}, "
                              f"got {got(r)}")
    if not r.keys() <= _READING:
        return unknown_field(r, _READING, where)
    if type(r.get("metric")) is not str:
        return Reject(SCHEMA, f"{where}.metric must be a string naming a metric ("
                              f"{', '.join(sorted(METRICS))}), got {got(r.get('metric'))}")
    if not is_number(r.get("value")):
        return Reject(SCHEMA, f"{where}.value must be a number, got {got(r.get('value'))}")
    return Reject(SCHEMA, f"{where}.unit must be a string (a UCUM unit such as 'mm[Hg]'), "
                          f"got {got(r.get('unit'))}")


def _bad_unit(name: str, value: float, unit: str | None, k: int) -> Reject:
    """The Reject for a reading the fast table refused, in the catalogue's words."""
    try:
        normalize(name, float(value), unit)
    except UnitError as e:
        return unit_reject(e, f"readings[{k}].{_FIELD_OF[e.reason]}")
    raise AssertionError(f"the fast unit table and normalize() disagree on {name} {unit}")


_FIELD_OF = {DeadLetterReason.UNKNOWN_METRIC: "metric", DeadLetterReason.UNKNOWN_UNIT: "unit",
             DeadLetterReason.IMPOSSIBLE_VALUE: "value"}


def _events(items: Any, device_id: str, t: float, window: TimeWindow, rows: Rows,
            msg: int) -> int:
    if type(items) is not list:
        raise Reject(SCHEMA, "events must be an array of {code, severity?, time?, details?} "
                             f"objects, got {got(items)}")
    for k, e in enumerate(items):
        if type(e) is not dict or not e.keys() <= _EVENT:
            raise _bad_event(e, k)
        code: Any = e.get("code")
        severity = check_event_code(code, f"events[{k}].code")
        if "severity" in e:
            severity = e["severity"]
            if type(severity) is not str or severity not in SEVERITIES:
                raise Reject(SCHEMA, f"events[{k}].severity must be one of critical, major, "
                                     f"warning, info, got {got(severity)}")
        rows.events.append((   # (`_details` may note this row, appended after it returns)
            device_id, code, severity,
            parse_time(e["time"], f"events[{k}].time", window) if "time" in e else t,
            _details(e["details"], k, rows) if "details" in e else "{}", msg))
    return len(items)


def _bad_event(e: Any, k: int) -> Reject:
    if type(e) is not dict:
        return Reject(SCHEMA, f"events[{k}] must be an object {{code, severity?, time?, "
                              f"details?}}, got {got(e)}")
    return unknown_field(e, _EVENT, f"events[{k}]")


def _details(details: Any, k: int, rows: Rows) -> str:
    """The details as JSON text; the event's row (the next in `rows.events`) is noted in
    `rows.inexact` if they may hold an integer wider than 64 bits."""
    if type(details) is not dict:
        raise Reject(SCHEMA, f"events[{k}].details must be an object, got {got(details)}")
    if not details:
        return "{}"
    try:
        text = orjson.dumps(details)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
        raise Reject(SCHEMA, f"events[{k}].details is nested too deeply") from None
    if b"\\u0000" in text:  # PostgreSQL's jsonb cannot hold U+0000
        raise Reject(SCHEMA, f"events[{k}].details contains the character U+0000, which "
                             "cannot be stored")
    # orjson reads an integer beyond -2**63..2**64-1 as a float (89450123456789012345, an
    # ICCID, is 8.9450123456789e+19), and writes a float of 1e16 or more with "e+": only
    # details with it (or that text in a string) are read again, by `exact_details`
    if b"e+" in text:
        rows.inexact.append((len(rows.events), k))
    return text.decode()


def exact_details(payload: bytes, rows: Rows) -> None:
    """The details of the events `rows.inexact` notes read again from `payload` (the canonical
    document they came from), each integer orjson would read as a float kept as a string of
    its digits: the number as it was sent (ICCIDs are strings in every format we know; a
    reader of the stored JSON, JavaScript or orjson, would round it again). The stdlib's
    parser, slower than orjson: only for the rare details that need it."""
    # (no deeper than the stdlib reads: a payload orjson cannot write again, 254 levels, was
    # read by it already, in decode's search for a key given twice)
    events = json.loads(payload, parse_int=_int_or_digits)["events"]
    for at, k in rows.inexact:
        device_id, code, severity, t, _, msg = rows.events[at]
        rows.events[at] = (device_id, code, severity, t,
                           orjson.dumps(events[k]["details"]).decode(), msg)
    rows.inexact.clear()


_INT_LOW, _INT_HIGH = -2**63, 2**64 - 1   # what orjson reads as an integer


def _int_or_digits(digits: str) -> int | str:
    """An integer of a JSON text, or its digits where orjson would read it as a float (no
    int() of an integer of thousands of digits: Python refuses, and it is slow)."""
    if len(digits) <= 20:
        n = int(digits)
        if _INT_LOW <= n <= _INT_HIGH:
            return n
    return digits


# battery and signal assume their unit (the status object has no place for one)
_STATUS_UNITS = {name: FAST[name][None] for name in ("battery", "signal")}


def _status(s: Any, device_id: str, t: float, window: TimeWindow, rows: Rows,
            msg: int) -> int:
    if type(s) is not dict:
        raise Reject(SCHEMA, "status must be an object {battery?, signal?, firmware?, time?}, "
                             f"got {got(s)}")
    if not s.keys() <= _STATUS:
        raise unknown_field(s, _STATUS, "status")
    st = parse_time(s["time"], "status.time", window) if "time" in s else t
    n = 0
    for name in ("battery", "signal"):
        if name in s:
            value = s[name]
            if not is_number(value):
                raise Reject(SCHEMA, f"status.{name} must be a number, got {got(value)}")
            shift, mul, div, low, high, unit = _STATUS_UNITS[name]
            v = (value + shift) * mul / div   # as normalize() does, without its lookups
            if not low <= v <= high:
                try:
                    normalize(name, float(value), None)
                except UnitError as e:
                    raise unit_reject(e, f"status.{name}") from None
                raise AssertionError(f"the fast unit table and normalize() disagree on {name}")
            rows.readings.append((device_id, name, v, unit, st, msg))
            n += 1
    if "firmware" in s:
        rows.firmware.append((device_id, check_firmware(s["firmware"], "status.firmware"), st,
                              msg))
        n += 1
    if n == 0:
        raise Reject(SCHEMA, "status must carry at least one of battery (%), signal (dBm) "
                             "and firmware")
    return n
