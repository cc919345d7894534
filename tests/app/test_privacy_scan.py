"""`vagt privacy scan` reads every column text from outside lands in, as a reader sees it."""

from __future__ import annotations

import psycopg
import pytest
from tests.app.conftest import query

from vagt.app import device_hours
from vagt.app.privacy_scan import COLUMNS, SKIPPED, scan

# The numbers below are made up, of CPR shape: none is anyone's.


def insert_event(database_url: str, details: str) -> None:
    query(database_url, "INSERT INTO events (time, device_id, code, severity, details, "
                        "received_at) VALUES (now(), 'ALM-1', 'alarm.fall', 'critical', %s, "
                        "now()) RETURNING 1", (details,))


def insert_dead_letter(database_url: str, payload: bytes, detail: str = "not JSON") -> int:
    rows = query(database_url, "INSERT INTO dead_letters (received_at, topic, payload, reason, "
                               "detail, digest) VALUES (now(), 'vagt/dev/ALM-1/alarm', %s, "
                               "'malformed', %s, sha256(%s)) RETURNING id",
                 (payload, detail, payload))
    return int(rows[0][0])


def found(database_url: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(database_url) as conn:
        return {(f.table, f.column): f.rows for f in scan(conn)}


def test_every_text_column_of_the_schema_is_scanned_or_skipped_for_a_reason(database_url):
    """A column added by a later migration fails here until it is put in one of the two."""
    text_columns = set(query(database_url, """
        SELECT table_name::text, column_name::text FROM information_schema.columns
        WHERE table_schema = 'public' AND (data_type IN ('text', 'character varying',
              'character', 'json', 'jsonb', 'bytea') OR udt_name IN ('_text', '_varchar'))"""))
    scanned = {(c.table, c.column) for c in COLUMNS}
    assert not scanned & set(SKIPPED)
    assert text_columns - scanned - set(SKIPPED) == set()
    # no column that is gone, but those of the other flavour's tables (0023: plain
    # PostgreSQL has weekly counts, TimescaleDB 0022's daily aggregates)
    with psycopg.connect(database_url) as conn:
        plain = device_hours.flavour(conn) == "plain"
    other_flavours = ({("readings_daily", "device_id"), ("events_daily", "device_id")} if plain
                      else {("device_weekly", "device_id")})
    assert (scanned | set(SKIPPED)) - text_columns - other_flavours == set()


def test_a_cpr_number_in_an_events_details_is_found(database_url):
    """Devices' event details are free JSON the decoder does not read."""
    insert_event(database_url, '{"text": "opkald fra 010190-1234"}')
    assert found(database_url) == {("events", "details"): 1}


def test_a_cpr_number_a_dead_letters_detail_quotes_is_found(database_url):
    insert_dead_letter(database_url, b"-", detail="'time' must be a number, got '0101901234'")
    assert found(database_url) == {("dead_letters", "detail"): 1}


def test_a_firmware_version_holding_a_cpr_number_is_found(database_url):
    """A device's status may name any printable text as its firmware."""
    query(database_url, "INSERT INTO devices (device_id, vendor, model, type, municipality, "
                        "firmware) VALUES ('ALM-1', 'Tunstall', 'Lifeline Vi+', "
                        "'personal_alarm', 'Randers', 'fw 010190-1234') RETURNING 1")
    assert found(database_url) == {("devices", "firmware"): 1}


def test_a_payload_is_read_as_utf8_so_an_en_dash_hides_no_cpr_number(database_url):
    """PostgreSQL's escaped text of the bytes wrote the dash as three octal numbers."""
    insert_dead_letter(database_url, '{"note": "010190\u20131234"}'.encode())
    assert found(database_url) == {("dead_letters", "payload"): 1}


@pytest.mark.parametrize("payload", [
    b'{"note": "ringede 010190\\n1234"}',         # a line break, as every JSON writer writes it
    b'{"note": "ringede 010190\\u20131234"}',     # Python's json.dumps: non-ASCII escaped
    b'{"note": "ringede 01\\/01\\/90-1234"}',     # PHP's json_encode: slashes escaped
])
def test_a_payload_whose_json_escapes_hide_a_cpr_number_is_found(database_url, payload):
    insert_dead_letter(database_url, payload)
    assert found(database_url) == {("dead_letters", "payload"): 1}


def test_a_payload_that_is_no_utf8_is_read_all_the_same(database_url):
    """Bytes that are no UTF-8 stop neither the scan nor the rows after them, and are no
    digits glued to the number (escaped, 0xff was the digits 377)."""
    insert_dead_letter(database_url, b"\xff0101901234")
    insert_dead_letter(database_url, "010190\u20131234".encode())
    assert found(database_url) == {("dead_letters", "payload"): 2}


def test_a_time_in_epoch_seconds_in_json_is_no_cpr_number(database_url):
    """1712345678 (April 2024) is shaped as one: a number in JSON is no text a person wrote."""
    insert_event(database_url, '{"time": 1712345678, "since": "2024-04-05 19:34"}')
    assert found(database_url) == {}


def insert_device_attributes(database_url: str, attributes: str) -> None:
    """A device as an import before its check of attribute names could leave it."""
    query(database_url, "INSERT INTO devices (device_id, vendor, model, type, municipality, "
                        "attributes) VALUES ('ALM-1', 'Tunstall', 'Lifeline Vi+', "
                        "'personal_alarm', 'Randers', %s) RETURNING 1", (attributes,))


def test_nine_digits_under_a_name_announcing_a_cpr_number_are_found(database_url):
    """A spreadsheet's lost zero, as the import refuses it in a column so named: under the
    name, and anything nested in it."""
    insert_device_attributes(database_url, '{"CPR-nr": "101901234", "serial": "101901234"}')
    insert_event(database_url, '{"borger": {"cpr": ["101901234"]}, "serial": "101901234"}')
    assert found(database_url) == {("devices", "attributes"): 1, ("events", "details"): 1}


def test_nine_digits_under_any_other_name_are_no_cpr_number(database_url):
    insert_device_attributes(database_url, '{"serial": "101901234", "101901234": "x"}')
    assert found(database_url) == {}
