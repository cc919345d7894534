"""Batteries by kind, as arrays over the fleet: rechargeables drained in days and charged by
the citizen (sometimes days late), replaceable cells drained in months and swapped by a
technician (sometimes too late), mains-powered devices on their backup battery only in an
outage. A device whose battery is empty sends nothing."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vagt.sim.config import SimConfig

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]

RECHARGEABLE, REPLACEABLE, MAINS_BACKUP, NO_BATTERY = 0, 1, 2, 3
KINDS = {"rechargeable": RECHARGEABLE, "replaceable": REPLACEABLE,
         "mains_backup": MAINS_BACKUP, "none": NO_BATTERY}
DAY, HOUR = 86_400.0, 3_600.0


class Power:
    """Battery level (%) per device, moved on window by window; NaN for devices without one."""

    def __init__(self, kinds: npt.NDArray[np.int8], rng: np.random.Generator,
                 config: SimConfig) -> None:
        n = len(kinds)
        self.config = config
        self.kind = kinds
        self.rechargeable = kinds == RECHARGEABLE
        self.replaceable = kinds == REPLACEABLE
        self.mains = kinds == MAINS_BACKUP
        spread = rng.lognormal(0.0, 0.2, n)  # devices and habits differ
        self.drain = np.select(  # % per second, off the charger and off the mains
            [self.rechargeable, self.replaceable, self.mains],
            [config.rechargeable_drain_per_day / DAY, config.replaceable_drain_per_day / DAY,
             config.backup_drain_per_hour / HOUR], 0.0) * spread
        self.level = np.where(self.rechargeable, rng.uniform(35, 100, n),
                              np.where(self.replaceable, rng.uniform(12, 100, n), 100.0))
        self.level[kinds == NO_BATTERY] = np.nan
        self.threshold = rng.uniform(20, 50, n)  # when this citizen charges their pendant
        self.charging = np.zeros(n, dtype=bool)
        self.on_mains = self.mains.copy()
        self.due = np.full(n, np.inf)  # when the charge or the new cells come

    def slope(self) -> F64:
        """% per second in the coming window."""
        c = self.config
        up = np.where(self.mains, c.backup_charge_per_hour / HOUR, c.charge_per_hour / HOUR)
        rising = self.charging | self.on_mains
        return np.where(rising, up, -self.drain)

    def levels_at(self, devices: npt.NDArray[np.intp], t: F64, t0: float, slope: F64) -> F64:
        return np.clip(self.level[devices] + slope[devices] * (t - t0), 0.0, 100.0)

    def alive(self) -> BOOL:
        """Devices that can send: a battery not empty, or no battery at all, or on mains."""
        empty: BOOL = self.level <= 0.0  # NaN (no battery) compares False: never empty
        alive: BOOL = ~empty | self.on_mains
        return alive

    def advance(self, t0: float, t1: float, slope: F64, rng: np.random.Generator) -> None:
        """Move every level to `t1`, then let citizens and technicians act."""
        c = self.config
        self.level = np.clip(self.level + slope * (t1 - t0), 0.0, 100.0)
        full = self.charging & (self.level >= 100.0)
        self.charging[full] = False  # taken off the charger
        arrived = self.due <= t1
        self.level[arrived & self.replaceable] = 100.0
        self.charging[arrived & self.rechargeable] = True
        self.due[arrived] = np.inf
        waiting = np.isfinite(self.due)
        low = ~waiting & ~self.charging & (
            (self.rechargeable & (self.level < self.threshold))
            | (self.replaceable & (self.level < c.replace_below)))
        k = int(low.sum())
        if not k:
            return
        late_recharge = rng.random(k) < c.late_recharge
        late_replace = rng.random(k) < c.late_replacement
        # on time means before the device reports a low battery (under 15 %)
        before_low = np.maximum(self.level[low] - 15.0, 0.0) / np.maximum(self.drain[low], 1e-12)
        recharge_in = np.where(late_recharge, rng.uniform(2, 6, k) * DAY,
                               np.minimum(rng.exponential(c.recharge_delay_h * HOUR, k),
                                          0.9 * before_low))
        replace_in = np.where(late_replace, rng.uniform(20, 80, k),
                              rng.uniform(1, 7, k)) * DAY
        self.due[low] = t1 + np.where(self.rechargeable[low], recharge_in, replace_in)

    def empty_in(self, d: int) -> float:
        """Seconds until device `d`'s battery is empty, draining as it would off the mains."""
        drain = float(self.drain[d])
        return float(self.level[d]) / drain if drain > 0 else float("inf")

    def mains_lost(self, d: int) -> None:
        self.on_mains[d] = False

    def mains_restored(self, d: int) -> None:
        self.on_mains[d] = True
