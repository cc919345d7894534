"""absence: nothing heard from a device for `factor` x its model's heartbeat (or `after`).

Whether a device is silent is decided by a sweep over when the whole fleet was last heard
(by our clock: a device's own may run minutes slow), run by one engine process at a time
(whoever holds the advisory lock), since a device's messages may reach any process. The
sweep fires and clears; a process that sees the device speak again clears at once, without
waiting for the next sweep. A deployed device never heard is silent from its deployment.
"""

from __future__ import annotations

import numpy as np

from vagt.rules._columns import F64, Bools, Transitions
from vagt.rules.config import Rule
from vagt.rules.state import Batch, Context, RuleState

# The code of an absence firing for a device never heard since its deployment (installed and
# never connected: wrong Wi-Fi, a gateway unplugged, a SIM not activated); its alert's
# `code` label, and its summary says so (`pipeline`). Other absence firings have none ("").
NEVER_HEARD = "never_heard"


def limit(rule: Rule, heartbeat_s: F64) -> F64:
    """Seconds of silence after which each device is absent (NaN: unknown heartbeat)."""
    if rule.after_s is not None:
        return np.full(len(heartbeat_s), rule.after_s)
    return heartbeat_s * rule.factor


def evaluate(i: int, rule: Rule, st: RuleState, ctx: Context, b: Batch,
             out: Transitions) -> None:
    """Clear the absence of devices this process believes absent that spoke in the batch."""
    active, since = st.flag("active", ctx.n), st.f64("silent_since", ctx.n, -np.inf)
    if len(b.m_device) == 0 or not active.any():
        return
    devs = np.unique(b.m_device)
    heard = devs[active[devs] & (ctx.latest_seen[devs] > since[devs])]
    if len(heard) == 0:
        return
    fired_at = st.f64("fired_at", ctx.n, -np.inf)
    at = np.maximum(ctx.latest_seen[heard], fired_at[heard])  # never before it fired
    out.add_clears(i, heard, at, np.zeros(len(heard), dtype=np.int64))
    ctx.stage(st, heard, active=np.zeros(len(heard), dtype=bool))


def sweep(i: int, rule: Rule, st: RuleState, ctx: Context, now: float, last_seen: F64,
          last_heard: F64, heartbeat_s: F64, deployed: Bools, open_now: Bools,
          out: Transitions) -> None:
    """Fire for devices silent past their limit that have no open alert; clear the others.

    Silence is `now` less `last_heard`, both by our clock. The alert is dated on the
    device's clock, `last_seen` (its device time) plus the limit, as the device's next
    message, which clears it, is (`evaluate`): a device whose clock runs slow, judged by
    its own time against ours, was silent at every sweep, and every heartbeat cleared it.
    `open_now` is per device whether an absence alert of this rule is open (from the alert
    queue, so it is right whichever process opened it).

    A device with no device time (`last_seen` NaN) but heard (`last_heard`: its deployment,
    `rule_queries.last_heard`) was deployed and never heard: its alert is dated by our clock,
    the deployment plus the limit, with the code NEVER_HEARD, and any first message clears
    it, whatever its clock says (a clock restarted at 2000-01-01 included). A device heard
    neither way (not deployed, or on a shelf) is never absent.
    """
    n = len(last_seen)
    lim = limit(rule, heartbeat_s[:n])
    with np.errstate(invalid="ignore"):
        silent = ctx.applies[:n] & deployed[:n] & (now - last_heard[:n] > lim)
    fire = np.flatnonzero(silent & ~open_now[:n]).astype(np.int64)
    clear = np.flatnonzero(~silent & open_now[:n]).astype(np.int64)
    zeros = np.zeros(len(fire), dtype=np.int64)
    never = np.isnan(last_seen[fire])
    at = np.where(never, last_heard[fire], last_seen[fire]) + lim[fire]
    code = np.where(never, NEVER_HEARD, "").astype(object)
    out.add_fires(i, fire, at, at, np.full(len(fire), np.nan), code, zeros + 1, zeros)
    clear_at = np.fmax(np.full(len(clear), now), last_seen[clear])
    out.add_clears(i, clear, clear_at, np.zeros(len(clear), dtype=np.int64))
    st.flag("active", ctx.n)
    st.f64("silent_since", ctx.n, -np.inf)
    st.f64("fired_at", ctx.n, -np.inf)
    # never heard: silent since before any time a first message may carry
    ctx.stage(st, fire, active=np.ones(len(fire), dtype=bool),
              silent_since=np.where(never, -np.inf, last_seen[fire]), fired_at=at)
    ctx.stage(st, clear, active=np.zeros(len(clear), dtype=bool))
