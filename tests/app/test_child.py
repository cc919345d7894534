"""The engine's child processes are started again when they end, even when a start fails."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from typing import Any

import pytest
from tests.app.conftest import wait_for

from vagt.app import child as child_module
from vagt.app.child import ChildProcess, child_pipe


def until_told(argv: list[str]) -> None:
    """The child's side: wait for "stop" or for the engine to be gone."""
    control, _level, _first = child_pipe(argv)
    try:
        while control.recv() != "stop":
            pass
    except EOFError:
        pass


def test_a_child_whose_new_start_fails_once_is_started_on_the_next_try(monkeypatch, caplog):
    child = ChildProcess("test_child", "tests.app.test_child:until_told", first={},
                         stop_message="stop")
    child.start()
    first = child.pid
    stop = threading.Event()
    supervisor = threading.Thread(target=child.supervise, args=(stop,), daemon=True)
    real_popen = subprocess.Popen
    fails: list[int] = []

    def popen_once_out_of_processes(*args: Any, **kwargs: Any) -> Any:
        if not fails:
            fails.append(1)
            raise BlockingIOError(11, "Resource temporarily unavailable")   # fork: EAGAIN
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(child_module.subprocess, "Popen", popen_once_out_of_processes)
    try:
        with caplog.at_level(logging.INFO, logger="vagt.engine"):
            supervisor.start()
            assert first is not None
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: child.alive and child.pid != first, timeout=15,
                     what="a new child after the failed start")
        assert fails == [1]
        assert any("event=test_child_process_start_failed" in r.getMessage()
                   for r in caplog.records)
        assert supervisor.is_alive()
    finally:
        stop.set()
        child.stop()
        supervisor.join(timeout=5)
    assert not child.alive


@pytest.fixture(autouse=True)
def _run_from_the_repository(monkeypatch):
    # the child imports this module by name: it runs from where pytest runs, as the engine's
    # children run from where the engine runs
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p))


def test_a_child_that_dies_as_the_engine_stops_is_not_started_again_after_the_stop():
    """The supervisor saw the child end before the stop was asked, and starts it again as
    the engine stops: a child started after `stop` returned outlived it, with no one to
    stop it. Here the stop comes at the worst moment, just before the restart."""
    child = ChildProcess("test_child", "tests.app.test_child:until_told", first={},
                         stop_message="stop")
    child.start()
    first = child.pid
    stop = threading.Event()
    supervisor = threading.Thread(target=child.supervise, args=(stop, child.stop), daemon=True)
    supervisor.start()
    try:
        assert first is not None
        os.kill(first, signal.SIGKILL)
        supervisor.join(timeout=15)
        assert not supervisor.is_alive()
        assert child.pid == first and not child.alive
    finally:
        stop.set()
        child.stop()
