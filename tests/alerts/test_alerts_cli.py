"""`vagt alerts list|claim|ack|resolve`: the handlers as the `vagt` command calls them."""

from __future__ import annotations

import argparse
import getpass
import json

import pytest
from tests.alerts.support import add_operator
from tests.alerts.test_actions import new_alert

from vagt.alerts import cli
from vagt.alerts.actions import MAX_NOTE


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vagt")
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["alerts", *argv])


@pytest.fixture(autouse=True)
def accounts(request: pytest.FixtureRequest) -> None:
    """The operators the tests act as: accounts, as the command line asks."""
    if "database_url" in request.fixturenames:
        database_url = request.getfixturevalue("database_url")
        add_operator(database_url, "anna")
        add_operator(database_url, "bo")


def run(conninfo: str, *argv: str) -> int:
    args = parse(*argv)
    result: int = args.handler(args, conninfo)
    return result


def test_claim_prints_the_new_status_and_who_holds_it(database_url, capsys):
    a = new_alert(database_url)
    assert run(database_url, "claim", str(a), "--operator", "anna") == 0
    assert capsys.readouterr().out.startswith(f"alert {a} is now claimed by anna: alarm.fall")


def test_ack_keeps_the_note(database_url, conn, capsys):
    a = new_alert(database_url)
    run(database_url, "claim", str(a), "--operator", "anna")
    assert run(database_url, "ack", str(a), "--operator", "anna", "--note", "called") == 0
    assert conn.execute("SELECT status, note FROM alerts").fetchall() == [
        ("acknowledged", "called")]


def test_resolve_with_a_note_resolves(database_url, conn, capsys):
    a = new_alert(database_url)
    assert run(database_url, "resolve", str(a), "--operator", "anna", "--code", "false_alarm",
               "--note", "the citizen pressed by mistake") == 0
    assert conn.execute("SELECT status, resolved_by, resolution_code, note FROM alerts"
                        ).fetchall() == [("resolved", "anna", "false_alarm",
                                          "the citizen pressed by mistake")]


def test_a_refused_claim_is_one_line_on_stderr_naming_the_holder_and_exits_2(database_url,
                                                                               capsys):
    a = new_alert(database_url)
    run(database_url, "claim", str(a), "--operator", "anna")
    capsys.readouterr()
    assert run(database_url, "claim", str(a), "--operator", "bo") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"vagt: alert {a} is already claimed by anna since ")
    assert err.count("\n") == 1


def test_an_unknown_alert_exits_2(database_url, capsys):
    assert run(database_url, "ack", "999", "--operator", "anna") == 2
    assert capsys.readouterr().err.startswith("vagt: there is no alert 999")


def test_a_blank_operator_name_exits_2(database_url, capsys):
    a = new_alert(database_url)
    assert run(database_url, "claim", str(a), "--operator", " ") == 2
    assert "use 1 to 100 printable characters" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["note", "{id}", "--operator", "anna", "--note", "CPR 0101701234 confirmed"],
    ["ack", "{id}", "--operator", "anna", "--note", "called 010170-1234"],
    ["claim", "{id}", "--operator", "010170-1234"],
])
def test_a_note_or_operator_holding_a_cpr_number_exits_2_without_it_and_changes_nothing(
        database_url, conn, capsys, argv):
    a = new_alert(database_url)
    assert run(database_url, *[x.format(id=a) for x in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vagt: the ") and "civil registration (CPR) number" in err
    assert "1234" not in err and err.count("\n") == 1
    assert conn.execute("SELECT status, note FROM alerts").fetchall() == [("open", None)]
    assert conn.execute("SELECT count(*) FROM alert_audit").fetchone() == (0,)


def test_a_note_longer_than_max_note_exits_2_in_one_line_and_changes_nothing(database_url,
                                                                              conn, capsys):
    a = new_alert(database_url)
    assert run(database_url, "note", str(a), "--operator", "anna",
               "--note", "x" * (MAX_NOTE + 1)) == 2
    assert capsys.readouterr().err == (f"vagt: the note has {MAX_NOTE + 1} characters; at most "
                                       f"{MAX_NOTE} are kept (it goes to the call centre's "
                                       "systems with each later event)\n")
    assert conn.execute("SELECT note FROM alerts").fetchall() == [(None,)]
    assert conn.execute("SELECT count(*) FROM alert_audit").fetchone() == (0,)


def test_the_operator_is_required(capsys):
    with pytest.raises(SystemExit):
        parse("claim", "1")
    assert "--operator" in capsys.readouterr().err


def test_list_prints_a_table_most_urgent_first(database_url, capsys):
    low = new_alert(database_url, queue="technical", priority=4)
    high = new_alert(database_url, queue="emergency", priority=1)
    run(database_url, "claim", str(high), "--operator", "anna")
    capsys.readouterr()
    assert run(database_url, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "PRI", "QUEUE", "STATUS", "HOLDER", "OPENED", "REPEATS",
                                "DEVICE", "SUMMARY"]
    assert [line.split()[:5] for line in lines[1:]] == [
        [str(high), "1", "emergency", "claimed", "anna"],
        [str(low), "4", "technical", "open", "2024-05-01"]]


def test_list_json_is_an_array_filtered_by_status_and_queue(database_url, capsys):
    a = new_alert(database_url, queue="technical")
    new_alert(database_url, queue="emergency")
    b = new_alert(database_url, queue="technical")
    run(database_url, "resolve", str(b), "--operator", "anna", "--code", "resolved",
        "--note", "done")
    capsys.readouterr()
    assert run(database_url, "list", "--json", "--status", "open", "--queue", "technical") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(x["id"], x["status"], x["queue"]) for x in listed] == [(a, "open", "technical")]


def test_list_takes_several_statuses(database_url, capsys):
    a = new_alert(database_url)
    b = new_alert(database_url)
    new_alert(database_url)
    run(database_url, "claim", str(a), "--operator", "anna")
    run(database_url, "resolve", str(b), "--operator", "anna", "--code", "resolved",
        "--note", "done")
    capsys.readouterr()
    run(database_url, "list", "--json", "--status", "claimed", "--status", "resolved")
    assert {x["id"] for x in json.loads(capsys.readouterr().out)} == {a, b}


def test_list_says_so_when_nothing_matches(database_url, capsys):
    assert run(database_url, "list", "--queue", "nowhere") == 0
    assert capsys.readouterr().out == "no alerts match\n"


def test_list_shows_why_a_suppressed_alert_is_held_back(database_url, conn, capsys):
    a = new_alert(database_url)
    conn.execute("UPDATE alerts SET status = 'suppressed', suppressed_reason = 'silence 4 by "
                 "sofie: repair' WHERE id = %s", (a,))
    assert run(database_url, "list", "--status", "suppressed") == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(
        "[suppressed: silence 4 by sofie: repair]")


def test_list_and_show_escape_what_is_not_printable_in_a_summary_stored_before(database_url,
                                                                                conn, capsys):
    """An older alert whose summary holds a right-to-left override and a C1 control (CSI):
    the operator's table shows them as escapes, never as characters a terminal obeys."""
    a = new_alert(database_url)
    conn.execute("UPDATE alerts SET summary = %s, note = %s WHERE id = %s",
                 ("fw \u202e9.2.1 from \u009b31mALM", "line one\nline two", a))
    assert run(database_url, "list") == 0
    listed = capsys.readouterr().out
    assert listed.splitlines()[1].endswith("fw \\u202e9.2.1 from \\x9b31mALM")
    assert run(database_url, "show", str(a)) == 0
    shown = capsys.readouterr().out
    assert "summary:           fw \\u202e9.2.1 from \\x9b31mALM" in shown.splitlines()
    assert "note:              line one\\nline two" in shown.splitlines()
    for out in (listed, shown):
        assert "\u202e" not in out and "\u009b" not in out


@pytest.mark.parametrize(("note", "named"), [
    ("called \u202eenizitic", "U+202E RIGHT-TO-LEFT OVERRIDE (its character 8)"),
    ("called\u200b", "U+200B ZERO WIDTH SPACE (its character 7)"),
    ("called\x1b[2Jback", "U+001B ESCAPE (its character 7)"),
])
def test_a_note_with_a_character_that_is_not_printable_exits_2_naming_it(database_url, conn,
                                                                          capsys, note, named):
    a = new_alert(database_url)
    assert run(database_url, "note", str(a), "--operator", "anna", "--note", note) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vagt: the note holds {named}, which is not printable")
    assert conn.execute("SELECT note FROM alerts").fetchall() == [(None,)]


def test_a_note_of_several_lines_is_kept_with_its_line_breaks_and_tabs(database_url, conn):
    """What an operator pastes from another program: lines, and a tab between columns."""
    a = new_alert(database_url)
    assert run(database_url, "note", str(a), "--operator", "anna",
               "--note", "called twice\r\nno answer\tat 14:05") == 0
    assert conn.execute("SELECT note FROM alerts").fetchall() == [
        ("called twice\nno answer\tat 14:05",)]


def test_a_note_pasted_with_no_break_spaces_is_kept_with_spaces(database_url, conn):
    """A mail or a web page puts no-break spaces in what an operator copies, and a formatted
    time a narrow one: they look like spaces, and the note is not refused for a character
    the operator cannot see."""
    a = new_alert(database_url)
    assert run(database_url, "note", str(a), "--operator", "anna",
               "--note", "called at\u00a014:05\u202fPM,\u00a0no answer") == 0
    assert conn.execute("SELECT note FROM alerts").fetchall() == [
        ("called at 14:05 PM, no answer",)]


# --- who acts: an account, and the login that typed it ----------------------------------------


@pytest.mark.parametrize(("argv", "name"), [
    (["claim", "{id}", "--operator", "annna"], "annna"),
    (["note", "{id}", "--operator", "nobody", "--note", "called"], "nobody"),
    (["resolve", "{id}", "--operator", "ghost", "--code", "resolved", "--note", "done"],
     "ghost"),
    (["next", "--operator", "annna"], "annna"),
])
def test_an_operator_without_an_account_exits_2_in_one_line_and_nothing_is_recorded(
        database_url, conn, capsys, argv, name):
    """--operator was typed, and anything typed was audited as who acted."""
    a = new_alert(database_url)
    assert run(database_url, *[x.format(id=a) for x in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vagt: there is no enabled account '{name}'")
    assert err.count("\n") == 1
    assert conn.execute("SELECT status, note FROM alerts").fetchall() == [("open", None)]
    assert conn.execute("SELECT count(*) FROM alert_audit").fetchone() == (0,)


def test_a_disabled_operator_exits_2(database_url, conn, capsys):
    from vagt.alerts.accounts import disable_user

    a = new_alert(database_url)
    disable_user(conn, "anna", actor="test")
    assert run(database_url, "claim", str(a), "--operator", "anna") == 2
    assert capsys.readouterr().err.startswith("vagt: there is no enabled account 'anna'")
    assert conn.execute("SELECT status FROM alerts").fetchall() == [("open",)]


def test_the_audit_entry_records_the_login_the_command_ran_under(database_url, conn):
    a = new_alert(database_url)
    run(database_url, "claim", str(a), "--operator", "anna")
    run(database_url, "ack", str(a), "--operator", "anna", "--note", "called")
    assert conn.execute("SELECT actor, action, details FROM alert_audit ORDER BY id").fetchall() \
        == [("anna", "claim", {"via": f"cli:{getpass.getuser()}"}),
            ("anna", "ack", {"via": f"cli:{getpass.getuser()}"})]


def test_release_as_a_supervisor_needs_a_supervisors_account(database_url, conn, capsys):
    a = new_alert(database_url)
    run(database_url, "claim", str(a), "--operator", "anna")
    assert run(database_url, "release", str(a), "--operator", "bo", "--supervisor",
               "--note", "anna went home") == 2
    assert capsys.readouterr().err == ("vagt: this needs the role supervisor or higher; bo is "
                                       "operator\n")
    assert conn.execute("SELECT status, claimed_by FROM alerts").fetchall() == [
        ("claimed", "anna")]
    add_operator(database_url, "sofie", "supervisor")
    assert run(database_url, "release", str(a), "--operator", "sofie", "--supervisor",
               "--note", "anna went home") == 0
    assert conn.execute("SELECT actor, details FROM alert_audit WHERE action = 'release'"
                        ).fetchall() == [("sofie", {"taken_from": "anna",
                                                    "via": f"cli:{getpass.getuser()}"})]


def test_a_municipal_operator_acts_only_on_their_municipalitys_alerts(database_url, conn,
                                                                      capsys):
    a = new_alert(database_url)
    conn.execute("""UPDATE alerts SET labels = labels || '{"municipality": "Randers"}'""")
    add_operator(database_url, "mette", municipality="Aarhus")
    assert run(database_url, "claim", str(a), "--operator", "mette") == 2
    assert capsys.readouterr().err.startswith(f"vagt: there is no alert {a}")
    assert conn.execute("SELECT status FROM alerts").fetchall() == [("open",)]


def test_a_silence_from_the_command_line_needs_a_supervisors_account(database_url, conn,
                                                                       capsys):
    argv = ["device_id=OXI-0001", "--comment", "sent for repair", "--duration", "2h"]
    assert silences(database_url, "add", *argv, "--author", "anna") == 2
    assert capsys.readouterr().err == ("vagt: this needs the role supervisor or higher; anna is "
                                       "operator\n")
    add_operator(database_url, "sofie", "supervisor")
    assert silences(database_url, "add", *argv, "--author", "sofie") == 0
    [(actor, via)] = conn.execute("SELECT actor, details->>'via' FROM audit_log "
                                  "WHERE action = 'silence.create'").fetchall()
    assert (actor, via) == ("sofie", f"cli:{getpass.getuser()}")


def test_a_silence_refused_on_the_command_line_exits_2_saying_why_and_is_audited(
        database_url, conn, capsys):
    add_operator(database_url, "sofie", "supervisor")
    assert silences(database_url, "add", "rule=personal_alarm", "--comment", "quiet night",
                    "--duration", "2h", "--author", "sofie") == 2
    err = capsys.readouterr().err
    assert err.startswith("vagt: the silence could hold back critical alerts (of "
                          "personal_alarm)")
    [(actor, details)] = conn.execute("SELECT actor, details FROM audit_log "
                                      "WHERE action = 'silence.refused'").fetchall()
    assert actor == "sofie"
    assert (details["matchers"], details["comment"], details["via"]) == (
        ['rule="personal_alarm"'], "quiet night", f"cli:{getpass.getuser()}")
    assert f"vagt: {details['reason']}" == err.strip()
    assert conn.execute("SELECT count(*) FROM silences").fetchone() == (0,)


def test_a_refused_expiry_on_the_command_line_exits_2_saying_why_and_is_audited(
        database_url, conn, capsys):
    add_operator(database_url, "sofie", "supervisor")
    assert silences(database_url, "add", "device_id=OXI-0001", "--comment", "sent for repair",
                    "--duration", "2h", "--author", "sofie") == 0
    [(silence,)] = conn.execute("SELECT id FROM silences").fetchall()
    assert silences(database_url, "expire", str(silence), "--author", "sofie") == 0
    capsys.readouterr()
    assert silences(database_url, "expire", str(silence), "--author", "sofie") == 2
    err = capsys.readouterr().err
    assert err == f"vagt: silence {silence} has already ended\n"
    assert conn.execute("SELECT actor, subject, details FROM audit_log "
                        "WHERE action = 'silence.refused'").fetchall() == [
        ("sofie", f"silence {silence}", {"asked": "expire", "silence_id": silence,
                                         "reason": f"silence {silence} has already ended",
                                         "via": f"cli:{getpass.getuser()}"})]


def silences(conninfo: str, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vagt")
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["silences", *argv])
    result: int = args.handler(args, conninfo)
    return result
