"""Column helpers shared by the rule kinds: groups of rows per device, the set/reset latch
that turns conditions into alert states, and the fire/clear transitions it produces.

Everything works on rows sorted by (device, time), so a device's rows are one contiguous
group; no Python loop runs per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

# the column types, as the rule kinds have always imported them from here
from vagt.arrays import F64 as F64
from vagt.arrays import I64 as I64
from vagt.arrays import Bools as Bools
from vagt.arrays import Objs

Obj = Objs
A = TypeVar("A", bound=np.ndarray[Any, Any])


def group_starts(sorted_keys: I64) -> I64:
    """Indexes where a new key begins in a sorted array."""
    if len(sorted_keys) == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]).astype(np.int64)


@dataclass
class Groups:
    """Rows sorted by device: where each device's rows start and end."""

    dev: I64
    starts: I64
    ends: I64          # inclusive
    start_of_row: I64  # per row: the index of its group's first row
    first: Bools       # per row: the first of its device
    last: Bools        # per row: the last of its device

    @classmethod
    def of(cls, dev: I64) -> Groups:
        n = len(dev)
        starts = group_starts(dev)
        ends = np.append(starts[1:], n).astype(np.int64) - 1
        start_of_row = np.repeat(starts, ends - starts + 1)
        first = np.zeros(n, dtype=bool)
        first[starts] = True
        last = np.zeros(n, dtype=bool)
        last[ends] = True
        return cls(dev, starts, ends, start_of_row, first, last)

    def previous(self, values: A, initial: A) -> A:
        """Per row, the value of the row before it of the same device, `initial` for the first."""
        prev: A = values.copy()
        if len(values):
            prev[1:] = values[:-1]
            prev[self.first] = initial[self.first]
        return prev


def sort_rows(dev: I64, time: F64, tie: I64 | Bools | None = None) -> I64:
    """The order that sorts rows by device, then device time, then `tie` (stable for rows
    equal in all): a kind whose rows of one device time mean different things in one order
    and the other (a clearing code and the code it clears) ranks them, so that what it
    decides does not hang on the order they came in (a batch's arrival, a backtest's query,
    a late row's replay)."""
    keys = (time, dev) if tie is None else (tie, time, dev)
    return np.lexsort(keys).astype(np.int64)


def latch(g: Groups, set_: Bools, reset: Bools, initial: Bools) -> Bools:
    """The alert state after each row: set by `set_`, reset by `reset`, else as before.

    `initial` is per row (the state of its device before the batch). A row that both sets
    and resets resets (callers keep them apart).
    """
    n = len(set_)
    if n == 0:
        return np.zeros(0, dtype=bool)
    idx = np.arange(n, dtype=np.int64)
    # the last set/reset row so far; rows of an earlier device are before the group start
    last_set = np.maximum.accumulate(np.where(set_, idx, -1))
    last_reset = np.maximum.accumulate(np.where(reset, idx, -1))
    has_set = last_set >= g.start_of_row
    has_reset = last_reset >= g.start_of_row
    return np.where(has_set | has_reset, has_set & (last_set > last_reset), initial)


@dataclass
class Transitions:
    """What one rule did to its alerts in a batch, as columns.

    Fires: an episode of the condition (first and last device time, the last value, the first
    code, how many rows). Clears: the condition ended at `time`. `ordinal` orders a device's
    fires and clears within the batch (0, 1, ...): the alert stage applies round 0 first.
    """

    rule: list[int] = field(default_factory=list)
    dev: list[I64] = field(default_factory=list)
    first: list[F64] = field(default_factory=list)
    last: list[F64] = field(default_factory=list)
    value: list[F64] = field(default_factory=list)
    code: list[Obj] = field(default_factory=list)
    count: list[I64] = field(default_factory=list)
    ordinal: list[I64] = field(default_factory=list)
    c_rule: list[int] = field(default_factory=list)
    c_dev: list[I64] = field(default_factory=list)
    c_time: list[F64] = field(default_factory=list)
    c_ordinal: list[I64] = field(default_factory=list)
    c_expired: list[Bools] = field(default_factory=list)

    def add_fires(self, rule: int, dev: I64, first: F64, last: F64, value: F64, code: Obj,
                  count: I64, ordinal: I64) -> None:
        if len(dev):
            self.rule.append(rule)
            self.dev.append(dev)
            self.first.append(first)
            self.last.append(last)
            self.value.append(value)
            self.code.append(code)
            self.count.append(count)
            self.ordinal.append(ordinal)

    def add_clears(self, rule: int, dev: I64, time: F64, ordinal: I64,
                   expired: bool | Bools = False) -> None:
        """`expired` (all, or per clear): cleared because nothing came for a time (an event
        rule's `clear_after`), which says nothing of whether the condition ended."""
        if len(dev):
            self.c_rule.append(rule)
            self.c_dev.append(dev)
            self.c_time.append(time)
            self.c_ordinal.append(ordinal)
            self.c_expired.append(np.broadcast_to(np.asarray(expired, dtype=bool),
                                                  (len(dev),)).copy())

    def fires(self) -> tuple[I64, I64, F64, F64, F64, Obj, I64, I64]:
        """rule, device, first time, last time, value, code, count, ordinal."""
        if not self.dev:
            e = np.empty(0)
            i = e.astype(np.int64)
            return i, i, e, e, e, e.astype(object), i, i
        return (_rules(self.rule, self.dev), np.concatenate(self.dev),
                np.concatenate(self.first), np.concatenate(self.last),
                np.concatenate(self.value), np.concatenate(self.code),
                np.concatenate(self.count), np.concatenate(self.ordinal))

    def clears(self) -> tuple[I64, I64, F64, I64]:
        """rule, device, time, ordinal."""
        if not self.c_dev:
            e = np.empty(0)
            i = e.astype(np.int64)
            return i, i, e, i
        return (_rules(self.c_rule, self.c_dev), np.concatenate(self.c_dev),
                np.concatenate(self.c_time), np.concatenate(self.c_ordinal))

    def expired(self) -> Bools:
        """Which of `clears()` are expiries (see `add_clears`)."""
        if not self.c_expired:
            return np.zeros(0, dtype=bool)
        return np.concatenate(self.c_expired)

    def same_as(self, other: Transitions) -> bool:
        """The same fires and clears, in the same order (NaN values equal)."""
        return all(len(a) == len(b) and bool(np.all((a == b) | ((a != a) & (b != b))))
                   for a, b in zip(self.fires() + self.clears(), other.fires() + other.clears()))


def _rules(rules: list[int], devs: list[I64]) -> I64:
    return np.concatenate([np.full(len(d), r, dtype=np.int64) for r, d in zip(rules, devs)])


def emit(out: Transitions, rule: int, g: Groups, time: F64, state: Bools, initial: Bools,
         counted: Bools, value: F64, code: Obj, clear_time: F64 | None = None,
         expired: Bools | None = None) -> None:
    """Fires for each episode of `state` in the batch, clears where it ended.

    An episode that continues one from before the batch fires too: it is a repeat of the
    open alert (its count and last time move on). A fire's count, times and value are those
    of its `counted` rows (past the level, say; not the rows of a hysteresis band): an
    episode with none in the batch fires nothing, so that the alerts are the same whatever
    the batches the rows came in. `expired`: per row, whether a clear there is an
    expiry (`Transitions.add_clears`).
    """
    n = len(state)
    if n == 0:
        return
    prev = g.previous(state, initial)
    starts = state & (~prev | g.first)
    falls = ~state & prev
    s_idx, f_idx = np.flatnonzero(starts), np.flatnonzero(falls)
    # an ordinal per device for fires and clears together, in row order
    marks = np.sort(np.concatenate([s_idx, f_idx]))
    rank = np.arange(len(marks), dtype=np.int64) - np.searchsorted(
        marks, g.start_of_row[marks], side="left")
    s_ord = rank[np.searchsorted(marks, s_idx)]
    f_ord = rank[np.searchsorted(marks, f_idx)]
    if len(s_idx):
        episode = np.cumsum(starts) - 1
        hit = np.flatnonzero(state & counted)
        counts = np.bincount(episode[hit], minlength=len(s_idx))[:len(s_idx)]
        first_hit = np.full(len(s_idx), n, dtype=np.int64)
        last_hit = np.full(len(s_idx), -1, dtype=np.int64)
        np.minimum.at(first_hit, episode[hit], hit)
        np.maximum.at(last_hit, episode[hit], hit)
        k = counts > 0
        a, z = first_hit[k], last_hit[k]
        out.add_fires(rule, g.dev[s_idx[k]], time[a], time[z], value[z], code[a],
                      counts[k].astype(np.int64), s_ord[k])
    ct = time if clear_time is None else clear_time
    out.add_clears(rule, g.dev[f_idx], ct[f_idx], f_ord,
                   False if expired is None else expired[f_idx])
