"""Import against the lifecycle and the catalogue, and an export that imports back."""

from __future__ import annotations

import io

import psycopg
import pytest

from vagt.devices import (
    DeviceImportError,
    ImportResult,
    InvalidValue,
    Status,
    deploy,
    export_csv,
    import_csv,
    list_devices,
    register,
    report_lost,
    retire,
    return_device,
    send_to_repair,
)
from vagt.devices.catalogue import load_catalogue

CATALOGUE = load_catalogue()
HEADER = "device_id,vendor,model,type,municipality\n"
WITH_CITIZEN = "device_id,vendor,model,type,municipality,citizen_ref\n"


def do_import(conn: psycopg.Connection, text: str) -> ImportResult:
    return import_csv(conn, "fleet.csv", actor="anna", text=text)


def problems_of(conn: psycopg.Connection, text: str) -> list[str]:
    with pytest.raises(DeviceImportError) as refused:
        do_import(conn, text)
    return refused.value.problems


def statuses(conn: psycopg.Connection) -> dict[str, str]:
    return {d.device_id: d.status for d in list_devices(conn)}


# --- the catalogue ----------------------------------------------------------------------------


def test_every_row_of_an_unapproved_model_is_reported_with_its_line(conn):
    text = HEADER + ("OXI-1,Nonin,3230,pulse_oximeter,Aarhus\n"
                     "BPM-1,A&D,UA-651,bp_monitor,Viborg\n"
                     "SCL-1,Tanita,BC-401,scale,Skive\n"
                     "OXI-2,Nonin,3230,scale,Skive\n")
    assert problems_of(conn, text) == [
        "line 3: A&D UA-651 is not an approved model (approved A&D models: UA-651BLE, "
        "UC-352BLE); add it to the catalogue first",
        "line 4: Tanita BC-401 is not an approved model (approved vendors: "
        + ", ".join(sorted({m.vendor for m in CATALOGUE})) + "); add it to the catalogue first",
        "line 5: Nonin 3230 is a pulse_oximeter, not a scale",
    ]
    assert list_devices(conn) == []


def test_the_catalogues_spelling_of_vendor_and_model_is_stored(conn):
    do_import(conn, HEADER + "OXI-1,NONIN,3230,pulse_oximeter,Aarhus\n")
    assert (list_devices(conn)[0].vendor) == "Nonin"


# --- citizens and statuses ------------------------------------------------------------------


def test_a_row_without_citizen_registers_the_device_in_stock(conn):
    do_import(conn, HEADER + "OXI-1,Nonin,3230,pulse_oximeter,Aarhus\n")
    assert statuses(conn) == {"OXI-1": "in_stock"}


def test_a_row_without_municipality_registers_a_device_in_the_centres_stock(conn):
    do_import(conn, HEADER + "OXI-1,Nonin,3230,pulse_oximeter,\n")
    device = list_devices(conn)[0]
    assert (device.status, device.municipality) == ("in_stock", "")


@pytest.mark.parametrize("ref", ["010170-1234", "0101701234", "ref-0101701234"])
def test_a_citizen_ref_like_a_cpr_number_refuses_the_file_without_repeating_it(conn, ref):
    problems = problems_of(conn, WITH_CITIZEN + f"OXI-1,Nonin,3230,pulse_oximeter,Aarhus,{ref}\n")
    assert problems == [
        "line 2: column 'citizen_ref': the citizen reference looks like a civil registration "
        "(CPR) number (DDMMYY-XXXX or 10 digits); vagt never stores CPR numbers: use the "
        "pseudonymous reference from the municipality's care system"]
    assert ref not in " ".join(problems)
    assert list_devices(conn) == []


def test_a_deployed_row_needs_a_municipality(conn):
    assert problems_of(conn, WITH_CITIZEN + "OXI-1,Nonin,3230,pulse_oximeter,,cit-1\n") == [
        "line 2: a deployed device needs its municipality (column 'municipality' is empty)"]


def test_a_status_column_registers_devices_in_that_status(conn):
    do_import(conn, "device_id,vendor,model,type,municipality,status,citizen_ref\n"
                    "OXI-1,Nonin,3230,pulse_oximeter,,in_repair,\n"
                    "OXI-2,Nonin,3230,pulse_oximeter,,retired,\n"
                    "OXI-3,Nonin,3230,pulse_oximeter,Skive,deployed,cit-3\n")
    assert statuses(conn) == {"OXI-1": "in_repair", "OXI-2": "retired", "OXI-3": "deployed"}


def test_status_and_citizen_that_disagree_are_refused(conn):
    text = ("device_id,vendor,model,type,municipality,status,citizen_ref\n"
            "OXI-1,Nonin,3230,pulse_oximeter,Skive,in_stock,cit-1\n"
            "OXI-2,Nonin,3230,pulse_oximeter,Skive,deployed,\n"
            "OXI-3,Nonin,3230,pulse_oximeter,Skive,borrowed,\n")
    assert problems_of(conn, text) == [
        "line 2: a citizen_ref means the device is deployed to that citizen, but its status is "
        "in_stock: leave one of them out",
        "line 3: a deployed device needs the citizen_ref of the citizen who has it",
        "line 4: status 'borrowed' is not a lifecycle status; one of in_stock, deployed, "
        "in_repair, retired, lost",
    ]


def test_an_import_deploys_a_known_device_in_stock_and_audits_it(conn):
    do_import(conn, HEADER + "OXI-1,Nonin,3230,pulse_oximeter,\n")
    result = do_import(conn, WITH_CITIZEN + "OXI-1,Nonin,3230,pulse_oximeter,Skive,cit-9\n")
    assert result == ImportResult(created=0, updated=1, unchanged=0, deployed=1)
    assert statuses(conn) == {"OXI-1": "deployed"}
    assert conn.execute("SELECT details FROM audit_log WHERE action = 'devices.deploy'"
                        ).fetchall() == [({"from": "in_stock", "to": "deployed",
                                           "citizen_ref": "cit-9", "municipality": "Skive",
                                           "changed": {"municipality": {"from": "",
                                                                        "to": "Skive"}},
                                           "file": "fleet.csv"},)]


def test_an_import_refuses_to_deploy_a_retired_device_giving_the_lifecycles_reason(conn):
    register(conn, "OXI-1", "Nonin", "3230", catalogue=CATALOGUE, actor="anna")
    retire(conn, "OXI-1", actor="anna")
    assert problems_of(conn, WITH_CITIZEN + "OXI-1,Nonin,3230,pulse_oximeter,Skive,cit-9\n") == [
        "line 2: OXI-1 is retired: retired is final; a retired device cannot be deployed"]


def test_an_import_refuses_to_move_a_lost_device_which_keeps_the_municipality_it_was_lost_in(
        conn):
    do_import(conn, WITH_CITIZEN + "OXI-8,Nonin,3230,pulse_oximeter,Skive,cit-A\n")
    report_lost(conn, "OXI-8", actor="anna")
    assert problems_of(conn, HEADER + "OXI-8,Nonin,3230,pulse_oximeter,Aarhus\n") == [
        "line 2: OXI-8 is lost, which is final: an import changes nothing of it, but the file "
        "gives another municipality (Aarhus; the registry has Skive): give it as the registry "
        "has it (vagt devices show OXI-8), or leave the row out"]
    assert [(d.status, d.municipality) for d in list_devices(conn)] == [("lost", "Skive")]


def test_an_import_refuses_to_change_the_model_or_attributes_of_a_retired_device(conn):
    register(conn, "OXI-1", "Nonin", "3230", catalogue=CATALOGUE, actor="anna",
             attributes={"serial": "SN-1"})
    retire(conn, "OXI-1", actor="anna")
    text = "device_id,vendor,model,type,municipality,serial\n" \
           "OXI-1,Masimo,MightySat,pulse_oximeter,,SN-2\n"
    assert problems_of(conn, text) == [
        "line 2: OXI-1 is retired, which is final: an import changes nothing of it, but the "
        "file gives another vendor, model, attributes: give it as the registry has it (vagt devices "
        "show OXI-1), or leave the row out"]
    [device] = list_devices(conn)
    assert (device.vendor, device.model, device.attributes) == (
        "Nonin", "3230", {"serial": "SN-1"})


def test_a_lost_or_retired_device_given_as_the_registry_has_it_is_unchanged(conn):
    do_import(conn, WITH_CITIZEN + "OXI-8,Nonin,3230,pulse_oximeter,Skive,cit-A\n"
                                   "OXI-9,Nonin,3230,pulse_oximeter,,\n")
    report_lost(conn, "OXI-8", actor="anna")
    retire(conn, "OXI-9", actor="anna")
    assert do_import(conn, HEADER + "OXI-8,Nonin,3230,pulse_oximeter,Skive\n"
                                    "OXI-9,Nonin,3230,pulse_oximeter,\n").unchanged == 2


def test_an_import_refuses_to_give_a_deployed_device_to_another_citizen(conn):
    do_import(conn, WITH_CITIZEN + "OXI-1,Nonin,3230,pulse_oximeter,Skive,cit-1\n")
    problems = problems_of(conn, WITH_CITIZEN + "OXI-1,Nonin,3230,pulse_oximeter,Skive,cit-2\n")
    assert len(problems) == 1
    assert problems[0].startswith("line 2: OXI-1 is deployed to another citizen since ")
    assert problems[0].endswith(": return it first (vagt devices return OXI-1) to deploy it "
                                "to this one")


def test_an_import_refuses_to_move_a_deployed_device_to_another_municipality(conn):
    do_import(conn, WITH_CITIZEN + "OXI-1,Nonin,3230,pulse_oximeter,Skive,cit-1\n")
    problems = problems_of(conn, HEADER + "OXI-1,Nonin,3230,pulse_oximeter,Viborg\n")
    assert len(problems) == 1 and problems[0].startswith("line 2: OXI-1 is deployed in Skive")
    assert problems[0].endswith("the file says Viborg: to move it, return it and deploy it "
                                "again")


def test_an_import_changes_no_other_status_and_names_the_command_that_does(conn):
    register(conn, "OXI-1", "Nonin", "3230", catalogue=CATALOGUE, actor="anna")
    send_to_repair(conn, "OXI-1", actor="anna")
    text = "device_id,vendor,model,type,municipality,status\n" \
           "OXI-1,Nonin,3230,pulse_oximeter,,in_stock\n"
    assert problems_of(conn, text) == [
        "line 2: OXI-1 is in_repair in the registry, the file says in_stock: an import changes "
        "a status only by deploying a device in stock; use `vagt devices repair OXI-1`"]


def test_a_known_deployed_device_without_citizen_in_the_file_stays_deployed(conn):
    do_import(conn, WITH_CITIZEN + "OXI-1,Nonin,3230,pulse_oximeter,Skive,cit-1\n")
    assert do_import(conn, HEADER + "OXI-1,Nonin,3230,pulse_oximeter,Skive\n").unchanged == 1
    assert statuses(conn) == {"OXI-1": "deployed"}


def test_all_problems_of_a_file_are_reported_together_and_nothing_is_written(conn):
    register(conn, "OXI-9", "Nonin", "3230", catalogue=CATALOGUE, actor="anna")
    retire(conn, "OXI-9", actor="anna")
    text = WITH_CITIZEN + ("OXI-1,Nonin,3230,pulse_oximeter,Skive,cit-1\n"
                           "OXI-9,Nonin,3230,pulse_oximeter,Skive,cit-2\n"
                           "OXI-3,Nonin,3230,pulse_oximeter,Skive,cit-3\n")
    assert problems_of(conn, text) == [
        "line 3: OXI-9 is retired: retired is final; a retired device cannot be deployed"]
    assert statuses(conn) == {"OXI-9": "retired"}
    assert conn.execute("SELECT count(*) FROM device_assignments").fetchone() == (0,)


# --- export -------------------------------------------------------------------------------------


def build_registry(conn: psycopg.Connection) -> None:
    do_import(conn, "device_id,vendor,model,type,municipality,citizen_ref,serial_no\n"
                    "OXI-1,Nonin,3230,pulse_oximeter,Skive,cit-1,SN-1\n"
                    "ALM-1,Tunstall,Lifeline Vi+,personal_alarm,Viborg,,\n"
                    'GLU-1,Roche,Accu-Chek Guide,glucose_meter,,,"SN, with comma"\n'
                    "GLU-2,Roche,Accu-Chek Guide,glucose_meter,,,\n"
                    "SCL-1,Withings,Body+,scale,Aarhus,cit-2,\n")
    send_to_repair(conn, "GLU-1", actor="anna")
    retire(conn, "GLU-2", actor="anna")
    return_device(conn, "SCL-1", actor="anna")
    deploy(conn, "ALM-1", citizen_ref="cit-3", municipality="Viborg", actor="anna")


def exported(conn: psycopg.Connection, **filters: str) -> str:
    out = io.StringIO()
    export_csv(conn, out, **filters)
    return out.getvalue()


def test_the_export_has_status_citizen_and_attributes(conn):
    build_registry(conn)
    assert exported(conn).splitlines() == [
        "device_id,vendor,model,type,municipality,status,citizen_ref,serial_no",
        "ALM-1,Tunstall,Lifeline Vi+,personal_alarm,Viborg,deployed,cit-3,",
        'GLU-1,Roche,Accu-Chek Guide,glucose_meter,,in_repair,,"SN, with comma"',
        "GLU-2,Roche,Accu-Chek Guide,glucose_meter,,retired,,",
        "OXI-1,Nonin,3230,pulse_oximeter,Skive,deployed,cit-1,SN-1",
        "SCL-1,Withings,Body+,scale,,in_stock,,",
    ]


def test_an_export_imported_into_another_registry_gives_the_same_registry(
        conn, other_database_url):
    build_registry(conn)
    text = exported(conn)
    with psycopg.connect(other_database_url, autocommit=True) as other:
        assert import_csv(other, "export.csv", actor="bo", text=text).created == 5
        assert exported(other) == text
        assert {d.device_id: (d.status, d.municipality, d.attributes)
                for d in list_devices(other)} == {
            d.device_id: (d.status, d.municipality, d.attributes) for d in list_devices(conn)}


def test_an_export_imported_into_the_same_registry_changes_nothing(conn):
    build_registry(conn)
    before = conn.execute("SELECT count(*) FROM audit_log WHERE action <> 'devices.import'"
                          ).fetchone()
    assert do_import(conn, exported(conn)) == ImportResult(created=0, updated=0, unchanged=5)
    assert conn.execute("SELECT count(*) FROM audit_log WHERE action <> 'devices.import'"
                        ).fetchone() == before


def test_the_export_takes_the_lists_filters(conn):
    build_registry(conn)
    assert [line.split(",")[0] for line in exported(conn, status=Status.DEPLOYED).splitlines()
            ] == ["device_id", "ALM-1", "OXI-1"]
    assert [line.split(",")[0] for line in exported(conn, type="glucose_meter").splitlines()
            ] == ["device_id", "GLU-1", "GLU-2"]


def test_list_filters_by_status_and_model(conn):
    build_registry(conn)
    assert [d.device_id for d in list_devices(conn, status="deployed")] == ["ALM-1", "OXI-1"]
    assert [d.device_id for d in list_devices(conn, model="Accu-Chek Guide",
                                              status="retired")] == ["GLU-2"]


def test_an_import_deploys_no_device_whose_alerts_are_not_resolved(conn, database_url):
    from tests.alerts.support import fire

    do_import(conn, WITH_CITIZEN + "OXI-1,Nonin,3230,pulse_oximeter,Skive,cit-1\n")
    (alert_id, _), = fire(database_url, ("personal_alarm", "OXI-1"))
    return_device(conn, "OXI-1", actor="anna")
    assert problems_of(conn, WITH_CITIZEN + "OXI-1,Nonin,3230,pulse_oximeter,Odder,cit-2\n") == [
        f"line 2: OXI-1 has alerts that are not resolved ({alert_id} personal_alarm): resolve "
        "them first (vagt alerts resolve ...), so that the next citizen's alerts are not "
        "added to them"]
    assert statuses(conn) == {"OXI-1": "in_stock"}


def test_attribute_names_that_differ_in_case_export_as_one_column_and_import_back(
        conn, other_database_url):
    """Two files named one column "Serial" and "serial": the export has one column (two,
    its import would refuse), under the first spelling, with every device's value."""
    do_import(conn, "device_id,vendor,model,type,municipality,Serial\n"
                    "OXI-1,Nonin,3230,pulse_oximeter,Skive,SN-1\n")
    do_import(conn, "device_id,vendor,model,type,municipality,serial\n"
                    "OXI-2,Nonin,3230,pulse_oximeter,Skive,SN-2\n")
    text = exported(conn)
    assert text.splitlines()[0] == \
        "device_id,vendor,model,type,municipality,status,citizen_ref,Serial"
    with psycopg.connect(other_database_url, autocommit=True) as other:
        assert import_csv(other, "export.csv", actor="bo", text=text).created == 2
        assert {d.device_id: d.attributes for d in list_devices(other)} == {
            "OXI-1": {"Serial": "SN-1"}, "OXI-2": {"Serial": "SN-2"}}


def test_an_export_with_one_column_for_two_spellings_imports_back_a_retired_device(conn):
    """The export writes "Serial" and "serial" as one column; the retired device that had
    "serial" is as the file says, whatever the case of the name."""
    do_import(conn, "device_id,vendor,model,type,municipality,Serial\n"
                    "OXI-1,Nonin,3230,pulse_oximeter,Skive,SN-1\n")
    do_import(conn, "device_id,vendor,model,type,municipality,serial\n"
                    "OXI-2,Nonin,3230,pulse_oximeter,Skive,SN-2\n")
    retire(conn, "OXI-2", actor="anna")
    assert do_import(conn, exported(conn)).created == 0


@pytest.mark.parametrize("name", ["Status", "municipality", "Vendor"])
def test_an_attribute_named_as_a_column_of_the_registry_is_refused(conn, name):
    with pytest.raises(InvalidValue, match=f"'{name}' is a column of the registry"):
        register(conn, "OXI-1", "Nonin", "3230", catalogue=load_catalogue(), actor="anna",
                 attributes={name: "x"})
