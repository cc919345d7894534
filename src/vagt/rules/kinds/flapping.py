"""flapping: more than `count` events (connection.lost) within `window` open ONE alert;
each further one is a repeat. It clears once the device has been quiet for `stable`
(seen at its next event, or by the local timer tick)."""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import Groups, Transitions, emit, latch, sort_rows
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState, fresh


def evaluate(i: int, rule: Rule, st: RuleState, ctx: Context, b: Batch,
             out: Transitions) -> None:
    if len(b.e_device) == 0:
        return
    rows = np.flatnonzero(b.code_mask(rule.codes) & ctx.applies[b.e_device])
    if len(rows) == 0:
        return
    d, t, c = b.e_device[rows], b.e_time[rows], b.e_code[rows]
    order = sort_rows(d, t)
    d, t, c = d[order], t[order], c[order]
    k = rule.count
    last_t = st.f64("last_t", ctx.n, -np.inf)
    recent = st.f64("recent", ctx.n, np.nan, width=k)  # the last k event times, oldest first
    active = st.flag("active", ctx.n)
    keep = fresh(d, t, last_t)
    d, t, c = d[keep], t[keep], c[keep]
    if len(d) == 0:
        return
    g = Groups.of(d)
    n = len(d)
    idx = np.arange(n, dtype=np.int64)
    pos = idx - g.start_of_row
    # the time of the event k before each row: earlier in the batch, or from `recent`
    back = np.where(pos >= k, t[np.maximum(idx - k, 0)],
                    recent[d, np.minimum(pos, k - 1)])
    set_ = t - back <= rule.window_s  # False against NaN: fewer than k+1 events known
    # quiet for `stable` before a row: the alert cleared then, before the row (it may open
    # a new one), as the tick would have cleared it had it come between them (`<=`, as
    # there): in one batch, flaps 11 minutes apart with `stable` 10 were one alert, with
    # ticks between two
    prev_t = g.previous(t, last_t[d])
    quiet = t - prev_t >= rule.stable_s
    # a quiet row twice: first as its clear (resetting, at the time the quiet began + stable)
    rows2 = np.repeat(idx, 1 + quiet)
    is_clear = np.r_[rows2[:-1] == rows2[1:], False]
    g2 = Groups.of(d[rows2])
    t2 = np.where(is_clear, prev_t[rows2] + rule.stable_s, t[rows2])
    set2 = set_[rows2] & ~is_clear
    initial = active[d[rows2]]
    state2 = latch(g2, set2, is_clear, initial)
    emit(out, i, g2, t2, state2, initial, set2, np.full(len(rows2), np.nan), c[rows2])
    state = state2[~is_clear]
    # the last k times of (recent + the batch's rows), per device of the batch
    e = g.ends
    dev = d[e]
    length = e - g.starts + 1
    new_recent = np.empty((len(dev), k))
    for j in range(k):  # k columns (a small number), not rows
        src = length + j - k  # index into the batch rows of this device; < 0: from recent
        from_batch = src >= 0
        new_recent[:, j] = np.where(from_batch, t[np.clip(g.starts + src, 0, n - 1)],
                                    recent[dev, np.clip(length + j, 0, k - 1)])
    ctx.stage(st, dev, last_t=t[e], recent=new_recent, active=state[e])


def tick(i: int, rule: Rule, st: RuleState, ctx: Context, now: float,
         out: Transitions) -> None:
    """Quiet for `stable` on the device's clock (`Context.device_now`): by ours, a gateway
    whose clock is more than `stable` slow, or a backlog's events, cleared at every tick
    while it still flapped."""
    active, last_t = st.flag("active", ctx.n), st.f64("last_t", ctx.n, -np.inf)
    due = np.flatnonzero(active & (last_t + rule.stable_s <= ctx.device_now(now))
                         ).astype(np.int64)
    if len(due) == 0:
        return
    out.add_clears(i, due, last_t[due] + rule.stable_s, np.zeros(len(due), dtype=np.int64))
    ctx.stage(st, due, active=np.zeros(len(due), dtype=bool))
