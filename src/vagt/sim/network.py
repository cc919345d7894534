"""Connectivity: when each connection (a gateway's or a device's own radio) is down. What a
device measures meanwhile is buffered and sent when the connection is back, with the time it
was measured; its heartbeats are not (a stale heartbeat says nothing)."""

from __future__ import annotations

import bisect

import numpy as np
import numpy.typing as npt


class Outages:
    """Disjoint intervals [down, back) per connection, by device index of the connection."""

    def __init__(self) -> None:
        self._down: dict[int, list[float]] = {}
        self._back: dict[int, list[float]] = {}

    def add(self, link: int, down: float, back: float) -> bool:
        """Record an outage; False (and nothing recorded) if it overlaps one already known."""
        downs = self._down.setdefault(link, [])
        backs = self._back.setdefault(link, [])
        k = bisect.bisect_left(downs, down)
        if (k > 0 and backs[k - 1] > down) or (k < len(downs) and downs[k] < back):
            return False
        downs.insert(k, down)
        backs.insert(k, back)
        return True

    def back_at(self, link: int, t: float) -> float | None:
        """When the connection is back, if it is down at `t`; else None."""
        downs = self._down.get(link)
        if not downs:
            return None
        k = bisect.bisect_right(downs, t) - 1
        if k >= 0 and t < self._back[link][k]:
            return self._back[link][k]
        return None

    def links(self) -> npt.NDArray[np.intp]:
        """The connections with an outage known now or to come."""
        return np.fromiter(self._down, dtype=np.intp, count=len(self._down))

    def forget_before(self, t: float) -> None:
        """Drop the outages over by `t`: nothing from before `t` is asked about again."""
        for link in [k for k, backs in self._back.items() if backs[0] <= t]:
            backs = self._back[link]
            k = bisect.bisect_right(backs, t)
            del backs[:k]
            del self._down[link][:k]
            if not backs:
                del self._back[link], self._down[link]
