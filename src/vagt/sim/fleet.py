"""A simulated fleet: the centre's device types spread over Region Midtjylland's 19 municipalities
in proportion to their population, each device an approved model of the catalogue, measuring
devices grouped behind a household's gateway; the same fleet for the same seed."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass

from vagt.devices.catalogue import Catalogue, CatalogueError, Model, load_catalogue

# Inhabitants, rounded (Statistics Denmark, 2024): the weights of the spread.
MUNICIPALITIES: dict[str, int] = {
    "Aarhus": 367_000, "Randers": 100_000, "Silkeborg": 100_000, "Horsens": 98_000,
    "Viborg": 98_000, "Herning": 90_000, "Skanderborg": 64_000, "Holstebro": 59_000,
    "Ringkøbing-Skjern": 56_000, "Favrskov": 50_000, "Hedensted": 47_000, "Skive": 46_000,
    "Syddjurs": 43_000, "Ikast-Brande": 42_000, "Norddjurs": 37_000, "Odder": 23_000,
    "Struer": 20_000, "Lemvig": 19_000, "Samsø": 3_700,
}


@dataclass(frozen=True)
class DeviceType:
    """A device type as the simulated fleet has it: its id prefix and its share of the fleet.
    Its models, intervals and metrics are the catalogue's."""

    prefix: str
    share: float
    behind_gateway: bool = False  # a Bluetooth device that reaches vagt through a home gateway


DEVICE_TYPES: dict[str, DeviceType] = {
    "personal_alarm": DeviceType("ALM", 0.30),
    "medicine_dispenser": DeviceType("DSP", 0.15),
    "bp_monitor": DeviceType("BPM", 0.15, behind_gateway=True),
    "pulse_oximeter": DeviceType("OXI", 0.12, behind_gateway=True),
    "scale": DeviceType("SCL", 0.10, behind_gateway=True),
    "glucose_meter": DeviceType("GLU", 0.08, behind_gateway=True),
    "gateway": DeviceType("GWY", 0.10),
}


@dataclass(frozen=True)
class SimDevice:
    """One simulated device, as the registry knows it, and the gateway it sends through."""

    device_id: str
    type: str
    vendor: str
    model: str
    municipality: str
    citizen: str  # a pseudonymous reference, never a CPR number
    firmware: str
    gateway: str | None = None  # the household gateway of a Bluetooth device, if it has one


def make_fleet(n: int, seed: int = 1, catalogue: Catalogue | None = None) -> list[SimDevice]:
    """`n` devices: types by their share, municipalities by population (each one at n >= 19),
    models drawn from the catalogue's approved models of the type.

    A household's measuring devices (at most one of each type) share its gateway and its
    citizen, as a telemedicine kit does; those left over send through the citizen's own phone.
    """
    if n < 0:
        raise ValueError(f"a fleet has 0 or more devices, not {n}")
    cat = catalogue if catalogue is not None else load_catalogue()
    models = _models_by_type(cat)
    rng = random.Random(seed)
    places = _spread(n, {m: float(p) for m, p in MUNICIPALITIES.items()})
    kinds = _spread(n, {t: d.share for t, d in DEVICE_TYPES.items()})
    rng.shuffle(places)
    rng.shuffle(kinds)
    numbers = dict.fromkeys(DEVICE_TYPES, 0)
    fleet = []
    for place, kind in zip(places, kinds):
        numbers[kind] += 1
        fleet.append(_device(rng, kind, numbers[kind], place, models[kind]))
    return _households(fleet)


def _models_by_type(cat: Catalogue) -> dict[str, list[Model]]:
    models: dict[str, list[Model]] = {t: [] for t in DEVICE_TYPES}
    for m in cat:
        if m.type in models:
            models[m.type].append(m)
    missing = [t for t, ms in models.items() if not ms]
    if missing:
        raise CatalogueError(f"{cat.source or 'the catalogue'}: no approved model of type "
                             f"{', '.join(missing)}; the simulated fleet needs one of each")
    return models


def _device(rng: random.Random, kind: str, number: int, place: str,
            models: list[Model]) -> SimDevice:
    m = rng.choice(models)
    firmware = rng.choice(m.firmware) if m.firmware else "1.0.0"
    return SimDevice(device_id=f"{DEVICE_TYPES[kind].prefix}-{number:06d}", type=kind,
                     vendor=m.vendor, model=m.model, municipality=place,
                     citizen=f"cit-{rng.getrandbits(48):012x}", firmware=firmware)


def _households(fleet: list[SimDevice]) -> list[SimDevice]:
    """Put the k-th Bluetooth device of a type in a municipality behind the k-th gateway there,
    while there are gateways (so a household has at most one of each type); it takes the
    gateway's citizen. The others send through the citizen's own phone."""
    gateways: dict[str, list[SimDevice]] = {}
    for d in fleet:
        if d.type == "gateway":
            gateways.setdefault(d.municipality, []).append(d)
    used: dict[tuple[str, str], int] = {}
    out = []
    for d in fleet:
        candidates = gateways.get(d.municipality, [])
        k = used.get((d.municipality, d.type), 0)
        if DEVICE_TYPES[d.type].behind_gateway and k < len(candidates):
            used[(d.municipality, d.type)] = k + 1
            g = candidates[k]
            d = SimDevice(d.device_id, d.type, d.vendor, d.model, d.municipality, g.citizen,
                          d.firmware, gateway=g.device_id)
        out.append(d)
    return out


def _spread(n: int, weights: dict[str, float]) -> list[str]:
    """n keys in proportion to their weights (largest remainder), each key at least once
    when n allows it; in the order of `weights`."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    if n >= len(weights):
        counts = {k: max(c, 1) for k, c in counts.items()}
    by_remainder = sorted(weights, key=lambda k: exact[k] - counts[k], reverse=True)
    for k in by_remainder[:max(n - sum(counts.values()), 0)]:
        counts[k] += 1
    while sum(counts.values()) > n:  # the minimum of one took more than was left
        counts[max(counts, key=lambda k: counts[k])] -= 1
    return [k for k, c in counts.items() for _ in range(c)]


CSV_COLUMNS = ("device_id", "vendor", "model", "type", "municipality", "citizen_ref")


def fleet_csv(fleet: list[SimDevice], *, with_gateway: bool = False) -> str:
    """The fleet in the registry's CSV format (`vagt devices import`); the citizen reference
    (and, with `with_gateway`, the gateway a device sends through) are extra columns, which
    the registry keeps as attributes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + (("gateway",) if with_gateway else ()))
    for d in fleet:
        row = [d.device_id, d.vendor, d.model, d.type, d.municipality, d.citizen]
        writer.writerow(row + ([d.gateway or ""] if with_gateway else []))
    return out.getvalue()
