"""The simulation: a fleet of catalogue models living in simulated time, as one stream of MQTT
messages (topic, payload in its model's format: vagt.sim.wire) in the order they are published;
byte for byte the same for the same fleet, seed, start and configuration.

Time moves in windows (`SimConfig.window_s`). Per window, numpy decides which heartbeats are
due and what batteries read; the day's plan supplies measurements, doses and incidents; what a
device made while its connection was down waits and goes out when it is back; in a regional
outage (SimConfig.regional_outage_*) its heartbeats wait too.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import orjson

from vagt.devices.catalogue import Catalogue, MetricRange, Model, load_catalogue
from vagt.sim.config import SimConfig
from vagt.sim.dispensers import DoseStock
from vagt.sim.fleet import DEVICE_TYPES, SimDevice
from vagt.sim.network import Outages
from vagt.sim.plan import DayPlanner, FleetColumns, Kind, Plan, Records
from vagt.sim.population import Population, can_be_implausible, implausible
from vagt.sim.power import KINDS, Power
from vagt.sim.wire import Encode, encoder, wire_of

Body = dict[str, Any]  # the payload without device_id, seq and time

# Codes that need a person: sent on the alarm channel, consumed apart from bulk telemetry.
ALARM_CODES = frozenset({"alarm.fall", "alarm.panic", "fault.dispenser_jam", "tamper",
                         "power.mains_lost", "power.mains_restored"})
SEVERITY = {"alarm.fall": "critical", "alarm.panic": "critical", "fault.dispenser_jam": "major",
            "tamper": "warning", "power.mains_lost": "warning", "power.mains_restored": "info",
            "dose.due": "info", "dose.taken": "info", "connection.lost": "warning",
            "connection.restored": "info"}
EVENT_CODES = tuple(SEVERITY)
CHANNELS = ("telemetry", "alarm", "status")
_TELEMETRY, _ALARM, _STATUS = 0, 1, 2


class SimMessage(NamedTuple):
    """One message as a device publishes it, at simulated time `time` (unix seconds). The
    payload's own times are when things happened: older for a buffered message."""

    topic: str
    payload: bytes
    time: float


class Simulation:
    """An endless stream of the fleet's messages from `start` on (unix seconds)."""

    def __init__(self, fleet: list[SimDevice], *, seed: int = 1, start: float | None = None,
                 topic_root: str = "vagt/v1", config: SimConfig | None = None,
                 catalogue: Catalogue | None = None) -> None:
        if not fleet:
            raise ValueError("the simulation needs at least one device")
        self.fleet = list(fleet)
        self.config = config if config is not None else SimConfig()
        self.start = self.now = float(time.time() if start is None else start)
        self.tz = ZoneInfo(self.config.timezone)
        self.models = _models(fleet, catalogue if catalogue is not None else load_catalogue())
        # one random stream per concern, so that a change in one leaves the others alone
        # (spawn(6)'s first five are spawn(5)'s: a new concern leaves the old streams alone)
        setup, self._plan_rng, self._hb_rng, self._value_rng, power_rng, region_rng = (
            np.random.Generator(np.random.PCG64(s))
            for s in np.random.SeedSequence(seed).spawn(6))
        n = len(fleet)
        citizens: dict[str, int] = {}
        citizen = np.array([citizens.setdefault(d.citizen, len(citizens)) for d in fleet],
                           dtype=np.int64)
        columns = _columns(fleet, self.models, citizen)
        self._link = columns.link
        self.population = Population(len(citizens), setup, self.config)
        self._planner = DayPlanner(columns, self.population.adherence, setup, self.config)
        self.power = Power(np.array([KINDS[m.battery] for m in self.models], dtype=np.int8),
                           power_rng, self.config)
        self.doses = DoseStock(self.models, self._planner.schedule.tolist(),
                               self.config.refill_days, setup)
        self.outages = Outages()
        self._plan = Plan()
        self._in_region = self._regional_outage(columns, region_rng)
        self._planned_until = self._local_midnight(self.start)  # planned a day at a time
        # heartbeats: a random phase, then every heartbeat_s at most
        self._period = np.array([m.heartbeat_s for m in self.models], dtype=np.float64)
        self._next_hb = self.start + setup.uniform(0, 1, n) * self._period
        own_radio = columns.link == np.arange(n)
        self._signal = np.where(own_radio, setup.normal(-80, 9, n).clip(-112, -55),
                                setup.normal(-66, 7, n).clip(-90, -45))  # cellular, Bluetooth
        # per device, as lists: the per-message loop reads these
        self._ids = [d.device_id for d in fleet]
        self._topics = [[f"{topic_root}/dev/{d.device_id}/{ch}" for ch in CHANNELS]
                        for d in fleet]
        self._firmware = [d.firmware for d in fleet]
        self._encode: list[Encode | None] = (
            [None] * n if self.config.canonical_only else
            [encoder(wire_of(d.vendor, d.model), d.device_id, self.tz) for d in fleet])
        self._has_battery = [m.battery != "none" for m in self.models]
        self._citizen = citizen.tolist()
        self._metrics: list[tuple[MetricRange, ...]] = [
            tuple(r for name, r in m.metrics.items() if name != "doses_remaining")
            for m in self.models]
        self._stuck_left = [0] * n
        self._stuck_values: dict[int, list[float]] = {}
        self._mains_outage = [-1] * n  # the number of the outage a device is in
        self._seq = [0] * n
        self._waiting: list[tuple[float, float, int, int, int, Body]] = []  # a heap
        self._order = itertools.count()
        self._ready: deque[SimMessage] = deque()  # made, not yet handed out

    # --- the stream -------------------------------------------------------------------------

    def messages(self, until: float | None = None) -> Iterator[SimMessage]:
        """The messages in the order they are published, those published before simulated
        time `until` (None: without end). A later call continues where this one stopped."""
        ready = self._ready
        while True:
            if not ready:
                if until is not None and self.now >= until:
                    return
                ready.extend(self._window())
                continue
            if until is not None and ready[0].time >= until:
                return
            yield ready.popleft()

    def _window(self) -> list[SimMessage]:
        """The messages of the next window of simulated time, in publishing order."""
        t0 = self.now
        t1 = t0 + self.config.window_s
        while self._planned_until < t1:
            self._plan_day(self._planned_until)
        slope = self.power.slope()
        alive = self.power.alive()
        hb_t, hb_d, hb_sent = self._heartbeats(t1, alive)
        records = self._records(self._plan.take(t1), alive)
        while self._waiting and self._waiting[0][0] < t1:
            records.append(heapq.heappop(self._waiting))
        out = self._format(t0, t1, (hb_t, hb_d, hb_sent), records, slope)
        self.power.advance(t0, t1, slope, self._hb_rng)
        self.outages.forget_before(t0)
        self.now = t1
        return out

    # --- planning ---------------------------------------------------------------------------

    def _local_midnight(self, t: float) -> float:
        day = datetime.fromtimestamp(t, self.tz).date()
        return self._midnight(day)

    def _midnight(self, day: date) -> float:
        return datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()

    def _plan_day(self, t: float) -> None:
        """Plan the local day that holds `t`."""
        day = datetime.fromtimestamp(t, self.tz).date()
        start, end = self._midnight(day), self._midnight(day + timedelta(days=1))
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=self.tz)
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        shift = ((noon.utcoffset() or timedelta()) -
                 (midnight.utcoffset() or timedelta())).total_seconds()
        self.population.new_day(self._plan_rng, start)
        self._planner.plan(self._plan, self.outages, self._plan_rng, start, end, shift,
                           self.start)
        self._planned_until = end

    def _regional_outage(self, columns: FleetColumns, rng: np.random.Generator
                         ) -> npt.NDArray[np.bool_]:
        """Per device: behind a connection the regional outage takes down. The outage is one
        of `outages` (no other drop of those connections overlaps it), and a gateway that
        reports its connection reports this loss too, when it is back."""
        c = self.config
        n = len(columns.link)
        links = np.flatnonzero(columns.link == np.arange(n))
        down = links[rng.random(len(links)) < c.regional_outage_share]
        self._region_down = self.start + c.regional_outage_at_h * 3600.0
        self._region_back = self._region_down + c.regional_outage_h * 3600.0
        if not c.regional_outage_h or not len(down):
            return np.zeros(n, dtype=np.bool_)
        for link in down.tolist():
            self.outages.add(link, self._region_down, self._region_back)
        reports = down[columns.sends["connection.lost"][down]]
        self._plan.add(np.full(len(reports), self._region_back), reports, Kind.CONNECTION,
                       aux=np.full(len(reports), self._region_down))
        return np.isin(columns.link, down)

    # --- heartbeats -------------------------------------------------------------------------

    def _heartbeats(self, t1: float, alive: npt.NDArray[np.bool_]
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp],
                               npt.NDArray[np.float64]]:
        """Status messages due before t1 (a device late in the window may have two): their
        times, devices and when they are sent (behind a regional outage: when it is over)."""
        times, devices = [], []
        jitter = self.config.heartbeat_jitter
        while True:
            due = np.flatnonzero(self._next_hb < t1)
            if not len(due):
                break
            t = self._next_hb[due]
            times.append(t)
            devices.append(due)
            step = self._period[due] * (1.0 - jitter * self._hb_rng.random(len(due)))
            self._next_hb[due] = t + step
        if not times:
            return np.empty(0), np.empty(0, dtype=np.intp), np.empty(0)
        t, d = np.concatenate(times), np.concatenate(devices)
        keep = alive[d]
        held = self._in_region[d] & (t >= self._region_down) & (t < self._region_back)
        links = self.outages.links()
        if len(links):
            suspect = np.flatnonzero(np.isin(self._link[d], links) & ~held)
            for k in suspect.tolist():
                if self.outages.back_at(int(self._link[d[k]]), float(t[k])) is not None:
                    keep[k] = False  # no connection: this heartbeat is never sent
        sent = np.where(held, self._region_back, t)
        return t[keep], d[keep], sent[keep]

    # --- planned records --------------------------------------------------------------------

    def _records(self, r: Records, alive: npt.NDArray[np.bool_]
                 ) -> list[tuple[float, float, int, int, int, Body]]:
        """The planned records of a window as (publish time, time, order, device, channel,
        body); those of a device whose connection is down wait for it."""
        out: list[tuple[float, float, int, int, int, Body]] = []
        if not len(r):
            return out
        z = self._value_rng.standard_normal((len(r), 4)).tolist()
        u = self._value_rng.random((len(r), 5)).tolist()
        alive_l = alive[r.d].tolist()
        for k, (t, d, kind, arg, aux) in enumerate(zip(r.t.tolist(), r.d.tolist(),
                                                       r.kind.tolist(), r.arg.tolist(),
                                                       r.aux.tolist())):
            if kind == Kind.STUCK:
                self._stuck_left[d] = self.config.stuck_repeats
                self._stuck_values.pop(d, None)
                continue
            if kind == Kind.MAINS_LOST or kind == Kind.MAINS_RESTORED:
                made = self._mains(d, kind, arg, t, aux)
            elif not alive_l[k]:
                continue  # an empty battery: nothing measured, nothing sent
            elif kind == Kind.MEASURE:
                made = self._measurement(d, t, z[k], u[k])
            elif kind == Kind.CONNECTION:
                made = (channel_of("connection.lost"), {"events": [
                    _event("connection.lost", round(aux, 3),
                           {"flapping": True} if arg else None),
                    _event("connection.restored", round(t, 3))]})
            else:
                made = self._event(d, kind, arg)
            if made is None:
                continue
            channel, body = made
            back = None
            if kind != Kind.CONNECTION:
                back = self.outages.back_at(int(self._link[d]), t)
            entry = (back if back is not None else t, t, next(self._order), d, channel, body)
            if back is None:
                out.append(entry)
            else:
                heapq.heappush(self._waiting, entry)
        return out

    def _mains(self, d: int, kind: int, number: int, t: float,
               restored: float) -> tuple[int, Body] | None:
        if kind == Kind.MAINS_LOST:
            if self._mains_outage[d] >= 0:
                return None  # already out
            self._mains_outage[d] = number
            self.power.mains_lost(d)
            empty = self.power.empty_in(d)
            if t + empty < restored:  # the backup battery gives out first: so does the radio,
                self.outages.add(d, t + empty, restored)  # and a gateway's household with it
            return _one("power.mains_lost")
        if self._mains_outage[d] != number:
            return None
        self._mains_outage[d] = -1
        self.power.mains_restored(d)
        return _one("power.mains_restored")

    def _event(self, d: int, kind: int, arg: int) -> tuple[int, Body] | None:
        slot = {"slot": f"{arg // 60:02d}:{arg % 60:02d}"}
        if kind == Kind.DOSE_DUE:
            return _one("dose.due", slot)
        if kind == Kind.DOSE_TAKEN:
            channel, body = _one("dose.taken", slot)
            r = self.doses.range[d]
            if r is not None:
                body["readings"] = [{"metric": "doses_remaining",
                                     "value": self.doses.take(d), "unit": r.unit}]
            return channel, body
        if kind == Kind.JAM:
            return _one("fault.dispenser_jam", slot)
        if kind == Kind.FALL:
            return _one("alarm.fall", {"source": "pendant"})
        if kind == Kind.PANIC:
            return _one("alarm.panic", {"source": "button"})
        if kind == Kind.TAMPER:
            return _one("tamper")
        raise AssertionError(f"unplanned record kind {kind}")

    def _measurement(self, d: int, t: float, z: list[float],
                     u: list[float]) -> tuple[int, Body] | None:
        """What device `d` measures at `t`: its citizen's values, unless the sensor is stuck
        or, now and then, one value is implausible. `z`: normal draws, `u`: uniform ones."""
        metrics = self._metrics[d]
        if not metrics:
            return None
        c = self.config
        clock = datetime.fromtimestamp(t, self.tz)
        hour = clock.hour + clock.minute / 60
        values = self.population.measure(self._citizen[d], metrics, t, hour, z,
                                         u[0] < c.acute_episode)
        if self._stuck_left[d] > 0:
            self._stuck_left[d] -= 1
            values = self._stuck_values.setdefault(d, values)
        elif u[1] < c.impossible_value:
            beyond = u[3] < c.beyond_physical
            # an implausible value of a metric that has one (SpO2 has none), so that the
            # share beyond what any sensor reports stays the configured one
            choices = [j for j, m in enumerate(metrics) if beyond or can_be_implausible(m)]
            if choices:
                k = choices[int(u[2] * len(choices)) % len(choices)]
                values = list(values)
                values[k] = implausible(metrics[k], beyond, u[4])
        return _TELEMETRY, {"readings": [{"metric": m.metric, "value": v, "unit": m.unit}
                                         for m, v in zip(metrics, values)]}

    # --- payloads ---------------------------------------------------------------------------

    def _format(self, t0: float, t1: float,
                heartbeats: tuple[npt.NDArray[np.float64], npt.NDArray[np.intp],
                                  npt.NDArray[np.float64]],
                records: list[tuple[float, float, int, int, int, Body]],
                slope: npt.NDArray[np.float64]) -> list[SimMessage]:
        """Heartbeats and records merged in publishing order, numbered, as payloads; a
        heartbeat sent after this window waits with the records."""
        hb_t, hb_d, hb_sent = heartbeats
        n_hb = len(hb_t)
        levels = self.power.levels_at(hb_d, hb_t, t0, slope)
        signal = np.rint(self._signal[hb_d] + self._hb_rng.normal(0, 2.0, n_hb)).clip(-120, -30)
        publish = np.concatenate([hb_sent, np.array([r[0] for r in records])])
        made = np.concatenate([hb_t, np.array([r[1] for r in records])])
        order = np.lexsort((made, publish)).tolist()
        # to the millisecond, as payloads carry it; a message is never dated after it is sent
        made_l = np.round(made, 3).tolist()
        publish_l = np.round(publish, 3).tolist()
        hb_dl = hb_d.tolist()
        battery = np.rint(np.nan_to_num(levels, nan=0.0)).astype(np.int64).tolist()
        signal_l = signal.astype(np.int64).tolist()
        ids, topics, seqs, firmware = self._ids, self._topics, self._seq, self._firmware
        has_battery, encode, dumps = self._has_battery, self._encode, orjson.dumps
        out: list[SimMessage] = []
        append, new = out.append, tuple.__new__  # a NamedTuple's own __new__ is slower
        for i in order:
            if i < n_hb:
                d = hb_dl[i]
                status: Body = ({"battery": battery[i], "signal": signal_l[i],
                                 "firmware": firmware[d]} if has_battery[d] else
                                {"signal": signal_l[i], "firmware": firmware[d]})
                if publish_l[i] >= t1:  # behind a regional outage that outlasts the window
                    heapq.heappush(self._waiting, (float(hb_sent[i]), float(hb_t[i]),
                                                   next(self._order), d, _STATUS,
                                                   {"status": status}))
                    continue
                channel, body = _STATUS, {"status": status}
            else:
                _, _, _, d, channel, body = records[i - n_hb]
            s = seqs[d] + 1
            seqs[d] = s
            enc = encode[d]
            if enc is None:
                payload = dumps({"device_id": ids[d], "seq": s, "time": made_l[i], **body})
            else:
                payload = enc(s, made_l[i], publish_l[i], body, channel == _ALARM)
            append(new(SimMessage, (topics[d][channel], payload, publish_l[i])))
        return out


def _models(fleet: list[SimDevice], catalogue: Catalogue) -> list[Model]:
    """Each device's approved model (CatalogueError if one is not approved)."""
    known: dict[tuple[str, str, str], Model] = {}
    for d in fleet:
        key = (d.vendor, d.model, d.type)
        if key not in known:
            known[key] = catalogue.require(*key)
    return [known[(d.vendor, d.model, d.type)] for d in fleet]


def _columns(fleet: list[SimDevice], models: list[Model],
             citizen: npt.NDArray[np.int64]) -> FleetColumns:
    index = {d.device_id: i for i, d in enumerate(fleet)}
    link = np.array([index.get(d.gateway, i) if d.gateway else i for i, d in enumerate(fleet)],
                    dtype=np.int64)
    types = DEVICE_TYPES.keys() | {d.type for d in fleet}
    distinct = {id(m): m for m in models}.values()
    sends = {(id(m), code): m.sends_event(code) for m in distinct for code in EVENT_CODES}
    return FleetColumns(
        citizen=citizen, link=link,
        is_type={t: np.array([d.type == t for d in fleet]) for t in types},
        sends={code: np.array([sends[(id(m), code)] for m in models]) for code in EVENT_CODES},
        mains=np.array([m.battery == "mains_backup" for m in models]))


def channel_of(code: str) -> int:
    """The channel (an index into CHANNELS) an event goes out on."""
    if code in ALARM_CODES:
        return _ALARM
    return _STATUS if code.startswith("connection.") else _TELEMETRY


def _one(code: str, details: dict[str, Any] | None = None) -> tuple[int, Body]:
    return channel_of(code), {"events": [_event(code, details=details)]}


def _event(code: str, at: float | None = None, details: dict[str, Any] | None = None) -> Body:
    e: Body = {"code": code, "severity": SEVERITY[code]}
    if at is not None:
        e["time"] = at
    if details:
        e["details"] = details
    return e
