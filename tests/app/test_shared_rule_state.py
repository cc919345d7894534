"""Rule state kept in the database: two engine processes that share one subscription raise
the alerts one process would, whichever of them gets which message; a restart continues
where the rules were; a rolled-back batch leaves no trace in the state.

Rows that come after newer ones of their device are evaluated again in order, from an
earlier state the device's row keeps. What is not promised: rows older even than that state
(written a minute or more before, see `rule_state.CHECKPOINT_AGE_S`) are stored, but the
rules, which went past their time long ago, skip them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import psycopg
import pytest
from tests.app.conftest import DEVICES, query, register, scalar, telemetry

from vagt.app import rule_state, store
from vagt.app.config import IngestConfig
from vagt.app.pipeline import BatchOutcome, Pipeline
from vagt.app.rule_state import IDLE_MAX, SharedRuleState
from vagt.devices import import_csv
from vagt.devices.fleet import Fleet
from vagt.ingest.model import RawMessage
from vagt.rules import load_rules
from vagt.sim import SimConfig, backlog, fleet_csv, last_local, make_fleet

ROOT = "vagt/v1"
T0 = time.time() - 6 * 3600
RULES = """
[[rule]]
name = "spo2_stuck"
kind = "stuck"
metric = "spo2"
count = 4
severity = "warning"
priority = 4
queue = "technical"
summary = "SpO2 on {device_id} stuck"

[[rule]]
name = "spo2_low"
kind = "threshold"
metric = "spo2"
below = 90
clear_at = 93
for = "10m"
severity = "major"
priority = 2
queue = "clinical"
summary = "SpO2 on {device_id} low"

[[rule]]
name = "pulse_high"
kind = "threshold"
metric = "pulse"
above = 120
clear_at = 110
for = "3m"
severity = "warning"
priority = 3
queue = "clinical"
summary = "pulse on {device_id} high"

[[rule]]
name = "missed_dose"
kind = "sequence"
types = ["medicine_dispenser"]
first = ["dose.due"]
then = ["dose.taken"]
within = "30m"
severity = "major"
priority = 2
queue = "home_care"
summary = "dose missed on {device_id}"

[[rule]]
name = "connection_flapping"
kind = "flapping"
codes = ["connection.lost"]
count = 2
window = "1h"
severity = "warning"
priority = 4
queue = "technical"
summary = "{device_id} keeps losing its connection"

[[rule]]
name = "personal_alarm"
kind = "event"
codes = ["alarm.*"]
severity = "critical"
priority = 1
queue = "emergency"
summary = "{code} from {device_id}"
"""
DISPENSER = ("DSP-0001", "Evondos", "E300", "medicine_dispenser", "Skive")
PERSONAL_ALARM = ("PAL-0001", "Tunstall", "Lifeline Vi+", "personal_alarm", "Skive")


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    p = tmp_path / "rules.toml"
    p.write_text(RULES)
    return p


class Process:
    """One engine process's pipeline, on a connection of its own."""

    def __init__(self, database_url: str, rules_file: Path | None, clock: float = 0.0
                 ) -> None:
        self.conn = psycopg.connect(database_url)
        store.prepare_connection(self.conn)
        fleet = Fleet()
        fleet.load(self.conn)
        self.now = clock or time.time()
        self.ticks = 0
        self.pipeline = Pipeline(topic_root=ROOT, ingest=IngestConfig(), fleet=fleet,
                                 rules=load_rules(rules_file), clock=lambda: self.now)
        self.restored = self.pipeline.restore(self.conn)   # devices with a state, at start
        self.conn.commit()

    def batch(self, messages: list[RawMessage], commit: bool = True) -> BatchOutcome:
        out = self.pipeline.process(self.conn, messages)
        if not commit:
            self.conn.rollback()
            return out
        self.conn.commit()
        self.pipeline.after_commit(out)
        return out

    def tick(self, now: float) -> None:
        self.ticks += 1
        out = self.pipeline.tick(self.conn, now, sweep=False)
        self.conn.commit()
        self.pipeline.after_commit(out)

    def close(self) -> None:
        self.conn.close()


def spo2(device_id: str, t: float, value: float) -> RawMessage:
    return RawMessage(f"{ROOT}/dev/{device_id}/telemetry", telemetry(device_id, t, spo2=value),
                      time.time())


def event(device_id: str, t: float, code: str) -> RawMessage:
    """An event heard when it was sent: a tick at `t` + x is x after it, on every clock."""
    return RawMessage(f"{ROOT}/dev/{device_id}/telemetry",
                      orjson.dumps({"device_id": device_id, "time": t,
                                    "events": [{"code": code}]}), t)


def traffic(seed: int) -> list[RawMessage]:
    """Readings of two oximeters a minute apart, in device-time order: stuck runs, low
    spells long enough to alert and too short to, and ordinary varying values."""
    rng = random.Random(seed)
    values: dict[str, list[float]] = {}
    for device_id in ("OXI-0001", "OXI-0002"):
        v: list[float] = []
        while len(v) < 80:
            spell = rng.choice(["stuck", "low", "short_low", "varied"])
            if spell == "stuck":
                v += [95.0] * rng.randint(3, 6)
            elif spell == "low":
                v += [88.0, 87.0] * rng.randint(6, 9)
            elif spell == "short_low":
                v += [88.0, 86.0, 89.0]
            else:
                v += [float(rng.choice([92, 94, 96, 97, 98])) for _ in range(rng.randint(2, 6))]
        values[device_id] = v[:80]
    return [spo2(d, T0 + 60 * k, values[d][k]) for k in range(80) for d in sorted(values)]


def alerts(database_url: str) -> list[tuple[str, str, int, float, float, str]]:
    """What an operator sees of each alert: its rule and device, how often it fired, when
    it began and last fired (device time), its status."""
    return query(database_url,
                 "SELECT rule, device_id, repeat_count, extract(epoch FROM opened_at)::float8, "
                 "extract(epoch FROM last_fired_at)::float8, status FROM alerts "
                 "ORDER BY 1, 2, 4")


def fresh_database(database_url: str) -> None:
    """The registered fleet as it was before any message: how far the rules have seen a
    device's rows is its `last_seen` (the rule state's rows are written only when they
    change)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE alerts, alert_audit, readings, events, rule_state CASCADE")
        conn.execute("UPDATE devices SET last_seen = NULL, seen_before = NULL, battery = NULL, "
                     "battery_at = NULL, signal = NULL, signal_at = NULL, last_seq = NULL, "
                     "seq_gaps = 0")


def test_two_processes_raise_the_alerts_one_would_however_the_messages_are_spread(
        database_url, rules_file):
    register(database_url, DEVICES)
    messages = traffic(seed=7)
    one = Process(database_url, rules_file)
    for k in range(0, len(messages), 5):
        one.batch(messages[k:k + 5])
    one.close()
    expected = alerts(database_url)
    assert {rule for rule, *_ in expected} == {"spo2_stuck", "spo2_low"}  # the test means it

    for seed in range(6):
        fresh_database(database_url)
        a, b = Process(database_url, rules_file), Process(database_url, rules_file)
        rng = random.Random(seed)
        k = 0
        while k < len(messages):  # the broker hands each run of messages to either engine
            size = rng.randint(1, 5)
            rng.choice((a, b)).batch(messages[k:k + size])
            k += size
        a.close()
        b.close()
        assert alerts(database_url) == expected, f"spread {seed}"


def test_two_processes_on_the_simulated_fleets_traffic_raise_the_alerts_one_would(
        database_url):
    """The simulator's backlog (heartbeats, measurements, dose events, connection reports
    of 1,500 devices, the default rules), handed to two engines in runs of 50-800 messages
    and committed up to three runs out of turn: the alerts are those one engine makes in
    order, every one as often. Most batches move nothing the rules decide, so most rows are
    not written, and many devices' first write is a replay of late rows."""
    fleet = make_fleet(1500, 1)
    with psycopg.connect(database_url) as conn:
        import_csv(conn, fleet_csv(fleet), actor="test")
    messages = [RawMessage(m.topic.replace("vagt/v1", ROOT, 1), m.payload, time.time())
                for m in backlog(15_000, devices=1500, seed=1, topic_root=ROOT,
                                 end=last_local(20))]
    one = Process(database_url, None)
    for k in range(0, len(messages), 500):
        one.batch(messages[k:k + 500])
    one.close()
    expected = sim_alerts(database_url)
    assert {"missed_dose", "dispenser_jam"} <= {rule for rule, _, _ in expected}

    for seed in range(3):
        fresh_database(database_url)
        a, b = Process(database_url, None), Process(database_url, None)
        outcomes = out_of_turn(random.Random(seed), (a, b), messages, 50, 800)
        replayed = sum(o.replayed for o in outcomes)
        too_late = sum(o.too_late for o in outcomes)
        a.close()
        b.close()
        assert (sim_alerts(database_url), too_late) == (expected, 0), f"spread {seed}"
        assert replayed > 100   # the test means it


def episodes(database_url: str) -> list[tuple[str, str, int, int, float, float, str]]:
    """Each alert as an operator follows it: how often it fired and was reopened, when it
    began and last fired (device time), its status."""
    return query(database_url,
                 "SELECT rule, device_id, repeat_count, reopen_count, "
                 "extract(epoch FROM opened_at)::float8, "
                 "extract(epoch FROM last_fired_at)::float8, status FROM alerts "
                 "WHERE rule <> 'personal_alarm' ORDER BY 1, 2, 5")


def test_the_rule_timers_ticks_during_a_backlog_drain_change_no_alert(database_url):
    """The simulator's backlog (1,500 devices, the default rules, a day behind our clock)
    drained by two engines, committed out of turn, whose rule timers tick whenever they
    happen to, between any two batches of either: after a tick half a day later has settled
    every deadline, each alert is as one engine that drained it without ticking makes it,
    to its reopenings. Deadlines, a flapping gateway's quiet and an event's clear_after are
    judged on the device's clock; judged on ours, every tick of a drain cleared the
    flapping alerts of gateways still flapping in the backlog, and the next loss reopened
    them."""
    fleet = make_fleet(1500, 1)
    with psycopg.connect(database_url) as conn:
        import_csv(conn, fleet_csv(fleet), actor="test")
    messages = [RawMessage(m.topic.replace("vagt/v1", ROOT, 1), m.payload, time.time())
                for m in backlog(15_000, fleet=fleet, seed=2, topic_root=ROOT,
                                 end=last_local(20, before=time.time() - 86400),
                                 config=SimConfig(flapping_per_year=400))]
    settled = time.time() + 12 * 3600
    one = Process(database_url, None)
    for k in range(0, len(messages), 500):
        one.batch(messages[k:k + 500])
    one.tick(settled)
    one.close()
    expected = episodes(database_url)
    assert {"missed_dose", "connection_flapping"} <= {a[0] for a in expected}

    ticks = 0
    for seed in range(4):
        fresh_database(database_url)
        a, b = Process(database_url, None), Process(database_url, None)
        out_of_turn(random.Random(seed), (a, b), messages, 50, 800, tick_chance=0.5)
        ticks += a.ticks + b.ticks
        a.tick(settled)
        b.tick(settled)
        a.close()
        b.close()
        got = episodes(database_url)   # (an alert taken back fired no time, resolved)
        assert [e for e in got if e[2] > 0] == expected, f"spread {seed}"
        assert {e[6] for e in got if e[2] == 0} <= {"resolved"}, f"spread {seed}"
    assert ticks > 20   # the test means it


def out_of_turn(rng: random.Random, processes: tuple[Process, Process],
                messages: list[RawMessage], least: int, most: int,
                tick_chance: float = 0.0) -> list[BatchOutcome]:
    """The broker hands runs of `least` to `most` messages to either process, and each run
    is committed up to three runs after its turn (that engine was slower). After each
    commit, with `tick_chance`, either process's rule timer ticks, now."""
    runs, k = [], 0
    while k < len(messages):
        size = rng.randint(least, most)
        runs.append((rng.choice(processes), messages[k:k + size]))
        k += size
    order = sorted(range(len(runs)), key=lambda i: i + rng.uniform(0, 3))
    outcomes = []
    for i in order:
        outcomes.append(runs[i][0].batch(runs[i][1]))
        if tick_chance and rng.random() < tick_chance:
            rng.choice(processes).tick(time.time())
    return outcomes


def sim_alerts(database_url: str) -> list[tuple[str, str, int]]:
    """Per (rule, device) how often it fired, but the personal alarms' (one per press)."""
    return query(database_url,
                 "SELECT rule, device_id, sum(repeat_count)::int FROM alerts "
                 "WHERE rule <> 'personal_alarm' GROUP BY 1, 2 ORDER BY 1, 2")


def test_two_processes_raise_the_alerts_one_would_when_one_commits_before_the_other(
        database_url, rules_file):
    """As above, but the two engines commit out of turn: a run of messages the broker handed
    to one is committed after runs handed out later (that engine was slower), so rows come
    after newer ones of their device and are evaluated again in order, and the alerts are
    corrected: as often, from the same time to the same time, with the same status, as one
    engine in order makes them.

    Where the late rows contradict what was raised (a late reading that breaks a stuck run
    the other engine alerted on already), the alert is taken back: resolved, having fired no
    time (`repeat_count` 0); if the rows in order fire it later, it is reopened from there."""
    register(database_url, DEVICES)
    messages = traffic(seed=3)
    flaps = random.Random(3).sample(range(80), 30)
    messages += [event("OXI-0001", T0 + 60 * m + 30, "connection.lost") for m in flaps]
    messages.sort(key=lambda m: orjson.loads(m.payload)["time"])
    one = Process(database_url, rules_file)
    for k in range(0, len(messages), 5):
        one.batch(messages[k:k + 5])
    one.close()
    expected = alerts(database_url)
    assert {rule for rule, *_ in expected} == {"spo2_stuck", "spo2_low", "connection_flapping"}

    late = taken_back = 0
    for seed in range(4):
        fresh_database(database_url)
        a, b = Process(database_url, rules_file), Process(database_url, rules_file)
        outcomes = out_of_turn(random.Random(seed), (a, b), messages, 1, 5)
        late += sum(o.replayed for o in outcomes)
        taken_back += sum(len(o.taken_back) for o in outcomes)
        a.close()
        b.close()
        got = alerts(database_url)
        assert [g for g in got if g[2] > 0] == expected, f"spread {seed}"
        assert {g[5] for g in got if g[2] == 0} <= {"resolved"}, f"spread {seed}"
    assert late > 10 and taken_back > 0   # the test means it


def pulse(minutes: list[int], value: float) -> list[RawMessage]:
    return [RawMessage(f"{ROOT}/dev/OXI-0001/telemetry",
                       telemetry("OXI-0001", T0 + 60 * m, pulse=value), time.time())
            for m in minutes]


def pulse_alerts(database_url: str) -> list[tuple[str, int, float, float, str]]:
    return [(rule, n, round((opened - T0) / 60, 3), round((last - T0) / 60, 3), status)
            for rule, _, n, opened, last, status in alerts(database_url)]


def row_version(database_url: str) -> int:
    return query(database_url,
                 "SELECT version FROM rule_state WHERE device_id = 'OXI-0001'")[0][0]


def test_late_rows_go_in_order_with_a_reading_that_moved_nothing_the_rules_decide(
        database_url, rules_file):
    """A normal pulse (minute 6) moves nothing the rules decide, so the device's rule state
    is not written for it; the device's buffer then brings a high spell around it. In order,
    minutes 2-5 raise the alert, minute 6 clears it, and 7-8 are too short a spell to raise
    it again. The late rows must be seen as late (the device's last seen says so, the rule
    state's row does not), and evaluated with minute 6 between them: not skipped as older
    than it, and not evaluated without it (an alert that never clears)."""
    register(database_url, DEVICES)
    flush = pulse([2, 3, 4, 5], 125) + pulse([7, 8], 125)
    one = Process(database_url, rules_file)
    one.batch(pulse([6], 80))
    assert row_version(database_url) == 0      # not written: nothing moved
    one.batch(sorted(flush + pulse([6], 80), key=lambda m: orjson.loads(m.payload)["time"]))
    one.close()
    expected = pulse_alerts(database_url)
    assert expected == [("pulse_high", 1, 5.0, 5.0, "resolved")]

    for same_process in (True, False):
        fresh_database(database_url)
        a, b = Process(database_url, rules_file), Process(database_url, rules_file)
        b.batch(pulse([6], 80))
        assert row_version(database_url) == 0
        assert (a if not same_process else b).batch(flush).replayed == 1
        a.close()
        b.close()
        assert pulse_alerts(database_url) == expected, same_process


def test_rows_older_than_a_first_write_that_was_a_replay_go_back_to_the_empty_state(
        database_url, rules_file):
    """A device's first write can be a replay: its row was never written (a reading that
    moved nothing), and late rows came. Rows older still, coming after that, go back to the
    empty state and in order: minutes 1-4 raise the alert, minute 5 clears it. (A replay
    kept the row without an earlier state, and such rows were skipped.)"""
    register(database_url, DEVICES)
    one = Process(database_url, rules_file)
    one.batch(pulse([1, 2, 3, 4], 125) + pulse([5, 10], 80))
    one.close()
    expected = pulse_alerts(database_url)
    assert expected == [("pulse_high", 1, 4.0, 4.0, "resolved")]

    fresh_database(database_url)
    a, b = Process(database_url, rules_file), Process(database_url, rules_file)
    b.batch(pulse([10], 80))
    assert a.batch(pulse([5], 80)).replayed == 1        # the first write
    out = b.batch(pulse([1, 2, 3, 4], 125))
    assert (out.replayed, out.too_late) == (1, 0)
    a.close()
    b.close()
    assert pulse_alerts(database_url) == expected


def test_a_state_unwritten_for_idle_max_batches_is_written_and_late_rows_go_back_to_it(
        database_url, rules_file):
    """Readings that move nothing the rules decide leave the row as it was, but for every
    IDLE_MAX-th batch of its device: late rows newer than that go back to it, not to a state
    from further back. A reading that raises an alert is written at once."""
    register(database_url, DEVICES)
    p = Process(database_url, rules_file)
    versions = []
    for m in range(2 * IDLE_MAX):
        p.batch(pulse([m], 80))
        versions.append(row_version(database_url))
    written = [k + 1 for k, v in enumerate(versions) if v != ([0] + versions)[k]]
    assert written == [IDLE_MAX, 2 * IDLE_MAX]
    as_of = query(database_url, "SELECT as_of FROM rule_state WHERE device_id = 'OXI-0001'")
    assert as_of[0][0] == pytest.approx(T0 + 60 * (2 * IDLE_MAX - 1), abs=1e-6)

    m0 = 2 * IDLE_MAX       # the row is as of m0 - 1
    p.batch(pulse([m0 + 4], 80))
    out = p.batch(pulse([m0, m0 + 1, m0 + 2, m0 + 3], 125) + pulse([m0 + 5, m0 + 6], 125))
    assert (out.replayed, out.too_late) == (1, 0)
    p.close()
    assert pulse_alerts(database_url) == [("pulse_high", 1, m0 + 3.0, m0 + 3.0, "resolved")]
    assert row_version(database_url) != versions[-1]


def lost(minutes: list[int]) -> list[RawMessage]:
    return [event("OXI-0001", T0 + 60 * m, "connection.lost") for m in minutes]


def flapping_alerts(database_url: str) -> list[tuple[str, int, float, float, str]]:
    return [(rule, n, round((opened - T0) / 60, 3), round((last - T0) / 60, 3), status)
            for rule, _, n, opened, last, status in alerts(database_url)]


def in_order(database_url: str, rules_file: Path, batches: list[list[int]]
             ) -> list[tuple[str, int, float, float, str]]:
    """The flapping alerts one engine makes of `batches` of losses, in order; the database
    is left without them."""
    one = Process(database_url, rules_file)
    for minutes in batches:
        one.batch(lost(minutes))
    one.close()
    made = flapping_alerts(database_url)
    fresh_database(database_url)
    return made


def test_rows_that_come_after_newer_ones_are_evaluated_in_order(database_url, rules_file):
    """Another engine commits the device's newest row first; the older ones follow. The
    rules must see all four in device-time order: more than two losses within the hour."""
    register(database_url, DEVICES)
    expected = in_order(database_url, rules_file, [[0, 10, 20], [30], [100], [110, 120, 125]])
    assert [a[:4] for a in expected] == [("connection_flapping", 4, 20.0, 125.0)]

    a, b = Process(database_url, rules_file), Process(database_url, rules_file)
    b.batch(lost([30]))
    a.batch(lost([0, 10, 20]))   # older than what b committed: late
    a.batch(lost([100]))         # a goes on from the state b's and its rows made
    b.batch(lost([110, 120, 125]))
    a.close()
    b.close()
    assert flapping_alerts(database_url) == expected


def test_rows_older_than_several_commits_of_the_other_process_are_evaluated_in_order(
        database_url, rules_file):
    """While one engine holds a device's older rows, the other commits two batches of its
    newer ones (the broker spread a device's messages so, and a drain runs fast): the older
    rows still go in order. Before, only the state before the last write was kept, and rows
    older than that were skipped: the alerts then depended on how the broker spread them."""
    register(database_url, DEVICES)
    expected = in_order(database_url, rules_file, [[0, 10], [20], [30], [100], [110, 120, 125]])
    assert [a[:4] for a in expected] == [("connection_flapping", 4, 20.0, 125.0)]

    a, b = Process(database_url, rules_file), Process(database_url, rules_file)
    b.batch(lost([20]))
    b.batch(lost([30]))
    assert a.batch(lost([0, 10])).replayed == 1   # older than both of b's
    a.batch(lost([100]))
    b.batch(lost([110, 120, 125]))
    a.close()
    b.close()
    assert flapping_alerts(database_url) == expected


def test_an_alert_raised_before_late_rows_came_is_counted_as_in_order(database_url, rules_file):
    """The other engine raised the flapping alert from the rows it had (at minute 20); the
    late row (minute 15) makes it begin earlier and fire once more. The alert ends as one
    engine would have made it: opened at 15, fired twice; not at 20, once."""
    register(database_url, DEVICES)
    expected = in_order(database_url, rules_file, [[0], [10], [15], [20]])
    assert [a[:4] for a in expected] == [("connection_flapping", 2, 15.0, 20.0)]

    for late_first in (True, False):
        fresh_database(database_url)
        a, b = Process(database_url, rules_file), Process(database_url, rules_file)
        b.batch(lost([0]))
        b.batch(lost([10, 20]))
        assert [x[:4] for x in flapping_alerts(database_url)] == [
            ("connection_flapping", 1, 20.0, 20.0)]
        if late_first:
            assert a.batch(lost([15])).replayed == 1
        else:  # the same message again, then the late one: nothing counts twice
            a.batch(lost([10, 20]))
            b.batch(lost([15]))
            a.batch(lost([15]))
        a.close()
        b.close()
        assert flapping_alerts(database_url) == expected, late_first


def test_a_state_a_minute_old_is_where_late_rows_go_back_to(database_url, rules_file):
    """How far back late rows can go: to the state written a minute before (`checkpoint_age_s`;
    an engine holds rows for seconds), or at most ten minutes before (`checkpoint_max_s`,
    for a device written more than once a minute on end). Older rows are skipped, counted
    in the outcome (and the vagt_rule_late_rows_skipped metric)."""
    register(database_url, DEVICES)
    for age, longest in ((0.0, 600.0), (600.0, 0.0)):
        fresh_database(database_url)
        p = Process(database_url, rules_file)
        p.pipeline.shared.checkpoint_age_s, p.pipeline.shared.checkpoint_max_s = age, longest
        p.batch(lost([20]))
        p.batch(lost([30]))        # the state after [20] is the one to go back to now
        out = p.batch(lost([0, 10]))
        assert (out.replayed, out.too_late) == (0, 1), (age, longest)
        out = p.batch(lost([25]))  # newer than that state: evaluated in order
        assert (out.replayed, out.too_late) == (1, 0), (age, longest)
        p.close()
        assert [a[:4] for a in flapping_alerts(database_url)] == [
            ("connection_flapping", 1, 30.0, 30.0)], (age, longest)


def test_a_fall_alarm_too_late_to_evaluate_in_order_still_raises_its_alert(database_url):
    """A personal alarm's gateway sends the events it kept while offline after newer ones,
    too late to evaluate in order (older than the state written before). The rules that
    need order skip them (a mains loss is not raised after its restoration), but a fall
    alarm is raised: every alarm counts, however late it comes."""
    register(database_url, [PERSONAL_ALARM])
    t0 = float(int(T0))                               # whole seconds: the database keeps µs
    p = Process(database_url, None)                   # the built-in rules
    p.pipeline.shared.checkpoint_age_s = 0.0          # every write is one to go back to
    p.batch([event("PAL-0001", t0 + 20, "power.mains_lost")])
    p.batch([event("PAL-0001", t0 + 30, "power.mains_restored")])
    out = p.batch([event("PAL-0001", t0 + 0, "alarm.fall"),
                   event("PAL-0001", t0 + 5, "power.mains_lost")])
    p.close()
    assert out.too_late == 1
    assert query(database_url, "SELECT rule, status, extract(epoch FROM last_fired_at)::float8 "
                               "FROM alerts ORDER BY id") == [
        ("mains_power_lost", "resolved", t0 + 20), ("personal_alarm", "open", t0)]


def test_a_device_flushing_its_buffer_after_a_live_reading_is_evaluated_in_order(
        database_url, rules_file):
    register(database_url, DEVICES)
    p = Process(database_url, rules_file)
    p.batch(lost([30]))             # live, after the device reconnected
    p.batch(lost([0, 10, 20]))      # then what it had buffered while offline
    p.close()
    assert [a[:4] for a in flapping_alerts(database_url)] == [
        ("connection_flapping", 2, 20.0, 30.0)]


def test_a_restarted_engine_continues_the_rules_where_they_were(database_url, rules_file):
    register(database_url, DEVICES)
    # 4 identical values in a row alert; a restart after the third must not start again
    first = Process(database_url, rules_file)
    first.batch([spo2("OXI-0001", T0 + 60 * k, 95) for k in range(3)])
    first.close()
    again = Process(database_url, rules_file)
    again.batch([spo2("OXI-0001", T0 + 180, 95)])
    again.close()
    assert [a[:3] for a in alerts(database_url)] == [("spo2_stuck", "OXI-0001", 1)]


def test_a_state_written_and_read_in_parts_continues_every_device_after_a_restart(
        database_url, rules_file, monkeypatch):
    """A tick after a backlog writes the state of most of the fleet, a part at a time
    (`SAVE_CHUNK` devices), and a start reads it back a part at a time (`RESTORE_CHUNK`):
    every part reaches the table and memory, whichever part a device is in."""
    register(database_url, DEVICES)
    monkeypatch.setattr(rule_state, "SAVE_CHUNK", 1)
    monkeypatch.setattr(rule_state, "RESTORE_CHUNK", 1)
    oximeters = ("OXI-0001", "OXI-0002")
    # 4 identical values in a row alert; a restart after the third must not start again
    first = Process(database_url, rules_file)
    first.batch([spo2(d, T0 + 60 * k, 95) for k in range(3) for d in oximeters])
    first.close()
    again = Process(database_url, rules_file)
    assert again.restored == len(oximeters)
    again.batch([spo2(d, T0 + 180, 95) for d in oximeters])
    again.close()
    assert [a[:3] for a in alerts(database_url)] == [("spo2_stuck", d, 1) for d in oximeters]


def test_a_batch_that_rolled_back_leaves_the_rules_state_as_it_was(database_url, rules_file):
    register(database_url, DEVICES)
    p = Process(database_url, rules_file)
    p.batch([spo2("OXI-0001", T0, 95), spo2("OXI-0001", T0 + 60, 95)])
    p.batch([spo2("OXI-0001", T0 + 120, 95)], commit=False)  # never happened
    p.batch([spo2("OXI-0001", T0 + 180, 95)])
    assert alerts(database_url) == []  # three in a row stored, not four
    p.batch([spo2("OXI-0001", T0 + 240, 95)])
    assert [a[:3] for a in alerts(database_url)] == [("spo2_stuck", "OXI-0001", 1)]
    p.close()


def save_fails_then_retry(p: Process, monkeypatch: pytest.MonkeyPatch,
                          batch: list[RawMessage]) -> None:
    """The batch's rule-state write fails (the connection drops in that statement), and the
    lane commits the batch again."""
    def dropped(*_args: object, **_kw: object) -> None:
        raise psycopg.OperationalError("the connection dropped while the state was written")

    with monkeypatch.context() as m:
        m.setattr(SharedRuleState, "save", dropped)
        with pytest.raises(psycopg.OperationalError):
            p.batch(batch)
    p.conn.rollback()
    p.batch(batch)


@pytest.mark.parametrize("written_before", [True, False])
def test_a_batch_whose_state_could_not_be_saved_leaves_the_rules_as_they_were(
        database_url, rules_file, monkeypatch, written_before):
    """The state goes into memory before its row is written; if writing it fails (the
    connection drops in that statement), the batch is retried from the state before it,
    not on top of its own failed evaluation. With and without a row written earlier."""
    register(database_url, DEVICES)
    p = Process(database_url, rules_file)
    first = [spo2("OXI-0001", T0 + 60 * k, 95) for k in range(2 if written_before else 0)]
    if first:
        p.batch(first)
    third = [spo2("OXI-0001", T0 + 120, 95)]
    save_fails_then_retry(p, monkeypatch, third)
    more = [spo2("OXI-0001", T0 + 180 + 60 * k, 95) for k in range(3 - len(first))]
    if more[:-1]:
        p.batch(more[:-1])
    assert alerts(database_url) == []               # three in a row so far, not four
    p.batch(more[-1:])
    assert [a[:3] for a in alerts(database_url)] == [("spo2_stuck", "OXI-0001", 1)]
    p.close()


def test_an_alert_whose_state_could_not_be_saved_fires_when_its_batch_is_retried(
        database_url, rules_file, monkeypatch):
    register(database_url, DEVICES)
    p = Process(database_url, rules_file)
    p.batch([spo2("OXI-0001", T0 + 60 * k, 95) for k in range(3)])
    fourth = [spo2("OXI-0001", T0 + 180, 95)]      # the one that makes it stuck
    save_fails_then_retry(p, monkeypatch, fourth)
    assert [a[:3] for a in alerts(database_url)] == [("spo2_stuck", "OXI-0001", 1)]
    p.close()


def test_a_dose_due_seen_by_one_process_is_called_missed_by_the_other_and_only_once(
        database_url, rules_file):
    register(database_url, DEVICES + [DISPENSER])
    due = T0 + 3600
    a, b = Process(database_url, rules_file), Process(database_url, rules_file)
    a.batch([event("DSP-0001", due, "dose.due")])
    b.tick(due + 3600)   # b never saw the dispenser; it reads what a wrote
    a.tick(due + 3660)   # a had the dose pending in memory; the table says it is handled
    a.close()
    b.close()
    assert [r[:3] for r in alerts(database_url)] == [("missed_dose", "DSP-0001", 1)]


def test_devices_locked_more_than_a_part_at_a_time_are_all_locked_and_read_again(
        database_url, rules_file, monkeypatch):
    """A sweep after a backlog may lock most of the fleet. They are locked in one
    statement, in device order; their versions are read VERSIONS_PART devices at a time
    (200,000 rows at once were 50 MB for a moment), and what another process wrote is read
    into memory for the devices of every part."""
    second = ("DSP-0002", "Evondos", "E300", "medicine_dispenser", "Skive")
    register(database_url, DEVICES + [DISPENSER, second])
    monkeypatch.setattr(rule_state, "VERSIONS_PART", 1)
    b, a = Process(database_url, rules_file), Process(database_url, rules_file)
    a.batch([event(d, T0, "dose.due") for d in ("DSP-0001", "DSP-0002", "ALM-0001")])
    ids = ["ALM-0001", "DSP-0001", "DSP-0002"]
    devs = np.sort(b.pipeline.fleet.lookup(ids))
    missed = dict((r.name, st) for r, st in b.pipeline.rules.rule_states())["missed_dose"]
    assert np.isnan(missed.values("pending", devs, np.nan)).all()   # b has not seen them
    b.pipeline.shared.lock(b.conn, devs)
    pending = missed.values("pending", devs, np.nan)
    assert np.isnan(pending[0]) and np.allclose(pending[1:], T0)     # the dispensers' doses
    with psycopg.connect(database_url) as other:
        for device_id in ids:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute("SELECT 1 FROM devices WHERE device_id = %s "
                              "FOR NO KEY UPDATE NOWAIT", (device_id,))
            other.rollback()
    a.close()
    b.close()


def test_a_tick_goes_by_what_a_batch_of_its_own_process_committed_meanwhile(
        database_url, rules_file):
    # The timer's thread finds the dose missed from memory; before it locks the dispenser,
    # the bulk lane of the same process commits the dose taken in time (it came late). The
    # tick must go by that, not by what it found before.
    register(database_url, DEVICES + [DISPENSER])
    due = T0 + 3600
    p = Process(database_url, rules_file)
    p.batch([event("DSP-0001", due, "dose.due")])
    lane = psycopg.connect(database_url)
    store.prepare_connection(lane)
    tick = p.pipeline.rules.tick

    def tick_then_the_batch(now: float, behind=None):
        ev = tick(now, behind)
        if not lane.closed:
            out = p.pipeline.process(lane, [event("DSP-0001", due + 600, "dose.taken")])
            lane.commit()
            p.pipeline.after_commit(out)
            lane.close()
        return ev

    p.pipeline.rules.tick = tick_then_the_batch  # type: ignore[method-assign]
    p.tick(due + 3600)
    p.tick(due + 7200)
    p.close()
    assert alerts(database_url) == []


class Aside:
    """`work` in a thread of its own once started: what it raised (a deadlock's
    cancellation; the test adds the other side's), and when it ended."""

    def __init__(self, work: Callable[[], object]) -> None:
        self.work = work
        self.failed: list[BaseException] = []
        self.done = threading.Event()
        self.started = False

    def start(self) -> None:
        """Once: a second thread would run `work` on the same connection, still running when
        the test closes it (a crash in libpq, or its bytes on the next test's connection)."""
        assert not self.started, "the other engine's batch was started twice"
        self.started = True
        threading.Thread(target=self._run).start()

    def _run(self) -> None:
        try:
            self.work()
        except BaseException as e:
            self.failed.append(e)
        finally:
            self.done.set()


def waiting_for_a_lock_or_done(database_url: str, conn: psycopg.Connection,
                               done: threading.Event, timeout: float = 10) -> None:
    """Until `conn`'s statement waits for a lock another transaction holds, or `done`."""
    deadline = time.monotonic() + timeout
    while not done.is_set() and time.monotonic() < deadline:
        if scalar(database_url, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s "
                                "AND wait_event_type = 'Lock'", (conn.info.backend_pid,)):
            return
        time.sleep(0.02)


def test_the_sweep_does_not_hold_the_ticks_devices_while_it_waits_for_a_batchs(
        database_url, monkeypatch):
    """The timer's tick holds the dispenser whose dose it calls missed; the absence sweep
    then locks every silent device. The other engine's batch holds a silent one (ALM-0001)
    and waits, in device order, for the dispenser: with both in one transaction, each
    waited for the other, and the database cancelled one of them as a deadlock (twice in
    a 20-minute soak, at the tick forced during a drain). The tick commits first now."""
    register(database_url, DEVICES + [DISPENSER])
    due = T0 + 3600
    a, b = Process(database_url, None), Process(database_url, None)
    a.batch([event("DSP-0001", due, "dose.due")])
    other = Aside(lambda: b.batch([event("ALM-0001", due + 60, "power.mains_lost"),
                                   event("DSP-0001", due + 60, "dose.taken")]))
    sweep = a.pipeline.rules.sweep_absence

    def meanwhile(*args, **kw):   # the batch comes while the sweep begins: at its first
        if not other.started:     # answer (it is asked again once it has locked what it touches)
            other.start()
            waiting_for_a_lock_or_done(database_url, b.conn, other.done)
        return sweep(*args, **kw)

    monkeypatch.setattr(a.pipeline.rules, "sweep_absence", meanwhile)
    try:
        out = a.pipeline.tick(a.conn, due + 13 * 3600, sweep=True)
        a.conn.commit()
        a.pipeline.after_commit(out)
    except psycopg.errors.DeadlockDetected as e:
        other.failed.append(e)
    assert other.done.wait(30)
    a.close()
    b.close()
    assert other.failed == []
    assert ("missed_dose", "DSP-0001") in {(r[0], r[1]) for r in alerts(database_url)}


def test_a_ticks_later_round_gives_back_what_it_holds_before_it_waits(database_url,
                                                                        monkeypatch):
    """A tick locks the devices its first answer touches (DSP-0001, its dose missed) and
    asks again; meanwhile a lane of its own process committed another dispenser's dose due
    (DSP-0000), so the second answer touches that one too. The other engine's batch holds
    DSP-0000 and waits, in device order, for DSP-0001: the tick waiting for DSP-0000 while
    it held DSP-0001 was a deadlock. It gives DSP-0001 back and takes both in order."""
    first = ("DSP-0000", *DISPENSER[1:])
    register(database_url, DEVICES + [DISPENSER, first])
    due = T0 + 3600
    a, b = Process(database_url, None), Process(database_url, None)
    a.batch([event("DSP-0001", due, "dose.due")])
    other = Aside(lambda: b.batch([event("DSP-0000", due + 60, "power.mains_lost"),
                                   event("DSP-0001", due + 60, "power.mains_lost")]))
    tick = a.pipeline.rules.tick
    calls = []

    def meanwhile(now: float, behind=None):
        calls.append(now)
        if len(calls) == 2:   # the second answer, DSP-0001 locked
            lane = psycopg.connect(database_url)
            store.prepare_connection(lane)
            out = a.pipeline.process(lane, [event("DSP-0000", due, "dose.due")])
            lane.commit()
            a.pipeline.after_commit(out)
            lane.close()
            other.start()
            waiting_for_a_lock_or_done(database_url, b.conn, other.done)
        return tick(now, behind)

    monkeypatch.setattr(a.pipeline.rules, "tick", meanwhile)
    try:
        a.tick(due + 13 * 3600)
    except psycopg.errors.DeadlockDetected as e:
        other.failed.append(e)
    assert other.done.wait(30)
    a.close()
    b.close()
    assert other.failed == []
    assert len(calls) >= 3   # the test means it: a third answer, after both were locked
    assert {("missed_dose", "DSP-0000"), ("missed_dose", "DSP-0001")} <= {
        (r[0], r[1]) for r in alerts(database_url)}


def test_a_process_waits_for_the_other_to_commit_a_device_before_it_evaluates_it(
        database_url, rules_file):
    register(database_url, DEVICES)
    a, b = Process(database_url, rules_file), Process(database_url, rules_file)
    a.pipeline.process(a.conn, [spo2("OXI-0001", T0 + 60 * k, 95) for k in range(3)])
    done = threading.Event()
    worker = threading.Thread(
        target=lambda: (b.batch([spo2("OXI-0001", T0 + 180, 95)]), done.set()))
    worker.start()
    assert not done.wait(0.5), "b evaluated the device while a held it"
    a.conn.commit()
    worker.join(10)
    assert done.is_set()
    a.close()
    b.close()
    assert [r[:3] for r in alerts(database_url)] == [("spo2_stuck", "OXI-0001", 1)]


def alarm_msg(device_id: str, t: float) -> RawMessage:
    return RawMessage(f"{ROOT}/dev/{device_id}/alarm",
                      orjson.dumps({"device_id": device_id, "time": t,
                                    "events": [{"code": "alarm.fall"}]}), time.time())


def test_an_alarm_commits_while_a_bulk_batch_holds_its_devices_rule_state(database_url,
                                                                           rules_file):
    register(database_url, DEVICES)
    bulk = Process(database_url, rules_file)
    bulk.pipeline.process(bulk.conn, [spo2("ALM-0001", T0, 95)])  # holds ALM-0001's row
    lane = Process(database_url, rules_file)
    out = lane.pipeline.process(lane.conn, [alarm_msg("ALM-0001", T0 + 1)], state_apart=True)
    lane.conn.commit()  # did not wait for the bulk batch
    assert [r[:2] for r in query(database_url, "SELECT rule, device_id FROM alerts")] == [
        ("personal_alarm", "ALM-0001")]

    # its rules' state waits for the row, then goes on from what the bulk batch committed
    done = threading.Event()

    def write_state() -> None:
        lane.pipeline.write_state(lane.conn, out)
        lane.conn.commit()
        done.set()

    worker = threading.Thread(target=write_state)
    worker.start()
    assert not done.wait(0.5), "the alarm's rule state was written past the bulk batch's lock"
    bulk.conn.commit()
    worker.join(10)
    assert done.is_set()
    assert query(database_url, "SELECT rule, repeat_count FROM alerts") == [("personal_alarm", 1)]
    bulk.close()
    lane.close()


def test_an_alert_that_only_the_state_under_the_lock_shows_is_raised_by_the_alarm_lane(
        database_url, rules_file):
    # the alarm lane's first evaluation runs from memory without the bulk batch's two lost
    # connections; the third, in the alarm's message, flaps only with them
    register(database_url, DEVICES)
    bulk = Process(database_url, rules_file)
    lane = Process(database_url, rules_file)
    bulk.pipeline.process(bulk.conn, [event("ALM-0001", T0 + k * 60, "connection.lost")
                                      for k in range(2)])
    msg = RawMessage(f"{ROOT}/dev/ALM-0001/alarm",
                     orjson.dumps({"device_id": "ALM-0001", "time": T0 + 120, "events": [
                         {"code": "alarm.fall"}, {"code": "connection.lost"}]}), time.time())
    out = lane.pipeline.process(lane.conn, [msg], state_apart=True)
    lane.conn.commit()
    assert [r[0] for r in query(database_url, "SELECT rule FROM alerts")] == ["personal_alarm"]
    bulk.conn.commit()
    lane.pipeline.write_state(lane.conn, out)
    lane.conn.commit()
    assert sorted(r[0] for r in query(database_url, "SELECT rule FROM alerts")) == [
        "connection_flapping", "personal_alarm"]
    bulk.close()
    lane.close()
