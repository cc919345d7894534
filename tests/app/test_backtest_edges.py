"""At the period's edges the backtest knows what live evaluation knew: at its end, what the
timers and the sweep had found by then with no message coming (a device gone silent, a
dose missed); at its start, the state that rows from before it left (a dose due, when a
device was last heard, however long ago). Live through the engine's pipeline with the
built-in rules, its timers and sweep every 5 minutes, then the backtest over what it
stored. Real PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
import psycopg
from tests.app.conftest import query, telemetry
from tests.app.test_device_clock import heard, sweep
from tests.app.test_shared_rule_state import Process

from vagt.app.cli import main
from vagt.devices import deploy
from vagt.devices import register as register_device
from vagt.devices.catalogue import load_catalogue
from vagt.ingest.model import RawMessage

BASE = float(int(time.time()) - 3 * 3600)   # device times may not pass ours
GATEWAY = ("GWY-0001", "Telit", "HomeHub 4G", "Aarhus")       # heartbeat 300 s: silent at 15 min
DISPENSER = ("DSP-0001", "Evondos", "E300", "Skive")          # heartbeat 900 s: at 45 min


def deployed(database_url: str, device: tuple[str, str, str, str], at: float) -> None:
    """Registered an hour before `at` and deployed to a citizen at `at` (shortly before it
    speaks: live, a device deployed and never heard is silent)."""
    device_id, vendor, model, place = device
    with psycopg.connect(database_url) as conn:
        register_device(conn, device_id, vendor, model, catalogue=load_catalogue(),
                        actor="staff", at=_utc(at - 3600))
        deploy(conn, device_id, citizen_ref=f"cit-{device_id.lower()}", municipality=place,
               actor="staff", at=_utc(at))


def live(database_url: str, messages: list[RawMessage], sweeps: list[float]) -> None:
    """The messages, each heard when its `received_at` says, with the timers and the sweep at
    each of `sweeps` (our clock) in between, as the engine runs them."""
    p = Process(database_url, None)
    waiting = sorted(messages, key=lambda m: m.received_at)
    for now in sorted(sweeps):
        came = [m for m in waiting if m.received_at <= now]
        waiting = waiting[len(came):]
        if came:
            p.batch(came)
        sweep(p, now)
    p.close()


def every_5_minutes(start: float, end: float) -> list[float]:
    return [start + 300 * k for k in range(int((end - start) // 300) + 1)]


def backtest(database_url: str, start: float, end: float, capsys
             ) -> dict[tuple[str, str], tuple[int, int, int]]:
    """The built-in rules' backtest: (rule, municipality) -> (opened, cleared, open at
    end)."""
    assert main(["rules", "backtest", "--from", str(start), "--to", str(end),
                 "--database-url", database_url, "--json"]) == 0
    return {(a["rule"], a["municipality"]): (a["opened"], a["cleared"], a["open_at_end"])
            for a in orjson.loads(capsys.readouterr().out)["alerts"]}


def alerts(database_url: str) -> list[tuple[str, str, str]]:
    return query(database_url, "SELECT rule, device_id, status FROM alerts ORDER BY rule")


def test_a_gateway_silent_since_before_the_periods_end_is_silent_in_the_backtest_as_live(
        database_url, capsys):
    """Heard every 5 minutes for half an hour, then nothing: live, the sweep called it
    silent 15 minutes later, with no message coming. Nothing comes after its last heartbeat
    for the backtest either."""
    deployed(database_url, GATEWAY, BASE - 300)
    beats = [heard("GWY-0001", t, t) for t in every_5_minutes(BASE, BASE + 1800)]
    live(database_url, beats, every_5_minutes(BASE + 5, BASE + 7200))
    assert alerts(database_url) == [("device_silent", "GWY-0001", "open")]
    assert backtest(database_url, BASE - 600, BASE + 7200, capsys) == {
        ("device_silent", "Aarhus"): (1, 0, 1)}


def test_a_dose_due_after_the_last_message_is_missed_in_the_backtest_as_live(
        database_url, capsys):
    """A dose falls due and the dispenser says nothing more: live, the timer called it
    missed 30 minutes later (and the sweep, the dispenser silent 45 minutes after)."""
    deployed(database_url, DISPENSER, BASE - 300)
    live(database_url, [heard("DSP-0001", BASE, BASE, "dose.due")],
         every_5_minutes(BASE + 5, BASE + 7200))
    assert alerts(database_url) == [("device_silent", "DSP-0001", "open"),
                                    ("missed_dose", "DSP-0001", "open")]
    assert backtest(database_url, BASE - 600, BASE + 7200, capsys) == {
        ("device_silent", "Skive"): (1, 0, 1), ("missed_dose", "Skive"): (1, 0, 1)}


def test_the_backtest_of_a_period_ending_later_than_now_sweeps_at_now(database_url, capsys):
    """Heard 10 minutes ago, the gateway is not silent yet (15 minutes): a period that ends
    tomorrow is judged as far as live got, not as if tomorrow had come with nothing heard."""
    now = time.time()
    deployed(database_url, GATEWAY, now - 900)
    live(database_url, [heard("GWY-0001", now - 600, now - 600)], [now - 595])
    assert alerts(database_url) == []
    assert backtest(database_url, now - 3600, now + 86400, capsys) == {}


def test_a_dose_due_just_before_the_period_is_missed_in_it_as_live(database_url, capsys):
    """Due 10 minutes before the period begins, not taken: live, it was missed 20 minutes
    into the period. The backtest reads the rows before the period that the rules' state
    holds (a dose's window)."""
    deployed(database_url, DISPENSER, BASE - 900)
    live(database_url, [heard("DSP-0001", BASE - 600, BASE - 600, "dose.due"),
                        heard("DSP-0001", BASE + 1800, BASE + 1800)],   # a status
         every_5_minutes(BASE - 595, BASE + 3600))
    assert alerts(database_url) == [("missed_dose", "DSP-0001", "open")]
    assert backtest(database_url, BASE, BASE + 3600, capsys) == {
        ("missed_dose", "Skive"): (1, 0, 1)}


def test_a_device_silent_since_long_before_the_period_is_open_through_it_as_live(
        database_url, capsys):
    """Last heard 10 days before the period: live called it silent then, and it stayed so.
    In the period its alert opened nothing new; it was open at the end. The backtest reads
    when each device was last heard before, however long ago."""
    gone = BASE - 10 * 86400
    deployed(database_url, GATEWAY, gone - 300)
    live(database_url, [heard("GWY-0001", gone, gone)],
         [gone + 5, gone + 3600, BASE + 5, BASE + 3600])
    assert alerts(database_url) == [("device_silent", "GWY-0001", "open")]
    assert backtest(database_url, BASE, BASE + 7200, capsys) == {
        ("device_silent", "Aarhus"): (0, 0, 1)}


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


SCALE = ("SCL-0001", "Withings", "Body+", "Viborg")


def weighed(t: float, kg: float) -> RawMessage:
    return RawMessage("vagt/v1/dev/SCL-0001/telemetry", telemetry("SCL-0001", t, weight=kg), t)


def test_a_weight_gain_open_since_two_days_before_the_period_is_not_opened_again_in_it(
        database_url, capsys):
    """A gain of 2.5 kg two days before the period opens the alert (the rule: 2 kg within 3
    days); the first weighing in the period is still 3 kg above the window's lowest, a
    repeat of the open alert live. The backtest reads the weighings of the rule's 3 days
    before the period, past the day it reads every row of."""
    day = 86400
    deployed(database_url, SCALE, BASE - 4 * day)
    live(database_url, [weighed(BASE - 2.5 * day, 80.0), weighed(BASE - 2 * day, 82.5),
                        weighed(BASE + 3600, 83.0)],
         [BASE - 2.5 * day + 5, BASE - 2 * day + 5, BASE + 3605])
    assert query(database_url, "SELECT rule, status, repeat_count FROM alerts") == [
        ("weight_gain", "open", 2)]
    assert backtest(database_url, BASE, BASE + 7200, capsys) == {
        ("weight_gain", "Viborg"): (0, 0, 1)}
