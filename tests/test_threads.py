"""A background thread of the engine that fails is said so and started again."""

from __future__ import annotations

import logging
import threading

from vagt.threads import keep_running


def test_a_target_that_fails_is_logged_counted_and_run_again_until_stopped(caplog):
    stop = threading.Event()
    calls: list[float] = []
    crashes: list[str] = []

    def target(s: threading.Event) -> None:
        calls.append(0)
        if len(calls) == 1:
            raise UnicodeDecodeError("utf-8", b"\xf8", 0, 1, "invalid start byte")
        if len(calls) == 2:
            raise SystemExit(1)      # what uvicorn does when its port is taken
        s.wait()                     # the third run works until the engine stops

    t = threading.Thread(target=keep_running, args=("rules-timer", target, stop,
                                                     crashes.append),
                         kwargs={"min_s": 0.01, "max_s": 0.05})
    with caplog.at_level(logging.ERROR, logger="vagt.engine"):
        t.start()
        for _ in range(200):
            if len(calls) == 3:
                break
            stop.wait(0.01)
        stop.set()
        t.join(timeout=5)
    assert not t.is_alive()
    assert len(calls) == 3
    assert crashes == ["rules-timer", "rules-timer"]
    logged = [r for r in caplog.records if "event=thread_crashed thread=rules-timer" in
              r.getMessage()]
    assert len(logged) == 2 and all(r.exc_info for r in logged)   # with the traceback


def test_a_target_that_returns_is_not_run_again():
    calls: list[int] = []
    keep_running("api", lambda s: calls.append(1), threading.Event(), min_s=0.01)
    assert calls == [1]


def test_no_new_run_once_stopped_during_the_pause():
    stop = threading.Event()
    calls: list[int] = []

    def target(s: threading.Event) -> None:
        calls.append(1)
        stop.set()
        raise RuntimeError("a bug")

    keep_running("alert-timer", target, stop, min_s=0.05)
    assert calls == [1]
