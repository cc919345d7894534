"""clock: a device that talks with its clock far behind ours (`max_skew`), for `for`.

A device dates what it measures by its own clock. One that lost power may start again at
2000-01-01, one that never synchronised drifts: its readings are stored under the wrong
times, rules that wait on its time (a dose's window, a condition held `for`) go wrong, and
after it is given to another citizen everything it sends is taken for the last citizen's and
left out of the rules (`rule_state.without_last_citizens`). The service centre sets the
clock; this rule tells it which device.

Judged in the fleet-wide sweep (with the absence rules) from what every engine committed:
how far the device time of its latest message (`last_seen`) lies behind when we heard it
(`last_heard`). A device flushing hours of buffered messages after an outage is behind too
until its next live message comes, within minutes: only a device behind for `for` (15
minutes unless given) is taken for a wrong clock. A device silent is the absence rules'.
"""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import F64, Bools, Transitions
from vagt.rules.config import Rule
from vagt.rules.state import Context, RuleState


def sweep(i: int, rule: Rule, st: RuleState, ctx: Context, now: float, last_seen: F64,
          last_heard: F64, deployed: Bools, open_now: Bools, out: Transitions) -> None:
    """Fire for deployed devices heard behind by more than `max_skew` since `for` ago; clear
    the alerts of those behind no more. Both times are by our clock (`now`): an alert of
    this rule is about the device's clock, so it is not dated by it."""
    n = len(last_seen)
    with np.errstate(invalid="ignore"):
        behind = ctx.applies[:n] & deployed[:n] & (last_heard[:n] - last_seen[:n]
                                                   > rule.max_skew_s)
    since = st.f64("behind_since", ctx.n, np.nan)
    started = np.flatnonzero(behind & np.isnan(since[:n])).astype(np.int64)
    ended = np.flatnonzero(~behind & ~np.isnan(since[:n])).astype(np.int64)
    ctx.stage(st, started, behind_since=np.full(len(started), now))
    ctx.stage(st, ended, behind_since=np.full(len(ended), np.nan))
    began = since[:n].copy()
    began[started] = now
    with np.errstate(invalid="ignore"):
        fire = np.flatnonzero(behind & (now - began >= rule.for_s) & ~open_now[:n])
    fire = fire.astype(np.int64)
    clear = np.flatnonzero(~behind & open_now[:n]).astype(np.int64)
    zeros = np.zeros(len(fire), dtype=np.int64)
    at = np.full(len(fire), now)
    hours_behind = (last_heard[fire] - last_seen[fire]) / 3600   # the summary's {value}
    out.add_fires(i, fire, at, at, hours_behind,
                  np.full(len(fire), "", dtype=object), zeros + 1, zeros)
    out.add_clears(i, clear, np.full(len(clear), now), np.zeros(len(clear), dtype=np.int64))
