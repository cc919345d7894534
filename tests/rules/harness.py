"""A rule engine over a small fleet, batches written as tuples, and the alert book it drives."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vagt.devices.catalogue import load_catalogue
from vagt.rules import Batch, Evaluation, RuleEngine, load_rules
from vagt.rules.book import AlertBook
from vagt.rules.state import ListFleet

# index: (device_id, vendor, model, type, municipality)
DEVICES = [
    ("OXI-1", "Nonin", "3230", "pulse_oximeter", "Aarhus"),
    ("OXI-2", "Nonin", "3230", "pulse_oximeter", "Samsø"),
    ("DSP-1", "Evondos", "E300", "medicine_dispenser", "Randers"),
    ("SCL-1", "Withings", "Body+", "scale", "Viborg"),
    ("GW-1", "Telit", "HomeHub 4G", "gateway", "Aarhus"),
]





def batch_of(readings=(), events=(), seen=()) -> Batch:
    """A batch of (device, metric, value, time) readings, (device, code, time) events and
    (device, time) messages."""
    r, e, s = list(readings), list(events), list(seen)
    return Batch(
        r_device=np.array([x[0] for x in r], dtype=np.int64),
        r_metric=np.array([x[1] for x in r], dtype=object),
        r_value=np.array([x[2] for x in r], dtype=np.float64),
        r_time=np.array([x[3] for x in r], dtype=np.float64),
        e_device=np.array([x[0] for x in e], dtype=np.int64),
        e_code=np.array([x[1] for x in e], dtype=object),
        e_time=np.array([x[2] for x in e], dtype=np.float64),
        m_device=np.array([x[0] for x in s], dtype=np.int64),
        m_time=np.array([x[1] for x in s], dtype=np.float64),
    )


class Harness:
    def __init__(self, tmp_path: Path, toml: str, history=None) -> None:
        p = tmp_path / "rules.toml"
        p.write_text(toml)
        self.fleet = ListFleet()
        for d in DEVICES:
            self.fleet.add(*d)
        self.engine = RuleEngine(load_rules(p), self.fleet, load_catalogue(), history)
        self.book = AlertBook()
        self.last: Evaluation | None = None

    def batch(self, readings=(), events=(), seen=()) -> Evaluation:
        return self._take(self.engine.evaluate(batch_of(readings, events, seen)))

    def tick(self, now: float, behind: list[float] | None = None) -> Evaluation:
        return self._take(self.engine.tick(now, None if behind is None else np.array(behind)))

    def sweep(self, now: float, last_seen: list[float],
              last_heard: list[float] | None = None) -> Evaluation:
        open_ = [(name, d) for (name, d) in self.book.open_]
        heard = None if last_heard is None else np.array(last_heard)
        return self._take(self.engine.sweep_absence(now, np.array(last_seen), open_, heard))

    def _take(self, ev: Evaluation) -> Evaluation:
        self.book.record(ev)
        self.engine.apply(ev)
        self.last = ev
        return ev

    def open(self) -> set[tuple[str, int]]:
        return set(self.book.open_)

    def opened(self, rule: str, device: int) -> int:
        return self.book.opened[(rule, device)]

    def cleared(self, rule: str, device: int) -> int:
        return self.book.cleared[(rule, device)]
