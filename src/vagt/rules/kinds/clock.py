"""clock: a device that talks with its clock far behind ours (`max_skew`), for `for`.

A device dates what it measures by its own clock. One that lost power may start again at
2000-01-01, one that never synchronised drifts: its readings are stored under the wrong
times, rules that wait on its time (a dose's window, a condition held `for`) go wrong, and
after it is given to another citizen everything it sends is taken for the last citizen's and
left out of the rules (`rule_state.without_last_citizens`). The service centre sets the
clock; this rule tells it which device.

Judged in the fleet-wide sweep (with the absence rules) from what every engine committed:
how far the latest device time it has sent (`last_seen`) lies behind when we last heard it
(`last_heard`). A late message looks the same: a flush of buffered messages after an
outage, or a day's reading queued at the broker while the engine was down, is behind until
the device's next message, which for a spot-check device comes the next day. So a device is
taken for a wrong clock only if it was behind for `for` (15 minutes unless given) and was
heard again meanwhile, still behind: a clock that is right dates that next message right.
A clock that restarted at 2000-01-01 leaves `last_seen` at its last right time (the greatest
is kept), so "behind" is then how long it has sent nothing dated near now. A device whose
device time runs ahead faster than ours while it is behind is catching up (a buffer sent
over minutes, the demo's replayed history), not wrong.
"""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import F64, Bools, Transitions
from vagt.rules.config import Rule
from vagt.rules.state import Context, RuleState

# How much further its device time may move than ours while it is behind (a message dated a
# little later than the one before) and still be a clock that runs behind, not a device
# sending what it kept.
CATCH_UP_SLACK_S = 120.0


def sweep(i: int, rule: Rule, st: RuleState, ctx: Context, now: float, last_seen: F64,
          last_heard: F64, deployed: Bools, open_now: Bools, out: Transitions) -> None:
    """Fire for deployed devices heard behind by more than `max_skew` since `for` ago; clear
    the alerts of those behind no more. Both times are by our clock (`now`): an alert of
    this rule is about the device's clock, so it is not dated by it."""
    n = len(last_seen)
    with np.errstate(invalid="ignore"):
        behind = ctx.applies[:n] & deployed[:n] & (last_heard[:n] - last_seen[:n]
                                                   > rule.max_skew_s)
    since = st.f64("behind_since", ctx.n, np.nan)         # by our clock
    heard_then = st.f64("behind_heard", ctx.n, np.nan)    # its last_heard at that time
    seen_then = st.f64("behind_seen", ctx.n, np.nan)      # and its last_seen
    started = np.flatnonzero(behind & np.isnan(since[:n])).astype(np.int64)
    ended = np.flatnonzero(~behind & ~np.isnan(since[:n])).astype(np.int64)
    ctx.stage(st, started, behind_since=np.full(len(started), now),
              behind_heard=last_heard[started], behind_seen=last_seen[started])
    nan = np.full(len(ended), np.nan)
    ctx.stage(st, ended, behind_since=nan, behind_heard=nan, behind_seen=nan)
    began, first_heard, first_seen = since[:n].copy(), heard_then[:n].copy(), seen_then[:n].copy()
    began[started], first_heard[started] = now, last_heard[started]
    first_seen[started] = last_seen[started]
    with np.errstate(invalid="ignore"):
        # catching up: its device time ran ahead faster than ours (a long buffer sent
        # over minutes, the demo's replayed history): old messages, not a wrong clock
        catching_up = last_seen[:n] - first_seen > 2 * (now - began) + CATCH_UP_SLACK_S
        fire = np.flatnonzero(behind & (now - began >= rule.for_s) & ~catching_up
                              & (last_heard[:n] > first_heard) & ~open_now[:n])
    fire = fire.astype(np.int64)
    clear = np.flatnonzero(~behind & open_now[:n]).astype(np.int64)
    zeros = np.zeros(len(fire), dtype=np.int64)
    at = np.full(len(fire), now)
    hours_behind = (last_heard[fire] - last_seen[fire]) / 3600   # the summary's {value}
    out.add_fires(i, fire, at, at, hours_behind,
                  np.full(len(fire), "", dtype=object), zeros + 1, zeros)
    out.add_clears(i, clear, np.full(len(clear), now), np.zeros(len(clear), dtype=np.int64))
