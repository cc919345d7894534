"""A process of the engine's own, with a pipe to it: started, watched, started again, stopped.

The engine runs two: the alarm lane (`vagt.app.alarm_process`) and the bulk lane's receiver
(`vagt.app.receiver`). Each child is a plain `python -c` subprocess given the pipe's
descriptor, not a `multiprocessing.Process`: spawning one starts multiprocessing's resource
tracker, a third process of 12 MB that vagt has no use for (memory is one of the
performance targets), and imports the parent's `__main__` again.

A child stops by itself when the engine is gone: its end of the pipe closes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("vagt.engine")

STOP_TIMEOUT_S = 30.0        # the batch in hand commits within this, or the child is killed
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STAYED_UP_S = 60.0           # a child that ran this long starts again without delay


class ChildProcess:
    """The engine's handle on one child.

    `entry` names the child's function, "module:function"; it is called with its argv, from
    which `child_pipe` gives the pipe, the log level and `first`, the first message the
    engine sends (the child's configuration). `name` is what logs call the child
    ("alarm_lane" logs event=alarm_lane_process_started, and so on). `stop_message` is sent to
    ask the child to end.
    """

    def __init__(self, name: str, entry: str, first: Any, stop_message: Any) -> None:
        self.name = name
        self._entry = entry
        self._first = first
        self._stop_message = stop_message
        self._control: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe_lock = threading.Lock()      # one sender at a time
        self._stopping = threading.Event()
        # Which child runs: one more at each start, with the pipe, under the pipe's lock. A
        # message meant for one child (an answer to what it sent) must not reach the next.
        self.incarnation = 0

    def start(self) -> None:
        control, child_end = Pipe()
        module, function = self._entry.split(":")
        # glibc's arenas limited first, before the child's module and its threads
        code = ("import sys; from vagt.app import heap; heap.limit_arenas(); "
                f"from {module} import {function}; {function}(sys.argv[1:])")
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(child_end.fileno()),
             str(logging.getLogger().getEffectiveLevel())],
            pass_fds=[child_end.fileno()])
        child_end.close()  # only the child holds it now: its exit closes our end
        # Under the pipe's lock from the first message on: what is sent meanwhile (a reload
        # that changes `first`) waits for the new child, not the one that has ended.
        with self._pipe_lock:
            if self._stopping.is_set():
                # asked to stop while it started (the supervisor's restart of a child that
                # died as the engine stopped): none after `stop`, which waited for the last
                process.kill()
                process.wait()
                control.close()
                log.info("event=%s_process_not_started note=stopping", self.name)
                return
            try:
                control.send(self._first)
            except BaseException:  # it died at once: no child of ours without its pipe
                process.kill()
                process.wait()
                control.close()
                raise
            self._control, self._process = control, process
            self.incarnation += 1
            self._started(control)
        log.info("event=%s_process_started pid=%s", self.name, process.pid)

    def _started(self, control: Connection) -> None:
        """Called with each new child's pipe, after it started, under the pipe's lock: what
        is sent from now on goes to this child."""

    @property
    def first(self) -> Any:
        """What each child is sent first at its start."""
        return self._first

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

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
            delay = 0.0 if quick <= 1 else \
                RESTART_DELAYS_S[min(quick - 1, len(RESTART_DELAYS_S)) - 1]
            log.error("event=%s_process_exited exitcode=%s ran_s=%.0f "
                      "note=starting_again_in_%.0fs", self.name, process.returncode, ran, delay)
            if stop.wait(delay):
                return
            on_restart()
            self._start_again(stop)

    def _start_again(self, stop: threading.Event) -> None:
        """start(), tried again after each of RESTART_DELAYS_S (then the last, on and on)
        while it fails (no memory or processes left for a new one, say): the supervisor's
        thread must not end, or the lane would stay down."""
        for attempt in itertools.count():
            try:
                self.start()
                return
            except Exception:
                delay = RESTART_DELAYS_S[min(attempt, len(RESTART_DELAYS_S) - 1)]
                log.exception("event=%s_process_start_failed note=trying_again_in_%.0fs",
                              self.name, delay)
            if stop.wait(delay):
                return

    def stop(self) -> None:
        """Ask the child to finish what it has in hand and end; kill it if it does not."""
        self.ask_to_stop()
        process = self._process
        if process is None:
            return
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("event=%s_process_killed note=did_not_stop_in_%.0fs", self.name,
                      STOP_TIMEOUT_S)
            process.kill()
            process.wait()
        if self._control is not None:
            self._control.close()

    def ask_to_stop(self) -> None:
        """Ask the child to finish what it has in hand and end, and start no other; `stop`
        waits for it."""
        self._stopping.set()
        self._send(self._stop_message)

    def _send(self, message: Any, incarnation: int | None = None) -> None:
        """Send to the child now running, if it is `incarnation` (when given); nothing if it
        is gone (supervise() starts it again)."""
        with self._pipe_lock:
            if self._control is None or incarnation not in (None, self.incarnation):
                return
            with contextlib.suppress(OSError):
                self._control.send(message)


def child_pipe(argv: list[str]) -> tuple[Connection, int, Any]:
    """In the child: the pipe, the log level, and the engine's first message."""
    control = Connection(int(argv[0]))
    return control, int(argv[1]), control.recv()


def yield_cpu(nice: int, thread: int = 0) -> None:
    """Run the calling thread (or, on Linux, the thread with native id `thread`) at
    niceness `nice`, unless it runs at a higher one already (lowering it needs a privilege).
    Threads it starts afterwards inherit it."""
    current = os.getpriority(os.PRIO_PROCESS, thread)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, thread, nice)


def child_signals(stop: threading.Event) -> None:
    """In the child: SIGTERM stops it; ^C (a terminal's reaches the whole process group) and
    SIGHUP are the engine's to decide on and pass on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
