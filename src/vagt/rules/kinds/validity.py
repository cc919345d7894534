"""validity: values outside the plausible range of the device's model (the catalogue) are
bad data: marked, kept out of every other rule, counted per model; never alerted on by
themselves. With `alert_after = N`, N implausible values of one metric in a row open a
sensor-fault alert for the device, which a plausible value clears once no metric of the
device is N implausible values into a run.

Runs are counted per (device, metric): a device's readings interleave its metrics, and a
working pulse sensor must not hide a broken SpO2 sensor beside it. The state of a metric is
kept in a part of the rule's state (`RuleState.part`) with rows only for the devices whose
model measures it (the engine gives them rows as it learns the fleet; a device this kind
meets without one gets one here): `<metric>.last_t` and `<metric>.bad_run` from outside.
A metric's update is kept or not by its own `last_t` (`Update.apply`: a later state the other
lane applied first stays), as the rule's `last_t` and `active` are by the rule's.
Most metrics are one device type's (a scale's weight, an oximeter's SpO2): a row for every
device of the fleet in each was 32 MB at 200,000 devices (docs/performance.md, "fourteenth
session")."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vagt.rules._columns import I64, Bools, Groups, Obj, Transitions, emit, latch, sort_rows
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState, fresh

RUN = "bad_run"
SEEN = "last_t"


def mark(rule: Rule, ctx: Context, b: Batch) -> tuple[Bools, Bools]:
    """(checked, bad) per reading row: which rows the rule judged, and which are implausible."""
    n = len(b.r_device)
    checked = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    if n == 0:
        return checked, bad
    for metric, rows in b.rows_by_metric.items():  # a handful of metrics, not rows
        if (rule.metrics and metric not in rule.metrics) or metric not in ctx.ranges:
            continue
        rows = rows[ctx.applies[b.r_device[rows]]]
        low, high = ctx.ranges[metric]
        model = ctx.model[b.r_device[rows]]
        lo, hi = low[model], high[model]
        known = ~np.isnan(lo)
        v = b.r_value[rows]
        checked[rows[known]] = True
        bad[rows] = known & ((v < lo) | (v > hi))
    return checked, bad


def evaluate(i: int, rule: Rule, st: RuleState, ctx: Context, b: Batch, checked: Bools,
             bad: Bools, out: Transitions) -> None:
    if rule.alert_after <= 0 or not checked.any():
        return
    n_bad = rule.alert_after
    fleet = _fleet_of(st)
    # per metric: its new rows (device, time order) and the run each row leaves its metric in
    parts: list[tuple[I64, I64, I64]] = []  # batch rows, run after, change of "metrics at N"
    for metric in sorted(b.rows_by_metric):  # a handful of metrics, not rows
        rows = b.rows_by_metric[metric]
        rows = rows[checked[rows]]
        if len(rows) == 0:
            continue
        rows = rows[sort_rows(b.r_device[rows], b.r_time[rows])]
        part = st.part(metric)
        at = _rows_in(part, fleet(b.r_device[rows]))  # in the order of the rule's rows
        seen = part.f64(SEEN, part.size(ctx.n), -np.inf)
        run = part.i64(RUN, part.size(ctx.n))
        keep = fresh(at, b.r_time[rows], seen)
        rows, at = rows[keep], at[keep]
        if len(rows) == 0:
            continue
        x = bad[rows]
        g = Groups.of(at)
        idx = np.arange(len(at), dtype=np.int64)
        last_good = np.maximum.accumulate(np.where(~x, idx, -1))
        in_first_run = last_good < g.start_of_row
        length = np.where(in_first_run, run[at] + idx - g.start_of_row + 1, idx - last_good)
        length = np.where(x, length, 0)
        before = g.previous(length, run[at])
        change = (length >= n_bad).astype(np.int64) - (before >= n_bad)
        parts.append((rows, length, change))
        e = g.ends
        ctx.stage(part, at[e], **{SEEN: b.r_time[rows[e]], RUN: length[e]})
    if not parts:
        return
    rows = np.concatenate([p[0] for p in parts])
    length = np.concatenate([p[1] for p in parts])
    change = np.concatenate([p[2] for p in parts])
    order = sort_rows(b.r_device[rows], b.r_time[rows])  # stable: metrics by name at a tie
    rows, length, change = rows[order], length[order], change[order]
    d, t, v, x = b.r_device[rows], b.r_time[rows], b.r_value[rows], bad[rows]
    m: Obj = b.r_metric[rows]
    g = Groups.of(d)
    # per row: how many of the device's metrics are N implausible values into a run after it
    at_n = _metrics_at_n(st, fleet(d), n_bad) + _within_device(g, change)
    set_ = x & (length >= n_bad)
    initial = st.flag("active", ctx.n)[d]
    state = latch(g, set_, ~x & (at_n == 0), initial)
    emit(out, i, g, t, state, initial, set_, v, m)
    e = g.ends
    devs = d[e]
    last_t = st.f64("last_t", ctx.n, -np.inf)   # of any metric
    ctx.stage(st, devs, last_t=np.maximum(last_t[devs], t[e]), active=state[e])


def _fleet_of(st: RuleState) -> Callable[[I64], I64]:
    """The fleet's indexes of the rule's rows (what its parts' rows are kept by)."""
    devices = st.devices
    if devices is None:
        return lambda rows: rows
    return lambda rows: devices[rows]


def _rows_in(part: RuleState, devices: I64) -> I64:
    """The part's rows of `devices` (fleet indexes), given to those that have none yet."""
    rows = part.rows_of(devices)
    if (none := rows < 0).any():
        part.cover(np.unique(devices[none]))
        rows = part.rows_of(devices)
    return rows


def _metrics_at_n(st: RuleState, devices: I64, n_bad: int) -> I64:
    """Per row (of `devices`, fleet indexes), how many of its device's metrics were N into a
    run before the batch."""
    count = np.zeros(len(devices), dtype=np.int64)
    for part in st.parts.values():   # a handful of metrics
        count += part.values(RUN, devices, 0).astype(np.int64) >= n_bad
    return count


def _within_device(g: Groups, change: I64) -> I64:
    """The running sum of `change` within each device's rows."""
    total = np.cumsum(change)
    return total - total[g.start_of_row] + change[g.start_of_row]
