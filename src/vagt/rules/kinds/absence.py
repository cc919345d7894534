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


def silence_date(last_seen: F64, last_heard: F64, lim: F64) -> F64:
    """When a silence became an absence: when we last heard the device (never before the
    latest time it sent, a clock a little ahead), plus the limit.

    The alert queue takes a firing no later than a resolved alert's last firing for that
    one again (`alerts.store`), so the date must stay the same for as long as one silence
    lasts (an alert an operator resolved while the device is still silent is not opened
    again at every sweep) and move on with each new one. `last_heard` does both: it moves
    exactly when the device is heard. The device's latest time alone (`last_seen`, the
    greatest it ever sent) does not move when it is heard with its clock set back or
    restarted at 2000-01-01: every silence after it had the first one's date, and a
    personal alarm silent again was never alerted. A clock behind dates the device's next
    message before this; it clears the alert all the same (`evaluate` dates the clear no
    earlier than the firing).
    """
    return np.fmax(last_seen, last_heard) + lim


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

    Silence is `now` less `last_heard`, both by our clock. `open_now` is per device whether
    an absence alert of this rule is open (from the alert queue, so it is right whichever
    process opened it).

    The alert is dated `last_heard` plus the limit (`silence_date`): a silence has no time
    of the device's own, and its date is what the alert queue tells one silence from the
    next by. A device never heard (`last_seen` NaN) but deployed (`last_heard` is then its
    deployment, `rule_queries.last_heard`) gets the code NEVER_HEARD, and any first message
    clears its alert, whatever its clock says (a clock restarted at 2000-01-01 included). A
    device heard neither way (not deployed, or on a shelf) is never absent.
    """
    n = len(last_seen)
    lim = limit(rule, heartbeat_s[:n])
    with np.errstate(invalid="ignore"):
        silent = ctx.applies[:n] & deployed[:n] & (now - last_heard[:n] > lim)
    fire = np.flatnonzero(silent & ~open_now[:n]).astype(np.int64)
    clear = np.flatnonzero(~silent & open_now[:n]).astype(np.int64)
    zeros = np.zeros(len(fire), dtype=np.int64)
    never = np.isnan(last_seen[fire])
    at = silence_date(last_seen[fire], last_heard[fire], lim[fire])
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
