"""Late rows evaluated again in order leave the alert queue as the rows in device-time order
would: an episode that the rows in order begin after the rule cleared the last one is a new
one (the alert is reopened, or a new one opened), not a second count on the resolved alert;
and an alert a person resolved counts no new row that comes after, whatever its date.

Real PostgreSQL with the engine's pipeline and the built-in rules (as
`test_shared_rule_state` drives it), one message a batch."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.app.conftest import query, register
from tests.app.test_device_clock import heard as heard_at
from tests.app.test_shared_rule_state import PERSONAL_ALARM, Process, fresh_database

from vagt.alerts import policy
from vagt.alerts.actions import resolve
from vagt.ingest.model import RawMessage

ROOT = "vagt/v1"
T0 = float(int(time.time() - 6 * 3600))   # whole seconds: the database keeps microseconds
LOST, RESTORED = "power.mains_lost", "power.mains_restored"
Row = tuple[float, str | None]    # device time after T0, event code (None: a status)


def heard(t: float, code: str | None = None, device_id: str = "PAL-0001") -> RawMessage:
    """The device's message dated T0 + `t` by its clock, heard then by ours: an event if
    `code` is given, else a status."""
    return heard_at(device_id, T0 + t, T0 + t, code)


def queue(database_url: str, rule: str = "mains_power_lost", device_id: str = "PAL-0001"
          ) -> list[tuple[str, int, float, float]]:
    """What an operator sees of the rule's alerts for the device: status, how often it fired,
    when it began and last fired (seconds after T0, device time)."""
    return query(database_url,
                 "SELECT status, repeat_count, extract(epoch FROM opened_at)::float8 - %s, "
                 "extract(epoch FROM last_fired_at)::float8 - %s FROM alerts "
                 "WHERE rule = %s AND device_id = %s ORDER BY id", (T0, T0, rule, device_id))


def one_a_batch(processes: list[Process], rows: list[Row],
                device_id: str = "PAL-0001") -> None:
    """Each row in a batch of its own, in the order given, the engines taking turns."""
    for k, (t, code) in enumerate(rows):
        processes[k % len(processes)].batch([heard(t, code, device_id)])


@pytest.fixture
def alarm(database_url: str) -> str:
    register(database_url, [PERSONAL_ALARM])
    return database_url


# the finding's rows: the first three committed, then the last two late, one a batch
COMMITTED = [(0.0, LOST), (600.0, RESTORED), (1800.0, None)]
LATE = [(1500.0, None), (1200.0, LOST)]


@pytest.mark.parametrize("engines", [1, 2])
def test_a_late_mains_loss_after_its_restoration_is_a_new_episode(alarm, engines):
    """Mains power lost at 0 and restored at 600: the rule resolved its alert. A loss at
    1200 comes late: in order it is a new loss, after the restoration, and the alert is open
    again (reopened, within the reopen window), as it is with the rows in order. It was
    counted on the resolved alert, and nothing was open."""
    processes = [Process(alarm, None) for _ in range(engines)]
    one_a_batch(processes, COMMITTED)
    one_a_batch(processes[::-1], LATE)
    for p in processes:
        p.close()
    assert queue(alarm) == [("open", 2, 0.0, 1200.0)]
    fresh_database(alarm)
    in_order = Process(alarm, None)
    one_a_batch([in_order], sorted(COMMITTED + LATE))
    in_order.close()
    assert queue(alarm) == [("open", 2, 0.0, 1200.0)]


def test_a_late_mains_loss_after_the_reopen_window_opens_a_second_alert(alarm, monkeypatch):
    """Outside the reopen window the late loss is an alert of its own, as in order; the
    first keeps its one firing."""
    monkeypatch.setattr(policy, "_installed",
                        dataclasses.replace(policy.load_policy(None), reopen_window_s=0.0))
    p = Process(alarm, None)
    one_a_batch([p], COMMITTED + LATE)
    p.close()
    assert queue(alarm) == [("resolved", 1, 0.0, 0.0), ("open", 1, 1200.0, 1200.0)]


def test_a_late_loss_and_restoration_make_a_second_episode_resolved(alarm):
    """Lost at 1200 and restored at 1500, both late: in order, a second episode, which the
    rule also resolved. The alert was reopened and resolved again: fired twice, resolved,
    and the call centre heard both."""
    p = Process(alarm, None)
    one_a_batch([p], COMMITTED + [(1500.0, RESTORED), (1200.0, LOST)])
    p.close()
    assert queue(alarm) == [("resolved", 2, 0.0, 1200.0)]
    assert query(alarm, "SELECT event FROM alert_outbox ORDER BY id") == [
        ("opened",), ("resolved",), ("reopened",), ("resolved",)]


def test_a_late_row_that_adds_no_episode_changes_nothing(alarm):
    """After the new episode, a late status and the loss delivered again: the same queue."""
    p = Process(alarm, None)
    one_a_batch([p], COMMITTED + LATE + [(900.0, None), (1200.0, LOST)])
    p.close()
    assert queue(alarm) == [("open", 2, 0.0, 1200.0)]


def test_a_late_alarm_dated_before_the_one_an_operator_resolved_reaches_the_queue(alarm):
    """A fall alarm at 1000, resolved by an operator; then, in the bulk lane (a telemetry
    message), another press dated 500: the device's clock behind, or the message late. It
    was counted on the resolved alert, and reached no one. Delivered again after the next
    resolution, it opens nothing more."""
    p = Process(alarm, None)
    one_a_batch([p], [(1000.0, "alarm.fall"), (1800.0, None)])
    with psycopg.connect(alarm) as conn:
        resolve(conn, 1, "anna", "the citizen is fine", code="false_alarm")
    one_a_batch([p], [(500.0, "alarm.fall")])
    assert queue(alarm, "personal_alarm") == [("open", 2, 1000.0, 1000.0)]
    with psycopg.connect(alarm) as conn:
        resolve(conn, 1, "anna", "the citizen is fine", code="false_alarm")
    one_a_batch([p], [(500.0, "alarm.fall"), (700.0, None)])
    p.close()
    assert queue(alarm, "personal_alarm") == [("resolved", 2, 1000.0, 1000.0)]


class Alarms:
    """Personal alarms never heard from, one at a time, for one engine: a device's rows
    and alerts are its own, so examples need no database of their own (a copy of the
    database, or emptying it, costs more than an example's rows)."""

    SIZE = 40

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.ids = [f"PAL-{k:04d}" for k in range(100, 100 + self.SIZE)]
        register(database_url, [(d, *PERSONAL_ALARM[1:]) for d in self.ids])
        self.free: list[str] = []
        self.engine = Process(database_url, None)

    def take(self) -> str:
        if not self.free:     # (a failing example's shrinking takes many): all again
            self.engine.close()
            fresh_database(self.url)
            self.engine = Process(self.url, None)
            self.free = list(self.ids)
        return self.free.pop()


@pytest.fixture
def alarms(database_url: str) -> Iterator[Alarms]:
    fleet = Alarms(database_url)
    yield fleet
    fleet.engine.close()


def in_order(rows: list[Row]) -> list[tuple[str, int, float, float]]:
    """What mains events in device-time order leave in the queue (`queue`), within the
    reopen window: each loss counts, the first opens the alert, a restoration resolves it,
    and the next loss reopens it."""
    lost = [t for t, code in rows if code == LOST]
    mains = [code for _, code in sorted(rows, key=lambda r: r[0]) if code is not None]
    if not lost:
        return []
    return [("open" if mains[-1] == LOST else "resolved", len(lost), min(lost), max(lost))]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Row], list[Row]]:
    """Mains lost and restored, and statuses, a minute apart; and the order they come in."""
    codes = draw(st.lists(st.sampled_from([LOST, RESTORED, None]), min_size=3, max_size=6))
    rows = [(60.0 * k, code) for k, code in enumerate(codes)]
    return rows, draw(st.permutations(rows))


@settings(max_examples=15, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delivery=deliveries())
def test_late_rows_leave_the_queue_as_the_rows_in_order_do(alarms, delivery):
    """Delivered one a batch in any order (late rows evaluated again in order with those
    stored), the mains alerts are, after each batch, what the rows so far make in
    device-time order: as the engine makes them from the rows in order."""
    rows, delivered = delivery
    ordered, device = alarms.take(), alarms.take()
    one_a_batch([alarms.engine], rows, ordered)
    assert queue(alarms.url, device_id=ordered) == in_order(rows)
    for k, (t, code) in enumerate(delivered):
        alarms.engine.batch([heard(t, code, device)])
        assert queue(alarms.url, device_id=device) == in_order(delivered[:k + 1]), k


def test_an_alarm_too_late_to_replay_dated_before_a_resolved_one_reaches_the_queue(alarm):
    """As above, but the press dated 500 comes when the device's rows are too old to be
    evaluated again (the checkpoint it would go back to is past them): the alarm is still
    evaluated, every one counts, and it is news, though dated before the alert's last
    firing: its row was never stored before. Delivered again, it opens nothing more."""
    p = Process(alarm, None)
    p.pipeline.shared.checkpoint_age_s = 0.0   # every batch's state is the one to go back to
    # (the mains rule keeps a state of its rows; the alarm's, counted in any order, none)
    one_a_batch([p], [(1000.0, "alarm.fall"), (1800.0, LOST), (1900.0, RESTORED)])
    with psycopg.connect(alarm) as conn:
        resolve(conn, 1, "anna", "the citizen is fine", code="false_alarm")
    out = p.batch([heard(500.0, "alarm.fall")])
    assert (out.too_late, out.replayed) == (1, 0)
    assert [a[0] for a in queue(alarm, "personal_alarm")] == ["open"]
    with psycopg.connect(alarm) as conn:
        resolve(conn, 1, "anna", "the citizen is fine", code="false_alarm")
    p.batch([heard(500.0, "alarm.fall")])
    p.close()
    assert [a[0] for a in queue(alarm, "personal_alarm")] == ["resolved"]
