"""Simulated traffic: what each device type sends, with per-citizen physiology, noise,
battery drain and now and then an alarm or a fault. Deterministic for a seed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from vagt.sim.fleet import SimDevice


@dataclass
class _State:
    seq: int = 0
    battery: float = 100.0
    baseline: dict[str, float] = field(default_factory=dict)


class Traffic:
    """An endless, reproducible stream of (topic, payload) for a fleet.

    `alarm_rate` is the chance that a personal alarm's message is an alarm; `fault_rate` the
    chance that a dispenser reports a jam. Message times come from `clock()` per message.
    """

    def __init__(self, fleet: list[SimDevice], *, seed: int = 1, topic_root: str = "vagt/v1",
                 alarm_rate: float = 0.02, fault_rate: float = 0.01,
                 battery_drain: float = 0.5) -> None:
        self.fleet = fleet
        self.rng = random.Random(seed)
        self.root = topic_root
        self.alarm_rate = alarm_rate
        self.fault_rate = fault_rate
        self.battery_drain = battery_drain
        self.state = {d.device_id: _State(baseline=self._baseline()) for d in fleet}

    def _baseline(self) -> dict[str, float]:
        g = self.rng.gauss
        return {"spo2": min(99.0, g(95.5, 1.5)), "pulse": g(72, 9), "bp_systolic": g(135, 15),
                "bp_diastolic": g(82, 9), "weight": g(78, 14), "glucose": g(7.5, 1.8)}

    def messages(self, times: Iterator[float]) -> Iterator[tuple[str, bytes]]:
        """One message per time from `times`, devices in a shuffled round robin."""
        order = list(self.fleet)
        while True:
            self.rng.shuffle(order)
            for d in order:
                yield self.message(d, next(times))

    def message(self, d: SimDevice, t: float) -> tuple[str, bytes]:
        s = self.state[d.device_id]
        s.seq += 1
        s.battery -= self.battery_drain * self.rng.random()
        if s.battery < 5 and self.rng.random() < 0.3:
            s.battery = 100.0  # recharged or replaced
        rng = self.rng
        if s.seq % 10 == 0:
            return self._send(d, "status", {"seq": s.seq, "time": t, "status": {
                "battery": round(max(s.battery, 0.0), 1),
                "signal": round(rng.gauss(-75, 8), 0), "firmware": "2.4.1"}})
        if d.type == "personal_alarm" and rng.random() < self.alarm_rate:
            code = "alarm.fall" if rng.random() < 0.6 else "alarm.panic"
            return self._send(d, "alarm", {"seq": s.seq, "time": t, "events": [{"code": code}]})
        if d.type == "medicine_dispenser":
            if rng.random() < self.fault_rate:
                return self._send(d, "alarm", {"seq": s.seq, "time": t,
                                               "events": [{"code": "fault.dispenser_jam"}]})
            code = "dose.taken" if rng.random() < 0.9 else "dose.due"
            return self._send(d, "telemetry", {"seq": s.seq, "time": t,
                                               "events": [{"code": code}]})
        readings = self._readings(d.type, s.baseline)
        if not readings:  # alarms and gateways report status only
            return self._send(d, "status", {"seq": s.seq, "time": t,
                                            "status": {"battery": round(max(s.battery, 0.0), 1)}})
        return self._send(d, "telemetry", {"seq": s.seq, "time": t, "readings": readings})

    def _readings(self, kind: str, b: dict[str, float]) -> list[dict[str, object]]:
        g = self.rng.gauss

        def r(metric: str, value: float, unit: str, lo: float, hi: float) -> dict[str, object]:
            return {"metric": metric, "value": round(min(max(value, lo), hi), 1), "unit": unit}

        if kind == "pulse_oximeter":
            return [r("spo2", g(b["spo2"], 1.2), "%", 70, 100), r("pulse", g(b["pulse"], 5),
                                                                  "/min", 30, 200)]
        if kind == "bp_monitor":
            return [r("bp_systolic", g(b["bp_systolic"], 8), "mm[Hg]", 70, 250),
                    r("bp_diastolic", g(b["bp_diastolic"], 6), "mm[Hg]", 40, 150),
                    r("pulse", g(b["pulse"], 5), "/min", 30, 200)]
        if kind == "scale":
            return [r("weight", g(b["weight"], 0.4), "kg", 30, 250)]
        if kind == "glucose_meter":
            return [r("glucose", g(b["glucose"], 1.5), "mmol/L", 1.5, 30)]
        return []

    def _send(self, d: SimDevice, channel: str, doc: dict[str, object]) -> tuple[str, bytes]:
        return (f"{self.root}/dev/{d.device_id}/{channel}",
                orjson.dumps({"device_id": d.device_id, **doc}))
