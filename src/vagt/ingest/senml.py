"""SenML JSON (RFC 8428): base fields, resolution, relative times, mapped to vagt's readings.

A resolved name is `{prefix}{metric}` where the prefix, if any, ends in ':' or '/' and its
last segment is the device id (`urn:dev:ow:OXI-0001:spo2`, `OXI-0001/spo2`), or just `metric`.
String values: a record named `firmware` sets the firmware, one named `event` carries an
event code. Sums (`s`) are not stored; a record with only a sum contributes nothing.
"""

from __future__ import annotations

import math
from typing import Any

from vagt.ingest.canonical import (
    EVENT_CODE,
    Parsed,
    Reject,
    default_severity,
    unit_reject,
)
from vagt.ingest.model import Channel, DeadLetterReason
from vagt.ingest.units import UnitError, normalize

RELATIVE_LIMIT = 2**28  # RFC 8428 §4.5.3: smaller times are relative to now
_VALUES = ("v", "vs", "vb", "vd")
_KNOWN = frozenset({"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd",
                    "s", "t", "ut"})


def decode_senml(records: list[Any], device_id: str, channel: Channel, now: float) -> Parsed:
    out = Parsed()
    bn, bt, bu, bv = "", 0.0, None, 0.0
    if not records:
        raise Reject(DeadLetterReason.SCHEMA, "empty SenML pack")
    for i, rec in enumerate(records):
        where = f"SenML record {i}"
        if not isinstance(rec, dict):
            raise Reject(DeadLetterReason.SCHEMA, f"{where} must be an object")
        _must_understand(rec, where)
        bn = _str(rec, "bn", where, bn)
        bt = _num(rec, "bt", where, bt)
        bu = _str(rec, "bu", where, bu) if "bu" in rec else bu
        bv = _num(rec, "bv", where, bv)
        if "bver" in rec:
            ver = rec["bver"]
            if not isinstance(ver, int) or isinstance(ver, bool) or ver > 10:
                raise Reject(DeadLetterReason.SCHEMA, f"{where}: SenML version {ver!r} is not "
                             "supported (10 or lower)")
        has_value = [k for k in _VALUES if k in rec]
        if len(has_value) > 1:
            raise Reject(DeadLetterReason.SCHEMA, f"{where} has more than one value field "
                         f"({', '.join(has_value)})")
        if not has_value:
            continue  # base fields only, or a sum: nothing to store
        name = bn + _str(rec, "n", where, "")
        metric = _metric_of(name, device_id, where)
        t = bt + _num(rec, "t", where, 0.0)
        if t < RELATIVE_LIMIT:
            t = now + t
        _record(rec, has_value[0], metric, t, rec.get("u", bu), bv, where, out)
    if not out.readings and not out.events and out.firmware is None:
        raise Reject(DeadLetterReason.SCHEMA, "the SenML pack has no values vagt stores")
    if channel is Channel.ALARM and not out.events:
        raise Reject(DeadLetterReason.SCHEMA, "a SenML pack on the alarm channel must carry "
                     "an 'event' record")
    return out


def _record(rec: dict[str, Any], kind: str, metric: str, t: float, unit: Any, bv: float,
            where: str, out: Parsed) -> None:
    if kind == "v":
        v = _num(rec, "v", where, 0.0) + bv
        if unit is not None and not isinstance(unit, str):
            raise Reject(DeadLetterReason.SCHEMA, f"{where}: unit must be a string")
        try:
            value, canonical = normalize(metric, v, unit)
        except UnitError as e:
            raise unit_reject(e, where) from None
        out.readings.append((metric, value, canonical, t))
    elif kind == "vs" and metric == "firmware":
        fw = _str(rec, "vs", where, "")
        if not 0 < len(fw) <= 64:
            raise Reject(DeadLetterReason.SCHEMA, f"{where}: firmware must be 1 to 64 characters")
        out.firmware = (fw, t)
    elif kind == "vs" and metric == "event":
        code = _str(rec, "vs", where, "")
        if not EVENT_CODE.match(code):
            raise Reject(DeadLetterReason.SCHEMA, f"{where}: event code must be dotted "
                         f"lowercase such as 'alarm.fall', got {code!r}")
        out.events.append((code, default_severity(code), t, "{}"))
    else:
        raise Reject(DeadLetterReason.SCHEMA, f"{where}: a '{kind}' value is only understood "
                     f"for the names 'firmware' and 'event' (string values), got '{metric}'")


def _metric_of(name: str, device_id: str, where: str) -> str:
    if not name:
        raise Reject(DeadLetterReason.SCHEMA, f"{where} has no name (bn + n is empty)")
    cut = max(name.rfind("/"), name.rfind(":"))
    metric = name[cut + 1:]
    if cut >= 0:
        prefix = name[:cut]
        named = prefix[max(prefix.rfind("/"), prefix.rfind(":")) + 1:]
        if named != device_id:
            raise Reject(DeadLetterReason.DEVICE_MISMATCH,
                         f"{where}: name '{name}' names device '{named}' but was published on "
                         f"the topic of '{device_id}'; a device may only speak for itself")
    return metric


def _must_understand(rec: dict[str, Any], where: str) -> None:
    for k in rec:
        if k not in _KNOWN and k.endswith("_"):
            raise Reject(DeadLetterReason.SCHEMA, f"{where}: field '{k}' must be understood "
                         "(RFC 8428 §4.4) and vagt does not know it")


def _num(rec: dict[str, Any], key: str, where: str, default: float) -> float:
    if key not in rec:
        return default
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Reject(DeadLetterReason.SCHEMA, f"{where}: '{key}' must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise Reject(DeadLetterReason.IMPOSSIBLE_VALUE, f"{where}: '{key}' is not finite")
    return f


def _str(rec: dict[str, Any], key: str, where: str, default: Any) -> Any:
    if key not in rec:
        return default
    v = rec[key]
    if not isinstance(v, str):
        raise Reject(DeadLetterReason.SCHEMA, f"{where}: '{key}' must be a string, got {v!r}")
    return v
