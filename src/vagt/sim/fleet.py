"""A simulated fleet: devices of the catalogue's types spread over Region Midtjylland's 19
municipalities in proportion to their population, the same for the same seed."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass

# Inhabitants, rounded (Statistics Denmark, 2024): the weights of the device spread.
MUNICIPALITIES: dict[str, int] = {
    "Aarhus": 367_000, "Randers": 100_000, "Silkeborg": 100_000, "Horsens": 98_000,
    "Viborg": 98_000, "Herning": 90_000, "Skanderborg": 64_000, "Holstebro": 59_000,
    "Ringkøbing-Skjern": 56_000, "Favrskov": 50_000, "Hedensted": 47_000, "Skive": 46_000,
    "Syddjurs": 43_000, "Ikast-Brande": 42_000, "Norddjurs": 37_000, "Odder": 23_000,
    "Struer": 20_000, "Lemvig": 19_000, "Samsø": 3_700,
}

# type: (id prefix, share of the fleet, [(vendor, model), ...])
TYPES: dict[str, tuple[str, float, list[tuple[str, str]]]] = {
    "personal_alarm": ("ALM", 0.30, [("Tunstall", "Lifeline Vi+"), ("Doro", "Secure 580")]),
    "medicine_dispenser": ("DSP", 0.15, [("Evondos", "E300"), ("Medido", "Medido 2")]),
    "bp_monitor": ("BPM", 0.15, [("A&D", "UA-651BLE"), ("Omron", "M7 Intelli IT")]),
    "pulse_oximeter": ("OXI", 0.12, [("Nonin", "3230"), ("Masimo", "MightySat")]),
    "scale": ("SCL", 0.10, [("A&D", "UC-352BLE"), ("Withings", "Body+")]),
    "glucose_meter": ("GLU", 0.08, [("Roche", "Accu-Chek Guide"), ("Ascensia", "Contour Next")]),
    "gateway": ("GWY", 0.10, [("Telit", "HomeHub 4G"), ("Cinterion", "CareGate")]),
}


@dataclass(frozen=True)
class SimDevice:
    device_id: str
    type: str
    vendor: str
    model: str
    municipality: str
    citizen: str  # a pseudonymous reference, never a CPR number


def _apportion(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Largest-remainder shares of n; with n >= len(weights) every key gets at least one."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    if n >= len(weights):
        for k in counts:
            counts[k] = max(counts[k], 1)
    left = n - sum(counts.values())
    # keys raised to the minimum of one have had more than their share already
    by_remainder = sorted((k for k in exact if counts[k] == int(exact[k])),
                          key=lambda k: exact[k] - int(exact[k]), reverse=True) or list(exact)
    i = 0
    while left > 0:
        counts[by_remainder[i % len(by_remainder)]] += 1
        left -= 1
        i += 1
    while left < 0:  # the minimum of one pushed us over: take from the largest
        k = max(counts, key=lambda k: counts[k])
        counts[k] -= 1
        left += 1
    return counts


def make_fleet(n: int, seed: int = 1) -> list[SimDevice]:
    rng = random.Random(seed)
    places = [m for m, k in _apportion(n, {m: float(p) for m, p in MUNICIPALITIES.items()}).items()
              for _ in range(k)]
    kinds = [t for t, k in _apportion(n, {t: v[1] for t, v in TYPES.items()}).items()
             for _ in range(k)]
    rng.shuffle(places)
    rng.shuffle(kinds)
    numbers: dict[str, int] = {}
    fleet = []
    for place, kind in zip(places, kinds):
        prefix, _, models = TYPES[kind]
        numbers[prefix] = numbers.get(prefix, 0) + 1
        vendor, model = models[rng.randrange(len(models))]
        fleet.append(SimDevice(f"{prefix}-{numbers[prefix]:06d}", kind, vendor, model, place,
                               f"cit-{rng.getrandbits(48):012x}"))
    return fleet


def fleet_csv(fleet: list[SimDevice]) -> str:
    """The fleet in the registry's CSV format (`vagt devices import`)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["device_id", "vendor", "model", "type", "municipality", "citizen_ref"])
    for d in fleet:
        w.writerow([d.device_id, d.vendor, d.model, d.type, d.municipality, d.citizen])
    return out.getvalue()
