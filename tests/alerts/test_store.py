"""The engine's side of the queue on the real database: routing, deduplication, reopening,
inhibition, silences, devices in repair, and the outbox written with the alert."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from tests.alerts.support import T0, add_device, alert_of, clear, fire, firing, rows

from vagt.alerts import actions
from vagt.alerts.matchers import parse_matcher
from vagt.alerts.outbox import (
    give_up,
    move_deliveries,
    prune,
    redeliver,
    register_targets,
    undelivered,
)
from vagt.alerts.policy import DeliveryPolicy, WebhookTarget
from vagt.alerts.silences import (
    SilenceError,
    create_silence,
    expire_silence,
    list_silences,
)
from vagt.alerts.silences import warnings as silence_warnings
from vagt.alerts.store import record_firings, take_back, unsupported_alerts
from vagt.alerts.suppression import reconcile


@pytest.fixture
def fleet(database_url):
    add_device(database_url, "GW-0001", "gateway", "Aarhus")
    add_device(database_url, "OXI-0001", "pulse_oximeter", "Aarhus", gateway="GW-0001")
    add_device(database_url, "BPM-0001", "bp_monitor", "Aarhus", gateway="GW-0001")
    add_device(database_url, "OXI-0009", "pulse_oximeter", "Aarhus", gateway="GW-0009")
    add_device(database_url, "ALM-0001", "personal_alarm", "Randers")
    return database_url


def audit(database_url, alert_id):
    return rows(database_url, "SELECT actor, action, from_status, to_status FROM alert_audit "
                              "WHERE alert_id = %s ORDER BY id", (alert_id,))


# --- routing, deduplication, reopening ---------------------------------------------------


def test_a_firing_is_routed_by_the_policy_not_only_by_its_rule(fleet):
    fire(fleet, ("dispenser_jam", "OXI-0001"))
    assert rows(fleet, "SELECT queue, extra_queues, priority, route, time_to_claim "
                       "FROM alerts") == [("logistics", ["technical"], 2, "device_swap",
                                           timedelta(minutes=10))]


def test_the_deadline_to_claim_is_the_time_to_claim_after_it_was_queued(fleet):
    fire(fleet, ("personal_alarm", "ALM-0001"))
    (gap,) = rows(fleet, "SELECT claim_deadline - queued_at FROM alerts")[0]
    assert gap == timedelta(minutes=2)


def test_repeats_of_a_fingerprint_count_on_one_alert(fleet):
    fire(fleet, ("battery_low", "OXI-0001", T0))
    fire(fleet, ("battery_low", "OXI-0001", T0 + 60))
    fire(fleet, ("battery_low", "OXI-0001", T0 + 120))
    assert rows(fleet, "SELECT status, repeat_count FROM alerts") == [("open", 3)]


def test_a_firing_soon_after_resolution_reopens_the_alert_and_audits_it(fleet, conn):
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001", T0))
    actions.claim(conn, alert_id, "anna")
    actions.resolve(conn, alert_id, "anna", "charged it", code="resolved")
    assert fire(fleet, ("battery_low", "OXI-0001", T0 + 60)) == [(alert_id, "technical")]
    assert rows(fleet, "SELECT id, status, claimed_by, resolution_code, reopen_count "
                       "FROM alerts") == [(alert_id, "open", None, None, 1)]
    assert audit(fleet, alert_id)[-1] == ("rule:battery_low", "reopen", "resolved", "open")


def waiting_for_a_lock(database_url: str, pid: int) -> None:
    """Returns once the backend `pid` waits for a row another transaction holds."""
    for _ in range(1000):
        if rows(database_url, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity "
                              "WHERE pid = %s", (pid,)) == [(True,)]:
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


def test_an_alarm_fired_while_an_operator_resolves_it_reopens_the_alert(fleet):
    """Anna's resolve commits while the engine records the next press: the engine found the
    alert open (no reopening), then, the resolve committed, inserted a new alert beside it.
    The alarm reached the queue, but as a stranger: the link to the episode she just closed
    and the `reopen` in its trail were lost. The engine waits for her resolve and reopens."""
    import threading

    (alert_id, _), = fire(fleet, ("personal_alarm", "ALM-0001", T0), code="alarm.fall")
    done: list[object] = []
    with psycopg.connect(fleet) as operator, psycopg.connect(fleet) as engine:
        pressed = firing(engine, "personal_alarm", "ALM-0001", T0 + 60, code="alarm.fall")
        recording = threading.Thread(target=lambda: (
            done.append(record_firings(engine, [pressed], new=True)), engine.commit()))
        with operator.transaction():    # anna's resolve, committed at the block's end
            actions.resolve(operator, alert_id, "anna", "the citizen is fine",
                            code="false_alarm")
            recording.start()
            waiting_for_a_lock(fleet, engine.info.backend_pid)   # for her row
        recording.join(10)
    assert done == [[(alert_id, "emergency")]]
    assert rows(fleet, "SELECT id, status, reopen_count FROM alerts") == [(alert_id, "open", 1)]
    assert [a[:2] for a in audit(fleet, alert_id)][-2:] == [
        ("anna", "resolve"), ("rule:personal_alarm", "reopen")]


def test_a_redelivered_firing_does_not_reopen_a_resolved_alert(fleet, conn):
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001", T0))
    actions.resolve(conn, alert_id, "anna", "charged it", code="resolved")
    assert fire(fleet, ("battery_low", "OXI-0001", T0)) == []
    assert rows(fleet, "SELECT status FROM alerts") == [("resolved",)]


def test_a_cleared_condition_resolves_with_the_code_cleared(fleet):
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001", T0))
    assert clear(fleet, "battery_low", "OXI-0001", T0 + 60) == [alert_id]
    assert rows(fleet, "SELECT status, resolution_code, resolved_by FROM alerts") == [
        ("resolved", "cleared", "rule:battery_low")]


def taken_back(database_url, rule, device_id, why="a late message shows otherwise"):
    with psycopg.connect(database_url) as conn:
        found = unsupported_alerts(conn, [f"{rule}|{device_id}"], [T0 - 3600], [float("inf")])
        return take_back(conn, found, [why] * len(found))


def test_an_alert_taken_back_is_resolved_having_fired_no_time_and_the_receivers_hear_it(
        target):
    (alert_id, _), = fire(target, ("battery_low", "OXI-0001", T0))
    assert taken_back(target, "battery_low", "OXI-0001") == ([alert_id], [])
    assert rows(target, "SELECT status, resolution_code, resolved_by, repeat_count, note "
                        "FROM alerts") == [
        ("resolved", "cleared", "rule:battery_low", 0,
         "taken back: a late message shows otherwise")]
    assert outbox(target) == [(alert_id, "opened", "callcentre"),
                              (alert_id, "resolved", "callcentre")]


def test_a_firing_after_a_take_back_is_raised_though_no_later_than_the_alert_last_fired(
        fleet):
    """Taken back, the alert stands for no firing: one that the rows in order make later,
    at any device time, is raised (a resolved alert otherwise holds back a firing no later
    than its own, as a copy of one it saw), from its own time."""
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001", T0 + 600))
    taken_back(fleet, "battery_low", "OXI-0001")
    assert fire(fleet, ("battery_low", "OXI-0001", T0 + 300)) == [(alert_id, "technical")]
    assert rows(fleet, "SELECT status, repeat_count, extract(epoch FROM opened_at)::float8, "
                       "extract(epoch FROM last_fired_at)::float8 FROM alerts") == [
        ("open", 1, pytest.approx(T0 + 300, abs=1e-3), pytest.approx(T0 + 300, abs=1e-3))]


def test_an_alert_an_operator_holds_is_not_taken_back_but_noted_once(fleet, conn):
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001", T0))
    actions.claim(conn, alert_id, "anna")
    assert taken_back(fleet, "battery_low", "OXI-0001") == ([], [alert_id])
    assert taken_back(fleet, "battery_low", "OXI-0001") == ([], [])
    assert rows(fleet, "SELECT status, claimed_by, repeat_count, note FROM alerts") == [
        ("claimed", "anna", 1, "vagt would take this back, and leaves it to anna, who holds "
                               "it: a late message shows otherwise")]
    assert audit(fleet, alert_id)[-1] == ("rule:battery_low", "note", "claimed", "claimed")


def test_an_alert_opened_before_the_rows_evaluated_again_is_not_taken_back(fleet):
    fire(fleet, ("battery_low", "OXI-0001", T0 - 7200))
    assert taken_back(fleet, "battery_low", "OXI-0001") == ([], [])
    assert rows(fleet, "SELECT status FROM alerts") == [("open",)]


# --- inhibition ----------------------------------------------------------------------------


def test_an_offline_gateway_suppresses_the_alerts_of_the_devices_behind_it(fleet):
    fire(fleet, ("battery_low", "OXI-0001"), ("battery_low", "OXI-0009"))
    (gw_alert, _), = fire(fleet, ("device_silent", "GW-0001"))
    fire(fleet, ("device_silent", "BPM-0001"))
    assert alert_of(fleet, "battery_low", "OXI-0001")[1:] == (
        "suppressed", "technical", 4, f"inhibited by alert {gw_alert} (gateway_offline)")
    assert alert_of(fleet, "device_silent", "BPM-0001")[1] == "suppressed"
    assert alert_of(fleet, "battery_low", "OXI-0009")[1] == "open"  # behind another gateway
    assert alert_of(fleet, "device_silent", "GW-0001")[1] == "open"


def test_the_clinical_alerts_of_devices_behind_an_offline_gateway_stay_open(fleet):
    (before, _), = fire(fleet, ("spo2_low", "OXI-0001"))     # a nurse is looking at it
    fire(fleet, ("device_silent", "GW-0001"))
    (after, _), = fire(fleet, ("spo2_low", "BPM-0001"))      # flushed as the link flickers
    assert [alert_of(fleet, "spo2_low", d)[:2] for d in ("OXI-0001", "BPM-0001")] == [
        (before, "open"), (after, "open")]


def test_a_nurse_sees_the_most_severe_of_a_devices_low_spo2_alerts(fleet):
    # one reading of 82 % is below every level: each rule fires for it
    fire(fleet, ("spo2_critical", "OXI-0001"), ("spo2_low", "OXI-0001"),
         ("spo2_low_sustained", "OXI-0001"), ("spo2_low", "OXI-0009"))
    critical = alert_of(fleet, "spo2_critical", "OXI-0001")
    assert critical[1:4] == ("open", "clinical", 1)
    assert alert_of(fleet, "spo2_low", "OXI-0001")[1] == "suppressed"
    assert alert_of(fleet, "spo2_low_sustained", "OXI-0001")[1] == "suppressed"
    assert alert_of(fleet, "spo2_low", "OXI-0009")[1:4] == ("open", "clinical", 2)
    # 87 % at the next check: the critical level clears, the nurse now sees below 88 %
    clear(fleet, "spo2_critical", "OXI-0001", T0 + 60)
    assert alert_of(fleet, "spo2_low", "OXI-0001")[1] == "open"
    assert alert_of(fleet, "spo2_low_sustained", "OXI-0001")[1] == "suppressed"


def test_no_inhibit_rule_holds_back_a_personal_alarm(fleet, tmp_path):
    """A centre's own policy may inhibit everything behind an offline gateway; someone who
    pressed the button behind it still reaches the emergency queue."""
    from vagt.alerts.policy import load_policy

    p = tmp_path / "alerts.toml"
    p.write_text('[[inhibit]]\nname = "behind_gateway"\n'
                 'source = [\'rule="device_silent"\', \'type="gateway"\']\n'
                 'target = [\'gateway_id!=""\']\nequal = ["gateway_id=device_id"]\n')
    policy = load_policy(p)
    add_device(fleet, "ALM-0002", "personal_alarm", "Aarhus", gateway="GW-0001")
    fire(fleet, ("device_silent", "GW-0001"), policy=policy)
    (alarm, _), = fire(fleet, ("personal_alarm", "ALM-0002"), policy=policy, code="alarm.fall")
    (battery, _), = fire(fleet, ("battery_low", "OXI-0001"), policy=policy)
    assert alert_of(fleet, "personal_alarm", "ALM-0002")[:2] == (alarm, "open")
    assert alert_of(fleet, "battery_low", "OXI-0001")[:2] == (battery, "suppressed")


def test_alerts_come_back_when_the_gateway_is_online_again(fleet):
    fire(fleet, ("device_silent", "GW-0001"))
    (oxi, _), = fire(fleet, ("battery_low", "OXI-0001"))
    assert alert_of(fleet, "battery_low", "OXI-0001")[1] == "suppressed"
    clear(fleet, "device_silent", "GW-0001", T0 + 300)
    assert alert_of(fleet, "battery_low", "OXI-0001")[1] == "open"
    assert [a[1] for a in audit(fleet, oxi)] == ["open", "suppress", "unsuppress"]


def test_a_gateway_column_of_the_registry_counts_as_the_devices_gateway(fleet):
    with psycopg.connect(fleet) as conn:
        conn.execute("""UPDATE devices SET attributes = '{"gateway": "GW-0009"}'
                        WHERE device_id = 'OXI-0009'""")
    add_device(fleet, "GW-0009", "gateway", "Aarhus")
    fire(fleet, ("device_silent", "GW-0009"))
    fire(fleet, ("battery_low", "OXI-0009"))
    assert alert_of(fleet, "battery_low", "OXI-0009")[1] == "suppressed"


def test_an_offline_device_suppresses_its_own_low_battery_alert_only(fleet):
    fire(fleet, ("battery_low", "ALM-0001"))
    (offline, _), = fire(fleet, ("device_silent", "ALM-0001"))
    assert alert_of(fleet, "battery_low", "ALM-0001")[4] == (
        f"inhibited by alert {offline} (offline_device_battery)")
    assert alert_of(fleet, "device_silent", "ALM-0001")[1] == "open"


def test_a_claimed_alert_is_left_with_its_operator_when_an_inhibition_starts(fleet, conn):
    (oxi, _), = fire(fleet, ("battery_low", "OXI-0001"))
    actions.claim(conn, oxi, "anna")
    fire(fleet, ("device_silent", "GW-0001"))
    assert alert_of(fleet, "battery_low", "OXI-0001")[1] == "claimed"


# --- silences and repairs --------------------------------------------------------------------


def silence(conn, *matchers, minutes=60, start=None):
    return create_silence(conn, [parse_matcher(m) for m in matchers], starts_at=start,
                          ends_at=(start or datetime.now(UTC)) + timedelta(minutes=minutes),
                          author="sofie", comment="firmware update, ticket 4711")


def test_a_silence_suppresses_matching_alerts_open_and_new_and_says_so(fleet, conn):
    (old, _), = fire(fleet, ("battery_low", "OXI-0001"))
    s = silence(conn, 'vendor="Acme"', 'type="pulse_oximeter"', 'severity!="critical"')
    fire(fleet, ("battery_low", "OXI-0009"))
    reason = f"silence {s.id} by sofie: firmware update, ticket 4711"
    assert alert_of(fleet, "battery_low", "OXI-0001")[1:] == ("suppressed", "technical", 4,
                                                              reason)
    assert alert_of(fleet, "battery_low", "OXI-0009")[4] == reason
    assert actions.list_alerts(conn, status="suppressed")[0].id == old  # kept and visible


def test_expiring_a_silence_brings_its_alerts_back_claimable(fleet, conn):
    s = silence(conn, 'device_id="OXI-0001"')
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001"))
    expire_silence(conn, s.id, by="sofie")
    assert alert_of(fleet, "battery_low", "OXI-0001")[1] == "open"
    assert actions.claim(conn, alert_id, "anna").status == "claimed"
    assert rows(fleet, "SELECT actor, action, subject FROM audit_log ORDER BY id") == [
        ("sofie", "silence.create", f"silence {s.id}"),
        ("sofie", "silence.expire", f"silence {s.id}")]


def test_a_silence_two_supervisors_expire_at_once_is_ended_by_the_first_only(fleet, conn,
                                                                             database_url):
    """Each request reads its clock before it waits for the silence's lock: the one that
    waited read the earlier time, and the silence the other ended seemed to end after it."""
    s = silence(conn, 'device_id="OXI-0001"')
    asked = datetime.now(UTC)
    expire_silence(conn, s.id, by="sofie", now=asked + timedelta(seconds=1))
    with psycopg.connect(database_url, autocommit=True) as other:
        with pytest.raises(SilenceError, match="has already ended"):
            expire_silence(other, s.id, by="mette", now=asked)
    ended, = list_silences(conn, include_expired=True)
    assert (ended.expired_by, ended.expired_at) == ("sofie", asked + timedelta(seconds=1))
    assert rows(fleet, "SELECT actor, action FROM audit_log ORDER BY id") == [
        ("sofie", "silence.create"), ("sofie", "silence.expire"), ("mette", "silence.refused")]


def test_a_maintenance_window_suppresses_only_while_it_is_in_force(fleet, conn):
    start = datetime.now(UTC) + timedelta(hours=1)
    silence(conn, 'municipality="Aarhus"', 'severity!="critical"', minutes=120, start=start)
    fire(fleet, ("battery_low", "OXI-0001"))
    assert alert_of(fleet, "battery_low", "OXI-0001")[1] == "open"
    reconcile(conn, now=start + timedelta(minutes=1))
    assert alert_of(fleet, "battery_low", "OXI-0001")[1] == "suppressed"
    reconcile(conn, now=start + timedelta(minutes=121))
    assert alert_of(fleet, "battery_low", "OXI-0001")[1] == "open"


@pytest.mark.parametrize(("matchers", "message"), [
    (['device_id=~".*"'], "at least one matcher that an empty label set does not match"),
    (['device_id!="x"'], "would silence everything"),
    (['device_id=~".+"'], "every critical alert, personal alarms included"),
    (['rule=~".+"', 'severity=~"critical|major|warning|info"'], "every critical alert"),
    # (an alarm the engine raises itself has a vendor only when it knows the device)
    (['vendor=~"Nonin|Acme|Tunstall|.+"'],
     "critical alerts (of personal_alarm, spo2_critical, alarm_processing_failed, unreadable_alarm)"),
    (['rule=~".+"', 'severity!="info"'], "every critical alert"),
])
def test_a_silence_that_would_match_everything_is_refused(fleet, conn, matchers, message):
    with pytest.raises(SilenceError, match=re.escape(message)):
        silence(conn, *matchers)
    assert rows(fleet, "SELECT count(*) FROM silences") == [(0,)]


# The silences a security review made on main, each of which held back every personal
# alarm until 2099 (here for an hour: the length is refused on its own, below).
REVIEWED = [
    (['severity="critical"'], "every critical alert, personal alarms included"),
    (['rule="personal_alarm"'], "critical alerts (of personal_alarm)"),
    (['type="personal_alarm"'],
     "critical alerts (of personal_alarm, alarm_processing_failed, unreadable_alarm)"),
    (['device_id=~"(?!vagt-probe-).+"'], "a negative lookahead"),
    (['severity!="info"', 'rule=~".+"'], "every critical alert"),
]


@pytest.mark.parametrize(("matchers", "message"), REVIEWED)
def test_a_silence_that_could_hold_back_a_personal_alarm_without_naming_devices_is_refused(
        fleet, conn, matchers, message):
    with pytest.raises(SilenceError, match=re.escape(message)):
        silence(conn, *matchers)
    assert rows(fleet, "SELECT count(*) FROM silences") == [(0,)]


def test_a_personal_alarm_after_a_refused_silence_reaches_the_outbox(target, conn):
    for matchers, _ in REVIEWED:
        with pytest.raises(SilenceError):
            silence(conn, *matchers, minutes=60 * 24 * 365 * 70)
    (alarm, _), = fire(target, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    assert alert_of(target, "personal_alarm", "ALM-0001")[1] == "open"
    assert outbox(target) == [(alarm, "opened", "callcentre")]


def test_a_refused_silence_is_logged_with_why(fleet, conn, caplog):
    with caplog.at_level("WARNING", logger="vagt.alerts"), pytest.raises(SilenceError):
        silence(conn, 'rule="personal_alarm"')
    assert [r.getMessage() for r in caplog.records] == [
        'event=silence_refused author=sofie municipality=- matchers=rule="personal_alarm" '
        'reason="the silence could hold back critical alerts (of personal_alarm): a silence '
        'holds back a critical alert only for devices it names, by device_id=\\"...\\" or '
        'device_id=~\\"A|B\\" (at most 20); else leave critical alerts out with '
        'severity!=\\"critical\\""']


def test_a_silence_longer_than_max_silence_is_refused(fleet, conn):
    with pytest.raises(SilenceError, match=r"at most 3d \(the alert policy's max_silence\), "
                                           r"this one lasts 3d1m"):
        silence(conn, 'device_id="OXI-0001"', minutes=3 * 24 * 60 + 1, start=datetime.now(UTC))
    silence(conn, 'device_id="OXI-0001"', minutes=3 * 24 * 60, start=datetime.now(UTC))
    assert rows(fleet, "SELECT count(*) FROM silences") == [(1,)]


@pytest.mark.parametrize("pattern", ["(a+)+", "(OXI|BPM)*-1", ".*-.*-.*", "(a)\\1",
                                     "(?<=A)LM-0001", "(?i)alm-0001", "A" * 201])
def test_a_pattern_that_cannot_be_judged_or_may_backtrack_for_long_is_refused(
        fleet, conn, pattern):
    with pytest.raises(SilenceError, match="device_id=~"):
        silence(conn, f"device_id=~{pattern}", 'severity!="critical"')


def test_a_municipal_supervisors_silence_of_everything_is_refused_too(fleet, conn):
    """Their silence is limited to their municipality, and it too may not hold back every
    alert there (every personal alarm of Skive's citizens), however the municipality is
    named in it. (An alarm the engine raises itself, from a device it does not know, has
    no municipality: no such silence holds it; one it could not read, or failed on, from a
    device it knows has the device's.)"""
    for matchers in ([], [parse_matcher('device_id=~".+"')],
                     [parse_matcher('municipality="Skive"')],
                     [parse_matcher('municipality!="Aarhus"')]):
        with pytest.raises(SilenceError,
                           match=re.escape("critical alerts of the municipality Skive "
                                           "(of personal_alarm, spo2_critical, "
                                           "alarm_processing_failed, unreadable_alarm)")):
            create_silence(conn, matchers, starts_at=None, municipality="Skive",
                           ends_at=datetime.now(UTC) + timedelta(hours=1), author="sofie",
                           comment="maintenance")


def test_a_silence_naming_devices_leaving_critical_alerts_out_or_of_warnings_is_allowed(
        fleet, conn):
    silence(conn, 'device_id="ALM-0001"')
    silence(conn, 'device_id=~"ALM-0001|OXI-0001"', 'rule=~"personal_alarm|spo2_critical"')
    silence(conn, 'device_id=~"OXI-.*"', 'severity!="critical"')
    silence(conn, 'severity=~"warning|info"')
    silence(conn, 'rule="battery_low"')
    silence(conn, 'municipality="Aarhus"', 'rule=~"battery_low|device_silent"')
    assert rows(fleet, "SELECT count(*) FROM silences") == [(6,)]


def test_a_silence_needs_a_comment_and_an_end_after_its_start(conn):
    with pytest.raises(SilenceError, match="needs a comment"):
        create_silence(conn, [parse_matcher("device_id=A")], starts_at=None,
                       ends_at=datetime.now(UTC) + timedelta(hours=1), author="sofie",
                       comment="  ")
    with pytest.raises(SilenceError, match="must end after it starts"):
        silence(conn, "device_id=A", minutes=-5)


def test_a_silences_comment_that_would_read_as_another_is_refused_naming_the_character(conn):
    """The comment is shown in `vagt silences list` and says why alerts are held back: a
    right-to-left override in it would make the reason read as something else."""
    with pytest.raises(SilenceError, match=r"^the silence's comment holds U\+202E "
                                           r"RIGHT-TO-LEFT OVERRIDE \(its character 13\)"):
        create_silence(conn, [parse_matcher("device_id=A")], starts_at=None,
                       ends_at=datetime.now(UTC) + timedelta(hours=1), author="sofie",
                       comment="maintenance \u202eriapet")
    assert conn.execute("SELECT count(*) FROM silences").fetchone() == (0,)


def test_a_device_in_repair_is_silenced_by_itself(fleet, conn):
    conn.execute("UPDATE devices SET status = 'in_repair' WHERE device_id = 'OXI-0001'")
    fire(fleet, ("battery_low", "OXI-0001"))
    assert alert_of(fleet, "battery_low", "OXI-0001")[1:] == (
        "suppressed", "technical", 4, "the device is in repair (silenced by its registry status)")
    # back from repair (to stock: the registry's lifecycle allows no other way out)
    conn.execute("UPDATE devices SET status = 'in_stock' WHERE device_id = 'OXI-0001'")
    reconcile(conn)
    assert alert_of(fleet, "battery_low", "OXI-0001")[1] == "open"


def test_when_the_silence_holding_an_alert_ends_and_another_holds_it_the_new_reason_is_audited(
        fleet, conn):
    first = silence(conn, 'device_id="OXI-0001"', minutes=60)
    second = silence(conn, 'type="pulse_oximeter"', 'rule="battery_low"', minutes=120)
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001"))
    reconcile(conn, now=datetime.now(UTC) + timedelta(minutes=61))   # the first has ended
    reason = f"silence {second.id} by sofie: firmware update, ticket 4711"
    assert alert_of(fleet, "battery_low", "OXI-0001")[1:] == ("suppressed", "technical", 4,
                                                              reason)
    assert rows(fleet, "SELECT actor, action, from_status, to_status, note FROM alert_audit "
                       "WHERE alert_id = %s ORDER BY id", (alert_id,))[1:] == [
        ("vagt", "suppress", "open", "suppressed",
         f"silence {first.id} by sofie: firmware update, ticket 4711"),
        ("vagt", "suppress", "suppressed", "suppressed", reason)]


def test_an_alert_resolved_while_reconcile_planned_a_new_reason_keeps_none(fleet, conn):
    # reconcile reads its candidates without a lock; the rule resolves a suppressed one
    # before the UPDATE of its reason. A resolved alert is not held back by anything: it
    # must not show a reason (nor an audit row) written after it was resolved.
    import threading

    silence(conn, 'device_id="OXI-0001"', minutes=60)
    silence(conn, 'type="pulse_oximeter"', 'rule="battery_low"', minutes=120)
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001"))
    done: list[object] = []
    with psycopg.connect(fleet) as engine:
        engine.execute("SELECT 1 FROM alerts WHERE id = %s FOR UPDATE", (alert_id,))
        timer = threading.Thread(target=lambda: done.append(
            reconcile(conn, now=datetime.now(UTC) + timedelta(minutes=61))))
        timer.start()
        timer.join(1.0)    # it waits for the engine's lock
        assert timer.is_alive()
        engine.execute("UPDATE alerts SET status = 'resolved', resolved_at = now(), "
                       "resolved_by = 'rule:battery_low', resolution_code = 'cleared', "
                       "suppressed_reason = NULL WHERE id = %s", (alert_id,))
    timer.join(10)
    assert done
    assert alert_of(fleet, "battery_low", "OXI-0001")[1:] == ("resolved", "technical", 4, None)
    assert [(a[2], a[3]) for a in audit(fleet, alert_id)] == [(None, "open"),
                                                              ("open", "suppressed")]


# --- the outbox ------------------------------------------------------------------------------


@pytest.fixture
def target(fleet):
    with psycopg.connect(fleet) as conn:
        register_targets(conn, DeliveryPolicy(webhooks=(
            WebhookTarget("callcentre", "http://127.0.0.1:9/", b"x" * 16),)))
    return fleet


def outbox(database_url):
    return rows(database_url, "SELECT o.alert_id, o.event, d.target FROM alert_outbox o "
                              "JOIN alert_deliveries d ON d.outbox_id = o.id ORDER BY o.id")


def test_each_step_of_an_alert_goes_to_the_outbox_for_each_target(target, conn):
    (alert_id, _), = fire(target, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    actions.claim(conn, alert_id, "anna")
    actions.acknowledge(conn, alert_id, "anna")
    actions.resolve(conn, alert_id, "anna", "carer on site", code="visit_arranged")
    assert outbox(target) == [(alert_id, e, "callcentre") for e in
                              ("opened", "claimed", "acknowledged", "resolved")]


def test_an_alert_suppressed_at_birth_is_announced_as_opened_when_it_comes_back(target, conn):
    """Held back from its opening, the call centre's systems have heard nothing of it: when
    it comes back, its first event is `opened` (a receiver that takes only opened, reopened,
    escalated and resolved would otherwise hear of the alert only when it escalates)."""
    s = silence(conn, 'device_id="ALM-0001"')
    (alert_id, _), = fire(target, ("battery_low", "ALM-0001"))
    assert outbox(target) == []
    expire_silence(conn, s.id, by="sofie")
    assert outbox(target) == [(alert_id, "opened", "callcentre")]


def test_a_personal_alarm_a_silence_holds_back_is_announced_at_once_saying_so(target, conn):
    """A silence naming the alarm's device holds it back (a technician testing it, say);
    the call centre hears of it all the same, as `opened`, with the silence and its end:
    it may be someone who needs help."""
    s = silence(conn, 'device_id="ALM-0001"')
    (alarm, _), = fire(target, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    [(event, status, details)] = rows(
        target, "SELECT event, payload->'alert'->>'status', payload->'details' "
                "FROM alert_outbox WHERE alert_id = %s", (alarm,))
    assert (event, status) == ("opened", "suppressed")
    assert details["held_back_by"] == f"silence {s.id} by sofie: firmware update, ticket 4711"
    assert details["silence_id"] == s.id
    assert datetime.fromisoformat(details["held_back_until"]) == s.ends_at
    expire_silence(conn, s.id, by="sofie")
    assert [e for _, e, _ in outbox(target)] == ["opened", "unsuppressed"]


def test_a_personal_alarm_reopened_while_a_silence_holds_it_is_announced_reopened(target,
                                                                                    conn):
    (alarm, _), = fire(target, ("personal_alarm", "ALM-0001", T0), code="alarm.fall")
    actions.claim(conn, alarm, "anna")
    actions.resolve(conn, alarm, "anna", "a false alarm", code="false_alarm")
    s = silence(conn, 'device_id="ALM-0001"')
    fire(target, ("personal_alarm", "ALM-0001", T0 + 60), code="alarm.fall")
    assert alert_of(target, "personal_alarm", "ALM-0001")[:2] == (alarm, "suppressed")
    [(event, held_by)] = rows(target, "SELECT event, payload->'details'->>'held_back_by' "
                                      "FROM alert_outbox ORDER BY id DESC LIMIT 1")
    assert (event, held_by) == ("reopened", f"silence {s.id} by sofie: firmware update, "
                                            "ticket 4711")


def legacy_silence(database_url, *matchers, days=60):
    """A silence as main let one be made, before today's limits (straight into the table)."""
    with psycopg.connect(database_url) as c:
        (silence_id,) = c.execute(
            "INSERT INTO silences (matchers, starts_at, ends_at, author, comment) "
            "VALUES (%s::jsonb, now(), now() + make_interval(days => %s), 'mallory', "
            "'quiet night') RETURNING id",
            (orjson.dumps([parse_matcher(m).to_json() for m in matchers]).decode(),
             days)).fetchone()
    return silence_id


def test_a_silence_made_before_the_limits_holds_back_no_personal_alarm(target, conn):
    legacy_silence(target, 'severity!="info"', 'rule=~".+"', days=365 * 70)
    legacy_silence(target, 'device_id="ALM-0002"', days=30)     # longer than max_silence
    add_device(target, "ALM-0002", "personal_alarm", "Randers")
    fire(target, ("personal_alarm", "ALM-0001"), ("personal_alarm", "ALM-0002"),
         code="alarm.fall")
    (battery, _), = fire(target, ("battery_low", "OXI-0001"))
    assert [alert_of(target, "personal_alarm", d)[1] for d in ("ALM-0001", "ALM-0002")] == \
        ["open", "open"]
    assert [e for _, e, _ in outbox(target)] == ["opened", "opened"]
    assert alert_of(target, "battery_low", "OXI-0001")[1] == "suppressed"   # as before


def test_a_personal_alarm_held_back_by_a_silence_made_before_the_limits_comes_back(
        target, conn):
    (alarm, _), = fire(target, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    with psycopg.connect(target) as c:    # suppressed by it, by main's engine
        c.execute("UPDATE alerts SET status = 'suppressed', suppressed_reason = 'silence 1' "
                  "WHERE id = %s", (alarm,))
    legacy_silence(target, 'rule="personal_alarm"')
    reconcile(conn)   # the timer's next pass
    assert alert_of(target, "personal_alarm", "ALM-0001")[1] == "open"
    assert [e for _, e, _ in outbox(target)] == ["opened", "unsuppressed"]


def test_a_silence_made_before_the_limits_is_listed_with_why_it_holds_back_no_critical_alert(
        fleet, conn):
    wide = legacy_silence(fleet, 'type="personal_alarm"', days=365 * 70)
    fine = silence(conn, 'device_id="OXI-0001"').id
    found = {s.id: silence_warnings(s) for s in list_silences(conn)}
    assert found[fine] == []
    assert found[wide] == [
        "it names no device, and could match critical alerts (of personal_alarm, "
        "alarm_processing_failed, unreadable_alarm): it holds back none of them",
        "a silence may last at most 3d (the alert policy's max_silence), this one lasts "
        "25550d: it holds back no critical alert"]


def test_a_released_alert_is_announced_by_what_its_receivers_last_heard(target, conn):
    """Suppressed after it was announced: `unsuppressed`. Reopened while held back after it
    was announced resolved: `reopened`, when it comes back."""
    (alert_id, _), = fire(target, ("battery_low", "OXI-0001", T0))
    s = silence(conn, 'device_id="OXI-0001"')
    expire_silence(conn, s.id, by="sofie")
    actions.resolve(conn, alert_id, "anna", "new battery fitted", code="resolved")
    s = silence(conn, 'device_id="OXI-0001"')
    fire(target, ("battery_low", "OXI-0001", T0 + 60))      # again, held back
    expire_silence(conn, s.id, by="sofie")
    assert [e for _, e, _ in outbox(target)] == [
        "opened", "suppressed", "unsuppressed", "resolved", "reopened"]


def test_what_is_announced_at_release_goes_by_what_was_told_not_by_the_last_event(
        target, conn):
    """A note is an event that tells nothing of the alert's episode; the rule's clear of an
    alert held back from its opening announced nothing either."""
    # a note on an alert held back from its opening: still `opened` when it comes back
    s = silence(conn, 'device_id="ALM-0001"')
    (alarm, _), = fire(target, ("battery_low", "ALM-0001", T0))
    actions.add_note(conn, alarm, "anna", "the installer is testing it")
    expire_silence(conn, s.id, by="sofie")
    # announced, resolved, a note, then again while held back: `reopened`
    (battery, _), = fire(target, ("battery_low", "OXI-0001", T0))
    actions.resolve(conn, battery, "anna", "new battery fitted", code="resolved")
    actions.add_note(conn, battery, "anna", "the citizen was told")
    s = silence(conn, 'device_id="OXI-0001"')
    fire(target, ("battery_low", "OXI-0001", T0 + 60))
    expire_silence(conn, s.id, by="sofie")
    # held back from its opening, cleared by its rule, fired again held back: `opened`
    s = silence(conn, 'device_id="BPM-0001"')
    (bp, _), = fire(target, ("battery_low", "BPM-0001", T0))
    clear(target, "battery_low", "BPM-0001", T0 + 30)
    fire(target, ("battery_low", "BPM-0001", T0 + 60))
    expire_silence(conn, s.id, by="sofie")
    told = {i: [e for j, e, _ in outbox(target) if j == i] for i in (alarm, battery, bp)}
    assert told == {alarm: ["note", "opened"],
                    battery: ["opened", "resolved", "note", "reopened"],
                    bp: ["resolved", "opened"]}


def test_a_release_after_the_outbox_forgot_the_opening_is_unsuppressed_not_opened(
        target, conn):
    """Delivered events are pruned after the retention; the alert remembers what was told."""
    (alert_id, _), = fire(target, ("battery_low", "OXI-0001", T0))
    s = silence(conn, 'device_id="OXI-0001"')
    conn.execute("UPDATE alert_deliveries SET delivered_at = now() - interval '31 days'")
    conn.execute("UPDATE alert_outbox SET created_at = now() - interval '31 days'")
    assert prune(conn, datetime.now(UTC) - timedelta(days=30)) == 2
    conn.commit()
    expire_silence(conn, s.id, by="sofie")
    assert outbox(target) == [(alert_id, "unsuppressed", "callcentre")]


def test_a_delivery_given_up_today_stays_a_dead_letter_for_the_retention_however_old(
        target, conn):
    """The call centre's system was down for 31 days and the alarm's delivery waited all
    along; today it answers, failing on this one event, and a supervisor gives it up so the
    rest can go. Ops find it with `outbox --dead` and can send it again once the receiver is
    mended: the retention counts from its end, not from the alarm 31 days ago (forgotten
    at the timer's next tick)."""
    fire(target, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    conn.execute("UPDATE alert_outbox SET created_at = now() - interval '31 days'")
    conn.execute("UPDATE alert_deliveries SET attempts = 4000, last_error = 'HTTP 500'")
    (outbox_id,) = rows(target, "SELECT id FROM alert_outbox")[0]
    give_up(conn, outbox_id, "callcentre", actor="sofie", reason="fails on this one event")
    assert prune(conn, datetime.now(UTC) - timedelta(days=30)) == 0
    assert [(d[0], d[1], d[6]) for d in undelivered(conn, dead_only=True)] == [
        (outbox_id, "callcentre", "dead")]
    redeliver(conn, outbox_id, "callcentre", actor="sofie")
    assert [d[6] for d in undelivered(conn)] == ["retrying"]


def test_a_resolution_delivered_long_ago_is_kept_while_the_opening_before_it_waits(
        target, conn):
    """The target was renamed while the alarm's opening waited for it; the resolution went
    to the new name, delivered 31 days ago. Moved now, the opening would be the receiver's
    last word on a resolved alarm (its ticket open again): the resolution it was told is
    what says so, and the timer's prune must not forget it while the opening waits."""
    (alert_id, _), = fire(target, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    register_targets(conn, DeliveryPolicy(webhooks=(
        WebhookTarget("callcentre-v2", "http://127.0.0.1:9/", b"x" * 16),)))
    actions.resolve(conn, alert_id, "anna", "a false alarm", code="false_alarm")
    conn.execute("UPDATE alert_outbox SET created_at = now() - interval '31 days'")
    conn.execute("UPDATE alert_deliveries SET delivered_at = now() - interval '31 days' "
                 "WHERE target = 'callcentre-v2'")
    assert prune(conn, datetime.now(UTC) - timedelta(days=30)) == 0
    assert move_deliveries(conn, "callcentre", "callcentre-v2", actor="sofie",
                           reason="renamed") == {"superseded": 1}


def test_an_alert_held_back_from_its_opening_lists_its_opening_first(fleet, conn):
    silence(conn, 'device_id="OXI-0001"')
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001", T0))
    assert [a for _, a, _, _ in audit(fleet, alert_id)] == ["open", "suppress"]
    assert [e.action for e in actions.audit_trail(conn, alert_id)] == ["open", "suppress"]


def test_the_outbox_row_is_rolled_back_with_the_alert(target):
    with psycopg.connect(target) as conn:
        record_firings(conn, [firing(conn, "personal_alarm", "ALM-0001", code="alarm.fall")])
        conn.rollback()  # the batch failed: nothing of it may remain
    assert rows(target, "SELECT count(*) FROM alerts") == [(0,)]
    assert outbox(target) == []


def test_an_alert_claimed_while_reconcile_planned_to_suppress_it_gets_no_suppressed_event(
        fleet, conn):
    # reconcile reads its candidates without a lock; an operator claims one of them before
    # its UPDATE. The UPDATE skips it (and audits nothing): the call centre must hear nothing
    # of a suppression that did not happen, for the alert its operator is working on.
    import threading

    register_targets(conn, DeliveryPolicy(webhooks=(WebhookTarget("cc", "http://x", b"k"),)))
    start = datetime.now(UTC) + timedelta(hours=1)
    silence(conn, 'device_id="OXI-0001"', minutes=120, start=start)
    (alert_id, _), = fire(fleet, ("battery_low", "OXI-0001"))
    done: list[object] = []
    with psycopg.connect(fleet) as operator:
        operator.execute("SELECT 1 FROM alerts WHERE id = %s FOR UPDATE", (alert_id,))
        engine = threading.Thread(target=lambda: done.append(
            reconcile(conn, now=start + timedelta(minutes=1))))
        engine.start()
        engine.join(1.0)   # it waits for the operator's lock
        assert engine.is_alive()
        operator.execute("UPDATE alerts SET status = 'claimed', claimed_by = 'anna' "
                         "WHERE id = %s", (alert_id,))
    engine.join(10)
    assert done and done[0].suppressed == []                      # type: ignore[attr-defined]
    assert alert_of(fleet, "battery_low", "OXI-0001")[1] == "claimed"
    assert rows(fleet, "SELECT event FROM alert_outbox WHERE alert_id = %s ORDER BY id",
                (alert_id,)) == [("opened",)]
    assert [a[1] for a in audit(fleet, alert_id)] == ["open"]
