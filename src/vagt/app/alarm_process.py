"""The alarm lane in a process of its own.

In one process the alarm lane shares the GIL with the bulk lane and its paho thread. While a
backlog drains, the bulk lane holds the GIL most of the time, and an alarm waits for it: a
faster bulk lane made alarms slower (see `db.by_key_index`). A process of its own shares
nothing with the bulk lane but the database, where the rules' state is shared already
(`vagt.app.rule_state`), as it is between two engines.

The engine (`AlarmLaneProcess`) starts the child, starts it again if it dies, asks it for
its metrics at each scrape (served with the engine's, on the one endpoint), passes on a
rules reload, and stops it when the engine stops. The child stops by itself when the engine
is gone (its end of the control pipe closes), after the batch in hand, as a stopped engine
does; what it has not acknowledged the broker sends again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

log = logging.getLogger("vagt.engine")

CONTROL_TIMEOUT_S = 2.0      # a scrape does not wait longer for the child's metrics
STOP_TIMEOUT_S = 30.0        # the batch in hand commits within this, or the child is killed
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STAYED_UP_S = 60.0           # a child that ran this long starts again without delay

# The control pipe's messages, engine to child. The child answers METRICS only.
METRICS, RELOAD, STOP = "metrics", "reload", "stop"

# The child's entry point: (config, control pipe end, log level, catching-up flag).
Target = Callable[[Any, Connection, int, Any], None]


class AlarmLaneProcess:
    """The engine's handle on the alarm lane's process (see the module's text)."""

    def __init__(self, target: Target, config: Any) -> None:
        self._target = target
        self._config = config
        self._ctx = multiprocessing.get_context("spawn")  # fork copies the engine's threads' locks
        self._control: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._flag: Any = None
        self._pipe_lock = threading.Lock()
        self._stopping = threading.Event()
        self.restarts = 0

    def start(self) -> None:
        control, child_end = self._ctx.Pipe()
        # 1 until the lane's first batch: it may be in front of a backlog (see CatchingUp)
        flag = self._ctx.Value("b", 1, lock=False)
        process = self._ctx.Process(
            target=self._target, name="vagt-alarm-lane", daemon=True,
            args=(self._config, child_end, logging.getLogger().getEffectiveLevel(), flag))
        process.start()
        child_end.close()  # only the child holds it now: its exit closes our end
        with self._pipe_lock:
            self._control, self._process, self._flag = control, process, flag
        log.info("event=alarm_lane_process_started pid=%s", process.pid)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def catching_up(self) -> bool:
        """The child's lane drains a backlog (or has not taken its first batch yet)."""
        return self._flag is None or bool(self._flag.value)

    def supervise(self, stop: threading.Event,
                  on_restart: Callable[[], None] = lambda: None) -> None:
        """Start the child again whenever it ends without being asked to; returns at `stop`."""
        while not stop.is_set():
            process = self._process
            if process is None:
                return
            since = time.monotonic()
            while not stop.is_set() and process.is_alive():
                process.join(0.2)
            if stop.is_set() or self._stopping.is_set():
                return
            self.restarts += 1
            ran = time.monotonic() - since
            delay = 0.0 if ran > STAYED_UP_S else \
                RESTART_DELAYS_S[min(self.restarts, len(RESTART_DELAYS_S)) - 1]
            log.error("event=alarm_lane_process_exited exitcode=%s ran_s=%.0f "
                      "note=starting_again_in_%.0fs", process.exitcode, ran, delay)
            if stop.wait(delay):
                return
            on_restart()
            self.start()

    def families(self) -> list[Metric]:
        """The child's metrics, now; none if it does not answer in time."""
        with self._pipe_lock:
            control = self._control
            if control is None or not self.alive:
                return []
            try:
                while control.poll():   # a late answer to an earlier scrape
                    control.recv()
                control.send(METRICS)
                if control.poll(CONTROL_TIMEOUT_S):
                    got: list[Metric] = control.recv()
                    return got
            except (OSError, EOFError):
                pass
        log.warning("event=alarm_lane_metrics_missing note=child_did_not_answer")
        return []

    def reload(self) -> None:
        self._send(RELOAD)

    def stop(self) -> None:
        """Ask the child to finish its batch in hand and end; kill it if it does not."""
        self._stopping.set()
        self._send(STOP)
        process = self._process
        if process is None:
            return
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            log.error("event=alarm_lane_process_killed note=did_not_stop_in_%.0fs",
                      STOP_TIMEOUT_S)
            process.kill()
            process.join()
        if self._control is not None:
            self._control.close()

    def _send(self, message: str) -> None:
        with self._pipe_lock:
            if self._control is None:
                return
            with contextlib.suppress(OSError):  # the child is gone; supervise() starts it again
                self._control.send(message)


def serve_control(control: Connection, registry: CollectorRegistry,
                  reload: Callable[[], None], stop: threading.Event) -> None:
    """The child's side of the pipe, in a thread of its own: answer for the metrics, reload
    the rules, stop when asked or when the engine is gone."""
    while not stop.is_set():
        try:
            message = control.recv()
        except (EOFError, OSError):
            log.warning("event=engine_gone note=alarm_lane_finishing_batch_in_hand")
            stop.set()
            return
        if message == METRICS:
            control.send(list(registry.collect()))
        elif message == RELOAD:
            reload()
        elif message == STOP:
            stop.set()
