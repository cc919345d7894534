"""While a lane drains a backlog, the rules' deadlines wait: the messages that would meet them
may still be queued at the broker. They wait only so long."""

from __future__ import annotations

import time

from vagt.app import engine
from vagt.app.config import Config
from vagt.app.engine import CatchingUp, RuleTimer
from vagt.app.metrics import EngineMetrics


def timer(catching_up: CatchingUp, metrics: EngineMetrics) -> RuleTimer:
    # the pool and pipeline are not touched by the deferral decision
    return RuleTimer(Config(), None, None, metrics, time.time,  # type: ignore[arg-type]
                     engine.threading.Event(), catching_up)


def test_deadlines_wait_while_a_lane_catches_up_and_resume_when_it_has() -> None:
    up, m = CatchingUp(), EngineMetrics()
    t = timer(up, m)
    assert not t._defer()
    up.mark("bulk", True)
    up.mark("alarm", False)
    assert t._defer() and t._defer()
    assert m.rule_ticks_deferred._value.get() == 2
    up.mark("bulk", False)
    assert not t._defer()


def test_an_engine_that_never_catches_up_still_ticks(monkeypatch) -> None:
    up, m = CatchingUp(), EngineMetrics()
    t = timer(up, m)
    up.mark("bulk", True)
    monkeypatch.setattr(engine, "MAX_TICK_DEFERRAL_S", 0.05)
    assert t._defer()
    time.sleep(0.1)
    assert not t._defer()  # forced through
    assert t._defer()      # and the wait starts again


def test_at_start_deadlines_wait_until_every_lane_has_taken_a_batch() -> None:
    up, m = CatchingUp(["alarm", "bulk"]), EngineMetrics()
    t = timer(up, m)
    assert t._defer()
    up.mark("alarm", False)
    assert t._defer()
    up.mark("bulk", False)  # its first batch was not full: no backlog
    assert not t._defer()


def test_the_last_tick_is_dated_from_the_timers_start_while_the_first_waits() -> None:
    """Ops alert when `time() - vagt_rule_tick_last_done_timestamp_seconds` passes 15
    minutes: a restarted engine waiting to tick behind a backlog is not a stopped timer."""
    up, m = CatchingUp(["alarm", "bulk"]), EngineMetrics()
    started = time.time()
    t = timer(up, m)
    assert t._defer()
    last = m.registry.get_sample_value("vagt_rule_tick_last_done_timestamp_seconds")
    assert last is not None and last >= int(started)


def test_deadlines_wait_for_the_alarm_lane_in_its_own_process_too() -> None:
    up, m = CatchingUp(["bulk"]), EngineMetrics()
    alarm_lane = [True]            # what the child's shared flag says
    up.follow(lambda: alarm_lane[0])
    up.mark("bulk", False)
    t = timer(up, m)
    assert t._defer()
    alarm_lane[0] = False
    assert not t._defer()


def test_a_batch_says_how_far_behind_the_devices_clocks_it_is(database_url) -> None:
    import psycopg
    from tests.app.conftest import DEVICES, register
    from tests.app.test_pipeline import battery, make_pipeline

    from vagt.app import store

    register(database_url, DEVICES)
    now = time.time()
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = make_pipeline(conn)
        # a backlog from an outage: most messages an hour old, one device's live heartbeat
        backlog = p.process(conn, [battery("OXI-0001", now - 3600, 80),
                                   battery("OXI-0002", now - 3500, 80),
                                   battery("BPM-0001", now, 80)])
        live = p.process(conn, [battery("OXI-0001", now - 1, 80)])
    assert 3490 < backlog.device_lag_s < 3610
    assert live.device_lag_s < engine.CATCH_UP_LAG_S
