"""Every operator action from the command line leaves an audit row saying who acted and how
they came (`details.via`: the login the command ran under; `--actor` and `--author` are
typed)."""

from __future__ import annotations

import getpass
import io

import pytest
from tests.alerts.support import fire
from tests.app.conftest import query

from vagt.app.cli import main

LOGIN = f"cli:{getpass.getuser()}"


@pytest.fixture
def env(database_url, monkeypatch):
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    return database_url


def ok(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


def test_every_account_step_is_audited_with_the_login_it_was_made_from(env, monkeypatch):
    ok("users", "add", "crm", "--role", "operator", "--no-password")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    ok("users", "add", "anna", "--role", "operator", "--password-stdin")
    monkeypatch.setattr("sys.stdin", io.StringIO("another long password\n"))
    ok("users", "password", "anna", "--password-stdin")
    ok("tokens", "create", "--user", "crm", "--name", "callcentre")
    ok("tokens", "revoke", "1")
    ok("users", "disable", "anna")
    assert query(env, "SELECT actor, action, details->>'via' FROM audit_log ORDER BY id") == [
        (LOGIN, action, LOGIN) for action in ("user.add", "user.add", "user.password",
                                              "token.create", "token.revoke", "user.disable")]


def test_every_device_step_is_audited_with_the_actor_and_the_login(env, tmp_path):
    ok("devices", "register", "GLU-000003", "--vendor", "Roche", "--model", "Accu-Chek Guide",
       "--actor", "anna")
    ok("devices", "deploy", "GLU-000003", "--citizen", "cit-7f3a", "--municipality", "Skive",
       "--actor", "anna")
    ok("devices", "return", "GLU-000003", "--actor", "anna")
    ok("devices", "repair", "GLU-000003", "--send", "--actor", "anna")
    ok("devices", "repair", "GLU-000003", "--actor", "anna")
    ok("devices", "retire", "GLU-000003", "--actor", "anna")
    fleet = tmp_path / "fleet.csv"
    fleet.write_text("device_id,vendor,model,type,municipality,citizen_ref\n"
                     "OXI-0001,Nonin,3230,pulse_oximeter,Skive,cit-1\n", encoding="utf-8")
    ok("devices", "import", str(fleet), "--actor", "anna")
    ok("devices", "lost", "OXI-0001", "--actor", "anna")
    secret = tmp_path / "secret"
    secret.write_text("a device secret of 32 bytes, or so\n", encoding="utf-8")
    ok("devices", "broker-acl", "--passwords", str(tmp_path / "passwd"), "--acl",
       str(tmp_path / "acl"), "--secret-file", str(secret), "--engine-user", "vagt",
       "--engine-password-file", str(secret), "--actor", "anna")
    assert query(env, "SELECT actor, action, details->>'via' FROM audit_log ORDER BY id") == [
        ("anna", f"devices.{action}", LOGIN)
        for action in ("register", "deploy", "return", "send_to_repair", "repaired", "retire",
                       "register", "import", "lost", "broker_acl")]


def test_a_scrub_is_audited_with_the_actor_and_the_login(env):
    ok("devices", "register", "OXI-0001", "--vendor", "Nonin", "--model", "3230",
       "--note", "ok", "--actor", "anna")
    query(env, "UPDATE audit_log SET details = details || '{\"note\": \"cpr 0101701234\"}' "
               "RETURNING 1")
    ok("privacy", "scrub", "--actor", "sofie", "--reason", "found by the scan")
    assert query(env, "SELECT actor, details->>'via' FROM audit_log "
                      "WHERE action = 'privacy.scrubbed'") == [("sofie", LOGIN)]


def test_every_alert_and_silence_step_is_audited_with_the_account_and_the_login(env):
    ok("users", "add", "anna", "--role", "operator", "--no-password")
    ok("users", "add", "sofie", "--role", "supervisor", "--no-password")
    ok("devices", "register", "ALM-0001", "--vendor", "Tunstall", "--model", "Lifeline Vi+",
       "--actor", "sofie")
    ok("devices", "deploy", "ALM-0001", "--citizen", "cit-1", "--municipality", "Randers",
       "--actor", "sofie")
    [(alarm, _)] = fire(env, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    ok("alerts", "next", "--operator", "anna")
    ok("alerts", "note", str(alarm), "--operator", "anna", "--note", "rang")
    ok("alerts", "release", str(alarm), "--operator", "anna")
    ok("alerts", "claim", str(alarm), "--operator", "anna")
    ok("alerts", "ack", str(alarm), "--operator", "anna")
    ok("alerts", "resolve", str(alarm), "--operator", "anna", "--code", "false_alarm",
       "--note", "pressed by mistake")
    assert query(env, "SELECT actor, action, details->>'via' FROM alert_audit "
                      "WHERE alert_id = %s ORDER BY at, id", (alarm,))[1:] == [
        ("anna", action, LOGIN) for action in ("claim", "note", "release", "claim", "ack",
                                               "resolve")]
    ok("silences", "add", 'device_id="ALM-0001"', "--author", "sofie", "--comment", "away",
       "--duration", "1h")
    ok("silences", "expire", "1", "--author", "sofie")
    assert main(["silences", "expire", "1", "--author", "sofie"]) == 2
    assert query(env, "SELECT actor, action, details->>'via' FROM audit_log "
                      "WHERE starts_with(action, 'silence.') ORDER BY id") == [
        ("sofie", "silence.create", LOGIN), ("sofie", "silence.expire", LOGIN),
        ("sofie", "silence.refused", LOGIN)]
