"""The `vagt` command as an operator types it, against the real database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.alerts.support import add_operator
from tests.alerts.test_actions import new_alert
from tests.app.conftest import DEVICES, query, register
from tests.support import free_port

from vagt.app.cli import main


@pytest.fixture
def env(database_url, monkeypatch):
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    return database_url


def test_devices_import_then_list_as_json(env, tmp_path: Path, capsys):
    f = tmp_path / "fleet.csv"
    f.write_text("device_id,vendor,model,type,municipality\nOXI-1,Nonin,3230,pulse_oximeter,Skive\n")
    assert main(["devices", "import", str(f), "--actor", "anna"]) == 0
    assert "1 created, 0 updated" in capsys.readouterr().out
    assert main(["devices", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(d["device_id"], d["municipality"], d["last_seen"]) for d in listed] == [
        ("OXI-1", "Skive", None)]


def test_a_refused_import_prints_the_problems_and_exits_2(env, tmp_path: Path, capsys):
    f = tmp_path / "fleet.csv"
    f.write_text("device_id,vendor\nOXI-1,Nonin\n")
    assert main(["devices", "import", str(f)]) == 2
    assert "lacks the column(s) model, type, municipality" in capsys.readouterr().err


def test_alerts_claim_ack_resolve_and_list_by_status(env, capsys):
    a = new_alert(env)
    add_operator(env, "anna")
    assert main(["alerts", "claim", str(a), "--operator", "anna"]) == 0
    assert main(["alerts", "ack", str(a), "--operator", "anna", "--note", "called"]) == 0
    assert main(["alerts", "list", "--json", "--status", "acknowledged"]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out[out.index("["):])
    assert [(x["id"], x["acknowledged_by"]) for x in listed] == [(a, "anna")]
    assert main(["alerts", "resolve", str(a), "--operator", "anna", "--code", "resolved",
                 "--note", "done"]) == 0
    assert query(env, "SELECT count(*) FROM alert_audit") == [(3,)]


def test_a_refused_claim_says_who_holds_the_alert_and_exits_2(env, capsys):
    a = new_alert(env)
    add_operator(env, "anna")
    add_operator(env, "bo")
    main(["alerts", "claim", str(a), "--operator", "anna"])
    assert main(["alerts", "claim", str(a), "--operator", "bo"]) == 2
    assert f"alert {a} is already claimed by anna" in capsys.readouterr().err


def vagt_to_a_reader_gone(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`vagt ARGV | head` once head has read its lines and exited: the pipe's reading end is
    closed before vagt writes (so it is whatever the size of the output). stdout is buffered,
    as a shell runs it, unless env sets PYTHONUNBUFFERED."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        return subprocess.run([sys.executable, "-m", "vagt.app.cli", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**inherited, "PYTHONPATH": os.pathsep.join(sys.path), **env})
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", [["devices", "list"], ["devices", "list", "--json"],
                                     ["fleet"], ["devices", "export", "-"], ["alerts", "list"]],
                         ids=" ".join)
def test_a_listing_piped_into_head_ends_quietly_with_exit_code_1(database_url, command):
    """As Python's documentation handles a closed pipe (signal module, "Note on SIGPIPE"):
    no traceback, no "Exception ignored" (exit code 120), nothing on stderr."""
    register(database_url, DEVICES)
    ran = vagt_to_a_reader_gone("--log-level", "warning", *command,
                                env={"VAGT_DATABASE_URL": database_url})
    assert (ran.returncode, ran.stderr) == (1, "")


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_command_with_no_database_piped_into_head_ends_quietly_too(unbuffered):
    """Unbuffered (PYTHONUNBUFFERED, as under systemd or in a container), the write itself
    meets the closed pipe, inside the command rather than at its end."""
    ran = vagt_to_a_reader_gone("rules", "check",
                                env={"PYTHONUNBUFFERED": "1"} if unbuffered else {})
    assert (ran.returncode, ran.stderr) == (1, "")


def test_fleet_refuses_a_misspelt_status_as_devices_list_does(env, capsys):
    """`vagt fleet --status in-stock` answered "no devices match", as if the stock were empty."""
    for command in (["fleet"], ["devices", "list"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--status", "in-stock"])
        assert exit_.value.code == 2
        assert "invalid choice: 'in-stock'" in capsys.readouterr().err
    assert main(["devices", "register", "OXI-1", "--vendor", "Nonin", "--model", "3230"]) == 0
    capsys.readouterr()
    assert main(["fleet", "--status", "in_stock", "--json"]) == 0
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == ["OXI-1"]


def test_invalid_configuration_stops_with_the_setting_named(monkeypatch, capsys):
    monkeypatch.setenv("VAGT_MQTT_URL", "http://nope")
    assert main(["db", "migrate"]) == 2
    assert "VAGT_MQTT_URL" in capsys.readouterr().err


def test_db_migrate_on_an_empty_database_then_again(empty_database_url, monkeypatch, capsys):
    monkeypatch.setenv("VAGT_DATABASE_URL", empty_database_url)
    assert main(["db", "migrate"]) == 0
    first = capsys.readouterr().out
    assert "applied 0001_core (any)" in first and "applied 0002_timeseries (plain)" in first
    assert main(["db", "migrate"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_db_migrate_with_the_database_down_says_so_in_one_line_without_the_password(
        monkeypatch, capsys):
    monkeypatch.setenv("VAGT_DATABASE_URL", f"postgresql://vagt:s3cret@127.0.0.1:{free_port()}/vagt")
    assert main(["db", "migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vagt: cannot reach the database at postgresql://vagt:***@127.0.0.1:")
    assert "s3cret" not in err and "Traceback" not in err and err.count("\n") == 1


READING_COMMANDS = [
    ["devices", "list"], ["fleet"], ["report", "vendors", "--from", "2026-11-01", "--to",
                                      "2026-11-02"],
    ["db", "prune"], ["privacy", "scan"],
    ["privacy", "scrub", "--dry-run", "--actor", "anna", "--reason", "cleaning up"],
    ["rules", "backtest", "--from", "2026-11-01", "--to", "2026-11-02"]]


@pytest.mark.parametrize("command", READING_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_command_without_a_database_url_says_so_and_makes_no_embedded_database(
        monkeypatch, tmp_path: Path, capsys, command):
    monkeypatch.delenv("VAGT_DATABASE_URL", raising=False)
    monkeypatch.setenv("VAGT_DATA_DIR", str(tmp_path))
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("vagt: no VAGT_DATABASE_URL is set, and there is no embedded "
                          f"database in {tmp_path / 'postgres'} yet")
    assert not (tmp_path / "postgres").exists()


@pytest.mark.parametrize("command", READING_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_command_with_its_database_down_says_so_in_one_line_with_exit_code_2(
        monkeypatch, capsys, command):
    """Not 1 (`privacy scan` says 1 when it finds a CPR number), and no traceback."""
    monkeypatch.setenv("VAGT_DATABASE_URL", f"postgresql://vagt:s3cret@127.0.0.1:{free_port()}/x")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("vagt: cannot reach the database") and "Traceback" not in err
    assert "s3cret" not in err


def test_rules_check_reports_the_rules_or_the_error(tmp_path: Path, capsys):
    assert main(["rules", "check"]) == 0
    assert "personal_alarm" in capsys.readouterr().out
    bad = tmp_path / "r.toml"
    bad.write_text('[[rule]]\nname = "x"\nkind = "threshold"\nmetric = "spo2"\nbelow = "low"\n')
    assert main(["rules", "check", str(bad)]) == 2
    assert "'below' of rule 'x'" in capsys.readouterr().err


def test_a_database_password_with_a_bare_percent_stops_run_with_2_and_is_never_shown(
        monkeypatch, capsys):
    monkeypatch.setenv("VAGT_DATABASE_URL", "postgresql://vagt:50%off@127.0.0.1:1/vagt")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "VAGT_DATABASE_URL" in err and "percent-encode" in err
    assert "50%off" not in err and "Traceback" not in err


def _run_restoring_signals() -> int:
    """`vagt run` in this process, which installs its signal handlers: the test's are put
    back after."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return main(["run"])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def test_a_taken_metrics_port_stops_run_with_2_naming_the_port_and_the_setting(
        database_url, monkeypatch, capsys):
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    monkeypatch.setenv("VAGT_ALARM_PROCESS", "false")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("VAGT_METRICS_PORT", str(port))
        try:
            assert main(["run"]) == 2
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
    err = capsys.readouterr().err
    assert err.startswith(f"vagt: cannot serve metrics on 127.0.0.1:{port}: ")
    assert "VAGT_METRICS_PORT" in err and "Traceback" not in err


@pytest.mark.parametrize(("variable", "text"), [
    ("VAGT_ALERTS", "[[route.routes]]\nname = 'x'\npriority = 9\n"),
    ("VAGT_RULES", "[[rule]]\nname = 'spo2_low'\nkind = 'nonsense'\n"),
    ("VAGT_CATALOGUE", "[[model]]\nvendor = 3\n"),
])
def test_a_file_that_does_not_load_stops_run_with_2_before_the_schema_is_touched(
        empty_database_url, monkeypatch, tmp_path: Path, capsys, variable, text):
    f = tmp_path / "broken.toml"
    f.write_text(text)
    monkeypatch.setenv("VAGT_DATABASE_URL", empty_database_url)
    monkeypatch.setenv(variable, str(f))
    assert _run_restoring_signals() == 2
    err = capsys.readouterr().err
    assert err.startswith("vagt: ") and str(f) in err
    assert query(empty_database_url, "SELECT count(*) FROM pg_tables "
                                     "WHERE schemaname = 'public'") == [(0,)]


def test_privacy_scan_reports_where_cpr_numbers_were_stored_never_the_numbers(env, capsys):
    """Rows written before the checks were there (inserted directly, as an older release
    let them be): a note, an audit detail, a device attribute, a dead letter's payload.
    The scan names each table, column and row, exits 1, and repeats no number."""
    from tests.app.conftest import register

    register(env, [("OXI-1", "Nonin", "3230", "pulse_oximeter", "Skive")])
    clean = new_alert(env)
    assert main(["privacy", "scan"]) == 0
    assert "no column holds" in capsys.readouterr().out
    noted = new_alert(env)
    query(env, "UPDATE alerts SET note = 'ringede til 010170-1234' WHERE id = %s RETURNING id",
          (noted,))
    query(env, "UPDATE devices SET attributes = '{\"remark\": \"cpr 0101701234\"}' "
               "WHERE device_id = 'OXI-1' RETURNING 1")
    query(env, "INSERT INTO audit_log (actor, action, subject, details) VALUES ('anna', "
               "'devices.deploy', 'OXI-1', '{\"note\": \"borger 01.01.70-1234\"}') RETURNING 1")
    query(env, "INSERT INTO dead_letters (received_at, topic, payload, reason, detail, digest) "
               "VALUES (now(), 't', convert_to('{\"cpr\": \"010170 1234\"}', 'UTF8') "
               "|| '\\xff'::bytea, 'malformed', 'x', 'd') RETURNING 1")
    assert main(["privacy", "scan", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(f["table"], f["column"], f["rows"], f["keys"]) for f in report] == [
        ("alerts", "note", 1, [str(noted)]),
        ("audit_log", "details", 1, [report[1]["keys"][0]]),
        ("devices", "attributes", 1, ["OXI-1"]),
        ("dead_letters", "payload", 1, [report[3]["keys"][0]]),
    ]
    assert main(["privacy", "scan"]) == 1
    table = capsys.readouterr().out
    assert "alerts" in table and "0101" not in table and "1234" not in table
    assert str(clean) not in [k for f in report for k in f["keys"] if f["table"] == "alerts"]


@pytest.mark.parametrize("url", ["htps://callcentre:s3cret-token@cc.example/hooks?key=s3cret-token",
                                 "callcentre:s3cret-token@cc.example/hooks",
                                 "cc.example/hooks?key=s3cret-token#s3cret-token"])
def test_a_mistyped_webhook_url_stops_run_without_showing_its_token(
        empty_database_url, monkeypatch, tmp_path: Path, capsys, url):
    """The start-up error reaches the service's log: a token in the URL's userinfo, query or
    fragment must not, as it never does in the webhook's delivery errors."""
    f = tmp_path / "alerts.toml"
    f.write_text(f"[[delivery.webhook]]\nname = 'cc'\nurl = '{url}'\nsecret_env = 'CC_SECRET'\n")
    monkeypatch.setenv("VAGT_DATABASE_URL", empty_database_url)
    monkeypatch.setenv("VAGT_ALERTS", str(f))
    monkeypatch.setenv("CC_SECRET", "0123456789abcdef-secret")
    assert _run_restoring_signals() == 2
    err = capsys.readouterr().err
    assert "'url' must start with http:// or https://" in err and "cc.example/hooks" in err
    assert "s3cret" not in err
