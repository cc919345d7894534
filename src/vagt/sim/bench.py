"""A large fleet's traffic, flat out, for benchmarks: realistic messages as fast as the simulator
makes them, timed so that all of them lie in the past when they are published."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from vagt.devices.catalogue import Catalogue, load_catalogue
from vagt.sim.config import SimConfig
from vagt.sim.fleet import SimDevice, make_fleet
from vagt.sim.simulation import CHANNELS, SimMessage, Simulation

# Messages a device sends a day besides heartbeats (measurements, doses, incidents): an upper
# estimate, so that a backlog's start is early enough to end before now.
EXTRA_PER_DAY = 12.0


def messages_per_second(fleet: list[SimDevice], catalogue: Catalogue | None = None) -> float:
    """About how many messages a second the fleet publishes (an upper estimate)."""
    cat = catalogue if catalogue is not None else load_catalogue()
    beats = sum(1.0 / (0.9 * cat.require(d.vendor, d.model).heartbeat_s) for d in fleet)
    return beats + len(fleet) * EXTRA_PER_DAY / 86_400


def last_local(hour: int, *, before: float | None = None,
               timezone: str = SimConfig().timezone) -> float:
    """The last moment at or before `before` (default: now) at which the citizens' clocks read
    `hour`:00. What a backlog holds follows the citizens' day (measurements and doses in the
    morning and the evening, heartbeats alone at night), so a backlog that ends at a fixed
    local hour holds the same kind of traffic whatever the hour it is made."""
    if not 0 <= hour < 24:
        raise ValueError(f"an hour of the clock is 0 to 23, not {hour}")
    tz = ZoneInfo(timezone)
    now = datetime.fromtimestamp(time.time() if before is None else before, tz)
    day = now.date()
    while (t := datetime(day.year, day.month, day.day, hour, tzinfo=tz)) > now:
        day -= timedelta(days=1)
    return t.timestamp()


def backlog(n: int, *, devices: int = 100_000, seed: int = 1, topic_root: str = "vagt/v1",
            channels: tuple[str, ...] = CHANNELS, end: float | None = None,
            config: SimConfig | None = None, fleet: list[SimDevice] | None = None,
            ) -> Iterator[SimMessage]:
    """`n` messages of a fleet of `devices` (or `fleet`) on `channels`, in publishing order;
    the simulation starts early enough to end before `end` (default: now)."""
    if n < 0:
        raise ValueError(f"a backlog has 0 or more messages, not {n}")
    for ch in channels:
        if ch not in CHANNELS:
            raise ValueError(f"channel {ch!r} is not one of {', '.join(CHANNELS)}")
    fleet = fleet if fleet is not None else make_fleet(devices, seed)
    rate = messages_per_second(fleet)
    wanted = frozenset(channels)
    everything = wanted == frozenset(CHANNELS)
    share = 1.0 if everything else 0.5  # most traffic is status
    end = time.time() if end is None else end
    span = n / (rate * share) * 1.25 + 3600
    sim = Simulation(fleet, seed=seed, start=end - span, topic_root=topic_root, config=config)
    stream = (m for m in sim.messages(until=end)
              if everything or m.topic.rsplit("/", 1)[1] in wanted)
    return itertools.islice(stream, n)
