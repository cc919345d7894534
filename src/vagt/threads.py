"""Background threads of the engine that must not end unnoticed.

The rules' timer (silent devices, missed doses), the fleet's refresh (what other engines
and the registry changed), the alert queue's timer (escalation), the outbox's delivery and
the operator API each run in a thread of their own. If one of them
ended on an error nobody foresaw (a bug, a file that cannot be decoded, uvicorn's
`SystemExit` when its port is taken), the engine would go on ingesting and look healthy
while no silent device was noticed or no alert escalated. `keep_running` says so in the log
and in a metric, and starts the work again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("vagt.engine")

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0


def keep_running(name: str, target: Callable[[threading.Event], None], stop: threading.Event,
                 on_crash: Callable[[str], None] = lambda name: None, *,
                 min_s: float = RESTART_MIN_S, max_s: float = RESTART_MAX_S) -> None:
    """Run `target(stop)` until `stop` is set. When it raises, log it (with the traceback),
    call `on_crash(name)`, and run it again after a pause: `min_s`, doubling up to `max_s`
    while it keeps failing soon after each start. Returns when `stop` is set, or when
    `target` returns."""
    delay = min_s
    while not stop.is_set():
        started = time.monotonic()
        try:
            target(stop)
            return
        except BaseException:  # SystemExit too: uvicorn exits when it cannot bind its port
            if time.monotonic() - started > max_s:
                delay = min_s  # it ran well for a while: a new failure, not the same again
            log.exception("event=thread_crashed thread=%s note=starting_again_in_%gs",
                          name, delay)
            on_crash(name)
        if stop.wait(delay):
            return
        delay = min(delay * 2, max_s)


def start_kept_running(name: str, target: Callable[[threading.Event], None],
                       stop: threading.Event,
                       on_crash: Callable[[str], None] = lambda name: None) -> threading.Thread:
    """`keep_running` in a daemon thread called vagt-`name`, started."""
    t = threading.Thread(target=keep_running, args=(name, target, stop, on_crash),
                         name=f"vagt-{name}", daemon=True)
    t.start()
    return t
