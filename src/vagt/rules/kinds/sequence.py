"""sequence: after event A (`first`, dose.due), event B (`then`, dose.taken) is expected
`within` a window. An A not answered in time fires at its deadline; a B clears.

Whether the window passed is judged by device time: a later message of the device (any
message) shows it, or the local timer tick does when the device stays silent. The earliest
A still waiting is kept per device (`pending`), so a window spans batches.
"""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import Groups, Transitions, emit, latch, sort_rows
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState

# The timer tick waits this long past a deadline before it calls a dose missed: a B sent
# just in time may still be on its way.
TICK_GRACE_S = 60.0


def evaluate(i: int, rule: Rule, st: RuleState, ctx: Context, b: Batch,
             out: Transitions) -> None:
    last_t, pending = st.f64("last_t", ctx.n, -np.inf), st.f64("pending", ctx.n)
    pending_code = st.array("pending_code", ctx.n, "", object)
    active = st.flag("active", ctx.n)
    is_a = b.code_mask(rule.first)
    is_b = b.code_mask(rule.then) & ~is_a
    rows = np.flatnonzero((is_a | is_b) & ctx.applies[b.e_device]) if len(b.e_device) else \
        np.empty(0, dtype=np.int64)
    d, t, c, a = b.e_device[rows], b.e_time[rows], b.e_code[rows], is_a[rows]
    real = t > last_t[d]  # an older event must not change what later ones decided
    d, t, c, a = d[real], t[real], c[real], a[real]
    # a device waiting from before, that showed any sign of life, joins with its pending A
    seen = np.unique(np.concatenate([b.m_device, d])) if len(b.m_device) else np.unique(d)
    waiting = seen[~np.isnan(pending[seen]) & ctx.applies[seen]] if len(seen) else seen
    if len(d) == 0 and len(waiting) == 0:
        return
    d = np.concatenate([waiting, d])
    t = np.concatenate([pending[waiting], t])
    c = np.concatenate([pending_code[waiting], c])
    a = np.concatenate([np.ones(len(waiting), dtype=bool), a])
    is_real = np.r_[np.zeros(len(waiting), dtype=bool), np.ones(len(d) - len(waiting), bool)]
    order = sort_rows(d, t)
    d, t, c, a, is_real = d[order], t[order], c[order], a[order], is_real[order]
    g = Groups.of(d)
    n = len(d)
    idx = np.arange(n, dtype=np.int64)
    # the next B at or after each row, by index (a B of another device is past the group end)
    next_b = np.minimum.accumulate(np.where(~a, idx, n)[::-1])[::-1]
    group_end = np.repeat(g.ends, g.ends - g.starts + 1)
    has_b = next_b <= group_end
    b_time = np.where(has_b, t[np.minimum(next_b, n - 1)], np.inf)
    deadline = t + rule.within_s
    answered = a & (b_time <= deadline)
    horizon = np.maximum(np.maximum.reduceat(t, g.starts), ctx.latest_seen[g.dev[g.starts]])
    horizon_row = np.repeat(horizon, g.ends - g.starts + 1)
    missed = a & ~answered & (horizon_row > deadline)
    undecided = a & ~answered & ~missed
    # the latch runs over deadlines (set) and Bs (reset), in time order
    ld = np.concatenate([d[missed], d[~a]])
    lt = np.concatenate([deadline[missed], t[~a]])
    lc = np.concatenate([c[missed], c[~a]])
    ls = np.r_[np.ones(int(missed.sum()), dtype=bool), np.zeros(int((~a).sum()), dtype=bool)]
    if len(ld):
        o = sort_rows(ld, lt)
        ld, lt, lc, ls = ld[o], lt[o], lc[o], ls[o]
        lg = Groups.of(ld)
        initial = active[ld]
        state = latch(lg, ls, ~ls, initial)
        emit(out, i, lg, lt, state, initial, ls, np.full(len(ld), np.nan), lc)
        ctx.stage(st, ld[lg.ends], active=state[lg.ends])
    first_undecided = np.minimum.reduceat(np.where(undecided, t, np.inf), g.starts)
    code_first = c[np.minimum.reduceat(np.where(undecided, idx, n), g.starts).clip(max=n - 1)]
    newest_real = np.maximum.reduceat(np.where(is_real, t, -np.inf), g.starts)
    devs = g.dev[g.starts]
    ctx.stage(st, devs, pending=np.where(np.isinf(first_undecided), np.nan, first_undecided),
              pending_code=code_first, last_t=np.maximum(newest_real, last_t[devs]))


def tick(i: int, rule: Rule, st: RuleState, ctx: Context, now: float,
         out: Transitions) -> None:
    """A device silent past a deadline: its A was not answered in time."""
    pending = st.f64("pending", ctx.n)
    pending_code = st.array("pending_code", ctx.n, "", object)
    st.flag("active", ctx.n)
    with np.errstate(invalid="ignore"):
        due = np.flatnonzero(pending + rule.within_s + TICK_GRACE_S < now).astype(np.int64)
    if len(due) == 0:
        return
    at = pending[due] + rule.within_s
    zeros = np.zeros(len(due), dtype=np.int64)
    out.add_fires(i, due, at, at, np.full(len(due), np.nan), pending_code[due].astype(object),
                  zeros + 1, zeros)
    ctx.stage(st, due, pending=np.full(len(due), np.nan), active=np.ones(len(due), dtype=bool))
