"""The device registry: CSV import validated whole, CPR numbers refused, changes audited."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from vagt.devices import DeviceImportError, ImportResult, import_csv, list_devices

CSV = """device_id,vendor,model,type,municipality,serial_no
OXI-0001,Nonin,3230,pulse_oximeter,Aarhus,SN-1
BPM-0001,A&D,UA-651BLE,bp_monitor,Samsø,
"""
HEADER = "device_id,vendor,model,type,municipality\n"
OK = "Nonin,3230,pulse_oximeter,Aarhus"  # an approved model, a municipality


def do_import(conn: psycopg.Connection, text: str, source: str = "fleet.csv") -> ImportResult:
    return import_csv(conn, source, actor="anna", text=text)


def problems_of(conn: psycopg.Connection, text: str) -> list[str]:
    with pytest.raises(DeviceImportError) as refused:
        do_import(conn, text)
    return refused.value.problems


def count_devices(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM devices").fetchone()
    assert row is not None
    return int(row[0])


def devices_by_id(conn: psycopg.Connection) -> dict[str, object]:
    return {d.device_id: d for d in list_devices(conn)}


# --- importing ---------------------------------------------------------------------------


def test_import_registers_new_devices_and_counts_them_as_created(conn):
    assert do_import(conn, CSV) == ImportResult(created=2, updated=0, unchanged=0)
    device = list_devices(conn)[1]
    assert (device.device_id, device.vendor, device.model, device.type, device.municipality,
            device.status) == ("OXI-0001", "Nonin", "3230", "pulse_oximeter", "Aarhus", "in_stock")


def test_extra_columns_are_kept_as_attributes_without_empty_values(conn):
    do_import(conn, CSV)
    devices = {d.device_id: d.attributes for d in list_devices(conn)}
    assert devices == {"OXI-0001": {"serial_no": "SN-1"}, "BPM-0001": {}}


def test_importing_again_updates_a_device_that_moved_and_counts_the_rest_unchanged(conn):
    do_import(conn, CSV)
    result = do_import(conn, CSV.replace("Samsø", "Odder"))
    assert result == ImportResult(created=0, updated=1, unchanged=1)
    assert {d.device_id: d.municipality for d in list_devices(conn)} == {
        "BPM-0001": "Odder", "OXI-0001": "Aarhus"}


def test_an_update_replaces_the_attributes_with_the_files_columns(conn):
    do_import(conn, CSV)
    do_import(conn, CSV.replace("serial_no", "asset_tag").replace("SN-1", "AT-9"))
    assert list_devices(conn)[1].attributes == {"asset_tag": "AT-9"}


def test_an_import_leaves_the_lifecycle_status_and_fleet_state_alone(conn):
    do_import(conn, CSV)
    conn.execute("UPDATE devices SET status = 'in_repair', battery = 40 "
                 "WHERE device_id = 'OXI-0001'")
    do_import(conn, CSV.replace("Aarhus", "Skive"))
    device = list_devices(conn, municipality="Skive")[0]
    assert (device.status, device.battery) == ("in_repair", 40.0)


def test_the_required_columns_may_come_in_any_order_and_any_case(conn):
    do_import(conn, "Municipality,TYPE,model,vendor,device_id\nAarhus,scale,Body+,Withings,SC-1\n")
    device = list_devices(conn)[0]
    assert (device.device_id, device.vendor, device.municipality) == ("SC-1", "Withings", "Aarhus")


def test_a_semicolon_separated_file_from_a_danish_spreadsheet_is_read(conn):
    do_import(conn, "device_id;vendor;model;type;municipality\nSC-1;Withings;Body+;scale;Aarhus\n")
    assert [d.device_id for d in list_devices(conn)] == ["SC-1"]


def test_blank_lines_and_spaces_around_values_are_ignored(conn):
    do_import(conn, HEADER + "\n SC-1 , Withings ,Body+,scale,Aarhus\n\n")
    assert [(d.device_id, d.vendor) for d in list_devices(conn)] == [("SC-1", "Withings")]


def test_import_reads_a_file_by_path_and_audits_its_name(conn, tmp_path: Path):
    path = tmp_path / "fleet-2024.csv"
    path.write_text(CSV, encoding="utf-8-sig")  # as Excel saves "CSV UTF-8": with a BOM
    assert import_csv(conn, path, actor="anna").created == 2
    assert conn.execute("SELECT subject FROM audit_log WHERE action = 'devices.import'"
                        ).fetchall() == [("fleet-2024.csv",)]


def test_import_takes_the_csv_text_itself(conn):
    assert import_csv(conn, CSV, actor="anna").created == 2


def test_every_import_is_audited_with_who_what_and_the_counts(conn):
    do_import(conn, CSV)
    assert conn.execute("SELECT actor, action, subject, details FROM audit_log "
                        "WHERE action = 'devices.import'").fetchall() == [
        ("anna", "devices.import", "fleet.csv",
         {"rows": 2, "created": 2, "updated": 0, "deployed": 0, "unchanged": 0})]


def test_each_device_an_import_registers_is_audited_with_its_model_and_the_file(conn):
    do_import(conn, CSV)
    rows = conn.execute("SELECT actor, action, subject, details FROM audit_log "
                        "WHERE action = 'devices.register' ORDER BY subject").fetchall()
    assert rows == [
        ("anna", "devices.register", "BPM-0001",
         {"to": "in_stock", "vendor": "A&D", "model": "UA-651BLE", "type": "bp_monitor",
          "municipality": "Samsø", "file": "fleet.csv"}),
        ("anna", "devices.register", "OXI-0001",
         {"to": "in_stock", "vendor": "Nonin", "model": "3230", "type": "pulse_oximeter",
          "municipality": "Aarhus", "file": "fleet.csv"})]


def test_a_change_by_import_is_audited_with_what_changed(conn):
    do_import(conn, CSV)
    do_import(conn, CSV.replace("Samsø", "Odder"))
    assert conn.execute("SELECT subject, details FROM audit_log WHERE action = "
                        "'devices.update'").fetchall() == [
        ("BPM-0001", {"changed": {"municipality": {"from": "Samsø", "to": "Odder"}},
                      "file": "fleet.csv"})]


def test_an_import_needs_an_actor_for_the_audit_log(conn):
    with pytest.raises(DeviceImportError, match="who imports must be named"):
        import_csv(conn, "fleet.csv", actor=" ", text=CSV)


def test_an_import_inside_the_callers_transaction_can_be_repeated(database_url):
    with psycopg.connect(database_url) as conn:  # not autocommit: one outer transaction
        do_import(conn, CSV)
        assert do_import(conn, CSV) == ImportResult(created=0, updated=0, unchanged=2)


def test_a_hundred_thousand_devices_import_in_one_go(conn):
    # a whole region's fleet; how long it takes is for benchmarks/, not for a test
    rows = "".join(f"DEV-{i:06d},Nonin,3230,pulse_oximeter,Aarhus,SN{i}\n" for i in range(100_000))
    result = do_import(conn, HEADER.replace("\n", ",serial\n") + rows)
    assert result.created == 100_000
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (100_000,)


# --- refusals: each names what to fix, and nothing is written -----------------------------


def test_a_missing_required_column_is_named(conn):
    problems = problems_of(conn, "device_id,vendor,type\nX-1,a,c\n")
    assert problems == ["the header lacks the column(s) model, municipality; required "
                        "(in any order): device_id,vendor,model,type,municipality"]


def test_an_empty_file_is_refused_with_the_header_it_needs(conn):
    assert problems_of(conn, "") == [
        "the file is empty: the first line must be the header "
        "device_id,vendor,model,type,municipality"]


def test_an_empty_required_field_is_named_by_line_and_column(conn):
    assert problems_of(conn, HEADER + "X-1,Nonin,3230,,Aarhus\n") == [
        "line 2: column 'type' is empty"]


def test_an_invalid_device_id_is_named_by_line_and_value(conn):
    assert problems_of(conn, HEADER + f"OXI-1,{OK}\nOXI 2,{OK}\n") == [
        "line 3: device_id 'OXI 2' is not valid: use 1 to 64 of A-Z a-z 0-9 . _ -"]


def test_a_new_device_id_that_cannot_be_a_broker_user_is_refused_by_line(conn):
    assert problems_of(conn, HEADER + f"OXI-1,{OK}\nGW:02,{OK}\n") == [
        "line 3: device id 'GW:02' cannot be used: a device logs in to the broker with its id "
        "as user name, and ':' separates the user name from the password in Mosquitto's "
        "password file; use 1 to 64 of A-Z a-z 0-9 . _ - (e.g. 'GW-02')"]
    assert count_devices(conn) == 0


def test_a_device_registered_with_a_colon_before_is_still_updated_by_an_import(conn):
    conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, status) "
                 "VALUES ('GW:01', 'Nonin', '3230', 'pulse_oximeter', '', 'in_stock')")
    assert do_import(conn, HEADER + f"GW:01,{OK}\n").updated == 1
    assert devices_by_id(conn)["GW:01"].municipality == "Aarhus"  # type: ignore[attr-defined]


def test_a_device_id_longer_than_64_characters_is_refused(conn):
    problems = problems_of(conn, HEADER + f"{'X' * 65},Nonin,3230,pulse_oximeter,Aarhus\n")
    assert problems[0].startswith("line 2: device_id 'XXXXX") and "is not valid" in problems[0]


def test_a_device_id_twice_in_the_file_names_both_lines(conn):
    assert problems_of(conn, HEADER + f"OXI-1,{OK}\nOXI-2,{OK}\nOXI-1,{OK}\n") == [
        "line 4: device_id 'OXI-1' is also on line 2"]


def test_a_row_with_more_values_than_the_header_is_refused(conn):
    assert problems_of(conn, HEADER + "OXI-1,A&D, Inc.,UA-651,bp_monitor,Aarhus\n") == [
        "line 2: 6 values but the header has 5 columns (a value with a comma in it must be in "
        "double quotes)"]


def test_a_column_named_twice_in_the_header_is_refused(conn):
    assert problems_of(conn, "device_id,vendor,model,type,municipality,note,Note\n") == [
        "the header names the column(s) note more than once"]


def test_line_numbers_count_the_lines_of_a_quoted_value_that_spans_several(conn):
    text = HEADER.replace("\n", ",note\n") + f'OXI-1,{OK},"two\nlines"\nOXI 2,{OK},\n'
    assert problems_of(conn, text) == [
        "line 4: device_id 'OXI 2' is not valid: use 1 to 64 of A-Z a-z 0-9 . _ -"]


NOT_PRINTABLE = ", which is not printable: a control, format (bidirectional, zero-width) or " \
    "separator character makes text read as something else where it is shown; remove it"


@pytest.mark.parametrize(("row", "column", "named"), [
    ("OXI-2,Nonin\u202e,3230,pulse_oximeter,Aarhus,SN-2", "vendor",
     "U+202E RIGHT-TO-LEFT OVERRIDE (its character 6)"),
    (f"OXI-2,{OK}\u200b,SN-2", "municipality", "U+200B ZERO WIDTH SPACE (its character 7)"),
    (f"OXI-2,{OK},SN-\u20662\u2069", "serial_no", "U+2066 LEFT-TO-RIGHT ISOLATE (its character 4)"),
    (f"OXI-2,{OK},SN-2\u009b31m", "serial_no", "U+009B CONTROL SEQUENCE INTRODUCER (its character 5)"),
    (f"OXI-2,{OK},SN-2\u2028SN-3", "serial_no", "U+2028 LINE SEPARATOR (its character 5)"),
    (f"OXI-\u202e2,{OK},SN-2", "device_id", "U+202E RIGHT-TO-LEFT OVERRIDE (its character 5)"),
])
def test_a_value_with_a_character_that_is_not_printable_is_named_by_line_column_and_code_point(
        conn, row, column, named):
    """A vendor's or municipality's name, or an attribute, that would read as something else
    in the operators' tables; the message names the character, never repeating it."""
    text = HEADER.replace("\n", ",serial_no\n") + f"OXI-1,{OK},SN-1\n{row}\n"
    assert problems_of(conn, text) == [f"line 3, column '{column}': the value holds {named}"
                                       + NOT_PRINTABLE]
    assert count_devices(conn) == 0


def test_a_column_whose_name_is_not_printable_is_named_escaped(conn):
    text = HEADER.replace("\n", ",asset\u202etag\n") + f"OXI-1,{OK},A-1\n"
    assert problems_of(conn, text) == [
        "line 1, column 'asset\\u202etag': its name holds U+202E RIGHT-TO-LEFT OVERRIDE (its "
        "character 6)" + NOT_PRINTABLE]


def test_a_column_without_a_name_is_not_kept_and_what_it_holds_refuses_nothing(conn):
    """A spreadsheet's column of the staff's own jottings, its header cell left empty, is
    not imported: a line break or a no-break space in it (pasted from a mail) is no reason
    to refuse the fleet, as it was none before vagt checked what is printable."""
    text = (HEADER.replace("\n", ",\n") + f'OXI-1,{OK},"call Bo\nfirst"\n'
            f"OXI-2,{OK},ring\u00a0Bo\n")
    assert do_import(conn, text).created == 2
    assert {d: dict(a) for d, a in conn.execute(
        "SELECT device_id, attributes FROM devices ORDER BY device_id")} == {
        "OXI-1": {}, "OXI-2": {}}


def test_a_file_that_is_not_utf8_is_refused_with_what_to_do(conn, tmp_path: Path):
    path = tmp_path / "fleet.csv"
    path.write_bytes((HEADER + "OXI-1,a,b,c,Næstved\n").encode("cp1252"))
    with pytest.raises(DeviceImportError, match="not UTF-8 .*save it as 'CSV UTF-8'"):
        import_csv(conn, path, actor="anna")


def test_a_missing_file_is_refused_naming_it(conn, tmp_path: Path):
    with pytest.raises(DeviceImportError) as refused:
        import_csv(conn, tmp_path / "nope.csv", actor="anna")
    assert str(refused.value).startswith(f"{tmp_path / 'nope.csv'}: nothing imported")
    assert refused.value.problems == ["cannot read the file: No such file or directory"]


def test_all_problems_are_listed_and_nothing_is_written(conn):
    text = CSV + f"BAD ID,{OK},\n,{OK},\nOXI-0001,{OK},\n"
    assert problems_of(conn, text) == [
        "line 4: device_id 'BAD ID' is not valid: use 1 to 64 of A-Z a-z 0-9 . _ -",
        "line 5: column 'device_id' is empty",
        "line 6: device_id 'OXI-0001' is also on line 2",
    ]
    assert count_devices(conn) == 0


def test_the_message_shows_twenty_problems_and_counts_the_rest(conn):
    with pytest.raises(DeviceImportError) as refused:
        do_import(conn, HEADER + "".join(f"X {i},Nonin,3230,pulse_oximeter,Aarhus\n" for i in range(25)))
    message = str(refused.value)
    assert message.startswith("fleet.csv: nothing imported, 25 problem(s):")
    assert "line 21:" in message and "line 22:" not in message
    assert message.endswith("... and 5 more")
    assert len(refused.value.problems) == 25


def test_a_refused_import_writes_no_audit_row(conn):
    problems_of(conn, HEADER + "X 1,Nonin,3230,pulse_oximeter,Aarhus\n")
    assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (0,)


# --- CPR numbers are never stored ----------------------------------------------------------


@pytest.mark.parametrize("column", ["cpr", "CPR-nr", "cpr_nummer", "personnummer", "person_nr",
                                    "civil_registration_number"])
def test_a_column_named_like_a_cpr_number_refuses_the_file(conn, column):
    problems = problems_of(conn, HEADER.replace("\n", f",{column}\n") + f"X-1,{OK},\n")
    assert problems == [f"the column '{column}' looks like a civil registration (CPR) number; "
                        "vagt never stores CPR numbers: remove it (a pseudonymous citizen "
                        "reference may stay)"]
    assert count_devices(conn) == 0


@pytest.mark.parametrize("column", ["name", "Navn", "borgernavn", "Citizen name", "first_name",
                                    "address", "install_address", "Adresse", "postnr",
                                    "postnummer", "Tlf", "telefonnr", "mobile", "E-mail",
                                    "fødselsdato", "fodselsdato", "birth_date", "date_of_birth",
                                    "DOB", "kontaktperson", "gateway_address", "gw_street",
                                    "device_owner_phone", "network_contact_email",
                                    "device_contact_name", "fornavn", "surname", "firstname",
                                    "lastName", "fullName", "citizenName", "patientname",
                                    "fulde_navn", "Fulde navn", "contact_person", "person",
                                    "borger_id", "patient_id", "beboer nr", "Borgers id"])
def test_a_column_named_for_a_citizens_name_address_or_contact_refuses_the_file(conn, column):
    """Also one that names the citizen (an identifier of theirs): an attribute stays with the
    device when it goes to the next citizen."""
    problems = problems_of(conn, HEADER.replace("\n", f",{column}\n") + f"X-1,{OK},x\n")
    assert problems == [f"the column '{column}' looks like personal data about a citizen; "
                        "vagt keeps no names, addresses, phone numbers, e-mail addresses or "
                        "other identifiers of citizens, only a pseudonymous citizen_ref (an "
                        "attribute stays with the device when it goes to the next citizen): "
                        "remove the column (or rename it if it is about the device)"]
    assert count_devices(conn) == 0


@pytest.mark.parametrize("column", ["model_name", "gateway_name", "serial", "asset_tag",
                                    "location", "room", "mailbox", "note", "mac_address",
                                    "ip_address", "ble_addr", "sim_phone", "mobile_operator",
                                    "zip_firmware", "mqtt_user_name", "device_name",
                                    "last_firmware_name", "patient_monitor_mode",
                                    "patient_alarm_button", "borger_app_version"])
def test_a_column_about_the_device_is_kept_as_an_attribute(conn, column):
    do_import(conn, HEADER.replace("\n", f",{column}\n") + f"X-1,{OK},x\n")
    assert list_devices(conn)[0].attributes == {column: "x"}


@pytest.mark.parametrize("value", ["0101701234", "010170-1234"])
def test_a_value_like_a_cpr_number_refuses_the_file_without_repeating_it(conn, value):
    problems = problems_of(conn, HEADER.replace("\n", ",remark\n") + f"X-1,{OK},{value}\n")
    assert problems == ["line 2, column 'remark': the value looks like a civil registration "
                        "(CPR) number; vagt never stores CPR numbers: remove it (a pseudonymous "
                        "citizen reference may stay)"]
    assert value not in str(problems)
    assert count_devices(conn) == 0


def test_a_cpr_number_inside_a_free_text_value_refuses_the_file_without_repeating_it(conn):
    problems = problems_of(conn, HEADER.replace("\n", ",bemaerkning\n")
                           + f'X-1,{OK},"cpr 010190\u20131234, bor alene"\n')
    assert problems == ["line 2, column 'bemaerkning': the value holds something shaped like "
                        "a civil registration (CPR) number; vagt never stores CPR numbers: "
                        "remove it (a pseudonymous citizen reference may stay)"]
    assert count_devices(conn) == 0


@pytest.mark.parametrize("column", ["Borger CPR", "patient_cpr", "cprnr", "pnr"])
def test_a_column_with_cpr_in_its_name_refuses_the_file(conn, column):
    problems = problems_of(conn, HEADER.replace("\n", f",{column}\n") + f"X-1,{OK},x\n")
    assert problems == [f"the column '{column}' looks like a civil registration (CPR) number; "
                        "vagt never stores CPR numbers: remove it (a pseudonymous citizen "
                        "reference may stay)"]


def test_nine_digits_in_a_cpr_column_are_a_cpr_number_a_spreadsheet_took_the_zero_of(conn):
    problems = problems_of(conn, HEADER.replace("\n", ",Borger CPR\n") + f"X-1,{OK},101901234\n")
    assert "line 2, column 'Borger CPR': the value holds something shaped like a civil " \
           "registration (CPR) number" in problems[1]
    assert "101901234" not in str(problems)


def test_a_column_whose_name_holds_a_cpr_number_is_named_by_its_place(conn):
    problems = problems_of(conn, HEADER.replace("\n", ",010190-1234\n") + f"X-1,{OK},x\n")
    assert problems == ["the column #6 (its name not shown) looks like a civil registration "
                        "(CPR) number; vagt never stores CPR numbers: remove it (a pseudonymous "
                        "citizen reference may stay)"]


def test_a_new_device_id_with_a_cpr_number_in_it_is_refused_without_repeating_it(conn):
    assert problems_of(conn, HEADER + f"OXI-010190-1234,{OK}\n") == [
        "line 2: the device id holds something shaped like a civil registration (CPR) number; "
        "vagt never stores CPR numbers"]


def test_an_import_by_an_actor_with_a_cpr_number_is_refused(conn):
    with pytest.raises(DeviceImportError, match="who acts .actor. holds something shaped"):
        import_csv(conn, "fleet.csv", actor="010190-1234", text=CSV)
    assert count_devices(conn) == 0


def test_a_cpr_number_as_device_id_is_refused_as_such(conn):
    problems = problems_of(conn, HEADER + "010170-1234,Nonin,3230,pulse_oximeter,Aarhus\n")
    assert problems == ["line 2, column 'device_id': the value looks like a civil registration "
                        "(CPR) number; vagt never stores CPR numbers: remove it (a pseudonymous "
                        "citizen reference may stay)"]


def test_a_pseudonymous_citizen_reference_deploys_the_device_to_that_citizen(conn):
    do_import(conn, HEADER.replace("\n", ",citizen_ref\n")
              + "X-1,Nonin,3230,pulse_oximeter,Aarhus,cit-7f3a9c01e2d4\n")
    device = list_devices(conn)[0]
    assert (device.status, device.attributes) == ("deployed", {})
    assert conn.execute("SELECT citizen_ref, municipality, until FROM device_assignments"
                        ).fetchall() == [("cit-7f3a9c01e2d4", "Aarhus", None)]


# --- listing -------------------------------------------------------------------------------


FLEET = HEADER + """OXI-0002,Nonin,3230,pulse_oximeter,Samsø
OXI-0001,Nonin,3230,pulse_oximeter,Aarhus
BPM-0001,A&D,UA-651BLE,bp_monitor,Aarhus
SC-0001,Withings,Body+,scale,Aarhus
"""


def test_list_is_ordered_by_device_id(conn):
    do_import(conn, FLEET)
    assert [d.device_id for d in list_devices(conn)] == [
        "BPM-0001", "OXI-0001", "OXI-0002", "SC-0001"]


def test_list_filters_by_municipality(conn):
    do_import(conn, FLEET)
    assert [d.device_id for d in list_devices(conn, municipality="Samsø")] == ["OXI-0002"]


def test_list_filters_by_vendor(conn):
    do_import(conn, FLEET)
    assert [d.device_id for d in list_devices(conn, vendor="Nonin")] == ["OXI-0001", "OXI-0002"]


def test_list_filters_by_type(conn):
    do_import(conn, FLEET)
    assert [d.device_id for d in list_devices(conn, type="scale")] == ["SC-0001"]


def test_list_filters_combine(conn):
    do_import(conn, FLEET)
    assert [d.device_id for d in list_devices(conn, municipality="Aarhus", vendor="Nonin",
                                              type="pulse_oximeter")] == ["OXI-0001"]


def test_list_shows_the_fleet_state(conn):
    do_import(conn, FLEET)
    conn.execute("UPDATE devices SET last_seen = '2024-05-01T10:00:00Z', battery = 81, "
                 "signal = -67, firmware = '2.4.1', last_seq = 42 WHERE device_id = 'OXI-0001'")
    device = list_devices(conn, municipality="Aarhus", vendor="Nonin")[0]
    assert (device.battery, device.signal, device.firmware, device.last_seq) == (
        81.0, -67.0, "2.4.1", 42)
    assert device.last_seen is not None and device.last_seen.isoformat().startswith("2024-05-01")


def test_the_json_form_has_every_column_with_iso_8601_times(conn):
    do_import(conn, FLEET)
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("UPDATE devices SET last_seen = '2024-05-01T10:00:00Z'")
    doc = list_devices(conn, type="scale")[0].to_json()
    assert doc["last_seen"] == "2024-05-01T10:00:00+00:00"
    assert isinstance(doc["registered_at"], str)
    assert set(doc) >= {"device_id", "vendor", "model", "type", "municipality", "status",
                        "attributes", "battery", "battery_at", "signal", "signal_at",
                        "firmware", "last_seq", "seq_gaps"}


def test_an_import_that_waited_for_a_deploy_sees_the_deployment(conn, database_url):
    """The import locks the device after a deploy (in another session) took it: it must
    judge the device as deployed, and refuse to move it to the file's municipality, as it
    does when it comes second; not write that municipality on the citizen's device."""
    import threading
    import time

    from vagt.devices import deploy, register
    from vagt.devices.catalogue import load_catalogue

    register(conn, "OXI-0001", "Nonin", "3230", catalogue=load_catalogue(), actor="anna",
             municipality="Skive")
    outcome: dict[str, object] = {}

    def run_import() -> None:
        with psycopg.connect(database_url, autocommit=True) as other:
            try:
                outcome["result"] = import_csv(other, "fleet.csv", actor="anna", text=(
                    "device_id,vendor,model,type,municipality,serial\n"
                    "OXI-0001,Nonin,3230,pulse_oximeter,Skive,SN-1\n"))
            except DeviceImportError as e:
                outcome["error"] = e

    with psycopg.connect(database_url) as staff, staff.transaction():
        deploy(staff, "OXI-0001", citizen_ref="cit-b", municipality="Viborg", actor="bo")
        importing = threading.Thread(target=run_import)
        importing.start()
        time.sleep(0.5)             # the import waits for the deploy's lock
    importing.join(20)
    assert "deployed in Viborg" in str(outcome.get("error")), outcome
    [device] = list_devices(conn)
    assert (device.status, device.municipality) == ("deployed", "Viborg")


def test_an_import_naming_a_known_municipality_spelled_otherwise_imports_nothing(conn):
    import_csv(conn, "fleet.csv", actor="anna", text=(
        "device_id,vendor,model,type,municipality\nOXI-0001,Nonin,3230,pulse_oximeter,Aarhus\n"))
    with pytest.raises(DeviceImportError, match="'Århus' is spelled 'Aarhus' in the registry"):
        import_csv(conn, "more.csv", actor="anna", text=(
            "device_id,vendor,model,type,municipality,citizen_ref\n"
            "OXI-0002,Nonin,3230,pulse_oximeter,Århus,cit-7f3a9c01e2d4\n"))
    assert [d.device_id for d in list_devices(conn)] == ["OXI-0001"]


def test_an_import_spelling_one_municipality_two_ways_imports_nothing(conn):
    with pytest.raises(DeviceImportError, match="'Aarhus' and 'Århus' are one spelled two ways"):
        import_csv(conn, "fleet.csv", actor="anna", text=(
            "device_id,vendor,model,type,municipality\n"
            "OXI-0001,Nonin,3230,pulse_oximeter,Aarhus\n"
            "OXI-0002,Nonin,3230,pulse_oximeter,Århus\n"))
    assert list_devices(conn) == []
