"""Streams the simulator tests share: made once per seed and configuration."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from vagt.sim import SimConfig, SimDevice, SimMessage, Simulation, make_fleet

START = 1_763_800_000.0  # 2025-11-22 08:26:40 UTC, a Saturday
DAY = 86_400.0
CPH = ZoneInfo("Europe/Copenhagen")


@functools.lru_cache(maxsize=8)
def run(devices: int, days: float, seed: int = 1, faults: float = 1.0,
        **changes: Any) -> tuple[tuple[SimDevice, ...], tuple[SimMessage, ...]]:
    """A fleet and its messages over `days` from START, in canonical JSON unless
    `canonical_only=False`: what the devices mean, whatever their vendors' formats
    (test_wire.py holds the two streams to the same meaning)."""
    fleet = make_fleet(devices, seed)
    config = SimConfig(**{"canonical_only": True, **changes}).with_faults(faults)
    sim = Simulation(fleet, seed=seed, start=START, config=config)
    return tuple(fleet), tuple(sim.messages(until=START + days * DAY))


def docs(messages: tuple[SimMessage, ...]) -> list[tuple[SimMessage, dict[str, Any]]]:
    return [(m, orjson.loads(m.payload)) for m in messages]


def channel(m: SimMessage) -> str:
    return m.topic.rsplit("/", 1)[1]


def local_hour(t: float) -> float:
    d = datetime.fromtimestamp(t, CPH)
    return d.hour + d.minute / 60


def by_device(pairs: list[tuple[SimMessage, dict[str, Any]]]
              ) -> dict[str, list[tuple[SimMessage, dict[str, Any]]]]:
    out: dict[str, list[tuple[SimMessage, dict[str, Any]]]] = {}
    for m, doc in pairs:
        out.setdefault(doc["device_id"], []).append((m, doc))
    return out
