"""When a simulated message may go out on the wire: as fast as wanted, `speed` times faster than
real time, but never before its simulated time has come on the wall clock (the engine refuses
device times from the future)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacing:
    """Maps a message's simulated time to how long to wait before publishing it.

    Simulated time `start` is now on the wall clock's monotonic reading at creation; it runs
    `speed` times faster (None: as fast as the publisher goes). A message is also held until
    its simulated time has passed in real time, so a simulation that starts in the past
    catches up with the present and then runs in step with it.
    """

    def __init__(self, start: float, speed: float | None = None, *,
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be above 0, got {speed}")
        self.start = start
        self.speed = speed
        self._wall = wall
        self._monotonic = monotonic
        self._origin = monotonic()

    def delay(self, sim_time: float) -> float:
        """Seconds to wait before publishing a message of simulated time `sim_time`
        (0 or less: now)."""
        real = sim_time - self._wall()
        if self.speed is None:
            return real
        scheduled = (sim_time - self.start) / self.speed - (self._monotonic() - self._origin)
        return max(scheduled, real)

    def now(self) -> float:
        """The simulated time it is now, by this pacing (never ahead of the wall clock)."""
        wall = self._wall()
        if self.speed is None:
            return wall
        return min(self.start + (self._monotonic() - self._origin) * self.speed, wall)
