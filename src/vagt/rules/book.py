"""An alert book in memory: what the alert queue would do with a stream of transitions.

It follows the queue's own rules (vagt.alerts.store): a fire opens an alert when none is
open for the (rule, device), else repeats it; a fire no later than the last firing of a
resolved alert reopens nothing; a clear resolves an open alert that last fired no later.
The backtest counts with it; tests compare it with the real queue.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vagt.rules.engine import Evaluation


@dataclass
class AlertBook:
    open_: dict[tuple[str, int], float] = field(default_factory=dict)      # -> last fired
    resolved: dict[tuple[str, int], float] = field(default_factory=dict)   # -> last fired
    opened: Counter[tuple[str, int]] = field(default_factory=Counter)      # (rule, device)
    cleared: Counter[tuple[str, int]] = field(default_factory=Counter)
    fired: Counter[tuple[str, int]] = field(default_factory=Counter)       # rows, all alerts

    def record(self, ev: Evaluation) -> None:
        """Apply an evaluation's fires and clears in the order the pipeline does: by round."""
        fr, fd, _first, flast, _v, _c, fn, fo = ev.transitions.fires()
        cr, cd, ct, co = ev.transitions.clears()
        rounds = np.union1d(fo, co)
        for k in rounds.tolist():
            for r, d, t, n in zip(fr[fo == k].tolist(), fd[fo == k].tolist(),
                                  flast[fo == k].tolist(), fn[fo == k].tolist()):
                self._fire((ev.rules[r].name, d), t, n)
            for r, d, t in zip(cr[co == k].tolist(), cd[co == k].tolist(),
                               ct[co == k].tolist()):
                self._clear((ev.rules[r].name, d), t)

    def _fire(self, key: tuple[str, int], t: float, n: int) -> None:
        if key in self.open_:
            if t > self.open_[key]:
                self.open_[key] = t
                self.fired[key] += n
        elif self.resolved.get(key, -np.inf) < t:
            self.open_[key] = t
            self.opened[key] += 1
            self.fired[key] += n

    def _clear(self, key: tuple[str, int], t: float) -> None:
        fired = self.open_.get(key)
        if fired is not None and fired <= t:
            del self.open_[key]
            self.resolved[key] = max(self.resolved.get(key, -np.inf), fired)
            self.cleared[key] += 1
