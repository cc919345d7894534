"""`vagt devices ...`: the handlers as the `vagt` command calls them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vagt.app.config import Config
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


def run(conninfo: str, *argv: str, config: Config | None = None) -> int:
    args = parse(*argv)
    extra = (config or Config(),) if args.handler_takes_config else ()
    result: int = args.handler(args, conninfo, *extra)
    return result


@pytest.fixture
def fleet_csv(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def test_import_prints_the_counts(database_url, fleet_csv, capsys):
    assert run(database_url, "import", str(fleet_csv), "--actor", "anna") == 0
    assert capsys.readouterr().out == f"imported {fleet_csv}: 2 created, 0 updated, 0 unchanged\n"


def test_import_says_how_many_known_devices_it_deployed(database_url, fleet_csv, tmp_path,
                                                        capsys):
    run(database_url, "import", str(fleet_csv), "--actor", "anna")
    deployed = tmp_path / "deployed.csv"
    deployed.write_text(CSV.replace("municipality", "municipality,citizen_ref")
                        .replace("Skive", "Skive,cit-1"), encoding="utf-8")
    capsys.readouterr()
    assert run(database_url, "import", str(deployed), "--actor", "anna") == 0
    assert capsys.readouterr().out == (
        f"imported {deployed}: 0 created, 1 updated (1 deployed), 1 unchanged\n")


def test_import_audits_the_given_actor(database_url, fleet_csv, conn):
    run(database_url, "import", str(fleet_csv), "--actor", "anna")
    assert conn.execute("SELECT DISTINCT actor FROM audit_log").fetchall() == [("anna",)]


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
        "  line 4: device_id 'OXI 2' is not valid: use 1 to 64 of A-Z a-z 0-9 . _ -",
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
                                "in_stock", "-", "-", "never"]
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


def test_list_and_show_escape_what_is_not_printable_in_values_stored_before(database_url,
                                                                          fleet_csv, conn,
                                                                          capsys):
    """A firmware a device sent and a municipality typed before vagt refused them: "9.2.1"
    behind a right-to-left override reads "1.2.9"; the table shows the escape instead."""
    run(database_url, "import", str(fleet_csv), "--actor", "anna")
    conn.execute("UPDATE devices SET firmware = %s, municipality = %s "
                 "WHERE device_id = 'OXI-0001'", ("\u202e9.2.1", "Skive\u200b"))
    capsys.readouterr()
    assert run(database_url, "list") == 0
    listed = capsys.readouterr().out
    assert listed.splitlines()[2].split() == [
        "OXI-0001", "pulse_oximeter", "Nonin", "3230", "Skive\\u200b", "in_stock", "-",
        "\\u202e9.2.1", "never"]
    assert run(database_url, "show", "OXI-0001") == 0
    shown = capsys.readouterr().out
    assert "firmware \\u202e9.2.1" in shown and "municipality  Skive\\u200b" in shown
    for out in (listed, shown):
        assert "\u202e" not in out and "\u200b" not in out


def test_a_refusal_that_repeats_what_was_typed_shows_it_escaped(database_url, capsys):
    """The messages of a refusal quote the id typed: a right-to-left override in it is shown
    as its escape on the terminal, not obeyed."""
    assert run(database_url, "show", "OXI-\u202e1000") == 2
    assert capsys.readouterr().err == ("vagt: OXI-\\u202e1000 is not registered; `vagt devices "
                                       "list` shows the registry\n")


@pytest.mark.parametrize(("argv", "named"), [
    (["register", "X-1", "--vendor", "Nonin", "--model", "3230", "--attr", "asset=A\u202e17"],
     "the value of attribute 'asset' holds U+202E RIGHT-TO-LEFT OVERRIDE (its character 2)"),
    (["register", "X-1", "--vendor", "Nonin", "--model", "3230", "--attr", "as\u2066set=A17"],
     "the name of an attribute holds U+2066 LEFT-TO-RIGHT ISOLATE (its character 3)"),
    (["register", "X-1", "--vendor", "Non\u200bin", "--model", "3230"],
     "the vendor holds U+200B ZERO WIDTH SPACE (its character 4)"),
    (["register", "X-1", "--vendor", "Nonin", "--model", "3230", "--municipality",
      "Skive\u202e"], "the municipality holds U+202E RIGHT-TO-LEFT OVERRIDE (its character 6)"),
    (["register", "X-1", "--vendor", "Nonin", "--model", "3230", "--note", "new\u009b"],
     "the note holds U+009B CONTROL SEQUENCE INTRODUCER (its character 4)"),
])
def test_a_value_typed_with_a_character_that_is_not_printable_is_refused_naming_it(
        database_url, conn, capsys, argv, named):
    assert run(database_url, *argv, "--actor", "anna") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vagt: {named}, which is not printable")
    assert err.isascii() and err.count("\n") == 1
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


# --- the lifecycle from the command line -------------------------------------------------------


def test_register_deploy_return_are_printed_and_audited_with_the_actor(database_url, conn,
                                                                       capsys):
    assert run(database_url, "register", "GLU-000003", "--vendor", "Roche", "--model",
               "Accu-Chek Guide", "--attr", "serial=SN-9", "--actor", "anna") == 0
    assert run(database_url, "deploy", "GLU-000003", "--citizen", "cit-7f3a", "--municipality",
               "Skive", "--actor", "bo") == 0
    assert run(database_url, "return", "GLU-000003", "--to", "repair", "--note", "battery door",
               "--actor", "carl") == 0
    assert capsys.readouterr().out.splitlines() == [
        "GLU-000003 is registered: Roche Accu-Chek Guide (glucose_meter), in_stock in the "
        "centre's stock",
        "GLU-000003 is now deployed to cit-7f3a in Skive",
        "GLU-000003 is now in_repair"]
    assert conn.execute("SELECT actor, action, details->>'to' FROM audit_log ORDER BY id"
                        ).fetchall() == [("anna", "devices.register", "in_stock"),
                                         ("bo", "devices.deploy", "deployed"),
                                         ("carl", "devices.return", "in_repair")]


def test_repair_marks_a_repair_done_and_repair_send_starts_one(database_url, capsys):
    run(database_url, "register", "X-1", "--vendor", "Nonin", "--model", "3230", "--actor", "a")
    assert run(database_url, "repair", "X-1", "--send", "--actor", "a") == 0
    assert run(database_url, "repair", "X-1", "--actor", "a") == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["X-1 is now in_repair",
                                                        "X-1 is now in_stock"]


def test_retire_and_lost_are_final(database_url, capsys):
    for device in ("X-1", "X-2"):
        run(database_url, "register", device, "--vendor", "Nonin", "--model", "3230",
            "--actor", "a")
    assert run(database_url, "retire", "X-1", "--actor", "a") == 0
    assert run(database_url, "lost", "X-2", "--actor", "a") == 0
    capsys.readouterr()
    assert run(database_url, "deploy", "X-1", "--citizen", "cit-1", "--municipality", "Skive",
               "--actor", "a") == 2
    assert capsys.readouterr().err == (
        "vagt: X-1 is retired: retired is final; a retired device cannot be deployed\n")


def test_registering_an_unapproved_model_is_one_line_on_stderr_and_exit_2(database_url,
                                                                         capsys):
    assert run(database_url, "register", "BPM-1", "--vendor", "A&D", "--model", "UA-651",
               "--actor", "a") == 2
    assert capsys.readouterr().err == (
        "vagt: A&D UA-651 is not an approved model (approved A&D models: UA-651BLE, "
        "UC-352BLE); add it to the catalogue first\n")


def test_the_configured_catalogue_is_the_one_that_decides(database_url, tmp_path, capsys):
    mine = tmp_path / "catalogue.toml"
    mine.write_text('[[model]]\nvendor = "Acme"\nmodel = "Ox 1"\ntype = "pulse_oximeter"\n'
                    'heartbeat_s = 600\nbattery = "rechargeable"\n', encoding="utf-8")
    config = Config(catalogue=str(mine))
    assert run(database_url, "register", "X-1", "--vendor", "Acme", "--model", "Ox 1",
               "--actor", "a", config=config) == 0
    assert run(database_url, "register", "X-2", "--vendor", "Nonin", "--model", "3230",
               "--actor", "a", config=config) == 2
    assert "approved vendors: Acme" in capsys.readouterr().err


def test_a_cpr_number_as_citizen_is_refused_saying_why(database_url, capsys):
    run(database_url, "register", "X-1", "--vendor", "Nonin", "--model", "3230", "--actor", "a")
    capsys.readouterr()
    assert run(database_url, "deploy", "X-1", "--citizen", "010170-1234", "--municipality",
               "Skive", "--actor", "a") == 2
    err = capsys.readouterr().err
    assert err.startswith("vagt: the citizen reference looks like a civil registration (CPR) "
                          "number")
    assert "010170" not in err


def test_show_prints_the_device_its_assignments_and_audit(database_url, capsys):
    run(database_url, "register", "X-1", "--vendor", "Nonin", "--model", "3230", "--actor", "a")
    run(database_url, "deploy", "X-1", "--citizen", "cit-1", "--municipality", "Aarhus",
        "--actor", "a")
    run(database_url, "return", "X-1", "--actor", "a")
    run(database_url, "deploy", "X-1", "--citizen", "cit-2", "--municipality", "Skive",
        "--actor", "b")
    capsys.readouterr()
    assert run(database_url, "show", "X-1") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "X-1  Nonin 3230 (pulse_oximeter)"
    assert lines[1].startswith("status        deployed since ")
    assert "citizen       cit-2 since " in out
    assert "reuse         2 citizen(s) in 2 municipality(ies): Aarhus, Skive" in out
    assignments = lines[lines.index("ASSIGNMENTS") + 2:lines.index("AUDIT") - 1]
    assert [line.split()[:2] for line in assignments] == [["cit-1", "Aarhus"],
                                                          ["cit-2", "Skive"]]
    audit = lines[lines.index("AUDIT") + 2:]
    assert [line.split()[3:5] for line in audit] == [  # after the date, time and zone
        ["a", "register"], ["a", "deploy"], ["a", "return"], ["b", "deploy"]]


def test_show_json_has_the_current_assignment(database_url, capsys):
    run(database_url, "register", "X-1", "--vendor", "Nonin", "--model", "3230", "--actor", "a")
    run(database_url, "deploy", "X-1", "--citizen", "cit-1", "--municipality", "Aarhus",
        "--actor", "a")
    capsys.readouterr()
    assert run(database_url, "show", "X-1", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["device"]["status"] == "deployed"
    assert doc["current_assignment"]["citizen_ref"] == "cit-1"
    assert [e["action"] for e in doc["audit"]] == ["devices.register", "devices.deploy"]


def test_show_of_an_unknown_device_exits_2(database_url, capsys):
    assert run(database_url, "show", "NOPE-1") == 2
    assert capsys.readouterr().err.startswith("vagt: NOPE-1 is not registered")


def test_list_filters_by_status_and_model(database_url, fleet_csv, capsys):
    run(database_url, "import", str(fleet_csv), "--actor", "anna")
    run(database_url, "retire", "OXI-0001", "--actor", "anna")
    capsys.readouterr()
    run(database_url, "list", "--json", "--status", "in_stock", "--model", "UA-651BLE")
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == ["BPM-0001"]


def test_export_writes_a_file_that_import_reads_back(database_url, other_database_url,
                                                     fleet_csv, tmp_path, capsys):
    run(database_url, "import", str(fleet_csv), "--actor", "anna")
    run(database_url, "deploy", "OXI-0001", "--citizen", "cit-1", "--municipality", "Skive",
        "--actor", "anna")
    out = tmp_path / "export.csv"
    assert run(database_url, "export", str(out)) == 0
    assert capsys.readouterr().err == f"exported 2 device(s) to {out}\n"
    assert run(other_database_url, "import", str(out), "--actor", "bo") == 0
    again = tmp_path / "again.csv"
    run(other_database_url, "export", str(again))
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    assert "OXI-0001,Nonin,3230,pulse_oximeter,Skive,deployed,cit-1" in out.read_text()
