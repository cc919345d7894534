"""The simulated fleet: the same for a seed, spread over the region by population, approved
models of the catalogue, households behind gateways, and a CSV the registry takes."""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest

from vagt.devices import import_csv
from vagt.devices.catalogue import load_catalogue
from vagt.sim import DEVICE_TYPES, MUNICIPALITIES, fleet_csv, make_fleet


def test_the_same_seed_gives_the_same_fleet_and_another_seed_another():
    assert make_fleet(300, 7) == make_fleet(300, 7)
    assert make_fleet(300, 7) != make_fleet(300, 8)


@pytest.mark.parametrize("n", [19, 20, 57, 200])
def test_from_nineteen_devices_every_municipality_has_one(n):
    counts = Counter(d.municipality for d in make_fleet(n, 1))
    assert set(counts) == set(MUNICIPALITIES)
    assert sum(counts.values()) == n


def test_devices_are_spread_over_the_municipalities_by_population():
    n = 5000
    counts = Counter(d.municipality for d in make_fleet(n, 1))
    total = sum(MUNICIPALITIES.values())
    for place, people in MUNICIPALITIES.items():
        expected = n * people / total
        assert abs(counts[place] - expected) <= max(1.0, 0.02 * expected), place
    assert counts.most_common(1)[0][0] == "Aarhus"


def test_types_come_by_their_share_with_ids_numbered_per_type():
    fleet = make_fleet(1000, 3)
    counts = Counter(d.type for d in fleet)
    assert counts == {t: round(1000 * d.share) for t, d in DEVICE_TYPES.items()}
    assert len({d.device_id for d in fleet}) == 1000
    oximeters = sorted(d.device_id for d in fleet if d.type == "pulse_oximeter")
    assert oximeters[0] == "OXI-000001" and oximeters[-1] == "OXI-000120"


def test_every_device_is_an_approved_model_of_its_type_with_approved_firmware():
    cat = load_catalogue()
    fleet = make_fleet(2000, 5)
    for d in fleet:
        model = cat.require(d.vendor, d.model, d.type)
        assert model.firmware_approved(d.firmware)
    used = {(d.vendor, d.model) for d in fleet}
    assert used == {m.key for m in cat}  # every approved model appears in a fleet this size


def test_measuring_devices_share_a_household_gateway_of_their_municipality_and_citizen():
    fleet = make_fleet(1000, 2)
    by_id = {d.device_id: d for d in fleet}
    kits: dict[str, list[str]] = {}
    for d in fleet:
        if d.gateway is not None:
            g = by_id[d.gateway]
            assert g.type == "gateway"
            assert (g.municipality, g.citizen) == (d.municipality, d.citizen)
            kits.setdefault(g.device_id, []).append(d.type)
    assert all(len(types) == len(set(types)) for types in kits.values())
    assert len(kits) > 0.8 * sum(d.type == "gateway" for d in fleet)
    standalone = [d for d in fleet if d.gateway is None]
    assert {d.type for d in standalone} >= {"personal_alarm", "medicine_dispenser", "gateway"}


def test_the_fleet_csv_has_the_registry_columns_and_no_cpr_numbers():
    lines = fleet_csv(make_fleet(20, 1)).splitlines()
    assert lines[0] == "device_id,vendor,model,type,municipality,citizen_ref"
    assert len(lines) == 21
    assert all(line.rsplit(",", 1)[1].startswith("cit-") for line in lines[1:])
    with_gateway = fleet_csv(make_fleet(200, 1), with_gateway=True).splitlines()
    assert with_gateway[0].endswith(",citizen_ref,gateway")
    assert any(line.endswith(tuple(f",GWY-{k:06d}" for k in range(1, 21)))
               for line in with_gateway[1:])


def test_the_fleet_csv_registers_every_device(database_url):
    fleet = make_fleet(250, 4)
    with psycopg.connect(database_url) as conn:
        result = import_csv(conn, fleet_csv(fleet), actor="test")
        rows = conn.execute("SELECT device_id, type, municipality FROM devices").fetchall()
    assert result.created == 250
    assert sorted(rows) == sorted((d.device_id, d.type, d.municipality) for d in fleet)
