"""threshold: a metric past a level, held for `for` (device time, across batches), cleared
past the hysteresis level `clear_at`. The level holds only while the readings past it come
no further apart than `max_gap` (by default `for`): two low readings hours apart say nothing
of the time between them."""

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
    run_start = st.f64("run_start", ctx.n)
    # the time of the latest reading of a run that has not held `for` yet: `last_t` is only
    # a watermark, not stored when nothing else changes (`RuleState.watermarks`). Once the
    # run has held, a gap changes nothing until it ends, so nothing is written per reading.
    run_last = st.f64("run_last", ctx.n)
    active = st.flag("active", ctx.n)
    g = Groups.of(d)
    if rule.below is not None:
        past = v < rule.below
        reset = v >= (rule.clear_at if rule.clear_at is not None else rule.below)
    else:
        assert rule.above is not None
        past = v > rule.above
        reset = v <= (rule.clear_at if rule.clear_at is not None else rule.above)
    reset &= ~past
    # the start of each row's run of rows past the level; a run open before the batch goes
    # on if the gap since its latest reading is not too long (a run that has held, or one
    # stored before run_last was kept, goes by last_t)
    idx = np.arange(len(d), dtype=np.int64)
    prev_past = g.previous(past, ~np.isnan(run_start[d]))
    prev_t = g.previous(t, np.where(np.isnan(run_last[d]), last_t[d], run_last[d]))
    begins = past & ~(prev_past & (t - prev_t <= rule.gap_s))
    last_begin = np.maximum.accumulate(np.where(begins, idx, -1))
    from_state = last_begin < g.start_of_row
    began = np.where(from_state, run_start[d], t[np.maximum(last_begin, 0)])
    set_ = past & (t - began >= rule.for_s)
    initial = active[d]
    state = latch(g, set_, reset, initial)
    emit(out, i, g, t, state, initial, past, v, np.full(len(d), "", dtype=object))
    e = g.ends
    ctx.stage(st, d[e], last_t=t[e], run_start=np.where(past[e], began[e], np.nan),
              run_last=np.where(past[e] & ~set_[e], t[e], np.nan), active=state[e])
