"""A deterministic simulator of the centre's devices and their MQTT traffic, for the demo,
tests and benchmarks: a fleet of catalogue models in simulated time (`Simulation`), paced onto
a broker (`Pacing`, `publish`) or taken flat out (`backlog`)."""

from vagt.sim.bench import backlog, last_local
from vagt.sim.config import SimConfig
from vagt.sim.fleet import DEVICE_TYPES, MUNICIPALITIES, SimDevice, fleet_csv, make_fleet
from vagt.sim.pacing import Pacing
from vagt.sim.publisher import PublishError, PublishStats, publish, publish_backlog
from vagt.sim.simulation import ALARM_CODES, CHANNELS, SimMessage, Simulation

__all__ = [
    "ALARM_CODES", "CHANNELS", "DEVICE_TYPES", "MUNICIPALITIES", "Pacing", "PublishError",
    "PublishStats", "SimConfig", "SimDevice", "SimMessage", "Simulation", "backlog",
    "fleet_csv", "last_local", "make_fleet", "publish", "publish_backlog",
]
