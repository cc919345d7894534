"""The alarm lane in a process of its own.

In one process the alarm lane shares the GIL with the bulk lane and its paho thread. While a
backlog drains, the bulk lane holds the GIL most of the time, and an alarm waits for it: a
faster bulk lane made alarms slower (see `db.by_key_index`). A process of its own shares
nothing with the bulk lane but the database, where the rules' state is shared already
(`vagt.app.rule_state`), as it is between two engines.

The engine (`AlarmLaneProcess`) starts the child, starts it again if it dies, asks it for
its metrics at each scrape (served with the engine's, on the one endpoint) and whether its
lane is catching up (at each rules tick), passes on a rules reload, and stops it when the
engine stops. The child stops by itself when the engine is gone (its end of the control
pipe closes), after the batch in hand, as a stopped engine does; what it has not
acknowledged the broker sends again.

How the child is started, watched and stopped is `vagt.app.child`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from vagt.app import heap
from vagt.app.child import ChildProcess

if TYPE_CHECKING:
    from vagt.app.pipeline import Pipeline
    from vagt.rules import Rule

log = logging.getLogger("vagt.engine")

ASK_TIMEOUT_S = 2.0          # a scrape or a tick does not wait longer for the child

# The control pipe's messages, engine to child: (number, what). The child answers METRICS
# and CATCHING_UP with (number, answer).
METRICS, CATCHING_UP, RELOAD, STOP = "metrics", "catching_up", "reload", "stop"


class AlarmLaneProcess(ChildProcess):
    """The engine's handle on the alarm lane's process (see the module's text).

    `entry` names the child's function, "module:function"; it receives `first` (the engine's
    configuration, alert policy and rules) as the pipe's first message, at each start.
    """

    def __init__(self, entry: str, first: Any) -> None:
        super().__init__("alarm_lane", entry, first, stop_message=(-1, STOP))
        self._numbers = itertools.count()

    def catching_up(self) -> bool:
        """The child's lane drains a backlog, has not taken its first batch yet, or does not
        answer (a child starting again is in front of what queued meanwhile)."""
        answer = self._ask(CATCHING_UP)
        return answer is None or bool(answer)

    def families(self) -> list[Metric]:
        """The child's metrics, now; none if it does not answer in time."""
        answer = self._ask(METRICS)
        if answer is None:
            if self.alive:  # a dead child is logged by supervise()
                log.warning("event=alarm_lane_metrics_missing note=child_did_not_answer")
            return []
        return list(answer)

    def reload(self, rules: Any, first: Any) -> None:
        """The child runs `rules` now, and a child started from now on `first`, which has
        them (a restart must not read a file again that a reload refused)."""
        with self._pipe_lock:
            self._first = first
        self._tell((RELOAD, rules))

    def _tell(self, what: object) -> None:
        self._send((next(self._numbers), what))  # a child gone is started again

    def _ask(self, what: str) -> Any:
        """The child's answer, or None if it gives none within ASK_TIMEOUT_S."""
        with self._pipe_lock:
            control = self._control
            if control is None or not self.alive:
                return None
            number = next(self._numbers)
            deadline = time.monotonic() + ASK_TIMEOUT_S
            try:
                control.send((number, what))
                while control.poll(max(0.0, deadline - time.monotonic())):
                    got, answer = control.recv()
                    if got == number:     # else a late answer to an earlier question
                        return answer
            except (OSError, EOFError):
                pass
        return None


def serve_control(control: Connection, registry: CollectorRegistry,
                  catching_up: Callable[[], bool], reload: Callable[[Any], object],
                  stop: threading.Event) -> None:
    """The child's side of the pipe, in a thread of its own: answer the engine's questions,
    run the rules the engine reloaded, stop when asked or when the engine is gone.

    However this thread ends, the lane stops with it: a child the engine can no longer ask
    to stop must not go on (the engine starts a new one when this one has ended)."""
    try:
        while not stop.is_set():
            number, what = control.recv()
            if what == METRICS:
                control.send((number, list(registry.collect())))
            elif what == CATCHING_UP:
                control.send((number, catching_up()))
            elif isinstance(what, tuple) and what[0] == RELOAD:
                reload(what[1])
            elif what == STOP:
                stop.set()
    except (EOFError, OSError):
        log.warning("event=engine_gone note=alarm_lane_finishing_batch_in_hand")
    except Exception:
        log.exception("event=alarm_lane_control_failed note=alarm_lane_finishing_batch_in_hand")
    finally:
        stop.set()


RETRY_RENEWAL_S = 60.0    # after a load that failed (the database away), the old one meanwhile


class AlarmPipeline:
    """The alarm lane's pipeline in its process, loaded again now and then, so that what it
    holds stays bounded however long the process runs.

    Its fleet takes in each device as the device's first alarm comes (`Fleet.resolve`) and
    keeps it: over weeks, most of the 30,000 personal alarms of a country. Each costs memory
    (about 1.6 KB, measured in a running engine) and the fleet's refresh a row every 30 s.
    Once the fleet has taken in `renew_after` devices more than it was loaded with,
    `renewed`, which the lane calls between batches with none in hand, loads it again as a
    process started anew would (`load`: the devices with an open rule alert, the others as
    they send, their rules' state from the `rule_state` table) and lets the old one go.

    `pipeline` is the one running now: the fleet's refresh and a rules reload read it
    there. A reload and a renewal take turns (`using`), so a renewal loads the rules a
    reload has just applied."""

    def __init__(self, load: Callable[[list[Rule]], Pipeline], rules: list[Rule],
                 renew_after: int, retry_s: float = RETRY_RENEWAL_S) -> None:
        self._load = load
        self._lock = threading.Lock()
        self.pipeline = load(rules)
        self.renew_after = renew_after
        self._loaded = len(self.pipeline.fleet)
        self._retry_s = retry_s
        self._next_try = 0.0

    def using(self, work: Callable[[Pipeline], object]) -> None:
        """`work` with the pipeline running now, no renewal meanwhile."""
        with self._lock:
            work(self.pipeline)

    def renewed(self, swap: Callable[[Pipeline], object] = lambda new: None
                ) -> Pipeline | None:
        """The pipeline loaded again if the fleet has grown by `renew_after`, else None.

        `swap(new)` hands it to whoever ran the old one (the lane), so that the old one is
        let go before its memory is given back: still held, it would not be collected and
        its freed pages would come after the trim."""
        grown = len(self.pipeline.fleet) - self._loaded
        if not self.renew_after or grown < self.renew_after \
                or time.monotonic() < self._next_try:
            return None
        started = time.monotonic()
        with self._lock:
            try:
                new = self._load(self.pipeline.rules.rules)
            except Exception as e:   # the old one serves meanwhile
                self._next_try = time.monotonic() + self._retry_s
                if isinstance(e, psycopg.Error | TimeoutError):   # the database away
                    log.warning("event=alarm_lane_renewal_failed retry_in_s=%.0f error=%s",
                                self._retry_s, type(e).__name__)
                else:   # a bug: its traceback, to mend it
                    log.exception("event=alarm_lane_renewal_failed retry_in_s=%.0f",
                                  self._retry_s)
                return None
            held = len(self.pipeline.fleet)
            self.pipeline, self._loaded = new, len(new.fleet)
            swap(new)
        heap.release()
        log.info("event=alarm_lane_renewed devices_held=%d devices_now=%d ms=%.0f",
                 held, self._loaded, (time.monotonic() - started) * 1000)
        return new
