"""The backtest judges silence and clocks by when the centre heard each device, as the live
sweep does: a gateway whose clock runs slow is not silent while it talks, and one whose
clock is hours behind is named. Live through the engine's pipeline with the built-in rules,
then the backtest over what it stored. Real PostgreSQL."""

from __future__ import annotations

import time

import orjson
from tests.app.conftest import query, register
from tests.app.test_device_clock import alerts, heard, sweep
from tests.app.test_shared_rule_state import Process

from vagt.app.cli import main
from vagt.ingest.model import RawMessage

BASE = float(int(time.time()) - 3 * 3600)   # device times may not pass ours
SLOW = ("GWY-0001", "Telit", "HomeHub 4G", "gateway", "Aarhus")    # heartbeat 300 s
RIGHT = ("GWY-0002", "Telit", "HomeHub 4G", "gateway", "Aarhus")   # a clock that is right


def live(database_url: str, behind: float, beats: list[int], steps: int) -> None:
    """Every 5 minutes, step k = 0 .. steps - 1: the gateway whose clock is `behind` sends a
    heartbeat (if k is in `beats`), dated by its clock, and the one whose clock is right
    does; the sweep runs 5 s later, as the engine's does."""
    register(database_url, [SLOW, RIGHT])
    p = Process(database_url, None)
    for k in range(steps):
        at = BASE + 300 * k
        messages: list[RawMessage] = [heard("GWY-0002", at, at)]
        if k in beats:
            messages.insert(0, heard("GWY-0001", at - behind, at))
        p.batch(messages)
        sweep(p, at + 5)
    p.close()


def backtest(database_url: str, start: float, end: float, capsys
             ) -> dict[tuple[str, str], tuple[int, int, int]]:
    """The built-in rules' backtest, a batch a row: (rule, municipality) -> (opened, cleared,
    open at end)."""
    assert main(["rules", "backtest", "--from", str(start), "--to", str(end),
                 "--database-url", database_url, "--batch", "1", "--json"]) == 0
    return {(a["rule"], a["municipality"]): (a["opened"], a["cleared"], a["open_at_end"])
            for a in orjson.loads(capsys.readouterr().out)["alerts"]}


def test_a_gateway_whose_clock_is_slow_is_not_silent_in_the_backtest_as_live(
        database_url, capsys):
    """20 minutes slow, heard every 5 minutes for an hour: judged by its own clock against
    the other gateway's, it was 20 minutes silent (3 heartbeats: 15) at every sweep."""
    live(database_url, behind=20 * 60, beats=list(range(13)), steps=13)
    assert alerts(database_url) == []
    assert backtest(database_url, BASE - 1800, BASE + 13 * 300, capsys) == {}


def test_a_slow_gateways_outage_counts_once_in_the_backtest_as_live(database_url, capsys):
    """20 minutes slow, it is heard for 20 minutes, not for an hour, and again for 30: live
    called it silent once, and its first heartbeat back cleared that."""
    live(database_url, behind=20 * 60, beats=[*range(5), *range(17, 23)], steps=23)
    assert query(database_url, "SELECT rule, device_id, status FROM alerts") == [
        ("device_silent", "GWY-0001", "resolved")]
    assert backtest(database_url, BASE - 1800, BASE + 23 * 300, capsys) == {
        ("device_silent", "Aarhus"): (1, 1, 0)}


def test_a_slow_gateways_outage_whose_end_reached_us_after_the_period_is_open_at_its_end(
        database_url, capsys):
    """Its first heartbeat back is dated within the period, by its clock, and reached us 20
    minutes later, after it: at the period's end the centre had not heard it again."""
    live(database_url, behind=20 * 60, beats=[*range(5), *range(17, 23)], steps=23)
    assert backtest(database_url, BASE - 1800, BASE + 16 * 300, capsys) == {
        ("device_silent", "Aarhus"): (1, 0, 1)}


def test_a_gateway_whose_clock_is_hours_behind_is_named_in_the_backtest_as_live(
        database_url, capsys):
    """Two hours behind, heard every 5 minutes for half an hour: named to the service
    centre once it was behind for 15 minutes. Its messages are dated before the period
    asked for, and reached us within it."""
    live(database_url, behind=2 * 3600, beats=list(range(7)), steps=7)
    assert alerts(database_url) == [("device_clock_wrong", "GWY-0001")]
    assert backtest(database_url, BASE - 60, BASE + 7 * 300, capsys) == {
        ("device_clock_wrong", "Aarhus"): (1, 0, 1)}


def test_the_backtest_says_what_it_cannot_hear(database_url, capsys):
    """Silence and clocks go by the stored rows' receipt times: what left no row, or is
    dated too far back to be read, is not heard, and the report says so."""
    live(database_url, behind=0, beats=[0], steps=1)
    assert main(["rules", "backtest", "--from", str(BASE - 60), "--to", str(BASE + 60),
                 "--database-url", database_url]) == 0
    out = capsys.readouterr().out
    assert "judged by when each device's stored rows reached us" in out
    assert "rows dated more than 24 h before those read that reached us after them" in out
    assert "rules' state from every row dated from" in out
