"""Evaluate rules over one batch, vectorised: numpy columns in, firings and clears out.

A firing is per (rule, device) per batch: several matching rows of one device in a batch make
one firing with a count, so the alert stage sees each fingerprint once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vagt.rules.config import Rule

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Obj = npt.NDArray[np.object_]


@dataclass
class Firings:
    """Columns: rule `rule[i]` fired for device `device[i]`, `count[i]` times in this batch."""

    rule: list[int] = field(default_factory=list)
    device: list[I64] = field(default_factory=list)
    first_time: list[F64] = field(default_factory=list)
    last_time: list[F64] = field(default_factory=list)
    value: list[F64] = field(default_factory=list)   # the last value (NaN for events)
    code: list[Obj] = field(default_factory=list)    # the first code ("" for thresholds)
    count: list[I64] = field(default_factory=list)

    def concat(self) -> tuple[I64, I64, F64, F64, F64, Obj, I64]:
        """All rules' firings as flat columns: rule, device, first, last, value, code, count."""
        if not self.device:
            e = np.empty(0)
            return (e.astype(np.int64), e.astype(np.int64), e, e, e, e.astype(object),
                    e.astype(np.int64))
        rule = np.concatenate([np.full(len(d), r, dtype=np.int64)
                               for r, d in zip(self.rule, self.device)])
        return (rule, np.concatenate(self.device), np.concatenate(self.first_time),
                np.concatenate(self.last_time), np.concatenate(self.value),
                np.concatenate(self.code), np.concatenate(self.count))


@dataclass
class Clears:
    """Columns: the condition of rule `rule[i]` no longer holds for device `device[i]`."""

    rule: list[int] = field(default_factory=list)
    device: list[I64] = field(default_factory=list)
    time: list[F64] = field(default_factory=list)

    def concat(self) -> tuple[I64, I64, F64]:
        if not self.device:
            e = np.empty(0)
            return e.astype(np.int64), e.astype(np.int64), e
        rule = np.concatenate([np.full(len(d), r, dtype=np.int64)
                               for r, d in zip(self.rule, self.device)])
        return rule, np.concatenate(self.device), np.concatenate(self.time)


def evaluate(
    rules: list[Rule],
    *,
    r_device: I64, r_metric: Obj, r_value: F64, r_time: F64,
    e_device: I64, e_code: Obj, e_time: F64,
) -> tuple[Firings, Clears]:
    """Evaluate every rule over the batch's readings (r_*) and events (e_*)."""
    firings, clears = Firings(), Clears()
    unique_codes = np.unique(e_code) if len(e_code) else np.empty(0, dtype=object)
    for i, rule in enumerate(rules):
        if rule.kind == "event":
            _event_rule(i, rule, e_device, e_code, e_time, unique_codes, firings)
        elif rule.kind == "threshold":
            _threshold_rule(i, rule, r_device, r_metric, r_value, r_time, firings, clears)
    return firings, clears


def _event_rule(i: int, rule: Rule, device: I64, code: Obj, time: F64,
                unique_codes: Obj, out: Firings) -> None:
    matched = [c for c in unique_codes if rule.matches_code(str(c))]
    if not matched:
        return
    mask = np.isin(code, matched)
    d, t, c = device[mask], time[mask], code[mask]
    order = np.lexsort((t, d))
    d, t, c = d[order], t[order], c[order]
    starts = _group_starts(d)
    ends = np.append(starts[1:], len(d)) - 1
    out.rule.append(i)
    out.device.append(d[starts])
    out.first_time.append(t[starts])
    out.last_time.append(t[ends])
    out.value.append(np.full(len(starts), np.nan))
    out.code.append(c[starts])
    out.count.append((ends - starts + 1).astype(np.int64))


def _threshold_rule(i: int, rule: Rule, device: I64, metric: Obj, value: F64, time: F64,
                    fired: Firings, cleared: Clears) -> None:
    mask = metric == rule.metric
    if not mask.any():
        return
    d, v, t = device[mask], value[mask], time[mask]
    order = np.lexsort((t, d))
    d, v, t = d[order], v[order], t[order]
    starts = _group_starts(d)
    ends = np.append(starts[1:], len(d)) - 1
    # The device's latest value in the batch decides: earlier ones are already history.
    last_v, last_t, last_d = v[ends], t[ends], d[ends]
    fires = last_v < rule.below if rule.below is not None else last_v > rule.above
    if rule.below is not None:
        clears = last_v >= (rule.clear_at if rule.clear_at is not None else rule.below)
    else:
        clears = last_v <= (rule.clear_at if rule.clear_at is not None else rule.above)
    # how many of the device's rows in the batch were past the level
    past = v < rule.below if rule.below is not None else v > rule.above
    counts = np.add.reduceat(past.astype(np.int64), starts)
    if fires.any():
        fired.rule.append(i)
        fired.device.append(last_d[fires])
        fired.first_time.append(last_t[fires])
        fired.last_time.append(last_t[fires])
        fired.value.append(last_v[fires])
        fired.code.append(np.full(int(fires.sum()), "", dtype=object))
        fired.count.append(np.maximum(counts[fires], 1))
    if clears.any():
        cleared.rule.append(i)
        cleared.device.append(last_d[clears])
        cleared.time.append(last_t[clears])


def _group_starts(sorted_keys: I64) -> I64:
    """Indexes where a new key begins in a sorted array."""
    if len(sorted_keys) == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]).astype(np.int64)
