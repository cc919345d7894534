"""event: event codes open an alert (every one counts as a repeat of the open alert).

It clears by a clearing code from the same device (`power.mains_lost` by
`power.mains_restored`) or `clear_after` its last firing; with neither, only an operator
resolves it (a fall alarm is closed by the person who handled it, never by a timer).
"""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import F64, I64, Bools, Groups, Transitions, emit, latch, sort_rows
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
    order = sort_rows(d, t, ~f)   # at one device time, the clearing code last: power back
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
    expired = np.zeros(len(d), dtype=bool)
    if rule.clear_after is not None:
        ed, et = _expiries(rule.clear_after, d, t, f, last_fire)
        if len(ed):
            d, t = np.r_[d, ed], np.r_[t, et]
            c, f = np.r_[c, np.full(len(ed), "", dtype=object)], np.r_[f, np.zeros(len(ed), bool)]
            expired = np.r_[expired, np.ones(len(ed), dtype=bool)]
            # an expiry before a firing at its time (the tick's `<=`), a clearing code after
            order = sort_rows(d, t, np.where(expired, 0, np.where(f, 1, 2)))
            d, t, c, f, expired = d[order], t[order], c[order], f[order], expired[order]
    g = Groups.of(d)
    initial = active[d]
    state = latch(g, f, ~f, initial)
    emit(out, i, g, t, state, initial, f, np.full(len(d), np.nan), c, expired=expired)
    e = g.ends   # a real row: an expiry comes before a row at or past its time
    fire_t = np.full(len(d), -np.inf)
    fire_t[f] = t[f]
    latest_fire = np.maximum.reduceat(fire_t, g.starts)
    ctx.stage(st, d[e], last_t=np.maximum(t[e], last_t[d[e]]),
              last_fire=np.maximum(latest_fire, last_fire[d[e]]), active=state[e])


def _expiries(clear_after: float, d: I64, t: F64, f: Bools, last_fire: F64) -> tuple[I64, F64]:
    """Where an alert expired between the batch's rows (sorted by device, time): `clear_after`
    after a firing, or after the device's last firing before the batch, with no firing in
    between and a later row of the device at or past that time (without one, the timer's
    tick clears it). The tick would have cleared it there, had it come between the rows:
    in one batch, a jam 13 hours after the last (`dispenser_jam` clears after 12) was a
    repeat of an alert opened 13 hours before, in two a new one. A row older than its
    device's last firing starts no expiry (a late event). Returns (device, time) of each."""
    n = len(d)
    g = Groups.of(d)
    idx = np.arange(n, dtype=np.int64)
    group_end = np.repeat(g.ends, g.ends - g.starts + 1)
    last_row_t = t[group_end]
    since = last_fire[d]   # per row: its device's last firing before the batch
    on_time = f & (t >= since)
    first = np.r_[np.minimum.accumulate(np.where(on_time, idx, n)[::-1])[::-1], n]

    def next_fire_t(rows: I64, after: I64) -> F64:
        """Per row of `rows`, the time of its device's first firing (not late) at row index
        `after` or later (+inf: none)."""
        at = first[np.minimum(after, n)]
        return np.where(at <= group_end[rows], t[np.minimum(at, n - 1)], np.inf)

    ends = t + clear_after
    hit = on_time & (ends <= next_fire_t(idx, idx + 1)) & (ends <= last_row_t)
    s = g.starts
    ends0 = since[s] + clear_after
    hit0 = np.isfinite(ends0) & (ends0 <= next_fire_t(s, s)) & (ends0 <= last_row_t[s])
    return np.r_[d[hit], d[s][hit0]].astype(np.int64), np.r_[ends[hit], ends0[hit0]]


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
