"""`vagt privacy scrub`: what the scan finds is masked, each change audited, never repeated."""

from __future__ import annotations

import getpass
import json

import pytest
from tests.alerts.test_actions import new_alert
from tests.app.conftest import query, scalar
from tests.app.test_privacy_scan import found, insert_dead_letter, insert_device_attributes, insert_event

from vagt.app.cli import main
from vagt.app.store import dead_letter_digest

# The numbers below are made up, of CPR shape: none is anyone's.


@pytest.fixture
def env(database_url, monkeypatch):
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    return database_url


def scrub(*extra: str) -> int:
    return main(["privacy", "scrub", "--actor", "anna", "--reason", "found by the scan",
                 *extra])


def test_after_a_scrub_the_scan_finds_nothing_and_the_rest_of_the_text_is_kept(env, capsys):
    alert = new_alert(env)
    query(env, "UPDATE alerts SET note = 'ringede til 010170-1234 kl 10' WHERE id = %s "
               "RETURNING 1", (alert,))
    insert_event(env, '{"text": "borger 01.01.70-1234", "level": 3, '
                      '"cpr 020270 1234": ["x 030370\u20131234"]}')
    letter = insert_dead_letter(env, b'{"note": "010190\xe2\x80\x931234"}\xff',
                                detail="got '0101901234'")
    assert scrub() == 0
    out = capsys.readouterr().out
    assert "events" in out and "0101" not in out and "1234" not in out
    assert found(env) == {}
    assert scalar(env, "SELECT note FROM alerts WHERE id = %s", (alert,)) == \
        "ringede til [cpr removed] kl 10"
    assert scalar(env, "SELECT details FROM events") == {
        "text": "borger [cpr removed]", "level": 3, "cpr [cpr removed]": ["x [cpr removed]"]}
    payload, detail = query(env, "SELECT payload, detail FROM dead_letters WHERE id = %s",
                            (letter,))[0]
    assert bytes(payload) == b'{"note": "[cpr removed]"}\xff'    # the stray byte kept as it was
    assert detail == "got '[cpr removed]'"


def test_each_changed_row_is_audited_with_who_why_and_where_never_the_number(env, capsys):
    alert = new_alert(env)
    query(env, "UPDATE alerts SET note = 'cpr 010170-1234, 020270-1234' WHERE id = %s "
               "RETURNING 1", (alert,))
    assert scrub() == 0
    audit = query(env, "SELECT actor, subject, details FROM audit_log "
                       "WHERE action = 'privacy.scrubbed'")
    assert audit == [("anna", "alerts.note", {"table": "alerts", "column": "note",
                                              "key": str(alert), "found": 2,
                                              "reason": "found by the scan",
                                              "via": f"cli:{getpass.getuser()}"})]


def test_a_dry_run_reports_what_would_change_and_changes_nothing(env, capsys):
    insert_event(env, '{"text": "010190-1234"}')
    assert scrub("--dry-run", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"table": "events", "column": "details", "rows": 1, "masked": 1, "left": 0}]
    assert found(env) == {("events", "details"): 1}
    assert scalar(env, "SELECT count(*) FROM audit_log") == 0


def test_a_scrub_says_who_and_why_and_neither_may_hold_a_cpr_number(env, capsys):
    insert_event(env, '{"text": "010190-1234"}')
    with pytest.raises(SystemExit):
        main(["privacy", "scrub", "--actor", "anna"])
    assert main(["privacy", "scrub", "--actor", "anna", "--reason", " "]) == 2
    assert "give the reason" in capsys.readouterr().err
    assert main(["privacy", "scrub", "--actor", "anna", "--reason", "borger 020290-1234"]) == 2
    err = capsys.readouterr().err
    assert "reason holds something shaped like" in err and "1234" not in err
    assert found(env) == {("events", "details"): 1}
    assert scalar(env, "SELECT count(*) FROM audit_log") == 0


def test_a_scrubbed_dead_letters_digest_is_of_what_it_now_holds(env, capsys):
    """The digest of the bytes with the number would let a reader of the masked row find the
    number by trying every date and serial. Two letters alike once masked both stay."""
    first = insert_dead_letter(env, b'{"cpr": "010190-1234"}')
    second = insert_dead_letter(env, b'{"cpr": "020290-1234"}')
    assert scrub() == 0
    rows = query(env, "SELECT id, topic, payload, digest FROM dead_letters ORDER BY id")
    assert [r[0] for r in rows] == [first, second]
    topic, payload = rows[0][1], bytes(rows[0][2])
    assert bytes(rows[0][3]) == dead_letter_digest(topic, payload)
    assert bytes(rows[1][3]) != bytes(rows[0][3])
    assert payload == bytes(rows[1][2]) == b'{"cpr": "[cpr removed]"}'


def test_a_device_id_that_holds_one_is_left_for_renaming_and_never_shown(env, capsys):
    """A device's id is the key its readings, alerts and assignments refer to."""
    query(env, "INSERT INTO devices (device_id, vendor, model, type, municipality) VALUES "
               "('0101901234', 'Tunstall', 'Lifeline Vi+', 'personal_alarm', 'Randers') "
               "RETURNING 1")
    assert scrub("--json") == 1
    assert json.loads(capsys.readouterr().out) == [
        {"table": "devices", "column": "device_id", "rows": 0, "masked": 0, "left": 1}]
    assert main(["privacy", "scan", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == [
        {"table": "devices", "column": "device_id", "rows": 1, "keys": ["[cpr removed]"]}]


def test_nine_digits_under_a_name_announcing_a_cpr_number_are_masked_and_others_kept(
        env, capsys):
    insert_device_attributes(env, '{"CPR-nr": "101901234", "serial": "101901234"}')
    assert scrub() == 0
    assert scalar(env, "SELECT attributes FROM devices WHERE device_id = 'ALM-1'") == {
        "CPR-nr": "[cpr removed]", "serial": "101901234"}
    assert found(env) == {}


def test_a_name_that_was_the_mask_already_keeps_it_and_the_newly_masked_one_is_numbered(
        env, capsys):
    """An earlier scrub wrote "[cpr removed]" as a name; what a reader of that scrub's audit
    found under it stays there."""
    insert_event(env, '{"010190-1234": "b", "[cpr removed]": "a", "[cpr removed] 2": "c"}')
    assert scrub() == 0
    assert scalar(env, "SELECT details FROM events") == {
        "[cpr removed]": "a", "[cpr removed] 2": "c", "[cpr removed] 3": "b"}
    assert found(env) == {}
