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
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from vagt.app.child import ChildProcess

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
