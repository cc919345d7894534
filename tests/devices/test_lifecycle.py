"""The device lifecycle on a real database: every allowed step, every refused one with its
message, the database's own guards, concurrent changes, and the audit trail."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from vagt.devices import (
    AlreadyRegistered,
    InvalidTransition,
    InvalidValue,
    PrivacyError,
    Status,
    UnknownDevice,
    deploy,
    register,
    repaired,
    report_lost,
    retire,
    return_device,
    send_to_repair,
)
from vagt.devices.catalogue import Catalogue, CatalogueError, load_catalogue

CATALOGUE = load_catalogue()
DEVICE = "GLU-000003"


def new_device(conn: psycopg.Connection, device_id: str = DEVICE, **kw: Any) -> None:
    register(conn, device_id, "Roche", "Accu-Chek Guide", catalogue=CATALOGUE, actor="anna",
             **kw)


def to_deployed(conn: psycopg.Connection, device_id: str = DEVICE) -> None:
    deploy(conn, device_id, citizen_ref="cit-1a2b3c", municipality="Skive", actor="anna")


# How to bring a freshly registered device into each status.
SETUP: dict[Status, Callable[[psycopg.Connection], None]] = {
    Status.IN_STOCK: lambda conn: None,
    Status.DEPLOYED: to_deployed,
    Status.IN_REPAIR: lambda conn: send_to_repair(conn, DEVICE, actor="anna"),
    Status.RETIRED: lambda conn: retire(conn, DEVICE, actor="anna"),
    Status.LOST: lambda conn: report_lost(conn, DEVICE, actor="anna"),
}

# Each step as a person takes it.
STEPS: dict[str, Callable[[psycopg.Connection], object]] = {
    "deploy": to_deployed,
    "return": lambda conn: return_device(conn, DEVICE, actor="anna"),
    "return to repair": lambda conn: return_device(conn, DEVICE, to=Status.IN_REPAIR,
                                                   actor="anna"),
    "send to repair": lambda conn: send_to_repair(conn, DEVICE, actor="anna"),
    "repaired": lambda conn: repaired(conn, DEVICE, actor="anna"),
    "retire": lambda conn: retire(conn, DEVICE, actor="anna"),
    "lost": lambda conn: report_lost(conn, DEVICE, actor="anna"),
}


def in_status(conn: psycopg.Connection, status: Status) -> None:
    new_device(conn)
    SETUP[status](conn)


def status_of(conn: psycopg.Connection, device_id: str = DEVICE) -> str:
    row = conn.execute("SELECT status FROM devices WHERE device_id = %s", (device_id,)).fetchone()
    assert row is not None
    return str(row[0])


def open_assignments(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT device_id, citizen_ref, municipality FROM device_assignments "
                        "WHERE until IS NULL").fetchall()


# --- register --------------------------------------------------------------------------------


def test_a_registered_device_is_in_stock_as_the_catalogue_spells_its_model(conn):
    row = register(conn, DEVICE, "roche", "accu-chek guide", catalogue=CATALOGUE, actor="anna")
    assert (row.vendor, row.model, row.type, row.status, row.municipality) == (
        "Roche", "Accu-Chek Guide", "glucose_meter", "in_stock", "")


def test_registering_an_unapproved_model_is_refused_with_the_catalogues_reason(conn):
    with pytest.raises(CatalogueError) as refused:
        register(conn, DEVICE, "A&D", "UA-651", catalogue=CATALOGUE, actor="anna")
    assert str(refused.value) == ("A&D UA-651 is not an approved model (approved A&D models: "
                                  "UA-651BLE, UC-352BLE); add it to the catalogue first")
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


def test_registering_with_the_wrong_type_for_the_model_is_refused(conn):
    with pytest.raises(CatalogueError, match="Nonin 3230 is a pulse_oximeter, not a scale"):
        register(conn, "X-1", "Nonin", "3230", type_="scale", catalogue=CATALOGUE,
                 actor="anna")


def test_a_device_id_registered_twice_is_refused_saying_what_it_is(conn):
    new_device(conn)
    with pytest.raises(AlreadyRegistered) as refused:
        register(conn, DEVICE, "Nonin", "3230", catalogue=CATALOGUE, actor="anna")
    assert str(refused.value) == (
        "GLU-000003 is already registered (Roche Accu-Chek Guide, in_stock)")


def test_a_device_id_shaped_like_a_cpr_number_is_refused_without_repeating_it(conn):
    with pytest.raises(InvalidValue) as refused:
        register(conn, "010170-1234", "Nonin", "3230", catalogue=CATALOGUE, actor="anna")
    assert "civil registration (CPR)" in str(refused.value)
    assert "010170" not in str(refused.value)


def test_a_device_id_that_cannot_be_a_broker_user_is_refused_saying_what_is_allowed(conn):
    with pytest.raises(InvalidValue) as refused:
        register(conn, "GW:01", "Nonin", "3230", catalogue=CATALOGUE, actor="anna")
    assert str(refused.value) == (
        "device id 'GW:01' cannot be used: a device logs in to the broker with its id as user "
        "name, and ':' separates the user name from the password in Mosquitto's password "
        "file; use 1 to 64 of A-Z a-z 0-9 . _ - (e.g. 'GW-01')")
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


def test_a_device_registered_with_a_colon_before_can_still_be_taken_back_and_lost(conn):
    conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, status) "
                 "VALUES ('GW:01', 'Nonin', '3230', 'pulse_oximeter', '', 'in_stock')")
    deploy(conn, "GW:01", citizen_ref="cit-1a2b3c", municipality="Skive", actor="anna")
    assert report_lost(conn, "GW:01", actor="anna").status == "lost"


def test_registering_is_audited(conn):
    new_device(conn, municipality="Viborg", note="bought in the 2026 tender")
    assert conn.execute("SELECT actor, action, subject, details FROM audit_log").fetchall() == [
        ("anna", "devices.register", DEVICE,
         {"to": "in_stock", "vendor": "Roche", "model": "Accu-Chek Guide",
          "type": "glucose_meter", "municipality": "Viborg",
          "note": "bought in the 2026 tender"})]


def test_a_custom_catalogue_decides_what_can_be_registered(conn):
    mine = Catalogue([m for m in CATALOGUE if m.vendor == "Nonin"], "mine.toml")
    with pytest.raises(CatalogueError, match="approved vendors: Nonin"):
        register(conn, DEVICE, "Roche", "Accu-Chek Guide", catalogue=mine, actor="anna")


# --- every allowed step --------------------------------------------------------------------

ALLOWED = [
    (Status.IN_STOCK, "deploy", Status.DEPLOYED),
    (Status.DEPLOYED, "return", Status.IN_STOCK),
    (Status.DEPLOYED, "return to repair", Status.IN_REPAIR),
    (Status.IN_STOCK, "send to repair", Status.IN_REPAIR),
    (Status.IN_REPAIR, "repaired", Status.IN_STOCK),
    (Status.IN_STOCK, "retire", Status.RETIRED),
    (Status.IN_REPAIR, "retire", Status.RETIRED),
    (Status.DEPLOYED, "lost", Status.LOST),
    (Status.IN_STOCK, "lost", Status.LOST),
    (Status.IN_REPAIR, "lost", Status.LOST),
]


@pytest.mark.parametrize(("start", "step", "end"), ALLOWED,
                         ids=[f"{s}-{step}" for s, step, _ in ALLOWED])
def test_an_allowed_step_changes_the_status_and_is_audited_with_from_and_to(
        conn, start, step, end):
    in_status(conn, start)
    STEPS[step](conn)
    assert status_of(conn) == end
    last = conn.execute("SELECT actor, details->>'from', details->>'to' FROM audit_log "
                        "ORDER BY id DESC LIMIT 1").fetchone()
    assert last == ("anna", start.value, end.value)


# --- every refused step, with its reason -----------------------------------------------------

REFUSED = [
    (Status.DEPLOYED, "deploy", "GLU-000003 is deployed: a device is deployed to one citizen at "
                                "a time; return it first (vagt devices return GLU-000003)"),
    (Status.IN_REPAIR, "deploy", "GLU-000003 is in_repair: a device in repair cannot be "
                                 "deployed; once repaired (vagt devices repair GLU-000003) it "
                                 "is in stock and can be"),
    (Status.RETIRED, "deploy", "GLU-000003 is retired: retired is final; a retired device "
                               "cannot be deployed"),
    (Status.LOST, "deploy", "GLU-000003 is lost: lost is final; a lost device cannot be "
                            "deployed"),
    (Status.IN_STOCK, "return", "GLU-000003 is in_stock: only a deployed device can be "
                                "returned; it is in stock already"),
    (Status.IN_REPAIR, "return", "GLU-000003 is in_repair: only a deployed device can be "
                                 "returned; it is in repair"),
    (Status.RETIRED, "return", "GLU-000003 is retired: retired is final; a retired device "
                               "cannot be returned"),
    (Status.LOST, "return", "GLU-000003 is lost: lost is final; a lost device cannot be "
                            "returned"),
    (Status.IN_STOCK, "return to repair", "GLU-000003 is in_stock: only a deployed device can "
                                          "be returned; it is in stock already"),
    (Status.IN_REPAIR, "return to repair", "GLU-000003 is in_repair: only a deployed device "
                                           "can be returned; it is in repair"),
    (Status.RETIRED, "return to repair", "GLU-000003 is retired: retired is final; a retired "
                                         "device cannot be returned"),
    (Status.LOST, "return to repair", "GLU-000003 is lost: lost is final; a lost device cannot "
                                      "be returned"),
    (Status.DEPLOYED, "send to repair", "GLU-000003 is deployed: a deployed device goes to "
                                        "repair when it is returned (vagt devices return "
                                        "GLU-000003 --to repair)"),
    (Status.IN_REPAIR, "send to repair", "GLU-000003 is in_repair: it is in repair already"),
    (Status.RETIRED, "send to repair", "GLU-000003 is retired: retired is final; a retired "
                                       "device cannot be sent to repair"),
    (Status.LOST, "send to repair", "GLU-000003 is lost: lost is final; a lost device cannot "
                                    "be sent to repair"),
    (Status.RETIRED, "repaired", "GLU-000003 is retired: retired is final; a retired device "
                                 "cannot be marked repaired"),
    (Status.IN_STOCK, "repaired", "GLU-000003 is in_stock: only a device in repair can be "
                                  "marked repaired"),
    (Status.DEPLOYED, "repaired", "GLU-000003 is deployed: only a device in repair can be "
                                  "marked repaired; a deployed device goes to repair when it "
                                  "is returned (vagt devices return GLU-000003 --to repair)"),
    (Status.LOST, "repaired", "GLU-000003 is lost: lost is final; a lost device cannot be "
                              "marked repaired"),
    (Status.DEPLOYED, "retire", "GLU-000003 is deployed: a deployed device cannot be retired; "
                                "return it first (vagt devices return GLU-000003)"),
    (Status.RETIRED, "retire", "GLU-000003 is already retired: retired is final"),
    (Status.LOST, "retire", "GLU-000003 is lost: lost is final; a lost device cannot be "
                            "retired"),
    (Status.RETIRED, "lost", "GLU-000003 is retired: retired is final; a retired device "
                             "cannot be reported lost"),
    (Status.LOST, "lost", "GLU-000003 is already lost: lost is final"),
]


@pytest.mark.parametrize(("start", "step", "message"), REFUSED,
                         ids=[f"{s}-{step}" for s, step, _ in REFUSED])
def test_a_refused_step_says_why_and_changes_nothing(conn, start, step, message):
    in_status(conn, start)
    audited = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    with pytest.raises(InvalidTransition) as refused:
        STEPS[step](conn)
    assert str(refused.value) == message
    assert status_of(conn) == start
    assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == audited


def test_every_pair_of_statuses_is_either_allowed_or_refused_with_a_reason(conn):
    # the two tables above cover the lifecycle: each (status, step) is in exactly one
    allowed = [(s, step) for s, step, _ in ALLOWED]
    refused = [(s, step) for s, step, _ in REFUSED]
    assert sorted(allowed + refused) == sorted((s, step) for s in Status for step in STEPS)


def test_a_step_for_an_unregistered_device_says_so(conn):
    with pytest.raises(UnknownDevice, match="^NOPE-1 is not registered; `vagt devices list`"):
        retire(conn, "NOPE-1", actor="anna")


# --- deploying: a citizen reference, never a CPR number --------------------------------------


def test_deploying_opens_an_assignment_in_the_municipality(conn):
    new_device(conn)
    row = deploy(conn, DEVICE, citizen_ref="cit-7f3a9c01e2d4", municipality="Skive",
                 actor="anna")
    assert (row.status, row.municipality) == ("deployed", "Skive")
    assert open_assignments(conn) == [(DEVICE, "cit-7f3a9c01e2d4", "Skive")]


@pytest.mark.parametrize("spelled", ["Århus", "aarhus", "AARHUS", "Aar hus",
                                     "A\u030arhus"])   # Århus as a Mac may save it (NFD)
def test_a_municipality_the_registry_spells_otherwise_is_refused_naming_its_spelling(
        conn, spelled):
    """A second spelling would make a second municipality: the citizen's alerts would miss
    Aarhus's queues, routes and supervisors."""
    new_device(conn, "GLU-000001", municipality="Aarhus")
    new_device(conn)
    with pytest.raises(InvalidValue, match="is spelled 'Aarhus' in the registry"):
        deploy(conn, DEVICE, citizen_ref="cit-7f3a9c01e2d4", municipality=spelled,
               actor="anna")
    with pytest.raises(InvalidValue, match="is spelled 'Aarhus' in the registry"):
        new_device(conn, "GLU-000002", municipality=spelled)
    assert deploy(conn, DEVICE, citizen_ref="cit-7f3a9c01e2d4", municipality="Aarhus",
                  actor="anna").municipality == "Aarhus"
    new_device(conn, "GLU-000004", municipality="Favrskov")    # one not known yet: a new one


@pytest.mark.parametrize(("known", "spelled"), [("Ringkøbing-Skjern", "Ringkobing Skjern"),
                                               ("Ringkøbing-Skjern", "Ringkoebing-Skjern"),
                                               ("Høje-Taastrup", "Hoje-Taastrup")])
def test_a_municipality_written_without_danish_letters_is_the_registrys_too(conn, known,
                                                                            spelled):
    new_device(conn, "GLU-000001", municipality=known)
    with pytest.raises(InvalidValue, match=f"is spelled '{known}' in the registry"):
        new_device(conn, "GLU-000002", municipality=spelled)


def test_a_municipality_with_its_letters_decomposed_is_kept_composed(conn):
    """"Tårnby" as a Mac may save it (an "a" and a combining ring) looks the same and is
    kept as the same name."""
    new_device(conn, "GLU-000001", municipality="Tårnby")
    new_device(conn, "GLU-000002", municipality="Ta\u030arnby")
    assert {m for (m,) in conn.execute("SELECT municipality FROM devices")} == {"Tårnby"}


def test_two_spellings_stored_before_the_check_are_both_still_taken(conn, database_url):
    new_device(conn, "GLU-000001", municipality="Aarhus")
    with psycopg.connect(database_url) as other:   # as an older release let it be stored
        other.execute("UPDATE devices SET municipality = 'Århus' WHERE device_id = 'GLU-000001'")
        other.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, "
                      "status) VALUES ('GLU-000009', 'Roche', 'Accu-Chek Guide', "
                      "'glucose_meter', 'Aarhus', 'in_stock')")
    new_device(conn)
    assert deploy(conn, DEVICE, citizen_ref="cit-7f3a9c01e2d4", municipality="Århus",
                  actor="anna").municipality == "Århus"


@pytest.mark.parametrize("ref", ["010170-1234", "0101701234", "cit-0101701234",
                                 "010170 1234"])
def test_a_citizen_reference_like_a_cpr_number_is_refused_saying_why(conn, ref):
    new_device(conn)
    with pytest.raises(PrivacyError) as refused:
        deploy(conn, DEVICE, citizen_ref=ref, municipality="Skive", actor="anna")
    assert str(refused.value) == (
        "the citizen reference looks like a civil registration (CPR) number (DDMMYY-XXXX or "
        "10 digits); vagt never stores CPR numbers: use the pseudonymous reference from the "
        "municipality's care system")
    assert status_of(conn) == "in_stock"
    assert open_assignments(conn) == []


@pytest.mark.parametrize("ref", ["010190.1234", "010190_1234", "cit:010190:1234",
                                 "cpr0101901234"])
def test_a_citizen_reference_with_a_cpr_number_written_otherwise_is_refused(conn, ref):
    new_device(conn)
    with pytest.raises(PrivacyError, match="looks like a civil registration") as refused:
        deploy(conn, DEVICE, citizen_ref=ref, municipality="Skive", actor="anna")
    assert "1234" not in str(refused.value)
    assert open_assignments(conn) == []


@pytest.mark.parametrize("note", ["borger 010190\u20131234", "cpr 010190 \u2013 1234",
                                  "cpr 010190/1234", "cpr 01 01 90 1234", "cpr 01.01.90-1234"])
def test_a_note_with_a_cpr_number_written_otherwise_is_refused(conn, note):
    new_device(conn)
    with pytest.raises(PrivacyError, match="the note holds something shaped like a civil"):
        deploy(conn, DEVICE, citizen_ref="cit-1", municipality="Skive", actor="anna", note=note)
    assert open_assignments(conn) == []
    assert "1234" not in str(conn.execute("SELECT details FROM audit_log").fetchall())


@pytest.mark.parametrize("actor", ["010190-1234", "anna 010190\u20131234"])
def test_a_cpr_number_as_who_acts_is_refused(conn, actor):
    with pytest.raises(PrivacyError, match="who acts .actor. holds something shaped like"):
        register(conn, DEVICE, "Nonin", "3230", catalogue=CATALOGUE, actor=actor)
    assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (0,)


def test_a_device_id_with_a_cpr_number_in_it_is_not_registered(conn):
    with pytest.raises(InvalidValue, match="the device id holds something shaped like"):
        register(conn, "OXI-010190-1234", "Nonin", "3230", catalogue=CATALOGUE, actor="anna")
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


def test_deploying_needs_a_municipality(conn):
    new_device(conn)
    with pytest.raises(InvalidValue, match="the municipality is empty"):
        deploy(conn, DEVICE, citizen_ref="cit-1", municipality=" ", actor="anna")


def test_a_note_with_a_cpr_number_in_it_is_refused(conn):
    new_device(conn)
    with pytest.raises(PrivacyError, match="the note holds something shaped like a civil"):
        retire(conn, DEVICE, actor="anna", note="belonged to 010170-1234")
    assert status_of(conn) == "in_stock"


def test_returning_ends_the_assignment_and_puts_the_device_back_in_the_centres_stock(conn):
    in_status(conn, Status.DEPLOYED)
    row = return_device(conn, DEVICE, actor="bo", note="citizen moved to a care home")
    assert (row.status, row.municipality) == ("in_stock", "")
    assert open_assignments(conn) == []
    assert conn.execute("SELECT actor, action, details FROM audit_log ORDER BY id DESC LIMIT 1"
                        ).fetchone() == (
        "bo", "devices.return", {"from": "deployed", "to": "in_stock",
                                 "citizen_ref": "cit-1a2b3c", "municipality": "Skive",
                                 "note": "citizen moved to a care home"})


def test_a_lost_deployed_device_ends_its_assignment_and_keeps_where_it_was_lost(conn):
    in_status(conn, Status.DEPLOYED)
    row = report_lost(conn, DEVICE, actor="anna")
    assert (row.status, row.municipality) == ("lost", "Skive")
    assert open_assignments(conn) == []


# --- the database holds to the lifecycle too --------------------------------------------------


def test_the_database_refuses_a_status_that_is_not_in_the_lifecycle(conn):
    with pytest.raises(psycopg.errors.CheckViolation, match="devices_status_known"):
        conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, "
                     "status) VALUES ('X-1', 'Nonin', '3230', 'pulse_oximeter', '', "
                     "'borrowed')")


def test_the_database_refuses_a_step_the_lifecycle_does_not_allow(conn):
    in_status(conn, Status.RETIRED)
    with pytest.raises(psycopg.errors.CheckViolation,
                       match="GLU-000003: retired -> deployed is not an allowed transition"):
        conn.execute("UPDATE devices SET status = 'deployed' WHERE device_id = %s", (DEVICE,))


def test_the_database_allows_one_open_assignment_per_device(conn):
    in_status(conn, Status.DEPLOYED)
    with pytest.raises(psycopg.errors.UniqueViolation, match="device_assignments_one_open"):
        conn.execute("INSERT INTO device_assignments (device_id, citizen_ref, municipality, "
                     "since) VALUES (%s, 'cit-2', 'Skive', now())", (DEVICE,))


def test_the_database_refuses_a_cpr_number_as_citizen_reference(conn):
    new_device(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO device_assignments (device_id, citizen_ref, municipality, "
                     "since) VALUES (%s, '0101701234', 'Skive', now())", (DEVICE,))


@pytest.mark.parametrize("ref", ["010190.1234", "010190_1234", "cit:010190:1234",
                                 "cpr0101901234", "010190\u20131234", "cpr 01 01 90 1234"])
def test_the_database_refuses_a_cpr_number_written_otherwise_as_citizen_reference(conn, ref):
    new_device(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO device_assignments (device_id, citizen_ref, municipality, "
                     "since) VALUES (%s, %s, 'Skive', now())", (DEVICE, ref))


@pytest.mark.parametrize("ref", ["cit-1234567890ab", "SN0101901234", "cit-3201901234",
                                 "cit-01019012345", "01:01:90:12:34:56"])
def test_the_database_takes_what_vagt_takes_as_citizen_reference(conn, ref):
    new_device(conn)
    deploy(conn, DEVICE, citizen_ref=ref, municipality="Skive", actor="anna")
    assert open_assignments(conn) == [(DEVICE, ref, "Skive")]


# --- two people at once -------------------------------------------------------------------------


def test_two_concurrent_deployments_of_one_device_cannot_both_succeed(conn, database_url):
    new_device(conn)
    outcome: dict[str, object] = {}
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        with first.transaction():  # the first deployment holds the row, not yet committed
            deploy(first, DEVICE, citizen_ref="cit-first", municipality="Skive", actor="anna")

            def second_deploys() -> None:
                try:
                    deploy(second, DEVICE, citizen_ref="cit-second", municipality="Århus",
                           actor="bo")
                    outcome["second"] = "deployed"
                except InvalidTransition as e:
                    outcome["second"] = str(e)

            other = threading.Thread(target=second_deploys)
            other.start()
            other.join(timeout=0.5)
            assert other.is_alive(), "the second deployment must wait for the first's lock"
        other.join(timeout=10)
        second.commit()
    assert outcome["second"] == ("GLU-000003 is deployed: a device is deployed to one citizen "
                                 "at a time; return it first (vagt devices return GLU-000003)")
    assert open_assignments(conn) == [(DEVICE, "cit-first", "Skive")]
    assert conn.execute("SELECT actor FROM audit_log WHERE action = 'devices.deploy'"
                        ).fetchall() == [("anna",)]


def test_a_retirement_and_a_deployment_at_once_leave_one_consistent_outcome(conn, database_url):
    new_device(conn)
    barrier = threading.Barrier(2)
    results: list[str] = []

    def attempt(step: Callable[[psycopg.Connection], object], name: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as c:
            barrier.wait()
            try:
                step(c)
                results.append(name)
            except InvalidTransition:
                results.append("refused")

    threads = [threading.Thread(target=attempt, args=(STEPS["retire"], "retired")),
               threading.Thread(target=attempt, args=(STEPS["deploy"], "deployed"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    won = [r for r in results if r != "refused"]
    assert len(won) == 1 and results.count("refused") == 1
    assert status_of(conn) == won[0]
    assert len(open_assignments(conn)) == (1 if won[0] == "deployed" else 0)


@pytest.mark.parametrize("ref", ["cit-1234567890ab", "cit-7f3a9c01e2d4", "a1b2c3d4-e5f6"])
def test_a_random_reference_with_digits_in_it_is_a_citizen_reference(conn, ref):
    new_device(conn)
    deploy(conn, DEVICE, citizen_ref=ref, municipality="Skive", actor="anna")
    assert open_assignments(conn) == [(DEVICE, ref, "Skive")]


@pytest.mark.parametrize("attributes", [{"remark": "cpr 010190-1234"},
                                        {"remark": "borger 010190\u20131234 bor alene"},
                                        {"Borger CPR": "x"}, {"patient_cpr": "x"},
                                        {"010190-1234": "x"}])
def test_an_attribute_with_a_cpr_number_in_its_value_or_name_is_refused(conn, attributes):
    with pytest.raises(PrivacyError, match="civil registration") as refused:
        new_device(conn, attributes=attributes)
    assert "010190" not in str(refused.value)
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


@pytest.mark.parametrize("attributes", [{"cpr": "x"}, {"owner": "010170-1234"}])
def test_an_attribute_that_is_or_names_a_cpr_number_is_refused(conn, attributes):
    with pytest.raises(PrivacyError, match="civil registration"):
        new_device(conn, attributes=attributes)
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


@pytest.mark.parametrize("attributes", [{"citizen_name": "x"}, {"Adresse": "x"},
                                        {"tlf": "x"}, {"borger_id": "B-4711"},
                                        {"Citizen_Ref": "cit-old"}, {"patient nr": "17"}])
def test_an_attribute_that_names_a_citizens_personal_data_is_refused(conn, attributes):
    with pytest.raises(PrivacyError, match="personal data about a citizen"):
        new_device(conn, attributes=attributes)
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


def test_a_device_with_alerts_not_resolved_goes_to_no_next_citizen(conn, database_url):
    # Alerts are one per rule and device: while the last citizen's is open, the next
    # citizen's alarm would only count as its repeat, in the last citizen's municipality.
    from tests.alerts.support import fire

    from vagt.alerts import actions as alert_actions

    new_device(conn)
    to_deployed(conn)
    (alert_id, _), = fire(database_url, ("battery_low", DEVICE))
    return_device(conn, DEVICE, actor="anna")
    with pytest.raises(InvalidTransition, match=(
            rf"^{DEVICE} has alerts that are not resolved \({alert_id} battery_low\): "
            r"resolve them first")):
        deploy(conn, DEVICE, citizen_ref="cit-next01", municipality="Viborg", actor="anna")
    assert conn.execute("SELECT status FROM devices").fetchall() == [("in_stock",)]
    assert conn.execute("SELECT count(*) FROM device_assignments WHERE until IS NULL"
                        ).fetchone() == (0,)
    alert_actions.claim(conn, alert_id, "ole")
    alert_actions.resolve(conn, alert_id, "ole", code="device_replaced", note="collected")
    deploy(conn, DEVICE, citizen_ref="cit-next01", municipality="Viborg", actor="anna")
    assert conn.execute("SELECT status, municipality FROM devices").fetchall() == [
        ("deployed", "Viborg")]


def test_a_device_a_silence_names_goes_to_no_next_citizen_until_it_ends(conn, database_url):
    """'Sent for repair', silenced for 3 days; repaired and deployed the next day, the
    silence would hold back the next citizen's alerts of it (their critical ones announced
    but suppressed) until it ended. The deploy is refused, by the command and by an import,
    until the silence is ended."""
    from datetime import UTC, datetime, timedelta

    from vagt.alerts.matchers import parse_matcher
    from vagt.alerts.silences import create_silence, expire_silence
    from vagt.devices import DeviceImportError, import_csv

    new_device(conn)
    to_deployed(conn)
    return_device(conn, DEVICE, actor="anna")
    silence = create_silence(conn, [parse_matcher(f"device_id={DEVICE}")], starts_at=None,
                             ends_at=datetime.now(UTC) + timedelta(days=3), author="ole",
                             comment="sent for repair")
    conn.commit()
    with pytest.raises(InvalidTransition, match=(
            rf"^{DEVICE} is named by silences that have not ended \({silence.id}\): end them "
            "first")):
        deploy(conn, DEVICE, citizen_ref="cit-next01", municipality="Viborg", actor="anna")
    conn.rollback()
    csv = ("device_id,vendor,model,type,municipality,citizen_ref\n"
           f"{DEVICE},Roche,Accu-Chek Guide,glucose_meter,Viborg,cit-next01\n")
    with pytest.raises(DeviceImportError, match=(
            rf"line 2: {DEVICE} is named by silences that have not ended \({silence.id}\)")):
        import_csv(conn, csv, actor="anna")
    conn.rollback()
    assert status_of(conn) == "in_stock"
    expire_silence(conn, silence.id, by="ole")
    conn.commit()
    deploy(conn, DEVICE, citizen_ref="cit-next01", municipality="Viborg", actor="anna")
    assert status_of(conn) == "deployed"
