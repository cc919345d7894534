"""A deterministic simulator of the centre's devices, for the demo, tests and benchmarks."""

from vagt.sim.fleet import MUNICIPALITIES, SimDevice, fleet_csv, make_fleet
from vagt.sim.traffic import Traffic

__all__ = ["MUNICIPALITIES", "SimDevice", "Traffic", "fleet_csv", "make_fleet"]
