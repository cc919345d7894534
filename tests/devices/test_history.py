"""Reuse made visible: one device served two citizens in two municipalities, with the days
it sat in stock between them, and its whole audit trail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vagt.devices import (
    Status,
    UnknownDevice,
    deploy,
    device_history,
    register,
    repaired,
    retire,
    return_device,
)
from vagt.devices.catalogue import load_catalogue

CATALOGUE = load_catalogue()
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


@pytest.fixture
def reused(conn):
    """Bought on day 0; Aarhus citizen from day 3 to day 40; repair 40-44, in stock 44-50;
    Skive citizen from day 50 to day 80; in stock since."""
    register(conn, "OXI-000042", "Nonin", "3230", catalogue=CATALOGUE, actor="anna", at=day(0))
    deploy(conn, "OXI-000042", citizen_ref="cit-aa11", municipality="Aarhus", actor="anna",
           at=day(3))
    return_device(conn, "OXI-000042", to=Status.IN_REPAIR, actor="bo", at=day(40),
                  note="sensor cover cracked")
    repaired(conn, "OXI-000042", actor="bo", at=day(44))
    deploy(conn, "OXI-000042", citizen_ref="cit-bb22", municipality="Skive", actor="carl",
           at=day(50))
    return_device(conn, "OXI-000042", actor="carl", at=day(80))
    return "OXI-000042"


def test_the_history_counts_the_citizens_and_municipalities_a_device_served(conn, reused):
    h = device_history(conn, reused, CATALOGUE, now=day(90))
    assert h.citizens_served == 2
    assert h.municipalities == ["Aarhus", "Skive"]
    assert [(a.citizen_ref, a.municipality, a.since, a.until) for a in h.assignments] == [
        ("cit-aa11", "Aarhus", day(3), day(40)), ("cit-bb22", "Skive", day(50), day(80))]


def test_days_in_stock_between_assignments_leave_out_the_days_in_repair(conn, reused):
    h = device_history(conn, reused, CATALOGUE, now=day(90))
    assert [a.stock_days_before for a in h.assignments] == [3.0, 6.0]  # 40-44 was repair
    assert h.stock_days_now == 10.0


def test_the_current_assignment_is_the_open_one(conn, reused):
    deploy(conn, reused, citizen_ref="cit-cc33", municipality="Viborg", actor="anna",
           at=day(85))
    h = device_history(conn, reused, CATALOGUE, now=day(90))
    assert h.current is not None
    assert (h.current.citizen_ref, h.current.municipality, h.current.until) == (
        "cit-cc33", "Viborg", None)
    assert h.citizens_served == 3 and h.stock_days_now is None


def test_the_history_has_the_model_and_the_audit_trail_in_order(conn, reused):
    h = device_history(conn, reused, CATALOGUE, now=day(90))
    assert h.model is not None and (h.model.type, h.model.heartbeat_s) == (
        "pulse_oximeter", CATALOGUE.require("Nonin", "3230").heartbeat_s)
    assert [(e.actor, e.action, e.details.get("to")) for e in h.audit] == [
        ("anna", "devices.register", "in_stock"), ("anna", "devices.deploy", "deployed"),
        ("bo", "devices.return", "in_repair"), ("bo", "devices.repaired", "in_stock"),
        ("carl", "devices.deploy", "deployed"), ("carl", "devices.return", "in_stock")]
    assert h.audit[2].details["note"] == "sensor cover cracked"


def test_the_json_form_has_everything_show_prints(conn, reused):
    doc = device_history(conn, reused, CATALOGUE, now=day(90)).to_json()
    assert doc["citizens_served"] == 2
    assert doc["municipalities"] == ["Aarhus", "Skive"]
    assert doc["current_assignment"] is None
    assert [a["stock_days_before"] for a in doc["assignments"]] == [3.0, 6.0]  # type: ignore[index]
    assert doc["model"] == {"vendor": "Nonin", "model": "3230", "type": "pulse_oximeter",
                            "heartbeat_s": CATALOGUE.require("Nonin", "3230").heartbeat_s,
                            "battery": CATALOGUE.require("Nonin", "3230").battery,
                            "firmware": list(CATALOGUE.require("Nonin", "3230").firmware)}


def test_a_change_dated_before_the_last_one_is_refused(conn, reused):
    with pytest.raises(ValueError, match="the device's status last changed later"):
        retire(conn, reused, actor="anna", at=day(70))


def test_the_history_of_an_unknown_device_says_it_is_not_registered(conn):
    with pytest.raises(UnknownDevice, match="NOPE-1 is not registered"):
        device_history(conn, "NOPE-1", CATALOGUE)
