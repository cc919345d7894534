"""stuck: the same value `count` times in a row (within `tolerance`): a sensor that no
longer measures. A different value clears it."""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import Groups, Transitions, emit, latch
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState, new_readings


def evaluate(i: int, rule: Rule, st: RuleState, ctx: Context, b: Batch,
             out: Transitions) -> None:
    got = new_readings(ctx, b, st, rule.metric)
    if got is None:
        return
    d, t, v, last_t = got
    last_v = st.f64("last_v", ctx.n)
    run, active = st.i64("run", ctx.n), st.flag("active", ctx.n)
    g = Groups.of(d)
    prev = g.previous(v, last_v[d])
    same = np.abs(v - prev) <= rule.tolerance  # False against NaN: a first value is no repeat
    idx = np.arange(len(d), dtype=np.int64)
    last_change = np.maximum.accumulate(np.where(~same, idx, -1))
    from_state = last_change < g.start_of_row
    length = np.where(from_state, run[d] + idx - g.start_of_row + 1, idx - last_change + 1)
    set_ = length >= rule.count
    initial = active[d]
    # a value after an unknown one (the first ever, or the first since a restart) clears
    # nothing: the sensor may well still be stuck
    state = latch(g, set_, ~same & ~set_ & ~np.isnan(prev), initial)
    emit(out, i, g, t, state, initial, set_, v, np.full(len(d), "", dtype=object))
    e = g.ends
    ctx.stage(st, d[e], last_t=t[e], last_v=v[e], run=length[e], active=state[e])
