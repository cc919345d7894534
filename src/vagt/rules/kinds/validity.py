"""validity: values outside the plausible range of the device's model (the catalogue) are
bad data: marked, kept out of every other rule, counted per model; never alerted on by
themselves. With `alert_after = N`, N implausible values in a row open a sensor-fault alert,
which a plausible value clears."""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import Bools, Groups, Transitions, emit, latch, sort_rows
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState, fresh


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
        lo, hi = low[b.r_device[rows]], high[b.r_device[rows]]
        known = ~np.isnan(lo)
        v = b.r_value[rows]
        checked[rows[known]] = True
        bad[rows] = known & ((v < lo) | (v > hi))
    return checked, bad


def evaluate(i: int, rule: Rule, st: RuleState, ctx: Context, b: Batch, checked: Bools,
             bad: Bools, out: Transitions) -> None:
    if rule.alert_after <= 0 or not checked.any():
        return
    rows = np.flatnonzero(checked)
    d, t, v, x = b.r_device[rows], b.r_time[rows], b.r_value[rows], bad[rows]
    m = b.r_metric[rows]
    order = sort_rows(d, t)
    d, t, v, x, m = d[order], t[order], v[order], x[order], m[order]
    last_t, run = st.f64("last_t", ctx.n, -np.inf), st.i64("bad_run", ctx.n)
    active = st.flag("active", ctx.n)
    keep = fresh(d, t, last_t, dedupe=False)
    d, t, v, x, m = d[keep], t[keep], v[keep], x[keep], m[keep]
    if len(d) == 0:
        return
    g = Groups.of(d)
    idx = np.arange(len(d), dtype=np.int64)
    last_good = np.maximum.accumulate(np.where(~x, idx, -1))
    in_first_run = last_good < g.start_of_row
    length = np.where(in_first_run, run[d] + idx - g.start_of_row + 1, idx - last_good)
    length = np.where(x, length, 0)
    set_ = x & (length >= rule.alert_after)
    initial = active[d]
    state = latch(g, set_, ~x, initial)
    emit(out, i, g, t, state, initial, x, v, m)
    e = g.ends
    ctx.stage(st, d[e], last_t=t[e], bad_run=length[e], active=state[e])
