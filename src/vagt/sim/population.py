"""The simulated citizens: conditions, a personal baseline of each vital sign, slow trends
(a heart-failure patient retaining fluid, a COPD patient desaturating) and the noise of one
measurement. Values are in each metric's canonical unit."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from vagt.devices.catalogue import MetricRange
from vagt.ingest.units import METRICS
from vagt.sim.config import SimConfig

F64 = npt.NDArray[np.float64]
DAY = 86_400.0

# Digits after the decimal point a device reports, per metric (default: 1).
DECIMALS: dict[str, int] = {"spo2": 0, "pulse": 0, "bp_systolic": 0, "bp_diastolic": 0,
                            "bp_mean": 0, "respiration_rate": 0, "perfusion_index": 2,
                            "doses_remaining": 0, "steps": 0}


class Episodes:
    """A trend per citizen that ramps up over `ramp` days, holds, and falls back: its size at
    time t is 0 outside an episode. One episode at a time per citizen."""

    def __init__(self, n: int, ramp_days: float, hold_days: float, fall_days: float) -> None:
        self.start = np.full(n, -np.inf)
        self.size = np.zeros(n)
        self.ramp, self.hold, self.fall = ramp_days * DAY, hold_days * DAY, fall_days * DAY

    def begin(self, rng: np.random.Generator, eligible: npt.NDArray[np.bool_], per_day: float,
              day_start: float, size: float) -> None:
        """Start an episode, with probability `per_day`, for each eligible citizen not in one."""
        free = eligible & (self.start + self.ramp + self.hold + self.fall < day_start)
        new = free & (rng.random(len(free)) < per_day)
        self.start[new] = day_start + rng.uniform(0, DAY, int(new.sum()))
        self.size[new] = size * rng.uniform(0.8, 1.25, int(new.sum()))

    def at(self, c: int, t: float) -> float:
        s = t - float(self.start[c])
        if s <= 0 or s >= self.ramp + self.hold + self.fall:
            return 0.0
        share = min(s / self.ramp if self.ramp else 1.0, 1.0,
                    (self.ramp + self.hold + self.fall - s) / self.fall if self.fall else 1.0)
        return float(self.size[c]) * share


class Population:
    """Per-citizen arrays, indexed by a dense citizen index."""

    def __init__(self, n: int, rng: np.random.Generator, config: SimConfig) -> None:
        self.n = n
        self.config = config
        self.heart_failure = rng.random(n) < 0.35
        self.copd = rng.random(n) < 0.3
        self.diabetes = rng.random(n) < 0.3
        m = config.adherence
        self.adherence = (rng.beta(8 * m, 8 * (1 - m), n) if 0 < m < 1 else np.full(n, m))
        self.spo2 = np.where(self.copd, rng.normal(92.5, 1.5, n), rng.normal(96.5, 1.0, n))
        self.spo2 = np.minimum(self.spo2, 98.5)
        self.pulse = rng.normal(72, 8, n).clip(50, 100)
        self.systolic = rng.normal(138, 14, n).clip(100, 175)
        self.diastolic = (self.systolic * 0.55 + rng.normal(5, 5, n)).clip(55, 105)
        self.weight = rng.normal(80, 15, n).clip(42, 160)
        self.height = rng.normal(1.70, 0.09, n).clip(1.45, 1.98)
        self.body_fat = rng.normal(30, 7, n).clip(10, 50)
        self.glucose = np.where(self.diabetes, rng.normal(8.0, 1.4, n),
                                rng.normal(5.6, 0.5, n)).clip(4.2, 13)
        self.perfusion = rng.lognormal(math.log(3.0), 0.4, n).clip(0.5, 12)
        self.fluid = Episodes(n, config.weight_gain_days, 1.0, 3.0)
        self.desaturation = Episodes(n, 2.0, 3.0, 3.0)

    def new_day(self, rng: np.random.Generator, day_start: float) -> None:
        """Weight wanders from day to day; now and then an episode begins."""
        c = self.config
        self.weight += rng.normal(0, 0.08, self.n)
        self.fluid.begin(rng, self.heart_failure, c.weight_gain_per_year / 365, day_start,
                         c.weight_gain_kg)
        self.desaturation.begin(rng, self.copd, c.desaturation_per_year / 365, day_start, 5.0)

    def measure(self, c: int, metrics: tuple[MetricRange, ...], t: float, hour: float,
                z: list[float], acute: bool) -> list[float]:
        """One measurement of `metrics` by citizen `c` at `t` (local clock `hour`), with the
        standard normal draws `z` (one per metric), clamped to the model's plausible range."""
        values: list[float] = []
        systolic_dev = 0.0
        for k, m in enumerate(metrics):
            zk = z[k % len(z)]
            name = m.metric
            if name == "spo2":
                v = self.spo2[c] - self.desaturation.at(c, t) + 1.0 * zk - (7 if acute else 0)
            elif name == "pulse":
                v = self.pulse[c] + 6 * zk + (12 if acute else 0)
            elif name == "perfusion_index":
                v = self.perfusion[c] * math.exp(0.25 * zk)
            elif name == "bp_systolic":
                systolic_dev = 9 * zk + (6 if hour < 12 else 0) + (35 if acute else 0)
                v = self.systolic[c] + systolic_dev
            elif name == "bp_diastolic":
                v = self.diastolic[c] + 0.4 * systolic_dev + 4 * zk
            elif name == "weight":
                v = self.weight[c] + self.fluid.at(c, t) + 0.3 * zk
            elif name == "body_fat":
                v = self.body_fat[c] + 0.8 * zk
            elif name == "bmi":
                v = (self.weight[c] + self.fluid.at(c, t)) / self.height[c] ** 2 + 0.1 * zk
            elif name == "glucose":
                meal = 0.6 if hour >= 11 else 0.0
                v = (self.glucose[c] + meal) * math.exp(0.12 * zk)
                if acute:
                    v = 3.1 + 0.3 * zk  # a hypoglycaemia
            else:  # a metric with no physiology here: the middle of the model's range
                v = (m.low + m.high) / 2 + (m.high - m.low) * 0.02 * zk
            values.append(plausible(float(v), m))
        return values


def plausible(value: float, m: MetricRange) -> float:
    """The value clamped into the model's plausible range and rounded as the device does."""
    return rounded(min(max(value, m.low), m.high), m.metric)


def rounded(value: float, metric: str) -> float:
    digits = DECIMALS.get(metric, 1)
    return round(value) if digits == 0 else round(value, digits)  # an int prints as one


def implausible(m: MetricRange, beyond_physical: bool, u: float) -> float:
    """A value this model should never report: outside its plausible range but inside what a
    sensor can report (a validity rule marks it); or, with `beyond_physical`, outside even
    that (the decoder refuses it as impossible_value). `u` in [0, 1) picks it."""
    phys = METRICS[m.metric]
    step = _step(m)
    if beyond_physical:
        width = phys.high - phys.low
        return rounded(phys.high + step + u * 0.5 * width, m.metric)
    gaps = _gaps(m)
    if not gaps:  # the model's range is all a sensor can report: nothing between
        return implausible(m, True, u)
    lo, hi = gaps[int(u * len(gaps)) % len(gaps)]
    frac = (u * len(gaps)) % 1.0
    v = rounded(lo + 2 * step + frac * (hi - lo - 4 * step), m.metric)
    return min(max(v, lo + step), hi - step)


def can_be_implausible(m: MetricRange) -> bool:
    """Whether a sensor can report a value outside the model's range (SpO2 cannot: 0 to 100 %
    is both)."""
    return bool(_gaps(m))


def _gaps(m: MetricRange) -> list[tuple[float, float]]:
    """What a sensor can report outside the model's range, below and above it."""
    phys, step = METRICS[m.metric], _step(m)
    return [(lo, hi) for lo, hi in ((phys.low, m.low), (m.high, phys.high))
            if hi - lo > 4 * step]


def _step(m: MetricRange) -> float:
    """The device's resolution: values keep clear of the edges by it after rounding."""
    return float(10.0 ** -DECIMALS.get(m.metric, 1))
