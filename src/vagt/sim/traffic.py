"""Simulated traffic: what each device type sends (canonical JSON), with per-citizen physiology
and noise, battery drain and now and then an alarm or a fault; deterministic for a seed.

A device type's behaviour is one profile function in PROFILES: a new type is a new function.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from vagt.sim.fleet import SimDevice

Clock = Callable[[], float]
Body = dict[str, Any]  # the payload without device_id, seq and time
Reading = dict[str, Any]

EVENT_SEVERITY: dict[str, str] = {
    "alarm.fall": "critical", "alarm.panic": "critical", "fault.dispenser_jam": "major",
    "tamper": "major", "power.mains_lost": "warning", "dose.due": "info", "dose.taken": "info",
}


class StepClock:
    """Simulated time that moves `step` seconds per reading: the same times on every run."""

    def __init__(self, start: float = 1_763_800_000.0, step: float = 1.0) -> None:
        self._next = start
        self._step = step

    def __call__(self) -> float:
        now = self._next
        self._next += self._step
        return now


class ScaledClock:
    """Real time running `speed` times faster from `start` (default: the present)."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        self._origin = time.monotonic()
        self._start = time.time() if start is None else start
        self._speed = speed

    def __call__(self) -> float:
        return self._start + (time.monotonic() - self._origin) * self._speed


@dataclass(frozen=True)
class TrafficRates:
    """How often the unusual happens, per message of a device of the type concerned."""

    alarm: float = 0.02          # a personal alarm's message is a fall or panic alarm
    tamper: float = 0.002        # a personal alarm reports tampering
    jam: float = 0.01            # a dispenser reports a jam
    dose_missed: float = 0.1     # a dispenser's due dose is not taken
    mains_lost: float = 0.005    # a gateway reports mains power lost
    episode: float = 0.02        # a measurement falls in a bad moment (low SpO2, high BP, ...)
    status_every: int = 10       # every n-th message of a device is a status message


@dataclass
class DeviceState:
    """What the simulator remembers per device: its counter, battery, radio and physiology."""

    seq: int = 0
    battery: float = 100.0
    drain: float = 0.3           # battery % per message, on average
    signal: float = -75.0
    baseline: dict[str, float] = field(default_factory=dict)
    dose_due: bool = False


Profile = Callable[[random.Random, DeviceState, TrafficRates], tuple[str, Body]]


class Traffic:
    """An endless, reproducible stream of (topic, payload) for a fleet."""

    def __init__(self, fleet: list[SimDevice], *, seed: int = 1, topic_root: str = "vagt/v1",
                 rates: TrafficRates | None = None) -> None:
        self.fleet = list(fleet)
        self.rng = random.Random(seed)
        self.topic_root = topic_root
        self.rates = rates or TrafficRates()
        self.states = {d.device_id: new_state(self.rng, d) for d in self.fleet}

    def messages(self, clock: Clock = time.time) -> Iterator[tuple[str, bytes]]:
        """One message per device in turn (a new shuffled order each round), timed by `clock`."""
        order = list(self.fleet)
        while True:
            self.rng.shuffle(order)
            for device in order:
                yield self.message(device, clock())

    def message(self, device: SimDevice, t: float) -> tuple[str, bytes]:
        """The next message of `device`, sent at `t` (Unix seconds)."""
        state = self.states[device.device_id]
        state.seq += 1
        drain_battery(self.rng, state)
        if state.seq % self.rates.status_every == 0:
            channel, body = "status", status_body(self.rng, state, device.firmware)
        else:
            channel, body = PROFILES[device.type](self.rng, state, self.rates)
        doc = {"device_id": device.device_id, "seq": state.seq, "time": round(t, 3), **body}
        return f"{self.topic_root}/dev/{device.device_id}/{channel}", orjson.dumps(doc)


def new_state(rng: random.Random, device: SimDevice) -> DeviceState:
    g = rng.gauss
    baseline = {"spo2": min(g(95.5, 1.5), 99.0), "pulse": g(72, 9), "bp_systolic": g(135, 15),
                "bp_diastolic": g(82, 9), "weight": g(80, 15), "glucose": g(7.5, 1.8)}
    drain = {"gateway": 0.0, "personal_alarm": 0.1}.get(device.type, 0.3)
    return DeviceState(battery=rng.uniform(20, 100), drain=drain, signal=g(-75, 8),
                       baseline=baseline)


def drain_battery(rng: random.Random, state: DeviceState) -> None:
    state.battery = max(state.battery - state.drain * 2 * rng.random(), 0.0)
    if state.battery < 10 and rng.random() < 0.3:
        state.battery = 100.0  # charged, or the batteries replaced at a home visit


def status_body(rng: random.Random, state: DeviceState, firmware: str) -> Body:
    signal = _clamp(rng.gauss(state.signal, 3), -120, -40)
    return {"status": {"battery": round(state.battery), "signal": round(signal),
                       "firmware": firmware}}


# --- one profile per device type ---------------------------------------------------------------

def pulse_oximeter(rng: random.Random, state: DeviceState, rates: TrafficRates) -> tuple[str, Body]:
    b, bad = state.baseline, rng.random() < rates.episode
    spo2 = rng.gauss(b["spo2"] - (7 if bad else 0), 1.2)
    return "telemetry", {"readings": [
        reading("spo2", _clamp(spo2, 70, 100), "%", 0),
        reading("pulse", _clamp(rng.gauss(b["pulse"] + (15 if bad else 0), 5), 30, 220),
                "/min", 0)]}


def bp_monitor(rng: random.Random, state: DeviceState, rates: TrafficRates) -> tuple[str, Body]:
    b, rise = state.baseline, (35 if rng.random() < rates.episode else 0)
    return "telemetry", {"readings": [
        reading("bp_systolic", _clamp(rng.gauss(b["bp_systolic"] + rise, 8), 70, 260),
                "mm[Hg]", 0),
        reading("bp_diastolic", _clamp(rng.gauss(b["bp_diastolic"] + rise / 2, 6), 40, 160),
                "mm[Hg]", 0),
        reading("pulse", _clamp(rng.gauss(b["pulse"], 5), 30, 220), "/min", 0)]}


def scale(rng: random.Random, state: DeviceState, rates: TrafficRates) -> tuple[str, Body]:
    state.baseline["weight"] += rng.gauss(0, 0.05)  # weight wanders from day to day
    return "telemetry", {"readings": [
        reading("weight", _clamp(rng.gauss(state.baseline["weight"], 0.3), 30, 250), "kg", 1)]}


def glucose_meter(rng: random.Random, state: DeviceState, rates: TrafficRates) -> tuple[str, Body]:
    low = rng.random() < rates.episode
    value = rng.gauss(3.2, 0.4) if low else rng.gauss(state.baseline["glucose"], 1.5)
    return "telemetry", {"readings": [reading("glucose", _clamp(value, 1.5, 30), "mmol/L", 1)]}


def medicine_dispenser(rng: random.Random, state: DeviceState,
                       rates: TrafficRates) -> tuple[str, Body]:
    """dose.due, then dose.taken at its next message (or, now and then, due again: missed)."""
    if rng.random() < rates.jam:
        return "alarm", events("fault.dispenser_jam")
    if state.dose_due and rng.random() >= rates.dose_missed:
        state.dose_due = False
        return "telemetry", events("dose.taken")
    state.dose_due = True
    return "telemetry", events("dose.due")


def personal_alarm(rng: random.Random, state: DeviceState, rates: TrafficRates) -> tuple[str, Body]:
    """Mostly a heartbeat (status); now and then a fall or panic alarm, rarely tampering."""
    draw = rng.random()
    if draw < rates.alarm:
        return "alarm", events("alarm.fall" if rng.random() < 0.6 else "alarm.panic")
    if draw < rates.alarm + rates.tamper:
        return "alarm", events("tamper")
    return "status", {"status": {"battery": round(state.battery)}}


def gateway(rng: random.Random, state: DeviceState, rates: TrafficRates) -> tuple[str, Body]:
    """A heartbeat with its radio signal; now and then mains power lost."""
    if rng.random() < rates.mains_lost:
        return "alarm", events("power.mains_lost")
    return "status", {"status": {"signal": round(_clamp(rng.gauss(state.signal, 3), -120, -40))}}


PROFILES: dict[str, Profile] = {
    "pulse_oximeter": pulse_oximeter, "bp_monitor": bp_monitor, "scale": scale,
    "glucose_meter": glucose_meter, "medicine_dispenser": medicine_dispenser,
    "personal_alarm": personal_alarm, "gateway": gateway,
}


def reading(metric: str, value: float, unit: str, decimals: int) -> Reading:
    rounded: float = round(value, decimals) if decimals else round(value)
    return {"metric": metric, "value": rounded, "unit": unit}


def events(code: str) -> Body:
    return {"events": [{"code": code, "severity": EVENT_SEVERITY[code]}]}


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)
