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

The child is a plain `python -c` subprocess with the control pipe's descriptor, not a
`multiprocessing.Process`: spawning one starts multiprocessing's resource tracker, a third
process of 12 MB that vagt has no use for (memory is one of the performance targets).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

log = logging.getLogger("vagt.engine")

ASK_TIMEOUT_S = 2.0          # a scrape or a tick does not wait longer for the child
STOP_TIMEOUT_S = 30.0        # the batch in hand commits within this, or the child is killed
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STAYED_UP_S = 60.0           # a child that ran this long starts again without delay

# The control pipe's messages, engine to child: (number, what). The child answers METRICS
# and CATCHING_UP with (number, answer).
METRICS, CATCHING_UP, RELOAD, STOP = "metrics", "catching_up", "reload", "stop"


class AlarmLaneProcess:
    """The engine's handle on the alarm lane's process (see the module's text).

    `entry` names the child's function, "module:function"; it is called with the control
    pipe, and receives the engine's configuration as the pipe's first message.
    """

    def __init__(self, entry: str, config: Any) -> None:
        self._entry = entry
        self._config = config
        self._control: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe_lock = threading.Lock()
        self._numbers = itertools.count()
        self._stopping = threading.Event()

    def start(self) -> None:
        control, child_end = Pipe()
        module, function = self._entry.split(":")
        code = f"import sys; from {module} import {function}; {function}(sys.argv[1:])"
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(child_end.fileno()),
             str(logging.getLogger().getEffectiveLevel())],
            pass_fds=[child_end.fileno()])
        child_end.close()  # only the child holds it now: its exit closes our end
        control.send(self._config)
        with self._pipe_lock:
            self._control, self._process = control, process
        log.info("event=alarm_lane_process_started pid=%s", process.pid)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

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

    def reload(self) -> None:
        self._tell(RELOAD)

    def supervise(self, stop: threading.Event,
                  on_restart: Callable[[], None] = lambda: None) -> None:
        """Start the child again whenever it ends without being asked to; returns at `stop`.
        The first time at once; then, while it keeps ending within STAYED_UP_S, after the
        next of RESTART_DELAYS_S."""
        quick = 0   # ends in a row, each within STAYED_UP_S of its start
        while not stop.is_set():
            process = self._process
            if process is None:
                return
            since = time.monotonic()
            while not stop.is_set() and process.poll() is None:
                stop.wait(0.2)
            if stop.is_set() or self._stopping.is_set():
                return
            ran = time.monotonic() - since
            quick = 0 if ran > STAYED_UP_S else quick + 1
            delay = 0.0 if quick <= 1 else RESTART_DELAYS_S[min(quick - 1, len(RESTART_DELAYS_S)) - 1]
            log.error("event=alarm_lane_process_exited exitcode=%s ran_s=%.0f "
                      "note=starting_again_in_%.0fs", process.returncode, ran, delay)
            if stop.wait(delay):
                return
            on_restart()
            self.start()

    def stop(self) -> None:
        """Ask the child to finish its batch in hand and end; kill it if it does not."""
        self._stopping.set()
        self._tell(STOP)
        process = self._process
        if process is None:
            return
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("event=alarm_lane_process_killed note=did_not_stop_in_%.0fs",
                      STOP_TIMEOUT_S)
            process.kill()
            process.wait()
        if self._control is not None:
            self._control.close()

    def _tell(self, what: str) -> None:
        with self._pipe_lock:
            if self._control is None:
                return
            with contextlib.suppress(OSError):  # the child is gone; supervise() starts it again
                self._control.send((next(self._numbers), what))

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


def control_from(argv: list[str]) -> tuple[Connection, int, Any]:
    """In the child: the control pipe, the log level and the configuration."""
    control = Connection(int(argv[0]))
    return control, int(argv[1]), control.recv()


def serve_control(control: Connection, registry: CollectorRegistry,
                  catching_up: Callable[[], bool], reload: Callable[[], None],
                  stop: threading.Event) -> None:
    """The child's side of the pipe, in a thread of its own: answer the engine's questions,
    reload the rules, stop when asked or when the engine is gone."""
    while not stop.is_set():
        try:
            number, what = control.recv()
        except (EOFError, OSError):
            log.warning("event=engine_gone note=alarm_lane_finishing_batch_in_hand")
            stop.set()
            return
        if what == METRICS:
            control.send((number, list(registry.collect())))
        elif what == CATCHING_UP:
            control.send((number, catching_up()))
        elif what == RELOAD:
            reload()
        elif what == STOP:
            stop.set()
