"""A simulated fleet: the centre's device types spread over Region Midtjylland's 19 municipalities
in proportion to their population; the same fleet for the same seed."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass

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
    """A type in the centre's catalogue: the id prefix, its share of the fleet, its models."""

    prefix: str
    share: float
    models: tuple[tuple[str, str], ...]  # (vendor, model)
    firmware: tuple[str, ...]


DEVICE_TYPES: dict[str, DeviceType] = {
    "personal_alarm": DeviceType("ALM", 0.30, (("Tunstall", "Lifeline Vi+"),
                                               ("Doro", "Secure 580"),
                                               ("Careium", "Ny Tryghed 4G")), ("5.1.0", "5.2.3")),
    "medicine_dispenser": DeviceType("DSP", 0.15, (("Evondos", "E300"),
                                                   ("Medido", "Medido 2")), ("3.8.2", "4.0.1")),
    "bp_monitor": DeviceType("BPM", 0.15, (("A&D", "UA-651BLE"), ("Omron", "M7 Intelli IT")),
                             ("1.2.0",)),
    "pulse_oximeter": DeviceType("OXI", 0.12, (("Nonin", "3230"), ("Masimo", "MightySat"),
                                               ("Contec", "CMS50D-BT")), ("2.4.1", "2.5.0")),
    "scale": DeviceType("SCL", 0.10, (("A&D", "UC-352BLE"), ("Withings", "Body+")), ("1.0.7",)),
    "glucose_meter": DeviceType("GLU", 0.08, (("Roche", "Accu-Chek Guide"),
                                              ("Ascensia", "Contour Next One")), ("2.1.4",)),
    "gateway": DeviceType("GWY", 0.10, (("Telit", "HomeHub 4G"), ("Cinterion", "CareGate")),
                          ("7.0.2", "7.1.0")),
}


@dataclass(frozen=True)
class SimDevice:
    """One simulated device, as the registry knows it."""

    device_id: str
    type: str
    vendor: str
    model: str
    municipality: str
    citizen: str  # a pseudonymous reference, never a CPR number
    firmware: str


def make_fleet(n: int, seed: int = 1) -> list[SimDevice]:
    """`n` devices: types by their share, municipalities by population (each one at n >= 19)."""
    rng = random.Random(seed)
    places = _spread(n, {m: float(p) for m, p in MUNICIPALITIES.items()})
    kinds = _spread(n, {t: d.share for t, d in DEVICE_TYPES.items()})
    rng.shuffle(places)
    rng.shuffle(kinds)
    numbers = dict.fromkeys(DEVICE_TYPES, 0)
    fleet = []
    for place, kind in zip(places, kinds):
        numbers[kind] += 1
        fleet.append(_device(rng, kind, numbers[kind], place))
    return fleet


def _device(rng: random.Random, kind: str, number: int, place: str) -> SimDevice:
    t = DEVICE_TYPES[kind]
    vendor, model = rng.choice(t.models)
    return SimDevice(device_id=f"{t.prefix}-{number:06d}", type=kind, vendor=vendor,
                     model=model, municipality=place, citizen=f"cit-{rng.getrandbits(48):012x}",
                     firmware=rng.choice(t.firmware))


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


def fleet_csv(fleet: list[SimDevice]) -> str:
    """The fleet in the registry's CSV format (`vagt devices import`); the citizen reference
    is an extra column, which the registry keeps as an attribute."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for d in fleet:
        writer.writerow([d.device_id, d.vendor, d.model, d.type, d.municipality, d.citizen])
    return out.getvalue()
