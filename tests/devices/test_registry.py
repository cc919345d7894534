"""The device registry: CSV import validated whole, CPR numbers refused, changes audited."""

from __future__ import annotations

import psycopg
import pytest
from tests.app.conftest import query, scalar

from vagt.devices import DeviceImportError, import_csv, list_devices

CSV = """device_id,vendor,model,type,municipality,serial_no
OXI-0001,Nonin,3230,pulse_oximeter,Aarhus,SN-1
BPM-0001,A&D,UA-651BLE,bp_monitor,Samsø,
"""


def do_import(database_url: str, text: str, source: str = "fleet.csv"):
    with psycopg.connect(database_url) as conn:
        return import_csv(conn, source, actor="anna", text=text)


def test_import_registers_devices_and_keeps_extra_columns_as_attributes(database_url):
    result = do_import(database_url, CSV)
    assert (result.created, result.updated) == (2, 0)
    with psycopg.connect(database_url) as conn:
        rows = {r.device_id: r for r in list_devices(conn)}
    assert rows["OXI-0001"].municipality == "Aarhus"
    assert rows["OXI-0001"].attributes == {"serial_no": "SN-1"}
    assert rows["BPM-0001"].attributes == {}


def test_importing_again_updates_a_device_that_moved_municipality(database_url):
    do_import(database_url, CSV)
    result = do_import(database_url, CSV.replace("Samsø", "Odder"))
    assert (result.created, result.updated) == (0, 2)
    assert scalar(database_url, "SELECT municipality FROM devices WHERE device_id = 'BPM-0001'") \
        == "Odder"


def test_every_import_is_audited_with_who_and_what(database_url):
    do_import(database_url, CSV)
    assert query(database_url, "SELECT actor, action, subject, details FROM audit_log") == [
        ("anna", "devices.import", "fleet.csv", {"created": 2, "updated": 0})]


def test_a_missing_required_column_is_named(database_url):
    with pytest.raises(DeviceImportError, match="lacks the column.s. municipality"):
        do_import(database_url, "device_id,vendor,model,type\nX,a,b,c\n")


def test_each_bad_row_is_named_by_line_and_nothing_is_written(database_url):
    text = CSV + "BAD ID,x,y,z,Aarhus,\n,Nonin,3230,pulse_oximeter,Aarhus,\nOXI-0001,a,b,c,d,\n"
    with pytest.raises(DeviceImportError) as e:
        do_import(database_url, text)
    assert e.value.problems == [
        "line 4: device_id 'BAD ID' must be 1 to 64 of A-Z a-z 0-9 . _ : -",
        "line 5: 'device_id' is empty",
        "line 6: device_id 'OXI-0001' is also on line 2",
    ]
    assert scalar(database_url, "SELECT count(*) FROM devices") == 0


@pytest.mark.parametrize("text", [
    "device_id,vendor,model,type,municipality,cpr\nX-1,a,b,c,Aarhus,0101701234\n",
    "device_id,vendor,model,type,municipality,citizen\nX-1,a,b,c,Aarhus,010170-1234\n",
])
def test_anything_like_a_cpr_number_refuses_the_file(database_url, text):
    with pytest.raises(DeviceImportError, match="civil registration"):
        do_import(database_url, text)
    assert scalar(database_url, "SELECT count(*) FROM devices") == 0


def test_list_filters_by_municipality_vendor_and_type(database_url):
    do_import(database_url, CSV)
    with psycopg.connect(database_url) as conn:
        assert [r.device_id for r in list_devices(conn, municipality="Samsø")] == ["BPM-0001"]
        assert [r.device_id for r in list_devices(conn, vendor="Nonin")] == ["OXI-0001"]
        assert list_devices(conn, type="scale") == []
