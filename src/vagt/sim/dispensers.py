"""What a medicine dispenser holds: the doses left go down by one for each dose taken, and the
pharmacy's delivery tops it up when two days' doses are left."""

from __future__ import annotations

import numpy as np

from vagt.devices.catalogue import MetricRange, Model
from vagt.sim.plan import DOSE_SCHEDULES


class DoseStock:
    """Doses left per device, for the models that report `doses_remaining`."""

    def __init__(self, models: list[Model], schedule: list[int], refill_days: int,
                 rng: np.random.Generator) -> None:
        self.range: list[MetricRange | None] = [m.metrics.get("doses_remaining") for m in models]
        self.per_day = [len(DOSE_SCHEDULES[s][0]) if s >= 0 else 0 for s in schedule]
        self.left = [float(rng.integers(int(r.high) // 3, int(r.high) + 1)) if r else 0.0
                     for r in self.range]
        self.refill_days = refill_days

    def take(self, d: int) -> float:
        """One dose taken from device `d`'s stock; the doses left, after any refill."""
        r = self.range[d]
        if r is None:
            raise ValueError(f"device #{d} reports no doses_remaining")
        per_day = max(self.per_day[d], 1)
        left = max(self.left[d] - 1, 0.0)
        if left < 2 * per_day:
            left = min(left + self.refill_days * per_day, r.high)
        self.left[d] = left
        return left
