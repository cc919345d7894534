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
    latest_alerts,
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

    def added(self, rule: int, dev: int) -> int:
        """How many more rows of the device (evaluated again) the rule fired than before."""
        return int(self.more[rule, int(np.searchsorted(self.devices, dev))])

    def judged(self, rule: int, dev: int) -> tuple[float, float] | None:
        """(since, holds) of a rule and device whose rows were evaluated again, and not by
        a redelivery; None otherwise (where the rule's state holds, nothing is taken back)."""
        at = int(np.searchsorted(self.devices, dev))
        if at == len(self.devices) or self.devices[at] != dev or not self.fresh[at]:
            return None
        holds = float(self.holds[rule, at])
        return None if holds == -np.inf else (float(self.since[at]), holds)


Fires = tuple[npt.NDArray[Any], ...]
Clears = tuple[I64, I64, F64, I64]   # `Transitions.clears()`

# Device times the database keeps (to the microsecond) and ours compare as equal within this
SAME_TIME_S = 1e-3


def correct(conn: psycopg.Connection, rules: list[Rule], ids: list[str], fr: Fires,
            clears: Clears, recount: Recount) -> tuple[Fires, Bools]:
    """Correct the alerts of the devices evaluated again (`recount_firings`): their count
    moves by how many more rows fired than before, and they begin and last fired where the
    rows in order say (if earlier or later, unless every firing of the alert since came
    from those rows: `Recount.judged`). Only by the fires of the fingerprint's latest alert
    (`own_fires`): an episode the rows in order begin after a clear of the rule, and after
    all that alert counted, is a new one, recorded as the rows in order record it (it
    reopens the alert, or opens one), and its rows are not counted on the alert too.

    An alert a person resolved is not corrected by events: those it never counted came after
    that resolution (by our clock: a device's may be behind), whatever their date, and are
    recorded as new (`record_firings(new=True)`), as the alarm lane records an alarm.
    Returns the fires still to record (those with no alert of theirs to correct), and which
    of them are new so. (What the rows in order no longer fire at all is taken back:
    `rejudged`, `take_back_unsupported`.)"""
    keep = np.ones(len(fr[0]), dtype=bool)
    renew = np.zeros(len(fr[0]), dtype=bool)
    keys = _fires_by_key(fr, recount.devices)
    if not keys:
        return fr, renew
    fr = tuple(c.copy() for c in fr)     # a person's alert's fires are merged below
    fps = {key: fingerprint(rules[key[0]].name, ids[key[1]]) for key in keys}
    latest = latest_alerts(conn, list(fps.values()))
    ended = _first_clears(clears)
    owned: dict[tuple[int, int], tuple[list[int], int]] = {}
    for key, ks in keys.items():
        alert = latest.get(fps[key])
        if alert is None:    # nothing to correct: every fire is recorded
            continue
        own = own_fires(fr, ks, ended.get(key, np.inf), alert.last_fired_at)
        more = recount.added(*key) - int(fr[6][[k for k in ks if k not in own]].sum())
        if own and alert.resolved_by_person and not rules[key[0]].uses_readings:
            keep[own] = False
            if more > 0:   # the rows it never counted: one firing, in the round of its last
                keep[own[-1]] = renew[own[-1]] = True
                _merge(fr, own, more)
        elif own:
            owned[key] = (own, more)
    for key in _recount(conn, fps, fr, owned, recount):
        keep[owned[key][0]] = False
    return tuple(c[keep] for c in fr), renew[keep]


def _fires_by_key(fr: Fires, devices: I64) -> dict[tuple[int, int], list[int]]:
    """The fires of `devices` per (rule, device), in order (by ordinal)."""
    keys: dict[tuple[int, int], list[int]] = {}
    for k in sorted(np.flatnonzero(np.isin(fr[1], devices)).tolist(), key=lambda k: fr[7][k]):
        keys.setdefault((int(fr[0][k]), int(fr[1][k])), []).append(k)
    return keys


def _merge(fr: Fires, ks: list[int], count: int) -> None:
    """The fires `ks` as one, the last: from the first's first time to the last time, fired
    `count` times."""
    first, last = fr[2][ks].min(), fr[3][ks].max()
    fr[2][ks[-1]], fr[3][ks[-1]], fr[6][ks[-1]] = first, last, count


def _recount(conn: psycopg.Connection, fps: dict[tuple[int, int], str], fr: Fires,
             owned: dict[tuple[int, int], tuple[list[int], int]],
             recount: Recount) -> list[tuple[int, int]]:
    """`recount_firings` of the alerts of `owned` (per rule and device, their fires and how
    many more rows fired); returns those corrected."""
    keys = list(owned)
    corrected = recount_firings(
        conn, [fps[k] for k in keys], [float(fr[2][owned[k][0]].min()) for k in keys],
        [float(fr[3][owned[k][0]].max()) for k in keys], [owned[k][1] for k in keys],
        [recount.judged(r, d) for r, d in keys])
    return [k for k in keys if fps[k] in corrected]


def own_fires(fr: Fires, ks: list[int], cleared: float, counted_to: float) -> list[int]:
    """Of a rule's fires for one device `ks` (in order), those of the episodes of the alert
    that counted firings up to device time `counted_to`: all but those after the rule's first
    clear among them (its ordinal: `cleared`) that began after `counted_to` (the database
    keeps microseconds: a millisecond later)."""
    return [k for k in ks
            if not (fr[7][k] > cleared and fr[2][k] > counted_to + SAME_TIME_S)]


def _first_clears(clears: Clears) -> dict[tuple[int, int], float]:
    """Per (rule, device) cleared, the ordinal of its first clear."""
    first: dict[tuple[int, int], float] = {}
    for r, d, o in zip(clears[0].tolist(), clears[1].tolist(), clears[3].tolist()):
        first[(r, d)] = min(o, first.get((r, d), np.inf))
    return first


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
