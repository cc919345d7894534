"""What late rows, evaluated again in order, change in the alert queue: the alerts' counts and
times corrected (`correct`), clears that the rows out of order had outrun (`rejudged`), and
alerts the rows in order do not fire taken back, with a note an operator understands
(`take_back_unsupported`); and what rows too old for that still take back: a missed dose
they show answered in time (`take_back_answered`). See `Pipeline._evaluate_locked` for the
evaluation itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from vagt.alerts.store import (
    Unsupported,
    answered_alerts,
    fingerprint,
    recount_firings,
    take_back,
    unsupported_alerts,
)
from vagt.arrays import F64, I64, Bools
from vagt.rules import Batch, Rule


@dataclass(frozen=True)
class Recount:
    """Devices evaluated again in order (late rows), and per rule (rows, in order) and device
    (columns) how many more rows fired than when their rows were evaluated before (`more`)
    and from what device time the rule's state may hold an alert now (`holds`,
    `RuleEngine.holds_from`); per device, the device time after which its rows were
    evaluated again (`since`, -inf: all), and whether the batch brought rows of it not stored
    before (`fresh`: a redelivery, which brings none, takes nothing back); and the rows
    evaluated (`batch`, for the notes)."""

    devices: I64
    more: I64
    since: F64
    holds: F64
    fresh: Bools
    batch: Batch

    def judged(self, rule: int, dev: int) -> tuple[float, float] | None:
        """(since, holds) of a rule and device whose rows were evaluated again, and not by
        a redelivery; None otherwise (where the rule's state holds, nothing is taken back)."""
        at = int(np.searchsorted(self.devices, dev))
        if at == len(self.devices) or self.devices[at] != dev or not self.fresh[at]:
            return None
        holds = float(self.holds[rule, at])
        return None if holds == -np.inf else (float(self.since[at]), holds)


Fires = tuple[npt.NDArray[Any], ...]


def correct(conn: psycopg.Connection, rules: list[Rule], ids: list[str], fr: Fires,
            recount: Recount) -> Fires:
    """Correct the alerts of the devices evaluated again (`recount_firings`): their count
    moves by how many more rows fired than before, and they begin and last fired where the
    rows in order say (if earlier or later, unless every firing of the alert since came
    from those rows: `Recount.judged`). Returns the fires still to record: those with
    no alert of theirs to correct. (What the rows in order no longer fire at all is taken
    back: `rejudged`, `take_back_unsupported`.)"""
    rule, dev, first, last = fr[0], fr[1], fr[2], fr[3]
    again = np.flatnonzero(np.isin(dev, recount.devices)).tolist()
    if not again:
        return fr
    span: dict[tuple[int, int], tuple[float, float]] = {}
    for k in again:
        key = (int(rule[k]), int(dev[k]))
        f, t = span.get(key, (np.inf, -np.inf))
        span[key] = (min(f, float(first[k])), max(t, float(last[k])))
    column = {int(d): j for j, d in enumerate(recount.devices.tolist())}
    keys = list(span)
    fps = [fingerprint(rules[r].name, ids[d]) for r, d in keys]
    corrected = recount_firings(conn, fps, [span[k][0] for k in keys],
                                [span[k][1] for k in keys],
                                [int(recount.more[r, column[d]]) for r, d in keys],
                                [recount.judged(r, d) for r, d in keys])
    done = {k for k, fp in zip(keys, fps) if fp in corrected}
    keep = np.ones(len(dev), dtype=bool)
    keep[[k for k in again if (int(rule[k]), int(dev[k])) in done]] = False
    return tuple(c[keep] for c in fr)


def rejudged(recount: Recount | None, rule: I64, dev: I64) -> list[tuple[float, float] | None]:
    """Per clear (rule, device): (since, holds) where it comes from late rows evaluated
    again in order (`alerts.store.clear_alerts`: the alert may have fired after it on those
    rows out of order, a stuck run that a late reading breaks), else None."""
    if recount is None:
        return [None] * len(rule)
    return [recount.judged(r, d) for r, d in zip(rule.tolist(), dev.tolist())]


def take_back_unsupported(conn: psycopg.Connection, rules: list[Rule], ids: list[str],
                          fr: Fires, recount: Recount) -> tuple[list[int], list[int]]:
    """Take back the alerts that the devices' rows, evaluated again in order, do not fire:
    per rule that fired nothing for a device now (`fr`: the evaluation's fires), its alert
    opened on the rows evaluated again and last fired before the rule's state may hold one
    (`alerts.store.unsupported_alerts`). Returns the ids resolved and the ids an operator
    holds, noted (`alerts.store.take_back`)."""
    fired = set(zip(fr[0].tolist(), fr[1].tolist()))
    keys: list[tuple[int, int]] = []
    since: list[float] = []
    holds: list[float] = []
    for j in np.flatnonzero(recount.fresh).tolist():
        d = int(recount.devices[j])
        for r in np.flatnonzero(recount.holds[:, j] > -np.inf).tolist():
            if (r, d) not in fired:
                keys.append((r, d))
                since.append(float(recount.since[j]))
                holds.append(float(recount.holds[r, j]))
    if not keys:
        return [], []
    by_fp = {fingerprint(rules[r].name, ids[d]): (r, d) for r, d in keys}
    found = unsupported_alerts(conn, list(by_fp), since, holds)
    why = [explain(rules[by_fp[a.fingerprint][0]], ids[by_fp[a.fingerprint][1]], a,
                   recount.batch, by_fp[a.fingerprint][1]) for a in found]
    return take_back(conn, found, why)


def explain(rule: Rule, device_id: str, alert: Unsupported, batch: Batch, dev: int) -> str:
    """Why the rows in order do not fire `alert`, for an operator: for a sequence (a missed
    dose), the answer that came in time; else that the rows in order do not fire the rule."""
    if rule.kind == "sequence":
        due = alert.opened_at - rule.within_s   # it fired at the first deadline it missed
        mine, t = batch.e_device == dev, batch.e_time
        first = np.flatnonzero(mine & batch.code_mask(rule.first) & (np.abs(t - due) < 1e-3))
        then = np.flatnonzero(mine & batch.code_mask(rule.then) & (t >= due - 1e-3)
                              & (t <= alert.opened_at + 1e-3))
        if len(first) and len(then):
            b = then[np.argmin(t[then])]
            return _came_within(str(batch.e_code[b]), float(t[b]), rule.within_s,
                                str(batch.e_code[first[0]]), due)
    return (f"{device_id}'s messages, put in device-time order with those that arrived "
            f"late, do not set off {rule.name} (it was set off by them out of order)")


def take_back_answered(conn: psycopg.Connection, rules: list[Rule], ids: list[str],
                       skipped: Batch) -> tuple[list[int], list[int]]:
    """Take back the alerts of sequence rules (a missed dose) that a `then` event among
    `skipped` answers: rows too old to be evaluated again in order (older than the state
    kept to go back to), which the rules never see. One that came within the window of the
    `first` whose deadline the alert fired at, and only then, shows what the rows in order
    would: it was answered in time (`alerts.store.answered_alerts`). Returns the ids
    resolved and the ids an operator holds, noted (`alerts.store.take_back`)."""
    fps: list[str] = []
    times: list[float] = []
    within: list[float] = []
    codes: list[str] = []
    rule_of: dict[str, Rule] = {}
    for rule in rules:
        if rule.kind != "sequence":
            continue
        answers = skipped.code_mask(rule.then) & ~skipped.code_mask(rule.first)
        for k in np.flatnonzero(answers).tolist():
            fps.append(fingerprint(rule.name, ids[int(skipped.e_device[k])]))
            times.append(float(skipped.e_time[k]))
            within.append(rule.within_s)
            codes.append(str(skipped.e_code[k]))
            rule_of[fps[-1]] = rule
    found = answered_alerts(conn, fps, times, within, codes)
    why = [_came_within(a.answer_code, a.answer_at, a.within_s,
                        a.first_code or "|".join(rule_of[a.fingerprint].first),
                        a.opened_at - a.within_s) for a in found]
    return take_back(conn, found, why)


def _came_within(code: str, t: float, within_s: float, due_code: str, due: float) -> str:
    return (f"{code} at {_clock(t)} came within {_duration(within_s)} of {due_code} at "
            f"{_clock(due)} (a message arrived late)")


def _clock(t: float) -> str:
    """A device time as an operator reads it: the hour and minute in the engine's zone."""
    return f"{datetime.fromtimestamp(t, UTC).astimezone():%H:%M %Z}".strip()


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600} h" if s % 3600 == 0 else f"{s // 60} min" if s % 60 == 0 else f"{s} s"
