"""How often the simulated fleet does each thing: one dataclass, every rate with its default and
its unit. Rates "per year" are per device (or per citizen) and year of simulated time."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# What `with_faults` scales: the incidents and faults, not the daily routine. Rates and rare
# chances scale with the factor; a habit's share (how often a citizen forgets) only down.
FAULT_RATES = (
    "weight_gain_per_year", "desaturation_per_year", "stuck_sensor_per_year", "falls_per_year",
    "panics_per_year", "tamper_per_year", "mains_outages_per_year", "drops_per_year",
    "flapping_per_year",
)
FAULT_CHANCES = ("acute_episode", "impossible_value", "dispenser_jam")
FAULT_HABITS = ("dose_missed", "late_recharge", "late_replacement")


@dataclass(frozen=True)
class SimConfig:
    """The simulator's rates. Defaults are what a quiet real fleet might do; `with_faults(k)`
    multiplies the incident and fault rates (the demo uses 20, so that something happens)."""

    # --- time ---------------------------------------------------------------------------
    window_s: float = 300.0            # simulated seconds generated per step (vectorised)
    timezone: str = "Europe/Copenhagen"  # the citizens' clocks: measurement and dose times
    # --- heartbeats ---------------------------------------------------------------------
    heartbeat_jitter: float = 0.1      # status every heartbeat_s × U(1 − jitter, 1): never late
    # --- measurements (times of day: vagt.sim.plan.MEASUREMENT_SLOTS) --------------------
    adherence: float = 0.85            # mean share of a citizen's measurement slots measured
    acute_episode: float = 0.01        # per measurement: a bad moment (SpO2 −7, BP +35, hypo)
    weight_gain_per_year: float = 4.0  # per heart-failure citizen: fluid retention episodes
    weight_gain_kg: float = 2.0        # ... gaining this much
    weight_gain_days: float = 3.0      # ... over these days, then held a day, then lost
    desaturation_per_year: float = 2.0  # per COPD citizen: SpO2 down 5 over 2 days, for 3
    impossible_value: float = 0.002    # per measurement: one value outside the model's range
    beyond_physical: float = 0.1       # ... of those, the share no sensor can report (dead)
    stuck_sensor_per_year: float = 1.0  # per measuring device: the same values repeated
    stuck_repeats: int = 6             # ... this many measurements in a row
    # --- medicine dispensers (dose times: vagt.sim.plan.DOSE_SCHEDULES) ------------------
    dose_missed: float = 0.05          # per dose: never taken (a citizen's own rate varies)
    dose_late: float = 0.05            # per dose: taken 30 to 90 minutes late
    dose_taken_median_s: float = 180.0  # otherwise taken after a lognormal delay (σ 0.8)
    dispenser_jam: float = 0.002       # per dose: fault.dispenser_jam, the dose not given
    refill_days: int = 14              # the pharmacy refills this many days of doses
    # --- personal alarms and the home ---------------------------------------------------
    falls_per_year: float = 3.0        # per personal alarm: alarm.fall
    panics_per_year: float = 3.0       # per personal alarm: alarm.panic
    tamper_per_year: float = 0.3       # per device whose model reports tamper
    mains_outages_per_year: float = 2.0  # per mains-powered device: power.mains_lost/restored
    mains_outage_median_min: float = 40.0  # lognormal (σ 1), 2 minutes to 12 hours
    # --- connectivity -------------------------------------------------------------------
    drops_per_year: float = 24.0       # per connection (gateway or own radio): offline, buffering
    drop_median_min: float = 20.0      # lognormal (σ 1), 1 minute to 12 hours
    flapping_per_year: float = 3.0     # per gateway: connection lost and back many times
    flapping_cycles: tuple[int, int] = (6, 15)  # ... this many times (uniform), within minutes
    # A regional outage (a mobile network down): this share of the connections, drawn at
    # random, goes down `regional_outage_at_h` hours after the simulation's start for
    # `regional_outage_h` hours. Their devices keep everything meanwhile, heartbeats included,
    # and all send it when the network is back: hours of messages at once (0: none).
    regional_outage_share: float = 0.0
    regional_outage_at_h: float = 0.0
    regional_outage_h: float = 0.0
    # --- payloads -----------------------------------------------------------------------
    # True: every model sends canonical JSON with device_id, seq, unix seconds and canonical
    # units (what the simulator sent before the vendors' formats, vagt.sim.wire; a baseline).
    canonical_only: bool = False
    # --- power --------------------------------------------------------------------------
    rechargeable_drain_per_day: float = 25.0  # % a day (a pendant lasts about 4 days)
    charge_per_hour: float = 50.0      # % an hour on the charger
    recharge_delay_h: float = 6.0      # mean time until a citizen charges a low device
    late_recharge: float = 0.1         # ... share of times they forget for days (low battery)
    replaceable_drain_per_day: float = 0.5   # % a day (cells last months)
    replace_below: float = 25.0        # cells are replaced within 1-7 days once below this
    late_replacement: float = 0.15     # ... share of times only after 20-80 days (low, dead)
    backup_drain_per_hour: float = 15.0  # % an hour on backup battery during a mains outage
    backup_charge_per_hour: float = 20.0  # % an hour back on mains

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float | int) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"simulator setting {f.name} must be 0 or more, got {value}")
        for name in ("adherence", "beyond_physical", "heartbeat_jitter", "dose_missed",
                     "dose_late", "late_recharge", "late_replacement",
                     "regional_outage_share"):
            if getattr(self, name) > 1:
                raise ValueError(f"simulator setting {name} is a share from 0 to 1, "
                                 f"got {getattr(self, name)}")
        if self.window_s <= 0:
            raise ValueError("simulator setting window_s must be above 0")
        lo, hi = self.flapping_cycles
        if not 1 <= lo <= hi:
            raise ValueError(f"simulator setting flapping_cycles must be (low, high) with "
                             f"1 <= low <= high, got {self.flapping_cycles}")

    def with_faults(self, factor: float) -> SimConfig:
        """The same fleet with its incident and fault rates multiplied by `factor` (0: none).
        Chances are capped at 1; habits (missed doses, late recharges and replacements) are
        scaled only down, since a factor of 20 should not make everyone forget every dose."""
        if not factor >= 0:
            raise ValueError(f"the fault factor must be 0 or more, got {factor}")
        changes: dict[str, float] = {name: getattr(self, name) * factor for name in FAULT_RATES}
        changes.update({name: min(getattr(self, name) * factor, 1.0) for name in FAULT_CHANCES})
        changes.update({name: getattr(self, name) * min(factor, 1.0) for name in FAULT_HABITS})
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
