"""Readings that give a device, metric and time another value than the one stored: not stored,
and each of their messages kept as a `conflict` dead letter saying what was stored and what
came, the rest of it used, as an alarm used in part is (`DecodedBatch.apart`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from vagt.arrays import F64, I64, Bools
from vagt.ingest.model import DeadLetter, DeadLetterReason, RawMessage
from vagt.ingest.units import quote
from vagt.privacy import mask_cpr

# What `store.insert_readings` found stored: device, metric, time, the value stored
Stored = Sequence[tuple[str, str, float, float]]


def conflicting(stored: Stored, device_id: Sequence[str], metric: Sequence[str], value: F64,
                time: F64) -> tuple[Bools, F64]:
    """Which readings differ from the value `stored` for their device, metric and time, and
    that value (NaN where none is)."""
    by_key = {(d, m, t): v for d, m, t, v in stored}
    was = np.fromiter((by_key.get(k, np.nan) for k in zip(device_id, metric, time.tolist())),
                      dtype=np.float64, count=len(device_id))
    return ~np.isnan(was) & (was != value), was


def dead_letters(messages: Sequence[RawMessage], lost: Bools, msg: I64, device_id: Sequence[str],
                 metric: Sequence[str], value: F64, unit: Sequence[str], time: F64,
                 was: F64) -> list[DeadLetter]:
    """One dead letter a message (`msg`: each reading's) with readings `lost`, naming its
    first: what it says, and what was stored (`was`)."""
    of_message: dict[int, list[int]] = {}
    for k in np.flatnonzero(lost).tolist():
        of_message.setdefault(int(msg[k]), []).append(k)
    dead = []
    for i, rows in of_message.items():
        m, k, more = messages[i], rows[0], len(rows) - 1
        came, stored = _numbers(float(value[k]), float(was[k]))
        detail = (f"metric {quote(metric[k])} at {_when(float(time[k]))} is {came} {unit[k]} "
                  f"in this message, but {stored} {unit[k]} is stored for that time, from an "
                  "earlier message"
                  + (" (as is one more of its readings)" if more == 1 else
                     f" (as are {more} more of its readings)" if more else "")
                  + "; a device, metric and time hold one value, and the one stored first "
                  "stays (a device that measured again gives the new reading a time of its "
                  f"own) (topic {m.topic}); the rest of the message was used, "
                  + ("these readings were not" if more else "this reading was not"))
        # (a value, as a device sent it, may be digits shaped like a CPR number)
        dead.append(DeadLetter(m.topic, m.payload, m.received_at, DeadLetterReason.CONFLICT,
                               mask_cpr(detail)[0], device_id[k]))
    return dead


def _numbers(a: float, b: float) -> tuple[str, str]:
    """Two different values written short, but each in full where short would make them one."""
    short = f"{a:g}", f"{b:g}"
    return short if short[0] != short[1] else (repr(a), repr(b))


def _when(t: float) -> str:
    """A device time as people read it, its fraction of a second where it has one."""
    at = datetime.fromtimestamp(t, UTC)
    text = at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}{f'.{at.microsecond:06d}'.rstrip('0') if at.microsecond else ''} UTC"
