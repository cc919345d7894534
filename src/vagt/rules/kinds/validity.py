"""validity: values outside the plausible range of the device's model (the catalogue) are
bad data: marked, kept out of every other rule, counted per model; never alerted on by
themselves. With `alert_after = N`, N implausible values of one metric in a row open a
sensor-fault alert for the device, which a plausible value clears once no metric of the
device is N implausible values into a run.

Runs are counted per (device, metric): a device's readings interleave its metrics, and a
working pulse sensor must not hide a broken SpO2 sensor beside it. The state of a metric is
kept in arrays named `<metric>.last_t` and `<metric>.bad_run`."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vagt.rules._columns import F64, I64, Bools, Groups, Obj, Transitions, emit, latch, sort_rows
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState, fresh

RUN = ".bad_run"
SEEN = ".last_t"


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
    # per metric: its new rows (device, time order) and the run each row leaves its metric in
    parts: list[tuple[I64, I64, I64]] = []  # batch rows, run after, change of "metrics at N"
    staged: dict[str, tuple[I64, F64, I64]] = {}  # metric -> devices, last time, run
    for metric in sorted(b.rows_by_metric):  # a handful of metrics, not rows
        rows = b.rows_by_metric[metric]
        rows = rows[checked[rows]]
        if len(rows) == 0:
            continue
        rows = rows[sort_rows(b.r_device[rows], b.r_time[rows])]
        seen = st.f64(metric + SEEN, ctx.n, -np.inf)
        run = st.i64(metric + RUN, ctx.n)
        rows = rows[fresh(b.r_device[rows], b.r_time[rows], seen)]
        if len(rows) == 0:
            continue
        d, x = b.r_device[rows], bad[rows]
        g = Groups.of(d)
        idx = np.arange(len(d), dtype=np.int64)
        last_good = np.maximum.accumulate(np.where(~x, idx, -1))
        in_first_run = last_good < g.start_of_row
        length = np.where(in_first_run, run[d] + idx - g.start_of_row + 1, idx - last_good)
        length = np.where(x, length, 0)
        before = g.previous(length, run[d])
        change = (length >= n_bad).astype(np.int64) - (before >= n_bad)
        parts.append((rows, length, change))
        e = g.ends
        staged[metric] = (d[e], b.r_time[rows[e]], length[e])
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
    at_n = _metrics_at_n(st, ctx.n, d, n_bad) + _within_device(g, change)
    set_ = x & (length >= n_bad)
    initial = st.flag("active", ctx.n)[d]
    state = latch(g, set_, ~x & (at_n == 0), initial)
    emit(out, i, g, t, state, initial, set_, v, m)
    e = g.ends
    devs = d[e]
    last_t = st.f64("last_t", ctx.n, -np.inf)   # of any metric: what `Update` keeps by
    values: dict[str, npt.NDArray[np.generic]] = {
        "last_t": np.maximum(last_t[devs], t[e]), "active": state[e]}
    for metric, (md, mt, mrun) in staged.items():
        at = np.searchsorted(devs, md)   # devs are sorted and hold every md
        seen = st.f64(metric + SEEN, ctx.n, -np.inf)[devs].copy()
        run = st.i64(metric + RUN, ctx.n)[devs].copy()
        seen[at], run[at] = mt, mrun
        values[metric + SEEN], values[metric + RUN] = seen, run
    ctx.stage(st, devs, **values)


def _metrics_at_n(st: RuleState, n: int, d: I64, n_bad: int) -> I64:
    """Per row, how many of its device's metrics were N into a run before the batch."""
    count = np.zeros(len(d), dtype=np.int64)
    for name, *_ in st.arrays():   # a handful of metrics
        if name.endswith(RUN):
            count += st.i64(name, n)[d] >= n_bad
    return count


def _within_device(g: Groups, change: I64) -> I64:
    """The running sum of `change` within each device's rows."""
    total = np.cumsum(change)
    return total - total[g.start_of_row] + change[g.start_of_row]
