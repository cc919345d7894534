"""Accounts, tokens and silences from the command line: hashed secrets, audit, refusals."""

from __future__ import annotations

import argparse
import getpass
import io

import pytest
from tests.alerts.support import add_operator

from vagt.alerts import accounts_cli, cli
from vagt.alerts.accounts import (
    authenticate_password,
    authenticate_token,
    hash_password,
    verify_password,
)

PASSWORD = "correct horse battery"
LOGIN = f"cli:{getpass.getuser()}"


def run(conninfo: str, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vagt")
    sub = parser.add_subparsers()
    cli.add_parser(sub)
    accounts_cli.add_parser(sub)
    args = parser.parse_args(list(argv))
    result: int = args.handler(args, conninfo)
    return result


def test_a_password_is_stored_as_a_salted_scrypt_hash():
    a, b = hash_password(PASSWORD), hash_password(PASSWORD)
    assert a.startswith("scrypt$16384$8$1$") and a != b and PASSWORD not in a
    assert verify_password(a, PASSWORD) and not verify_password(a, PASSWORD + "!")


def test_users_add_reads_the_password_from_stdin_and_stores_only_its_hash(database_url, conn,
                                                                          monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert run(database_url, "users", "add", "bo", "--role", "operator", "--municipality",
               "Aarhus", "--queue", "home_care", "--password-stdin") == 0
    assert capsys.readouterr().out == "user bo added: operator in Aarhus\n"
    (stored,) = conn.execute("SELECT password_hash FROM operators").fetchone()  # type: ignore[misc]
    assert PASSWORD not in stored
    who = authenticate_password(conn, "bo", PASSWORD)
    assert who is not None and (who.municipality, who.queues) == ("Aarhus", ("home_care",))
    assert conn.execute("SELECT action, subject FROM audit_log").fetchall() == [
        ("user.add", "user bo")]


def test_a_short_password_is_refused(database_url, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert run(database_url, "users", "add", "bo", "--role", "operator",
               "--password-stdin") == 2
    assert capsys.readouterr().err == "vagt: the password must have at least 12 characters\n"


def test_users_add_without_a_terminal_says_to_use_password_stdin(database_url, conn,
                                                                   monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert run(database_url, "users", "add", "bo", "--role", "operator") == 2
    assert capsys.readouterr().err == ("vagt: there is no terminal to ask for the password on;"
                                       " give it on standard input with --password-stdin\n")
    assert conn.execute("SELECT count(*) FROM operators").fetchone() == (0,)


def test_a_second_user_of_the_same_name_is_refused(database_url, capsys):
    assert run(database_url, "users", "add", "bo", "--role", "operator", "--no-password") == 0
    assert run(database_url, "users", "add", "bo", "--role", "admin", "--no-password") == 2
    assert capsys.readouterr().err == "vagt: there is already a user 'bo'\n"


def test_an_empty_municipality_is_refused_not_taken_for_every_municipality(database_url,
                                                                           capsys):
    """`--municipality "$MUNI"` with the variable unset made an account of the whole centre."""
    assert run(database_url, "users", "add", "kim", "--role", "operator", "--no-password",
               "--municipality", "") == 2
    assert "the municipality is empty" in capsys.readouterr().err
    assert run(database_url, "users", "list") == 0
    assert "kim" not in capsys.readouterr().out


@pytest.mark.parametrize("argv", [("silences", "expire", str(10**20), "--author", "sofie"),
                                  ("alerts", "claim", "0", "--operator", "anna")])
def test_an_id_no_row_can_have_is_a_usage_error(database_url, capsys, argv):
    with pytest.raises(SystemExit) as e:
        run(database_url, *argv)
    assert e.value.code == 2 and "is no row's id" in capsys.readouterr().err


def test_tokens_create_prints_the_token_once_and_stores_its_hash(database_url, conn, capsys):
    run(database_url, "users", "add", "crm", "--role", "operator", "--no-password")
    capsys.readouterr()
    assert run(database_url, "tokens", "create", "--user", "crm", "--name", "callcentre") == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("vagt_") and "shown only now" in out.err
    (stored,) = conn.execute("SELECT token_sha256 FROM api_tokens").fetchone()  # type: ignore[misc]
    assert token.encode() not in bytes(stored)
    assert authenticate_token(conn, token).username == "crm"  # type: ignore[union-attr]
    assert run(database_url, "tokens", "revoke", "1") == 0
    assert authenticate_token(conn, token) is None


def test_a_token_for_an_unknown_user_is_refused(database_url, capsys):
    assert run(database_url, "tokens", "create", "--user", "nobody", "--name", "x") == 2
    assert "there is no enabled user 'nobody'" in capsys.readouterr().err


def test_silences_add_list_expire_from_the_command_line(database_url, capsys):
    add_operator(database_url, "sofie", "supervisor")
    assert run(database_url, "silences", "add", "device_id=OXI-0001", "--author", "sofie",
               "--comment", "sent for repair", "--duration", "2h") == 0
    assert capsys.readouterr().out.startswith('silence 1 (active): device_id="OXI-0001" until ')
    assert run(database_url, "silences", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["1", "active"]
    assert run(database_url, "silences", "expire", "1", "--author", "sofie") == 0
    assert run(database_url, "silences", "list") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no silences"
    assert run(database_url, "silences", "expire", "1", "--author", "sofie") == 2
    assert capsys.readouterr().err == "vagt: silence 1 has already ended\n"


def test_silences_list_marks_one_made_before_the_limits_saying_why(database_url, conn,
                                                                   capsys):
    conn.execute("INSERT INTO silences (matchers, starts_at, ends_at, author, comment) VALUES "
                 "('[{\"name\": \"rule\", \"op\": \"=\", \"value\": \"personal_alarm\"}]', "
                 "now(), now() + interval '400 days', 'sofie', 'quiet night')")
    assert run(database_url, "silences", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["1", "active!"]
    assert lines[2:] == [
        "! silence 1: it names no device, and could match critical alerts (of "
        "personal_alarm): it holds back none of them",
        "! silence 1: a silence may last at most 3d (the alert policy's max_silence), this "
        "one lasts 400d: it holds back no critical alert"]


@pytest.mark.parametrize(("argv", "message"), [
    (["device_id"], "is not a matcher"),
    (['device_id=~".*"'], "would silence everything"),
    (["rule=personal_alarm"], "could hold back critical alerts (of personal_alarm)"),
    (["device_id=~(?!vagt-probe-).+"], "a negative lookahead"),
    (["device_id=ALM-0001", "--duration", "30d"], "may last at most 3d"),
])
def test_a_bad_silence_is_one_line_on_stderr_exit_2(database_url, capsys, argv, message):
    add_operator(database_url, "sofie", "supervisor")
    assert run(database_url, "silences", "add", *argv, "--author", "sofie", "--comment", "x",
               *(["--duration", "1h"] if "--duration" not in argv else [])) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["users", "add", "0101701234", "--role", "operator", "--no-password"],
    ["users", "add", "bo", "--role", "operator", "--municipality", "Aarhus 010170-1234",
     "--no-password"],
    ["users", "add", "bo", "--role", "operator", "--queue", "emergency", "--queue",
     "010170-1234", "--no-password"],
    ["tokens", "create", "--user", "crm", "--name", "for 010170-1234"],
    ["silences", "add", "device_id=OXI-0001", "--author", "sofie", "--comment",
     "citizen 010170-1234 is in hospital", "--duration", "1h"],
    ["silences", "add", "device_id=OXI-0001", "--author", "010170-1234", "--comment",
     "in hospital", "--duration", "1h"],
])
def test_a_cpr_number_in_what_is_written_from_the_command_line_exits_2_and_nothing_is_kept(
        database_url, conn, capsys, argv):
    run(database_url, "users", "add", "crm", "--role", "operator", "--no-password")
    run(database_url, "users", "add", "sofie", "--role", "supervisor", "--no-password")
    capsys.readouterr()
    assert run(database_url, *argv) == 2
    err = capsys.readouterr().err
    assert "civil registration (CPR) number" in err and "1234" not in err
    assert conn.execute("SELECT username FROM operators ORDER BY 1").fetchall() == [
        ("crm",), ("sofie",)]
    assert conn.execute("SELECT count(*) FROM api_tokens").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM silences").fetchone() == (0,)
    assert conn.execute("SELECT action FROM audit_log").fetchall() == [("user.add",)] * 2


@pytest.mark.parametrize(("argv", "named"), [
    (["users", "add", "bo", "--role", "operator", "--municipality", "Aarhus\u200b",
      "--no-password"], "the municipality holds U+200B ZERO WIDTH SPACE (its character 7)"),
    (["users", "add", "bo", "--role", "operator", "--queue", "emergency\u200b",
      "--no-password"], "the queue holds U+200B ZERO WIDTH SPACE (its character 10)"),
    (["tokens", "create", "--user", "crm", "--name", "crm\u202e"],
     "the token's name holds U+202E RIGHT-TO-LEFT OVERRIDE (its character 4)"),
])
def test_a_name_with_a_character_that_is_not_printable_exits_2_naming_it(database_url, conn,
                                                                          capsys, argv, named):
    """An operator of "Aarhus" and a zero-width space would see none of Aarhus' alerts, and
    look in `vagt users list` like one who does."""
    run(database_url, "users", "add", "crm", "--role", "operator", "--no-password")
    capsys.readouterr()
    assert run(database_url, *argv) == 2
    assert capsys.readouterr().err.startswith(f"vagt: {named}, which is not printable")
    assert conn.execute("SELECT username FROM operators").fetchall() == [("crm",)]
    assert conn.execute("SELECT count(*) FROM api_tokens").fetchone() == (0,)


def test_alerts_next_and_note_and_show_from_the_command_line(database_url, capsys):
    from tests.alerts.test_actions import new_alert

    alert_id = new_alert(database_url, "emergency")
    add_operator(database_url, "anna")
    add_operator(database_url, "bo")
    assert run(database_url, "alerts", "next", "--operator", "anna", "--queue", "emergency") == 0
    assert capsys.readouterr().out.startswith(f"alert {alert_id} is now claimed by anna")
    assert run(database_url, "alerts", "note", str(alert_id), "--operator", "anna", "--note",
               "called the daughter") == 0
    assert run(database_url, "alerts", "next", "--operator", "bo") == 0
    assert "nothing to take" in capsys.readouterr().out
    assert run(database_url, "alerts", "show", str(alert_id)) == 0
    trail = capsys.readouterr().out.splitlines()[-2:]
    assert [line.split()[3:5] for line in trail] == [["anna", "claim"], ["anna", "note"]]


def test_alerts_next_from_the_command_line_takes_from_the_accounts_queues(database_url, capsys):
    """An operator of the emergency queue is handed its alarms, not a more urgent technical
    alert, when the command names no --queue: as the API's POST /alerts/next takes them."""
    from tests.alerts.test_actions import new_alert

    technical = new_alert(database_url, "technical", priority=1,
                          opened_at="2024-05-01T09:00:00Z")
    alarm = new_alert(database_url, "emergency", priority=2)
    assert run(database_url, "users", "add", "anna", "--role", "operator", "--queue",
               "emergency", "--no-password") == 0
    capsys.readouterr()
    assert run(database_url, "alerts", "next", "--operator", "anna") == 0
    assert capsys.readouterr().out.startswith(f"alert {alarm} is now claimed by anna")
    assert run(database_url, "alerts", "next", "--operator", "anna") == 0
    assert capsys.readouterr().out == "nothing to take: no open alert in emergency\n"
    assert run(database_url, "alerts", "next", "--operator", "anna", "--queue", "technical") == 0
    assert capsys.readouterr().out.startswith(f"alert {technical} is now claimed by anna")


def test_a_token_cannot_be_named_session_the_api_sessions_name(database_url, conn, capsys):
    """Sessions are the tokens a password change ends: a token named so would end too."""
    run(database_url, "users", "add", "crm", "--role", "operator", "--no-password")
    assert run(database_url, "tokens", "create", "--user", "crm", "--name", "session") == 2
    assert "the name 'session' is kept for the API's sessions" in capsys.readouterr().err
    assert conn.execute("SELECT count(*) FROM api_tokens").fetchone() == (0,)


def test_an_operators_silence_from_the_command_line_exits_2_and_is_audited(database_url, conn,
                                                                           capsys):
    add_operator(database_url, "anna")
    assert run(database_url, "silences", "add", 'device_id="OXI-0001"', "--author", "anna",
               "--comment", "visit", "--duration", "1h") == 2
    assert run(database_url, "silences", "expire", "7", "--author", "anna") == 2
    why = "this needs the role supervisor or higher; anna is operator"
    assert capsys.readouterr().err == f"vagt: {why}\nvagt: {why}\n"
    assert conn.execute("SELECT actor, subject, details->>'reason', details->>'via' "
                        "FROM audit_log WHERE action = 'silence.refused' ORDER BY id"
                        ).fetchall() == [("anna", "silence (refused)", why, LOGIN),
                                         ("anna", "silence 7", why, LOGIN)]


@pytest.mark.parametrize("argv", [
    ["users", "disable", "010170-1234"],
    ["users", "password", "010170-1234", "--password-stdin"],
    ["tokens", "create", "--user", "010170-1234", "--name", "crm"],
])
def test_a_refusal_naming_what_was_typed_never_repeats_a_cpr_number(database_url, capsys,
                                                                    monkeypatch, argv):
    """A CPR number typed where an account's name goes (the citizen's, from the ticket on
    the other screen): no account has it, and the refusal that says so is read aloud,
    pasted into tickets and kept by terminals."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert run(database_url, *argv) == 2
    err = capsys.readouterr().err
    assert "there is no" in err and "1234" not in err
