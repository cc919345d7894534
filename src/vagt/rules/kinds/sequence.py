"""sequence: after event A (`first`, dose.due), event B (`then`, dose.taken) is expected
`within` a window. An A not answered in time fires at its deadline; a B clears.

Whether the window passed is judged by device time: a later message of the device (any
message) shows it, or the local timer tick does when the device stays silent (on the
device's clock, `tick`). The As still
waiting are kept per device, the earliest four (`pending`, then `pending_more`), so a window
spans batches and two doses due in a row are both judged, however the batches fell; a fifth
waiting at once is not kept (four doses due within one window is no dosing plan).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vagt.rules._columns import F64, Groups, Obj, Transitions, emit, latch, sort_rows
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState

# The timer tick waits this long past a deadline before it calls a dose missed: a B sent
# just in time may still be on its way.
TICK_GRACE_S = 60.0
# As kept waiting besides the earliest
MORE = 3


def _waiting(st: RuleState, n: int) -> tuple[F64, Obj, F64, Obj]:
    """The earliest waiting A's time and code per device, and the next ones (NaN, "": none)."""
    return (st.f64("pending", n), st.array("pending_code", n, "", object),  # type: ignore[return-value]
            st.f64("pending_more", n, width=MORE),
            st.array("pending_more_code", n, "", object, MORE))


def _kept(st: RuleState, n: int, devs: npt.NDArray[np.int64]) -> tuple[F64, Obj]:
    """The waiting As of `devs`, one row each, earliest first: times (NaN: none) and codes."""
    pending, code, more, more_code = _waiting(st, n)
    return (np.column_stack([pending[devs], more[devs]]),
            np.column_stack([code[devs], more_code[devs]]))


def _stage(ctx: Context, st: RuleState, devs: npt.NDArray[np.int64], t: F64, c: Obj,
           **more: npt.NDArray[np.generic]) -> None:
    ctx.stage(st, devs, pending=t[:, 0], pending_code=c[:, 0], pending_more=t[:, 1:],
              pending_more_code=c[:, 1:], **more)


def evaluate(i: int, rule: Rule, st: RuleState, ctx: Context, b: Batch,
             out: Transitions) -> None:
    last_t, pending = st.f64("last_t", ctx.n, -np.inf), _waiting(st, ctx.n)[0]
    active = st.flag("active", ctx.n)
    fired_at = st.f64("fired_at", ctx.n, -np.inf)   # the latest deadline it fired at
    is_a = b.code_mask(rule.first)
    is_b = b.code_mask(rule.then) & ~is_a
    rows = np.flatnonzero((is_a | is_b) & ctx.applies[b.e_device]) if len(b.e_device) else \
        np.empty(0, dtype=np.int64)
    d, t, c, a = b.e_device[rows], b.e_time[rows], b.e_code[rows], is_a[rows]
    real = t > last_t[d]  # an older event must not change what later ones decided
    d, t, c, a = d[real], t[real], c[real], a[real]
    # a device waiting from before, that showed any sign of life, joins with its waiting As
    seen = np.unique(np.concatenate([b.m_device, d])) if len(b.m_device) else np.unique(d)
    waiting = seen[~np.isnan(pending[seen]) & ctx.applies[seen]] if len(seen) else seen
    if len(d) == 0 and len(waiting) == 0:
        return
    wt, wc = _kept(st, ctx.n, waiting)
    wr, wk = np.nonzero(~np.isnan(wt))
    d = np.concatenate([waiting[wr], d])
    t = np.concatenate([wt[wr, wk], t])
    c = np.concatenate([wc[wr, wk], c])
    a = np.concatenate([np.ones(len(wr), dtype=bool), a])
    is_real = np.r_[np.zeros(len(wr), dtype=bool), np.ones(len(d) - len(wr), bool)]
    order = sort_rows(d, t, ~a)   # a dose taken at the second it was due answers it
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
        # A B clears, dated no earlier than the deadline its alert fired at: a B that came
        # after the miss was judged (a flushed buffer, an earlier message seen later) but
        # is dated before the deadline shows the dose taken in time, and a clear dated
        # before the firing would leave the alert open (alerts.store._CLEAR)
        emit(out, i, lg, lt, state, initial, ls, np.full(len(ld), np.nan), lc,
             clear_time=np.maximum(lt, fired_at[ld]))
        fired = np.maximum.reduceat(np.where(ls, lt, -np.inf), lg.starts)
        ctx.stage(st, ld[lg.ends], active=state[lg.ends],
                  fired_at=np.maximum(fired, fired_at[ld[lg.ends]]))
    # the As still undecided wait, earliest first, in slots 0 .. MORE of their device's row
    u = np.flatnonzero(undecided)
    u_group = np.repeat(np.arange(len(g.starts)), g.ends - g.starts + 1)[u]
    slot = np.arange(len(u)) - np.searchsorted(u_group, u_group, side="left")
    u, u_group, slot = u[slot <= MORE], u_group[slot <= MORE], slot[slot <= MORE]
    kept_t = np.full((len(g.starts), MORE + 1), np.nan)
    kept_c = np.full((len(g.starts), MORE + 1), "", dtype=object)
    kept_t[u_group, slot], kept_c[u_group, slot] = t[u], c[u]
    newest_real = np.maximum.reduceat(np.where(is_real, t, -np.inf), g.starts)
    devs = g.dev[g.starts]
    _stage(ctx, st, devs, kept_t, kept_c, last_t=np.maximum(newest_real, last_t[devs]))


def waiting_until(rule: Rule, st: RuleState, devs: npt.NDArray[np.int64]) -> F64:
    """Per device of `devs`, the deadline of its earliest A still waiting (+inf: none): the
    timer tick fires at it, with no message of the device (see `RuleEngine.holds_from`)."""
    deadline = st.values("pending", devs, np.nan).astype(np.float64) + rule.within_s
    return np.where(np.isnan(deadline), np.inf, deadline)


def tick(i: int, rule: Rule, st: RuleState, ctx: Context, now: float,
         out: Transitions) -> None:
    """A device silent past a deadline: its As were not answered in time. The missed ones
    fire as one episode (a message showing the same would fire them so), the rest wait on.

    A deadline is device time; `now` is ours. They are compared on the device's clock:
    `now` less how far its clock is behind ours (`ctx.behind`: when we last heard it less
    the device time of its latest message). Put the other way round, a deadline has passed
    once the device has been silent, by our clock, for longer than the deadline was away
    on its own clock at its latest message: true whatever its clock says. Against our clock,
    a dispenser 31 minutes slow missed every dose at the first tick, and its dose.taken
    cleared the alert (home care called each time). A device that sends old messages late
    (a buffer after an outage) seems further behind until its next live one: the tick then
    waits at most the window from when we last heard it."""
    pending = _waiting(st, ctx.n)[0]
    st.flag("active", ctx.n)
    fired_at = st.f64("fired_at", ctx.n, -np.inf)
    now_there = ctx.device_now(now)
    with np.errstate(invalid="ignore"):
        due = np.flatnonzero(pending + rule.within_s + TICK_GRACE_S < now_there
                             ).astype(np.int64)
    if len(due) == 0:
        return
    t, c = _kept(st, ctx.n, due)
    with np.errstate(invalid="ignore"):
        missed = (t + rule.within_s + TICK_GRACE_S < now_there[due, None]).sum(axis=1)  # earliest
    rows = np.arange(len(due))
    out.add_fires(i, due, t[:, 0] + rule.within_s, t[rows, missed - 1] + rule.within_s,
                  np.full(len(due), np.nan), c[:, 0].astype(object), missed.astype(np.int64),
                  np.zeros(len(due), dtype=np.int64))
    # the rest move to the front
    take = np.arange(MORE + 1) + missed[:, None]
    inside = take <= MORE
    take = np.minimum(take, MORE)
    _stage(ctx, st, due, np.where(inside, t[rows[:, None], take], np.nan),
           np.where(inside, c[rows[:, None], take], ""), active=np.ones(len(due), dtype=bool),
           fired_at=np.maximum(t[rows, missed - 1] + rule.within_s, fired_at[due]))
