"""What the fleet will do, planned a day at a time in numpy: measurements at the times of day
citizens take them, dose reminders and doses taken, alarms, faults and outages; kept in time
order and handed out window by window."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vagt.arrays import F64, I64
from vagt.sim.config import SimConfig
from vagt.sim.network import Outages

DAY = 86_400.0

# Local clock hour and its spread (hours), and how often the slot is used, per type: blood
# pressure morning and evening, the scale after getting up, glucose before meals and at
# bedtime, oximetry a few times a day.
MEASUREMENT_SLOTS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "bp_monitor": ((7.5, 0.6, 0.95), (20.0, 0.75, 0.8)),
    "scale": ((7.25, 0.5, 0.95),),
    "glucose_meter": ((7.0, 0.5, 0.95), (11.75, 0.5, 0.6), (17.75, 0.5, 0.8),
                      (21.75, 0.5, 0.4)),
    "pulse_oximeter": ((8.5, 1.0, 0.9), (14.0, 1.5, 0.5), (20.5, 1.0, 0.7)),
}
MAX_SLOTS = max(len(s) for s in MEASUREMENT_SLOTS.values())

# A citizen's dose times (minutes after local midnight), one pattern each, and how common it is.
DOSE_SCHEDULES: tuple[tuple[tuple[int, ...], float], ...] = (
    ((8 * 60, 20 * 60), 0.25),
    ((8 * 60, 12 * 60, 18 * 60), 0.25),
    ((8 * 60, 12 * 60, 18 * 60, 22 * 60), 0.35),
    ((7 * 60 + 30, 13 * 60, 18 * 60, 22 * 60), 0.15),
)


class Kind(enum.IntEnum):
    """What a planned record is."""

    MEASURE = 0          # arg: the slot
    DOSE_DUE = 1         # arg: the dose time, minutes after local midnight
    DOSE_TAKEN = 2       # arg: as DOSE_DUE
    JAM = 3              # arg: as DOSE_DUE
    FALL = 4
    PANIC = 5
    TAMPER = 6
    MAINS_LOST = 7       # arg: the outage's number; aux: when the mains come back
    MAINS_RESTORED = 8   # arg: the outage's number
    CONNECTION = 9       # aux: when it went down; arg: 1 if flapping
    STUCK = 10           # the sensor sticks from here (no message)


@dataclass
class Records:
    """Planned records as columns."""

    t: F64 = field(default_factory=lambda: np.empty(0))
    d: I64 = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    kind: I64 = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    arg: I64 = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    aux: F64 = field(default_factory=lambda: np.empty(0))

    def __len__(self) -> int:
        return len(self.t)


class Plan:
    """Records to come, in time order (ties in the order they were added)."""

    def __init__(self) -> None:
        self._held = Records()
        self._new: list[tuple[F64, I64, int, I64, F64]] = []

    def add(self, t: F64, d: I64, kind: Kind, arg: I64 | None = None,
            aux: F64 | None = None) -> None:
        n = len(t)
        if n:
            self._new.append((t, d, int(kind), arg if arg is not None else
                              np.zeros(n, dtype=np.int64), aux if aux is not None else
                              np.zeros(n)))

    def take(self, before: float) -> Records:
        """The records before `before`, removed from the plan."""
        if self._new:
            h = self._held
            t = np.concatenate([h.t, *(x[0] for x in self._new)])
            d = np.concatenate([h.d, *(x[1] for x in self._new)])
            kind = np.concatenate([h.kind, *(np.full(len(x[0]), x[2], dtype=np.int64)
                                             for x in self._new)])
            arg = np.concatenate([h.arg, *(x[3] for x in self._new)])
            aux = np.concatenate([h.aux, *(x[4] for x in self._new)])
            order = np.argsort(t, kind="stable")
            self._held = Records(t[order], d[order], kind[order], arg[order], aux[order])
            self._new = []
        h = self._held
        k = int(np.searchsorted(h.t, before, side="left"))
        taken = Records(h.t[:k], h.d[:k], h.kind[:k], h.arg[:k], h.aux[:k])
        self._held = Records(h.t[k:], h.d[k:], h.kind[k:], h.arg[k:], h.aux[k:])
        return taken


@dataclass(frozen=True)
class FleetColumns:
    """What the planner needs of the fleet, as arrays over the dense device index."""

    citizen: I64                        # per device: dense citizen index
    link: I64                           # per device: the connection it sends through
    is_type: dict[str, npt.NDArray[np.bool_]]
    sends: dict[str, npt.NDArray[np.bool_]]  # per event code: the model reports it
    mains: npt.NDArray[np.bool_]        # mains-powered (with a backup battery)


class DayPlanner:
    """Plans one local day of the fleet at a time."""

    def __init__(self, fleet: FleetColumns, adherence: F64, rng: np.random.Generator,
                 config: SimConfig) -> None:
        self.fleet = fleet
        self.adherence = adherence
        self.config = config
        n = len(fleet.citizen)
        self.habit = rng.normal(0.0, 1.0, (n, MAX_SLOTS))  # in units of the slot's spread
        dispensers = fleet.is_type["medicine_dispenser"]
        weights = np.array([w for _, w in DOSE_SCHEDULES])
        self.schedule = np.where(dispensers, rng.choice(len(DOSE_SCHEDULES), n,
                                                        p=weights / weights.sum()), -1)
        self.dose_shift = rng.choice([-30, -15, 0, 0, 0, 15, 30], n)
        self.miss = np.minimum(config.dose_missed * rng.gamma(2.0, 0.5, n), 1.0)
        self.outage_number = 0

    def plan(self, plan: Plan, outages: Outages, rng: np.random.Generator, day_start: float,
             day_end: float, clock_shift: float, not_before: float) -> None:
        """Plan the local day [day_start, day_end); `clock_shift` turns local clock hours into
        seconds after day_start (DST); records before `not_before` are left out."""
        cut = _Cut(plan, not_before)
        self._measurements(cut, rng, day_start - clock_shift)
        self._doses(cut, rng, day_start - clock_shift)
        self._incidents(cut, rng, day_start, day_end)
        self._outages(cut, outages, rng, day_start, day_end)

    def _measurements(self, cut: _Cut, rng: np.random.Generator, midnight: float) -> None:
        f = self.fleet
        for type_name, slots in MEASUREMENT_SLOTS.items():
            devices = np.flatnonzero(f.is_type[type_name])
            if not len(devices):
                continue
            for s, (hour, spread, p) in enumerate(slots):
                used = rng.random(len(devices)) < p * self.adherence[f.citizen[devices]]
                d = devices[used]
                h = hour + spread * (self.habit[d, s] + rng.normal(0, 0.5, len(d)))
                h = np.clip(h, hour - 3 * spread, hour + 3 * spread)
                cut.add(midnight + h * 3600.0, d, Kind.MEASURE, np.full(len(d), s))
            stuck = rng.random(len(devices)) < self.config.stuck_sensor_per_year / 365
            d = devices[stuck]
            cut.add(midnight + rng.uniform(0, DAY, len(d)), d, Kind.STUCK)

    def _doses(self, cut: _Cut, rng: np.random.Generator, midnight: float) -> None:
        c = self.config
        for k, (times, _) in enumerate(DOSE_SCHEDULES):
            d = np.flatnonzero(self.schedule == k)
            for minute in times:
                at = (minute + self.dose_shift[d]).astype(np.int64)
                due = midnight + at * 60.0 + rng.uniform(0, 20, len(d))
                cut.add(due, d, Kind.DOSE_DUE, at)
                draw = rng.random(len(d))
                jam = draw < c.dispenser_jam
                missed = ~jam & (draw < c.dispenser_jam + self.miss[d] * (1 - c.dispenser_jam))
                late = rng.random(len(d)) < c.dose_late
                delay = np.where(late, rng.uniform(30, 90, len(d)) * 60.0,
                                 np.clip(rng.lognormal(np.log(c.dose_taken_median_s), 0.8,
                                                       len(d)), 20, 1500))
                taken = ~jam & ~missed & (due >= cut.not_before)  # its reminder was sent
                jam &= due >= cut.not_before
                cut.add(due[taken] + delay[taken], d[taken], Kind.DOSE_TAKEN, at[taken])
                cut.add(due[jam] + rng.uniform(20, 120, int(jam.sum())), d[jam], Kind.JAM,
                        at[jam])

    def _incidents(self, cut: _Cut, rng: np.random.Generator, day_start: float,
                   day_end: float) -> None:
        c, f = self.config, self.fleet
        length = day_end - day_start
        for kind, code, per_year in ((Kind.FALL, "alarm.fall", c.falls_per_year),
                                     (Kind.PANIC, "alarm.panic", c.panics_per_year),
                                     (Kind.TAMPER, "tamper", c.tamper_per_year)):
            d = _poisson(rng, np.flatnonzero(f.sends[code]), per_year / 365)
            cut.add(day_start + rng.uniform(0, length, len(d)), d, kind)
        d = _poisson(rng, np.flatnonzero(f.mains & f.sends["power.mains_lost"]),
                     c.mains_outages_per_year / 365)
        lost = day_start + rng.uniform(0, length, len(d))
        minutes = np.clip(rng.lognormal(np.log(max(c.mains_outage_median_min, 1e-3)), 1.0,
                                        len(d)), 2, 720)
        number = self.outage_number + np.arange(len(d), dtype=np.int64)
        self.outage_number += len(d)
        restored = lost + minutes * 60.0
        cut.add(lost, d, Kind.MAINS_LOST, number, restored)
        cut.add(restored, d, Kind.MAINS_RESTORED, number)

    def _outages(self, cut: _Cut, outages: Outages, rng: np.random.Generator,
                 day_start: float, day_end: float) -> None:
        c, f = self.config, self.fleet
        links = np.flatnonzero(f.link == np.arange(len(f.link)))  # their own connection
        d = _poisson(rng, links, c.drops_per_year / 365)
        down = day_start + rng.uniform(0, day_end - day_start, len(d))
        minutes = np.clip(rng.lognormal(np.log(max(c.drop_median_min, 1e-3)), 1.0, len(d)),
                          1, 720)
        intervals = [(float(a), float(a + m * 60.0), int(x), 0)
                     for a, m, x in zip(down, minutes, d)]
        flappers = _poisson(rng, np.flatnonzero(f.is_type["gateway"]),
                            c.flapping_per_year / 365)
        lo, hi = c.flapping_cycles
        for g in flappers.tolist():
            t = day_start + float(rng.uniform(0, day_end - day_start))
            for _ in range(int(rng.integers(lo, hi + 1))):
                off, on = float(rng.uniform(5, 90)), float(rng.uniform(10, 240))
                intervals.append((t, t + off, g, 1))
                t += off + on
        intervals.sort(key=lambda iv: (iv[2], iv[0]))
        back, link, flap, lost = [], [], [], []
        reports = f.sends["connection.lost"]
        for a, b, x, flapping in intervals:
            if outages.add(x, a, b) and reports[x] and b >= cut.not_before:
                back.append(b)
                link.append(x)
                flap.append(flapping)
                lost.append(a)
        cut.add(np.array(back), np.array(link, dtype=np.int64), Kind.CONNECTION,
                np.array(flap, dtype=np.int64), np.array(lost))


class _Cut:
    """The plan, taking only records at or after `not_before` (the simulation's start)."""

    def __init__(self, plan: Plan, not_before: float) -> None:
        self.plan = plan
        self.not_before = not_before

    def add(self, t: F64, d: I64, kind: Kind, arg: I64 | None = None,
            aux: F64 | None = None) -> None:
        keep = t >= self.not_before
        if not keep.all():
            t, d = t[keep], d[keep]
            arg = arg[keep] if arg is not None else None
            aux = aux[keep] if aux is not None else None
        self.plan.add(t, d, kind, arg, aux)


def _poisson(rng: np.random.Generator, devices: npt.NDArray[np.intp],
             per_day: float) -> npt.NDArray[np.intp]:
    """Each device repeated as often as it has the event today (Poisson)."""
    counts = rng.poisson(per_day, len(devices))
    return np.repeat(devices, counts)
