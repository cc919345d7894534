"""event: event codes open an alert (every one counts as a repeat of the open alert).

It clears by a clearing code from the same device (`power.mains_lost` by
`power.mains_restored`) or `clear_after` its last firing; with neither, only an operator
resolves it (a fall alarm is closed by the person who handled it, never by a timer).
"""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import F64, Groups, Transitions, emit, latch, sort_rows
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState, fresh


def evaluate(i: int, rule: Rule, st: RuleState, ctx: Context, b: Batch,
             out: Transitions) -> None:
    if len(b.e_device) == 0:
        return
    fires = b.code_mask(rule.codes)
    clears = b.code_mask(rule.clear_codes) & ~fires
    rows = np.flatnonzero((fires | clears) & ctx.applies[b.e_device])
    if len(rows) == 0:
        return
    d, t, c, f = b.e_device[rows], b.e_time[rows], b.e_code[rows], fires[rows]
    order = sort_rows(d, t)
    d, t, c, f = d[order], t[order], c[order], f[order]
    last_t, last_fire = st.f64("last_t", ctx.n, -np.inf), st.f64("last_fire", ctx.n, -np.inf)
    active = st.flag("active", ctx.n)
    if rule.clear_codes:
        # a late event older than what was seen must not reopen what a later code closed;
        # without clearing codes every alarm counts, however late it arrives
        keep = fresh(d, t, last_t, dedupe=False)
        d, t, c, f = d[keep], t[keep], c[keep], f[keep]
        if len(d) == 0:
            return
    g = Groups.of(d)
    initial = active[d]
    state = latch(g, f, ~f, initial)
    emit(out, i, g, t, state, initial, f, np.full(len(d), np.nan), c)
    e = g.ends
    fire_t = np.full(len(d), -np.inf)
    fire_t[f] = t[f]
    latest_fire = np.maximum.reduceat(fire_t, g.starts)
    ctx.stage(st, d[e], last_t=np.maximum(t[e], last_t[d[e]]),
              last_fire=np.maximum(latest_fire, last_fire[d[e]]), active=state[e])


def tick(i: int, rule: Rule, st: RuleState, ctx: Context, now: float,
         out: Transitions) -> None:
    """Clear the alerts whose last firing is `clear_after` in the past, on the device's clock
    (`Context.device_now`): by ours, a dispenser whose clock restarted at 2000 had its jam
    expire at the first tick."""
    if rule.clear_after is None:
        return
    active, last_fire = st.flag("active", ctx.n), st.f64("last_fire", ctx.n, -np.inf)
    due = np.flatnonzero(active & (last_fire + rule.clear_after <= ctx.device_now(now))
                         ).astype(np.int64)
    if len(due) == 0:
        return
    at: F64 = last_fire[due] + rule.clear_after
    out.add_clears(i, due, at, np.zeros(len(due), dtype=np.int64), expired=True)
    ctx.stage(st, due, active=np.zeros(len(due), dtype=bool))
