"""A deterministic simulator of the centre's devices and their MQTT traffic, for the demo,
tests and benchmarks."""

from vagt.sim.fleet import DEVICE_TYPES, MUNICIPALITIES, SimDevice, fleet_csv, make_fleet
from vagt.sim.publisher import PublishError, PublishStats, publish, publish_backlog
from vagt.sim.traffic import ScaledClock, StepClock, Traffic, TrafficRates

__all__ = [
    "DEVICE_TYPES", "MUNICIPALITIES", "PublishError", "PublishStats", "ScaledClock", "SimDevice",
    "StepClock", "Traffic", "TrafficRates", "fleet_csv", "make_fleet", "publish",
    "publish_backlog",
]
