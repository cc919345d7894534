"""Fleet state: kept in arrays by device index, written with each batch, restored at start."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import psycopg
import pytest
from tests.app.conftest import DEVICES, query, register, telemetry
from tests.app.test_pipeline import battery, msg, run_batches

from vagt.devices.fleet import Fleet
from vagt.ingest.model import RawMessage

NOW = float(int(time.time()))  # whole seconds: timestamptz keeps microseconds


def status(device_id: str, t: float, **fields: object) -> object:
    return msg(device_id, "status", orjson.dumps({"time": t, "status": fields}))


def sent(device_id: str, t: float, level: float) -> RawMessage:
    """A battery report heard when it was sent (the device's clock is right)."""
    return dataclasses.replace(battery(device_id, t, level), received_at=t)


def loaded(database_url: str) -> Fleet:
    fleet = Fleet()
    with psycopg.connect(database_url) as conn:
        fleet.load(conn)
    return fleet


def state_of(fleet: Fleet, device_id: str) -> tuple[object, ...]:
    k = fleet.ids.index(device_id)
    return fleet.last_seen[k], fleet.battery[k], fleet.signal[k], fleet.firmware[k]


def test_state_written_by_batches_is_restored_by_a_new_process(database_url):
    register(database_url, DEVICES)
    live = run_batches(
        database_url,
        [status("OXI-0001", NOW - 300, battery=80, signal=-71, firmware="2.5.0"),
         msg("OXI-0001", "telemetry", telemetry("OXI-0001", NOW - 200, seq=7, spo2=97))],
        [battery("OXI-0002", NOW - 100, 44)]).fleet
    restored = loaded(database_url)
    assert restored.ids == live.ids
    for d in ("OXI-0001", "OXI-0002", "ALM-0001"):
        np.testing.assert_equal(state_of(restored, d), state_of(live, d))
    assert state_of(restored, "OXI-0001") == (NOW - 200, 80.0, -71.0, "2.5.0")
    seen, bat, sig, fw = state_of(restored, "ALM-0001")
    assert np.isnan(seen) and np.isnan(bat) and np.isnan(sig) and fw is None
    # the message counter is the device row's (it counts the gaps there, migration 0013)
    assert query(database_url, "SELECT device_id, last_seq FROM devices "
                               "WHERE last_seq IS NOT NULL") == [("OXI-0001", 7)]


def test_an_older_battery_reading_arriving_late_does_not_replace_a_newer_one(database_url):
    register(database_url, DEVICES)
    live = run_batches(database_url, [battery("OXI-0001", NOW - 60, 70)],
                       [battery("OXI-0001", NOW - 3600, 20)]).fleet  # buffered, flushed late
    assert state_of(live, "OXI-0001")[:2] == (NOW - 60, 70.0)
    assert state_of(loaded(database_url), "OXI-0001")[:2] == (NOW - 60, 70.0)


def test_an_older_firmware_report_arriving_late_does_not_undo_an_update(database_url):
    """The device reported 2.5.0 after its update; the status it sent before the update, with
    2.4.1, was buffered and comes after: the fleet shows 2.5.0, in this process and in the
    next. A later report after that one still counts (a vendor's downgrade is real)."""
    register(database_url, DEVICES)
    live = run_batches(database_url,
                       [status("OXI-0001", NOW - 60, firmware="2.5.0")],
                       [status("OXI-0001", NOW - 3600, firmware="2.4.1")]).fleet
    assert state_of(live, "OXI-0001")[3] == "2.5.0"
    assert state_of(loaded(database_url), "OXI-0001")[3] == "2.5.0"
    live = run_batches(database_url, [status("OXI-0001", NOW - 30, firmware="2.4.1")]).fleet
    assert state_of(live, "OXI-0001")[3] == "2.4.1"
    assert state_of(loaded(database_url), "OXI-0001")[3] == "2.4.1"


def test_online_and_overdue_follow_the_models_heartbeat(database_url):
    register(database_url, DEVICES)
    # Nonin 3230 and A&D UA-651BLE: heartbeat once a day
    fleet = run_batches(database_url, [sent("OXI-0001", NOW - 3600, 90),
                                       sent("OXI-0002", NOW - 1.5 * 86400, 90),
                                       sent("BPM-0001", NOW - 3 * 86400, 90)]).fleet
    frame = fleet.frame(NOW).set_index("device_id")
    assert frame.loc["OXI-0001", "online"] and not frame.loc["OXI-0001", "overdue"]
    # silent for longer than its interval: overdue, but online until two are missed
    assert frame.loc["OXI-0002", "online"] and frame.loc["OXI-0002", "overdue"]
    assert not frame.loc["BPM-0001", "online"] and frame.loc["BPM-0001", "overdue"]
    # never heard from, and no deployment time to count from: neither online nor overdue
    assert not frame.loc["ALM-0001", "online"] and not frame.loc["ALM-0001", "overdue"]


def test_refresh_brings_in_what_another_engine_committed(database_url):
    register(database_url, DEVICES)
    mine = loaded(database_url)
    run_batches(database_url, [battery("OXI-0002", NOW - 10, 55)])  # another process
    register(database_url, [("OXI-0003", "Masimo", "MightySat", "pulse_oximeter", "Odder")])
    with psycopg.connect(database_url) as conn:
        mine.refresh(conn)
    assert state_of(mine, "OXI-0002")[:2] == (NOW - 10, 55.0)
    assert "OXI-0003" in mine.ids and mine.heartbeat_s[mine.ids.index("OXI-0003")] == 86400


def test_vagt_fleet_lists_overdue_and_low_battery_devices_and_counts_by_municipality(
        database_url, monkeypatch, capsys):
    import json

    from vagt.app.cli import main

    register(database_url, DEVICES)
    run_batches(database_url, [sent("OXI-0001", NOW - 60, 12),
                               sent("OXI-0002", NOW - 3 * 86400, 95),
                               sent("ALM-0001", NOW - 60, 80),
                               sent("BPM-0001", NOW - 60, 90)])
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    assert main(["fleet", "--overdue", "--json"]) == 0
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == ["OXI-0002"]
    assert main(["fleet", "--low-battery", "15", "--json"]) == 0
    low = json.loads(capsys.readouterr().out)
    assert [(d["device_id"], d["battery"], d["online"]) for d in low] == [("OXI-0001", 12.0,
                                                                            True)]
    assert main(["fleet", "--by", "municipality", "--json"]) == 0
    by_place = {r["municipality"]: r for r in json.loads(capsys.readouterr().out)}
    assert (by_place["Samsø"]["devices"], by_place["Samsø"]["online"],
            by_place["Samsø"]["overdue"]) == (1, 0, 1)
    assert (by_place["Aarhus"]["online"], by_place["Aarhus"]["low_battery"]) == (1, 1)
    assert main(["fleet", "--vendor", "Nonin", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "OXI-0002" in out and "OXI-0001" not in out


def table_rows(out: str) -> dict[str, dict[str, str]]:
    """A table as the CLI prints one, by its first column: each cell under its header (a
    header is words one space apart, and so may a cell be; columns are two apart)."""
    header, *lines = out.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    spans = list(zip(starts, [*starts[1:], None]))
    names = [header[a:b].strip() for a, b in spans]
    return {cells[0]: dict(zip(names, cells, strict=True))
            for cells in ([line[a:b].strip() for a, b in spans] for line in lines)}


def test_vagt_fleet_says_online_overdue_and_offline_as_yes_or_no_and_json_keeps_booleans(
        database_url, monkeypatch, capsys):
    """As `vagt users list` says enabled or disabled: a person reads words, not Python's
    True and False; a program reading --json gets booleans."""
    import json

    from vagt.app.cli import main

    register(database_url, DEVICES)
    run_batches(database_url, [sent("OXI-0001", NOW - 60, 80),
                               sent("OXI-0002", NOW - 3 * 86400, 95)])
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    assert main(["fleet", "--vendor", "Nonin"]) == 0
    table = table_rows(capsys.readouterr().out)
    assert [(d, table[d]["ONLINE"], table[d]["OVERDUE"], table[d]["OFFLINE"])
            for d in sorted(table)] == [("OXI-0001", "yes", "no", "no"),
                                        ("OXI-0002", "no", "yes", "yes")]
    assert main(["fleet", "--vendor", "Nonin", "--json"]) == 0
    assert [(d["online"], d["overdue"], d["offline"])
            for d in json.loads(capsys.readouterr().out)] == [(True, False, False),
                                                               (False, True, True)]


@pytest.fixture
def in_copenhagen() -> Iterator[ZoneInfo]:
    """This process on Danish time, as the centre's machines run: not UTC."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Copenhagen"
    time.tzset()
    yield ZoneInfo("Europe/Copenhagen")
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_vagt_fleet_prints_its_table_as_vagt_devices_list_does(
        database_url, monkeypatch, capsys, in_copenhagen):
    """Headers in words, times local to the minute with their zone, battery in whole
    percent, and "-" or "never" for what is not known."""
    from vagt.app.cli import main

    now = float(int(time.time()))
    register(database_url, DEVICES)
    run_batches(database_url, [dataclasses.replace(
        status("OXI-0001", now - 3720, battery=12.4, signal=-71, firmware="2.4.1"),
        received_at=now - 3720)])
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    assert main(["fleet", "--vendor", "Nonin"]) == 0
    out = capsys.readouterr().out
    assert re.split(r"  +", out.splitlines()[0]) == [
        "DEVICE", "TYPE", "VENDOR", "MODEL", "MUNICIPALITY", "STATUS", "LAST SEEN",
        "LAST HEARD", "SILENT FOR", "ONLINE", "OVERDUE", "OFFLINE", "BATTERY", "SIGNAL",
        "FIRMWARE"]
    heard = datetime.fromtimestamp(now - 3720, in_copenhagen).strftime("%Y-%m-%d %H:%M %Z")
    assert heard.endswith(("CET", "CEST"))
    table = table_rows(out)
    assert table["OXI-0001"] | {"ONLINE": "", "OVERDUE": "", "OFFLINE": ""} == {
        "DEVICE": "OXI-0001", "TYPE": "pulse_oximeter", "VENDOR": "Nonin", "MODEL": "3230",
        "MUNICIPALITY": "Aarhus", "STATUS": "deployed", "LAST SEEN": heard,
        "LAST HEARD": heard, "SILENT FOR": "1h 2m", "ONLINE": "", "OVERDUE": "",
        "OFFLINE": "", "BATTERY": "12 %", "SIGNAL": "-71 dBm", "FIRMWARE": "2.4.1"}
    never = table["OXI-0002"]
    assert (never["LAST SEEN"], never["LAST HEARD"], never["SILENT FOR"], never["BATTERY"],
            never["SIGNAL"], never["FIRMWARE"]) == ("never", "never", "-", "-", "-", "-")


def test_vagt_fleet_shows_a_firmware_stored_before_the_check_escaped(database_url, monkeypatch,
                                                                     capsys):
    """A firmware a device sent before vagt refused what is not printable: "\\u202e9.2.1"
    would read "1.2.9" in the operator's table, and a C1 control (CSI) is a terminal's
    escape; the table shows them escaped, by municipality too."""
    from vagt.app.cli import main

    register(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE devices SET firmware = %s, municipality = %s "
                     "WHERE device_id = 'OXI-0001'", ("\u202e9.2.1\u009b2J", "Aarhus\u2067"))
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    assert main(["fleet", "--vendor", "Nonin"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out)["OXI-0001"]["FIRMWARE"] == "\\u202e9.2.1\\x9b2J"
    assert main(["fleet", "--by", "municipality"]) == 0
    out += capsys.readouterr().out
    assert "Aarhus\\u2067" in out
    assert not any(c in out for c in "\u202e\u009b\u2067")


def test_vagt_fleet_by_group_prints_counts_under_headers_in_words(
        database_url, monkeypatch, capsys):
    from vagt.app.cli import main

    register(database_url, DEVICES)
    run_batches(database_url, [sent("OXI-0001", NOW - 60, 12),
                               sent("OXI-0002", NOW - 3 * 86400, 95)])
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    assert main(["fleet", "--by", "municipality"]) == 0
    out = capsys.readouterr().out
    assert re.split(r"  +", out.splitlines()[0]) == [
        "MUNICIPALITY", "DEVICES", "ONLINE", "OVERDUE", "BATTERY BELOW 20 %"]
    counts = table_rows(out)
    assert [list(counts[m].values()) for m in ("Aarhus", "Samsø")] == [
        ["Aarhus", "1", "1", "0", "1"], ["Samsø", "1", "0", "1", "0"]]
    assert main(["fleet", "--by", "vendor", "--vendor", "Nobody"]) == 0
    assert capsys.readouterr().out == "no devices match\n"


def test_devices_by_status_and_online_by_type_and_municipality_as_metrics(database_url):
    from prometheus_client import generate_latest

    from vagt.app.metrics import EngineMetrics

    register(database_url, DEVICES)
    fleet = run_batches(database_url, [sent("OXI-0001", NOW - 60, 50),
                                       sent("OXI-0002", NOW - 9 * 86400, 50)]).fleet
    m = EngineMetrics()
    m.watch_fleet(lambda: fleet.counts(NOW))
    text = generate_latest(m.registry).decode()
    assert 'vagt_devices{status="deployed"} 4.0' in text
    assert 'vagt_devices_online{municipality="Aarhus",type="pulse_oximeter"} 1.0' in text
    # its one device is silent: 0, not gone (an alert on a place whose devices all went
    # silent, its network down, must see it); a status no device has is 0 too
    assert 'vagt_devices_online{municipality="Samsø",type="pulse_oximeter"} 0.0' in text
    assert 'vagt_devices{status="lost"} 0.0' in text


def test_a_fleet_filled_as_devices_send_refreshes_only_the_devices_it_holds(database_url):
    """The alarm lane's process holds the devices that sent alarms, not the registry."""
    register(database_url, DEVICES)
    fleet = Fleet()
    with psycopg.connect(database_url) as conn:
        assert fleet.resolve(conn, ["OXI-0002"]).tolist() == [0]
    run_batches(database_url, [battery("OXI-0002", NOW - 10, 55),
                               battery("OXI-0001", NOW - 10, 60)])  # another process
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE devices SET status = 'lost' WHERE device_id = 'OXI-0002'")
        fleet.refresh(conn, known_only=True)
    assert fleet.ids == ["OXI-0002"]
    assert state_of(fleet, "OXI-0002")[:2] == (NOW - 10, 55.0)
    assert fleet.status == ["lost"]


def test_the_fleet_loads_in_parts_on_any_connection(database_url, monkeypatch):
    """More devices than one part (fleet.LOAD_CHUNK), on a connection in autocommit as on one
    in a transaction: every device once, in id order."""
    from vagt.devices import fleet as fleet_module

    register(database_url, DEVICES)
    monkeypatch.setattr(fleet_module, "LOAD_CHUNK", 2)
    for autocommit in (True, False):
        fleet = Fleet()
        with psycopg.connect(database_url, autocommit=autocommit) as conn:
            fleet.load(conn)
            fleet.refresh(conn)
        assert fleet.ids == sorted(d[0] for d in DEVICES)
        assert len(fleet.last_seen) == len(DEVICES)


def test_a_device_redeployed_to_another_municipality_moves_under_that_municipalitys_rules(
        database_url, tmp_path):
    # A rule for Aarhus's devices only. OXI-0002 (Samsø) is returned and deployed to a
    # citizen in Aarhus while the engine runs: the engine's next fleet refresh must put it
    # under the rule, and take OXI-0001, moved from Aarhus to Odder, out of it.
    from tests.rules.harness import Harness

    from vagt.devices.actions import deploy, return_device
    from vagt.rules import RuleEngine, load_rules

    register(database_url, DEVICES)
    rules = tmp_path / "aarhus.toml"
    rules.write_text('[[rule]]\nname = "battery_low"\nkind = "threshold"\nmetric = "battery"\n'
                     'below = 15\nclear_at = 20\nmunicipalities = ["Aarhus"]\n')
    fleet = loaded(database_url)
    h = Harness(tmp_path, rules.read_text())
    h.fleet, h.engine = fleet, RuleEngine(load_rules(rules), fleet)  # type: ignore[assignment]
    oxi1, oxi2 = fleet.ids.index("OXI-0001"), fleet.ids.index("OXI-0002")
    h.batch([(oxi1, "battery", 40, NOW - 60), (oxi2, "battery", 40, NOW - 60)])
    with psycopg.connect(database_url) as conn:
        for device, place in (("OXI-0002", "Aarhus"), ("OXI-0001", "Odder")):
            return_device(conn, device, actor="anna")
            deploy(conn, device, citizen_ref=f"cit-new-{device.lower()}", municipality=place,
                   actor="anna")
        fleet.refresh(conn)
    h.batch([(oxi1, "battery", 5, NOW), (oxi2, "battery", 5, NOW)])
    assert h.open() == {("battery_low", oxi2)}


def test_a_device_whose_clock_is_slow_is_online_while_it_sends(database_url):
    register(database_url, DEVICES)
    slow = 15 * 60   # heartbeat a day: two missed is two days, whatever its clock says
    late = dataclasses.replace(battery("OXI-0001", NOW - 2 * 86400 - slow, 80),
                               received_at=NOW - 60)
    run_batches(database_url, [late])
    frame = loaded(database_url).frame(NOW).set_index("device_id")
    assert frame.loc["OXI-0001", "online"] and not frame.loc["OXI-0001", "overdue"]
    assert frame.loc["OXI-0001", "silent_s"] == 60


def fleet_cli_rows(database_url: str, **selected: object) -> list[str]:
    import argparse

    from vagt.devices import fleet_cli
    from vagt.devices.catalogue import load_catalogue

    args = dict(overdue=False, offline=False, low_battery=None, by=None, json=False,
                municipality=None, vendor=None, model=None, type=None, status=None)
    args.update(selected)
    with psycopg.connect(database_url) as conn:
        df = fleet_cli.query(conn, load_catalogue(), argparse.Namespace(**args), now=NOW)
    return list(df["device_id"])


def test_a_device_just_given_to_the_next_citizen_is_not_overdue(database_url):
    from vagt.devices import deploy, return_device

    register(database_url, DEVICES)
    run_batches(database_url, [sent("OXI-0001", NOW - 30 * 86400, 80)])
    with psycopg.connect(database_url) as conn:
        return_device(conn, "OXI-0001", actor="staff")
    with psycopg.connect(database_url) as conn:
        deploy(conn, "OXI-0001", citizen_ref="cit-b", municipality="Skive", actor="staff")
    assert fleet_cli_rows(database_url, overdue=True) == []
    # over a day (its heartbeat) after the deployment, not heard since: overdue, as the
    # absence rules count it
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE rule_state SET began = began - interval '25 hours'")
    assert fleet_cli_rows(database_url, overdue=True) == ["OXI-0001"]


def test_offline_low_battery_and_counts_are_of_the_deployed_devices(database_url):
    from vagt.devices import return_device

    register(database_url, DEVICES)
    run_batches(database_url, [sent("OXI-0001", NOW - 30 * 86400, 5),
                               sent("OXI-0002", NOW - 60, 90)])
    with psycopg.connect(database_url) as conn:
        return_device(conn, "OXI-0001", actor="staff")   # on the shelf: silent, battery flat
    assert "OXI-0001" not in fleet_cli_rows(database_url, offline=True)
    assert fleet_cli_rows(database_url, low_battery=20.0) == []
    assert fleet_cli_rows(database_url, offline=True, status="in_stock") == ["OXI-0001"]
    by = fleet_cli_rows(database_url, by="vendor", vendor="Nonin")
    assert by == ["OXI-0002"]   # the one Nonin that should be talking, and is


def test_a_deployed_device_never_heard_is_overdue_and_offline_counted_from_its_deployment(
        database_url):
    """Installed at a citizen's home and never heard: not a problem a minute after, a
    problem a day or more after (the Nonin and A&D models send once a day)."""
    register(database_url, DEVICES)   # deployed now, none of them heard yet
    assert fleet_cli_rows(database_url, offline=True) == []
    assert fleet_cli_rows(database_url, overdue=True) == []
    with psycopg.connect(database_url) as conn:   # as if deployed earlier
        conn.execute("UPDATE devices SET status_since = now() - interval '30 hours' "
                     "WHERE device_id = 'BPM-0001'")
        conn.execute("UPDATE devices SET status_since = now() - interval '3 days' "
                     "WHERE device_id = 'OXI-0002'")
    assert fleet_cli_rows(database_url, overdue=True) == ["BPM-0001", "OXI-0002"]
    assert fleet_cli_rows(database_url, offline=True) == ["OXI-0002"]


def test_a_device_redeployed_and_never_heard_since_counts_from_its_redeployment(database_url):
    from vagt.devices import deploy, return_device

    register(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        return_device(conn, "OXI-0001", actor="staff")
    with psycopg.connect(database_url) as conn:
        deploy(conn, "OXI-0001", citizen_ref="cit-b", municipality="Skive", actor="staff")
    assert "OXI-0001" not in fleet_cli_rows(database_url, offline=True)
    with psycopg.connect(database_url) as conn:   # its rule state began 3 days ago
        conn.execute("UPDATE rule_state SET began = now() - interval '3 days' "
                     "WHERE device_id = 'OXI-0001'")
    assert fleet_cli_rows(database_url, offline=True) == ["OXI-0001"]
