"""rate: a metric changed by at least `rise` (or `fall`) within `window` (a weight gain of
2 kg in 3 days). Each reading is compared with the lowest (highest) value of the window
before it. The engine keeps each device's last readings in memory; when they do not reach
back a whole window (after a start, for a new device, or a long window) the readings come
from the stored history."""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import F64, I64, Bools, Groups, Transitions, emit, latch, sort_rows
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState, new_readings

MEMORY = 8  # readings kept per device and rule


def evaluate(i: int, rule: Rule, st: RuleState, ctx: Context, b: Batch,
             out: Transitions) -> None:
    got = new_readings(ctx, b, st, rule.metric)
    if got is None:
        return
    d, t, v, last_t = got
    active = st.flag("active", ctx.n)
    mem_t = st.f64("mem_t", ctx.n, np.nan, width=MEMORY)
    mem_v = st.f64("mem_v", ctx.n, np.nan, width=MEMORY)
    covered = st.f64("covered_from", ctx.n, np.inf)  # every reading since is in memory
    g = Groups.of(d)
    devs, first_t = d[g.starts], t[g.starts]
    since = first_t - rule.window_s
    # history per device: memory where it reaches back far enough, else the database
    # (without a history source, as in a unit test, memory is all there is)
    from_memory = (covered[devs] <= since) | (ctx.history is None)
    hd, ht, hv, new_covered = _history(rule, ctx, devs, since, first_t, from_memory,
                                       mem_t, mem_v, covered)
    # all rows (history, then the batch's), sorted; a change is measured at batch rows
    ad = np.concatenate([hd, d])
    at = np.concatenate([ht, t])
    av = np.concatenate([hv, v])
    is_batch = np.r_[np.zeros(len(hd), dtype=bool), np.ones(len(d), dtype=bool)]
    o = sort_rows(ad, at)
    ad, at, av, is_batch = ad[o], at[o], av[o], is_batch[o]
    base = _window_extreme(ad, at, av, rule.window_s, low=rule.rise is not None)
    change = (av - base)[is_batch]
    with np.errstate(invalid="ignore"):
        set_ = change >= rule.rise if rule.rise is not None else change <= -(rule.fall or 0.0)
    initial = active[d]
    state = latch(g, set_, ~set_ & ~np.isnan(change), initial)
    emit(out, i, g, t, state, initial, set_, change, np.full(len(d), "", dtype=object))
    e = g.ends
    # memory: the last MEMORY readings per device of all rows known
    ag = Groups.of(ad)
    keep_n = np.minimum(ag.ends - ag.starts + 1, MEMORY)
    nt = np.full((len(devs), MEMORY), np.nan)
    nv = np.full((len(devs), MEMORY), np.nan)
    for j in range(MEMORY):  # columns, not rows
        src = ag.ends - keep_n + 1 + j
        ok = j < keep_n
        nt[:, j] = np.where(ok, at[np.minimum(src, len(at) - 1)], np.nan)
        nv[:, j] = np.where(ok, av[np.minimum(src, len(av) - 1)], np.nan)
    overflow = (ag.ends - ag.starts + 1) > MEMORY
    covered_now = np.where(overflow, nt[:, 0], new_covered)
    ctx.stage(st, d[e], last_t=t[e], active=state[e], mem_t=nt, mem_v=nv,
              covered_from=covered_now)


def _history(rule: Rule, ctx: Context, devs: I64, since: F64, until: F64, from_memory: Bools,
             mem_t: F64, mem_v: F64, covered: F64) -> tuple[I64, F64, F64, F64]:
    """Readings before each device's first batch row: (device, time, value), and from when on
    everything is known per device."""
    md = np.repeat(devs[from_memory], MEMORY)
    mt = mem_t[devs[from_memory]].ravel()
    mv = mem_v[devs[from_memory]].ravel()
    ok = ~np.isnan(mt)
    md, mt, mv = md[ok], mt[ok], mv[ok]
    new_covered = covered[devs].copy()
    need = devs[~from_memory]
    if len(need) and ctx.history is not None:
        s, u = since[~from_memory], until[~from_memory]
        hd, ht, hv = ctx.history(rule.metric, need, float(s.min()), float(u.max()))
        # only what lies before this device's batch rows
        limit = np.full(ctx.n, -np.inf)
        limit[need] = u
        ok = ht < limit[hd]
        md = np.concatenate([md, hd[ok].astype(np.int64)])
        mt = np.concatenate([mt, ht[ok]])
        mv = np.concatenate([mv, hv[ok]])
        new_covered[~from_memory] = np.minimum(s, new_covered[~from_memory])
    return md.astype(np.int64), mt, mv, new_covered


def _window_extreme(d: I64, t: F64, v: F64, window: float, low: bool) -> F64:
    """Per row, the min (or max) of the same device's values in [t - window, t)."""
    n = len(d)
    if n == 0:
        return np.empty(0)
    # a key that sorts like (device, time), to find each window's first row
    t0 = float(t.min())
    span = float(t.max()) - t0 + window + 1.0
    key = d.astype(np.float64) * span + (t - t0)
    start = np.searchsorted(key, key - window, side="left")
    end = np.arange(n)  # exclusive: the row itself is not its own history
    return _range_extreme(v, start, end, low)


def _range_extreme(v: F64, start: I64, end: I64, low: bool) -> F64:
    """min/max of v[start:end] per query, with a sparse table (log n levels of numpy)."""
    op = np.fmin if low else np.fmax
    n = len(v)
    levels = [v]
    width = 1
    while width * 2 <= n:
        prev = levels[-1]
        levels.append(op(prev[:-width], prev[width:]))
        width *= 2
    length = end - start
    result = np.full(len(start), np.nan)
    ok = length > 0
    lg = np.zeros(len(start), dtype=np.int64)
    lg[ok] = np.floor(np.log2(length[ok])).astype(np.int64)
    for k in np.unique(lg[ok]).tolist():
        q = ok & (lg == k)
        table = levels[k]
        a = table[start[q]]
        b = table[end[q] - (1 << k)]
        result[q] = op(a, b)
    return result
