"""The metric catalogue: one canonical UCUM unit per metric, accepted units, possible ranges.

A possible range is physics, not medicine: a value outside it cannot come from a working
sensor and becomes a dead letter (clinical limits are for rules). Conversions are exact
affine maps: canonical = value * factor + offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str                      # canonical UCUM code
    low: float                     # the lowest value a working sensor can report
    high: float
    # accepted unit → (factor, offset) into the canonical unit
    units: dict[str, tuple[float, float]] = field(default_factory=dict)


_SAME = (1.0, 0.0)
_PERCENT = {"%": _SAME, "/": (100.0, 0.0)}  # SenML "/" is a ratio (0..1)
_PER_MIN = {"/min": _SAME, "1/min": _SAME, "{beats}/min": _SAME, "beat/min": _SAME,
            "bpm": _SAME, "beats/min": _SAME, "{breaths}/min": _SAME}
_MMHG = {"mm[Hg]": _SAME, "mmHg": _SAME, "kPa": (7.500615758456563, 0.0),
         "Pa": (0.007500615758456563, 0.0)}
_KG = {"kg": _SAME, "g": (0.001, 0.0), "[lb_av]": (0.45359237, 0.0), "lb": (0.45359237, 0.0)}
# glucose: 1 mmol/L = 18.016 mg/dL (molar mass 180.16 g/mol)
_GLUCOSE = {"mmol/L": _SAME, "mmol/l": _SAME, "mg/dL": (1 / 18.016, 0.0),
            "mg/dl": (1 / 18.016, 0.0)}
_CEL = {"Cel": _SAME, "[degF]": (5 / 9, -32 * 5 / 9), "degF": (5 / 9, -32 * 5 / 9),
        "K": (1.0, -273.15)}
_DBM = {"dB[mW]": _SAME, "dBm": _SAME, "dBW": (1.0, 30.0)}

METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("spo2", "%", 0, 100, _PERCENT),
    Metric("pulse", "/min", 0, 350, _PER_MIN),
    Metric("respiration_rate", "/min", 0, 150, _PER_MIN),
    Metric("bp_systolic", "mm[Hg]", 0, 400, _MMHG),
    Metric("bp_diastolic", "mm[Hg]", 0, 300, _MMHG),
    Metric("bp_mean", "mm[Hg]", 0, 350, _MMHG),
    Metric("weight", "kg", 0, 700, _KG),
    Metric("glucose", "mmol/L", 0, 100, _GLUCOSE),
    Metric("temperature", "Cel", -60, 100, _CEL),   # body, room or fridge (medicine storage)
    Metric("battery", "%", 0, 100, _PERCENT),
    Metric("signal", "dB[mW]", -150, 30, _DBM),      # radio signal strength (RSSI)
    Metric("steps", "{steps}", 0, 1_000_000, {"{steps}": _SAME, "1": _SAME, "steps": _SAME}),
    Metric("doses_remaining", "{doses}", 0, 10_000, {"{doses}": _SAME, "1": _SAME}),
]}


class UnitError(ValueError):
    """Unknown metric, unknown unit, or a value no sensor can report."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "unknown_metric", "unknown_unit" or "impossible_value"


def normalize(metric: str, value: float, unit: str | None) -> tuple[float, str]:
    """(value in the canonical unit, canonical unit). A missing unit means the canonical one."""
    m = METRICS.get(metric)
    if m is None:
        raise UnitError("unknown_metric", f"metric '{metric}' is not known; known metrics: "
                        f"{', '.join(sorted(METRICS))}")
    if unit is None or unit == m.unit:
        v = value
    else:
        conv = m.units.get(unit)
        if conv is None:
            raise UnitError("unknown_unit", f"unit '{unit}' cannot be converted to {m.unit} "
                            f"for metric '{metric}'; allowed: {', '.join(m.units)}")
        v = value * conv[0] + conv[1]
    if not (m.low <= v <= m.high):  # also false for NaN
        raise UnitError("impossible_value", f"{metric} = {value}{'' if unit is None else ' ' + unit}"
                        f" is outside what a sensor can report ({m.low} to {m.high} {m.unit})")
    return v, m.unit
