"""The metric catalogue: one canonical UCUM unit per metric, the units accepted for it, the range
a working sensor can report, and the conversions into the canonical unit (single values and
arrays).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from vagt.ingest.model import DeadLetterReason


@dataclass(frozen=True, slots=True)
class Conversion:
    """canonical = (value + shift) * mul / div.

    Three numbers rather than one factor so that each conversion rounds as little as it can:
    grams become kilograms by dividing by 1000 (one correctly rounded step) instead of
    multiplying by 0.001, which has no exact binary form; °F is (v - 32) * 5 / 9.
    """

    shift: float = 0.0
    mul: float = 1.0
    div: float = 1.0

    def to_canonical(self, value: float) -> float:
        return (value + self.shift) * self.mul / self.div

    def from_canonical(self, value: float) -> float:
        return value * self.div / self.mul - self.shift


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str                        # the canonical UCUM code; every stored value is in it
    low: float                       # the lowest value a working sensor can report
    high: float                      # the highest; outside [low, high] is impossible_value
    units: Mapping[str, Conversion]  # every accepted unit, the canonical one included
    assume_unit: bool                # a value without a unit is taken to be in `unit`
    about: str

    def accepted(self) -> str:
        return ", ".join(self.units)


SAME = Conversion()
# SenML's "/" is a ratio (0..1); "%EL" is SenML's "percent of remaining battery energy"
_PERCENT = {"%": SAME, "/": Conversion(mul=100.0)}
_RATE = {"/min": SAME, "1/min": SAME, "1/s": Conversion(mul=60.0), "Hz": Conversion(mul=60.0)}
_PULSE = {**_RATE, "{beats}/min": SAME, "{beat}/min": SAME, "beat/min": SAME, "beats/min": SAME,
          "bpm": SAME}
_BREATHS = {**_RATE, "{breaths}/min": SAME, "{breath}/min": SAME, "breaths/min": SAME}
# UCUM defines m[Hg] as 133.3220 kPa, so 1 mm[Hg] = 133.322 Pa exactly
_MMHG = {"mm[Hg]": SAME, "mmHg": SAME, "kPa": Conversion(div=0.133322),
         "hPa": Conversion(div=1.33322), "Pa": Conversion(div=133.322)}
# the international avoirdupois pound is 0.45359237 kg by definition (1959)
_KG = {"kg": SAME, "g": Conversion(div=1000.0), "[lb_av]": Conversion(mul=0.45359237),
       "lb": Conversion(mul=0.45359237)}
# glucose, C6H12O6, 180.16 g/mol: 1 mmol/L = 18.016 mg/dL
_GLUCOSE = {"mmol/L": SAME, "mmol/l": SAME, "mg/dL": Conversion(div=18.016),
            "mg/dl": Conversion(div=18.016)}
_FAHRENHEIT = Conversion(shift=-32.0, mul=5.0, div=9.0)
_CELSIUS = {"Cel": SAME, "degC": SAME, "°C": SAME, "[degF]": _FAHRENHEIT, "degF": _FAHRENHEIT,
            "°F": _FAHRENHEIT, "K": Conversion(shift=-273.15)}
_DBM = {"dB[mW]": SAME, "dBm": SAME, "dBW": Conversion(shift=30.0)}


def _metric(name: str, unit: str, low: float, high: float, units: dict[str, Conversion],
            about: str, *, assume_unit: bool = True) -> Metric:
    accepted = {unit: SAME, **units}
    return Metric(name, unit, low, high, MappingProxyType(accepted), assume_unit, about)


# Ranges are physics, not medicine: what no working sensor can report (a body at 60 °C, a
# saturation of 140 %). Clinical limits are rules' business. A metric whose value is ambiguous
# without a unit (kg or lb, mmol/L or mg/dL, °C or °F) does not assume one.
METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in [
    _metric("spo2", "%", 0, 100, _PERCENT, "oxygen saturation (pulse oximeter)"),
    _metric("perfusion_index", "%", 0, 100, _PERCENT, "perfusion index (pulse oximeter)"),
    _metric("pulse", "/min", 0, 350, _PULSE, "pulse rate"),
    _metric("respiration_rate", "/min", 0, 150, _BREATHS, "breaths per minute"),
    _metric("bp_systolic", "mm[Hg]", 0, 400, _MMHG, "systolic blood pressure"),
    _metric("bp_diastolic", "mm[Hg]", 0, 300, _MMHG, "diastolic blood pressure"),
    _metric("bp_mean", "mm[Hg]", 0, 350, _MMHG, "mean arterial pressure"),
    _metric("weight", "kg", 0, 700, _KG, "body weight (scale)", assume_unit=False),
    _metric("body_fat", "%", 0, 100, _PERCENT, "body fat share (scale)"),
    _metric("bmi", "kg/m2", 0, 300, {"kg/m^2": SAME, "kg/m²": SAME}, "body mass index (scale)"),
    # a survivor was recorded at 2,656 mg/dL (147 mmol/L); meters stop near 33 mmol/L ("HI")
    _metric("glucose", "mmol/L", 0, 150, _GLUCOSE, "blood glucose", assume_unit=False),
    # survived extremes of core temperature are 11.8 °C and 46.5 °C
    _metric("body_temperature", "Cel", 10, 50, _CELSIUS, "body temperature",
            assume_unit=False),
    _metric("temperature", "Cel", -60, 100, _CELSIUS,
            "room, medicine-storage or device temperature", assume_unit=False),
    _metric("battery", "%", 0, 100, {**_PERCENT, "%EL": SAME}, "battery charge left"),
    _metric("signal", "dB[mW]", -150, 30, _DBM, "received radio signal strength (RSSI)"),
    _metric("steps", "{steps}", 0, 1_000_000, {"{step}": SAME, "steps": SAME, "count": SAME,
                                               "1": SAME}, "steps counted"),
    _metric("doses_remaining", "{doses}", 0, 10_000, {"{dose}": SAME, "doses": SAME,
                                                      "count": SAME, "1": SAME},
            "doses left in a medicine dispenser"),
]})

# The decoders' fast path: metric → unit → (shift, mul, div, low, high, canonical unit). The
# key None is there when a metric assumes its unit. A miss goes through `normalize` to get the
# error that says what is allowed.
FastRow = tuple[float, float, float, float, float, str]
# Plain dicts, not read-only proxies: a proxy's lookup costs twice as much. Do not modify.
FAST: dict[str, dict[str | None, FastRow]] = {
    m.name: {
        **{u: (c.shift, c.mul, c.div, m.low, m.high, m.unit) for u, c in m.units.items()},
        **({None: (0.0, 1.0, 1.0, m.low, m.high, m.unit)} if m.assume_unit else {}),
    } for m in METRICS.values()
}


class UnitError(ValueError):
    """Unknown metric, unknown or missing unit, or a value no sensor can report."""

    def __init__(self, reason: DeadLetterReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def metric(name: str) -> Metric:
    """The catalogue entry of `name`, or UnitError(UNKNOWN_METRIC) listing the known ones."""
    m = METRICS.get(name)
    if m is None:
        raise UnitError(DeadLetterReason.UNKNOWN_METRIC,
                        f"metric {quote(name)} is not known; known metrics: "
                        f"{', '.join(sorted(METRICS))}")
    return m


def conversion(name: str, unit: str | None) -> tuple[Metric, Conversion]:
    """How a value of metric `name` in `unit` (None: no unit given) becomes canonical."""
    m = metric(name)
    if unit is None:
        if m.assume_unit:
            return m, SAME
        raise UnitError(DeadLetterReason.UNKNOWN_UNIT,
                        f"metric '{name}' needs a unit, its values are ambiguous without one; "
                        f"accepted: {m.accepted()}")
    c = m.units.get(unit)
    if c is None:
        raise UnitError(DeadLetterReason.UNKNOWN_UNIT,
                        f"unit {quote(unit)} is not accepted for metric '{name}' (stored in "
                        f"{m.unit}); accepted: {m.accepted()}")
    return m, c


def normalize(name: str, value: float, unit: str | None) -> tuple[float, str]:
    """(value in the canonical unit, canonical unit), or UnitError saying what is wrong."""
    m, c = conversion(name, unit)
    v = c.to_canonical(value)
    if not m.low <= v <= m.high:  # also false for NaN
        raise UnitError(DeadLetterReason.IMPOSSIBLE_VALUE, impossible_message(m, value, unit, v))
    return v, m.unit


def normalize_array(name: str, values: npt.ArrayLike, unit: str | None
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Vectorised `normalize`: (canonical values, mask of the possible ones). NaN is impossible."""
    m, c = conversion(name, unit)
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are simply impossible
        v = (np.asarray(values, dtype=np.float64) + c.shift) * c.mul / c.div
        return v, (v >= m.low) & (v <= m.high)


def impossible_message(m: Metric, value: float, unit: str | None, canonical: float) -> str:
    given = f"{value:g} {unit}" if unit not in (None, m.unit) else f"{value:g} {m.unit}"
    as_canonical = f" (= {canonical:g} {m.unit})" if unit not in (None, m.unit) else ""
    return (f"{m.name} {given}{as_canonical} is outside what a working sensor can report: "
            f"{m.low:g} to {m.high:g} {m.unit}")


def quote(text: str) -> str:
    """A device's string for a message: quoted (control characters escaped) and cut short."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "…"
