"""Readings that give a device, metric and time another value than the one stored, and events
that give a device, code and time another severity or other details: not stored, and each
of their messages kept as a `conflict` dead letter saying what was stored and what came,
the rest of it used, as an alarm used in part is (`DecodedBatch.apart`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from vagt.app.store import Clash
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
    dead = []
    for i, rows in _by_message(np.flatnonzero(lost).tolist(), msg).items():
        k = rows[0]
        came, stored = _numbers(float(value[k]), float(was[k]))
        said = (f"metric {quote(metric[k])} at {_when(float(time[k]))} is {came} {unit[k]} "
                f"in this message, but {stored} {unit[k]} is stored for that time")
        dead.append(_letter(messages[i], device_id[k], said, len(rows) - 1, "reading",
                            "a device, metric and time hold one value, and the one stored "
                            "first stays (a device that measured again gives the new reading "
                            "a time of its own)"))
    return dead


def event_dead_letters(messages: Sequence[RawMessage], clashing: Sequence[Clash], msg: I64,
                       device_id: Sequence[str], code: Sequence[str],
                       severity: Sequence[str], time: F64) -> list[DeadLetter]:
    """One dead letter a message (`msg`: each event's) with events `clashing` (and what is
    stored for its device, code and time), naming its first."""
    of = {c.index: c for c in clashing}
    dead = []
    for i, rows in _by_message(sorted(of), msg).items():
        k, c = rows[0], of[rows[0]]
        said = (f"event {quote(code[k])} at {_when(float(time[k]))} has severity "
                f"{quote(severity[k])} and details {_short(c.details)} in this message, but "
                f"severity {quote(c.stored_severity)} and details {_short(c.stored_details)} "
                "are stored for that time")
        dead.append(_letter(messages[i], device_id[k], said, len(rows) - 1, "event",
                            "a device, code and time hold one event, and the one stored first "
                            "stays"))
    return dead


def _by_message(rows: list[int], msg: I64) -> dict[int, list[int]]:
    """`rows` by the message each came in."""
    of_message: dict[int, list[int]] = {}
    for k in rows:
        of_message.setdefault(int(msg[k]), []).append(k)
    return of_message


def _letter(m: RawMessage, device_id: str, said: str, more: int, noun: str,
            rule: str) -> DeadLetter:
    """A message's `conflict` dead letter: what it `said` of its first row against what is
    stored, how many `more` rows (`noun`s) of it were not stored either, and the `rule`."""
    detail = (f"{said}, from an earlier message"
              + (f" (as is one more of its {noun}s)" if more == 1 else
                 f" (as are {more} more of its {noun}s)" if more else "")
              + f"; {rule} (topic {m.topic}); the rest of the message was used, "
              + (f"these {noun}s were not" if more else f"this {noun} was not"))
    # (a value, as a device sent it, may be digits shaped like a CPR number)
    return DeadLetter(m.topic, m.payload, m.received_at, DeadLetterReason.CONFLICT,
                      mask_cpr(detail)[0], device_id)


def _short(text: str, most: int = 120) -> str:
    """JSON text as given, cut to `most` characters."""
    return text if len(text) <= most else text[:most - 1] + "…"


def _numbers(a: float, b: float) -> tuple[str, str]:
    """Two different values written short, but each in full where short would make them one."""
    short = f"{a:g}", f"{b:g}"
    return short if short[0] != short[1] else (repr(a), repr(b))


def _when(t: float) -> str:
    """A device time as people read it, its fraction of a second where it has one."""
    at = datetime.fromtimestamp(t, UTC)
    text = at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}{f'.{at.microsecond:06d}'.rstrip('0') if at.microsecond else ''} UTC"
