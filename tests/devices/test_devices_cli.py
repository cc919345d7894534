"""`vagt devices import|list`: the handlers as the `vagt` command calls them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vagt.devices import cli

CSV = """device_id,vendor,model,type,municipality
OXI-0001,Nonin,3230,pulse_oximeter,Skive
BPM-0001,A&D,UA-651BLE,bp_monitor,Samsø
"""
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/vagt?connect_timeout=2"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vagt")
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["devices", *argv])


def run(conninfo: str, *argv: str) -> int:
    args = parse(*argv)
    result: int = args.handler(args, conninfo)
    return result


@pytest.fixture
def fleet_csv(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def test_import_prints_the_counts(database_url, fleet_csv, capsys):
    assert run(database_url, "import", str(fleet_csv), "--actor", "anna") == 0
    assert capsys.readouterr().out == f"imported {fleet_csv}: 2 created, 0 updated, 0 unchanged\n"


def test_import_audits_the_given_actor(database_url, fleet_csv, conn):
    run(database_url, "import", str(fleet_csv), "--actor", "anna")
    assert conn.execute("SELECT actor FROM audit_log").fetchall() == [("anna",)]


def test_a_refused_import_lists_the_problems_on_stderr_and_exits_2(database_url, tmp_path,
                                                                   capsys):
    path = tmp_path / "fleet.csv"
    path.write_text(CSV + "OXI 2,Nonin,3230,,Skive\n", encoding="utf-8")
    assert run(database_url, "import", str(path), "--actor", "anna") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"vagt: {path}: nothing imported, 2 problem(s):",
        "  line 4: column 'type' is empty",
        "  line 4: device_id 'OXI 2' is not valid: use 1 to 64 of A-Z a-z 0-9 . _ : -",
    ]


def test_importing_a_missing_file_exits_2(database_url, tmp_path, capsys):
    assert run(database_url, "import", str(tmp_path / "nope.csv"), "--actor", "anna") == 2
    assert "cannot read the file: No such file or directory" in capsys.readouterr().err


def test_an_unreachable_database_is_one_line_on_stderr_and_exit_2(fleet_csv, capsys):
    assert run(UNREACHABLE, "import", str(fleet_csv), "--actor", "anna") == 2
    err = capsys.readouterr().err
    assert err.startswith("vagt: cannot reach the database: ")
    assert err.count("\n") == 1


def test_a_database_without_the_schema_says_to_migrate(empty_database_url, capsys):
    assert run(empty_database_url, "list") == 2
    assert capsys.readouterr().err == (
        "vagt: the database has no vagt schema yet: run `vagt db migrate`\n")


def test_list_prints_a_table_for_people(database_url, fleet_csv, capsys):
    run(database_url, "import", str(fleet_csv), "--actor", "anna")
    capsys.readouterr()
    assert run(database_url, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DEVICE", "TYPE", "VENDOR", "MODEL", "MUNICIPALITY", "STATUS",
                                "BATTERY", "FIRMWARE", "LAST", "SEEN"]
    assert lines[1].split() == ["BPM-0001", "bp_monitor", "A&D", "UA-651BLE", "Samsø",
                                "deployed", "-", "-", "never"]
    assert len(lines) == 3


def test_list_json_is_an_array_with_iso_times(database_url, fleet_csv, conn, capsys):
    run(database_url, "import", str(fleet_csv), "--actor", "anna")
    conn.execute("UPDATE devices SET last_seen = '2024-05-01T10:00:00Z'")
    capsys.readouterr()
    assert run(database_url, "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["device_id"] for d in listed] == ["BPM-0001", "OXI-0001"]
    assert listed[0]["last_seen"].startswith("2024-05-01T")


def test_list_passes_the_filters_on(database_url, fleet_csv, capsys):
    run(database_url, "import", str(fleet_csv), "--actor", "anna")
    capsys.readouterr()
    run(database_url, "list", "--json", "--municipality", "Skive", "--vendor", "Nonin",
        "--type", "pulse_oximeter")
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == ["OXI-0001"]


def test_list_says_so_when_nothing_matches(database_url, capsys):
    assert run(database_url, "list", "--vendor", "Nobody") == 0
    assert capsys.readouterr().out == "no devices match\n"
