"""How each catalogue model writes its messages: canonical JSON or SenML, in which units, with
which times. The simulator decides what a device means (canonical values); this module only
says it the way that vendor's firmware does, so the decoder's paths are all used end to end.

The table lives here, not in the catalogue: the engine never needs it (it tells the formats
apart by the payload's shape and converts every accepted unit), so the centre's list of
approved models would carry a field that nothing in production reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from vagt.ingest.units import METRICS

Body = dict[str, Any]
# (seq, made, sent, body, alarm channel) -> payload
Encode = Callable[[int, float, float, Body, bool], bytes]

# Decimals a device sends a converted value with: what its display shows (a US scale 0.1 lb,
# a US glucose meter whole mg/dL). A unit that is the canonical one keeps the value as it is.
UNIT_DECIMALS: dict[str, int] = {"lb": 1, "g": 0, "kPa": 2, "mg/dL": 0, "/": 4, "dBW": 0}


@dataclass(frozen=True)
class Wire:
    """One model's way of writing. `units`: the unit a metric is sent in (None: left out,
    which the decoder allows only for metrics that assume their unit); other metrics go in
    their canonical unit. `clock`: canonical JSON's `time` as unix seconds (`unix`), RFC 3339
    in UTC with milliseconds (`utc`) or with the local offset (`local`); SenML's as an
    absolute base time (`base`), or a base time when sent and each record's `t` before it
    (`offset`). `stamps_status` False: heartbeats carry no time at all, so the engine stamps
    them when it reads them (a heartbeat is never kept back, so that is when it was made)."""

    senml: bool = False
    units: Mapping[str, str | None] = field(default_factory=dict)
    clock: str = "unix"
    stamps_status: bool = True
    seq: bool = True          # canonical JSON: the device's counter (SenML has no place for it)
    device_id: bool = True    # canonical JSON: names itself; SenML: names itself in `bn`
    base_name: str = "urn:dev:ow:{}:"  # SenML: the device's name before each metric


CANONICAL = Wire()  # device_id, seq, unix seconds, canonical units: what every model once sent

# Per (vendor, model): the mix the simulated fleet sends. American models in their units (lb,
# mg/dL), a Japanese blood pressure monitor in kPa, SenML from the gateway, a dispenser, a
# scale, a glucose meter, a blood pressure monitor and an oximeter. A model not named here
# (a test's own catalogue) sends CANONICAL.
WIRES: dict[tuple[str, str], Wire] = {
    ("Tunstall", "Lifeline Vi+"): Wire(clock="utc"),
    ("Doro", "Secure 580"): CANONICAL,
    ("Careium", "Ny Tryghed 4G"): Wire(clock="local", device_id=False),
    ("Evondos", "E300"): Wire(units={"doses_remaining": "doses"}),
    ("Medido", "Medido 2"): Wire(senml=True, clock="base", units={"doses_remaining": None,
                                                                 "battery": "/"}),
    ("A&D", "UA-651BLE"): Wire(senml=True, clock="offset", base_name="{}/",
                               units={"bp_systolic": "mmHg", "bp_diastolic": "mmHg",
                                      "pulse": "beat/min", "battery": "%EL"}),
    ("Omron", "M7 Intelli IT"): Wire(clock="local", units={"bp_systolic": "kPa",
                                                          "bp_diastolic": "kPa",
                                                          "pulse": "bpm"}),
    ("Nonin", "3230"): Wire(senml=True, clock="offset", stamps_status=False,
                            units={"spo2": "/", "perfusion_index": "/", "pulse": "1/min"}),
    ("Masimo", "MightySat"): Wire(units={"spo2": None, "pulse": None, "perfusion_index": None}),
    ("Contec", "CMS50D-BT"): Wire(stamps_status=False, seq=False, units={"pulse": "bpm"}),
    ("A&D", "UC-352BLE"): Wire(senml=True, clock="base", units={"weight": "lb"}),
    ("Withings", "Body+"): Wire(clock="utc", units={"weight": "g", "body_fat": "/",
                                                    "bmi": "kg/m^2"}),
    ("Roche", "Accu-Chek Guide"): Wire(units={"glucose": "mmol/l"}),
    ("Ascensia", "Contour Next One"): Wire(senml=True, clock="base", base_name="{}/",
                                           units={"glucose": "mg/dL"}),
    ("Telit", "HomeHub 4G"): Wire(senml=True, clock="base", units={"signal": "dBW",
                                                                   "battery": "%EL"}),
    ("Cinterion", "CareGate"): CANONICAL,
}


def wire_of(vendor: str, model: str) -> Wire:
    return WIRES.get((vendor, model), CANONICAL)


def in_unit(metric: str, value: float, unit: str) -> float:
    """A canonical value as a device shows it in `unit`."""
    c = METRICS[metric].units[unit]
    if c.shift == 0.0 and c.mul == c.div:
        return value
    shown = round(c.from_canonical(value), UNIT_DECIMALS[unit])
    return round(shown) if UNIT_DECIMALS[unit] == 0 else shown  # an int prints as one


def encoder(wire: Wire, device_id: str, tz: ZoneInfo) -> Encode | None:
    """The payloads of one device; None for CANONICAL (the simulator's own fast path)."""
    if wire == CANONICAL:
        return None
    canonical = _Canonical(wire, device_id, tz)
    if not wire.senml:
        return canonical.encode
    return _SenML(wire, device_id, canonical).encode


class _Canonical:
    def __init__(self, wire: Wire, device_id: str, tz: ZoneInfo) -> None:
        self.wire = wire
        self.device_id = device_id
        self.tz = tz

    def time(self, t: float) -> float | str:
        clock = self.wire.clock
        if clock == "utc":
            return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
        if clock == "local":
            return datetime.fromtimestamp(t, self.tz).isoformat(timespec="milliseconds")
        return t

    def encode(self, seq: int, made: float, sent: float, body: Body, alarm: bool) -> bytes:
        w = self.wire
        doc: Body = {}
        if w.device_id:
            doc["device_id"] = self.device_id
        if w.seq and not w.senml:  # a SenML model has no counter: its alarms carry none either
            doc["seq"] = seq
        if w.stamps_status or "status" not in body:
            doc["time"] = self.time(made)
        for key, value in body.items():
            if key == "readings":
                value = [self.reading(r) for r in value]
            elif key == "events":
                value = [{**e, "time": self.time(e["time"])} if "time" in e else e
                         for e in value]
            doc[key] = value
        return orjson.dumps(doc)

    def reading(self, r: Body) -> Body:
        metric = r["metric"]
        if metric not in self.wire.units:
            return r
        unit = self.wire.units[metric]
        if unit is None:
            return {"metric": metric, "value": r["value"]}
        return {"metric": metric, "value": in_unit(metric, r["value"], unit), "unit": unit}


class _SenML:
    """A pack: the first record holds the bases (name, time, and the first reading's unit
    as `bu`, which later records repeat only when theirs differs). Events on the alarm channel
    go as canonical JSON: their severity and details, which a person acts on, have no place in
    SenML. Other events become `vs` records named `event`, with the default severity and no
    details (a dose's slot is not sent)."""

    def __init__(self, wire: Wire, device_id: str, canonical: _Canonical) -> None:
        self.wire = wire
        self.canonical = canonical
        self.base_name = wire.base_name.format(device_id)

    def encode(self, seq: int, made: float, sent: float, body: Body, alarm: bool) -> bytes:
        if alarm:
            return self.canonical.encode(seq, made, sent, body, alarm)
        base: Body = {"bn": self.base_name}
        bt = None
        if "status" not in body or self.wire.stamps_status:
            bt = sent if self.wire.clock == "offset" else made
            base["bt"] = bt
        records = self.records(body, bt, made)
        unit = records[0].pop("u", None)
        if unit is not None:
            base["bu"] = unit
            for r in records[1:]:
                if r.get("u") == unit:
                    del r["u"]
        records[0] = {**base, **records[0]}
        return orjson.dumps(records)

    def records(self, body: Body, bt: float | None, made: float) -> list[Body]:
        """The body's records; times relative to the base time `bt` (None: there is none,
        and a record without `t` is read as the time the engine reads it)."""
        out: list[Body] = []
        for e in body.get("events", ()):
            rec: Body = {"n": "event", "vs": e["code"]}
            out.append(_at(rec, e.get("time", made), bt))  # a connection report's own times
        for r in body.get("readings", ()):
            out.append(_at(self.value(r["metric"], r["value"], r["unit"]), made, bt))
        status = body.get("status")
        if status is not None:
            for metric in ("battery", "signal"):
                if metric in status:
                    out.append(self.value(metric, status[metric], METRICS[metric].unit))
            out.append({"n": "firmware", "vs": status["firmware"]})
        return out

    def value(self, metric: str, value: float, unit: str) -> Body:
        sent = self.wire.units.get(metric, unit)
        if sent is None:
            return {"n": metric, "v": value}
        return {"n": metric, "u": sent, "v": in_unit(metric, value, sent)}


def _at(record: Body, t: float, bt: float | None) -> Body:
    if bt is not None and t != bt:
        record["t"] = round(t - bt, 3)
    return record
