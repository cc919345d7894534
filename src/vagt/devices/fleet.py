"""The fleet in memory: a dense index per registered device and its state in numpy arrays.

The rules engine reads these arrays by device index; the pipeline resolves a batch's device
ids to indexes in one vectorised lookup and asks the database only for ids it has not seen.

State (last seen, battery, signal, firmware, message counter) is written to the `devices`
table in the batch's transaction and applied here only after the commit, so memory never
runs ahead of the database. At start `load()` restores it from the table; `refresh()` pulls in
what other engine processes (a share group) and the registry commands changed meanwhile.
Times are the device's own clock (epoch seconds), but `last_heard`, the broker's receipt
time by ours: silence (online, overdue) is judged from it, since a device's clock may be
minutes or years wrong (migration 0020). NaN means never / unknown.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import psycopg

from vagt.app.db import in_parts
from vagt.arrays import F64, I64, Bools, positions
from vagt.devices.catalogue import Catalogue, load_catalogue
from vagt.devices.lifecycle import Status

if TYPE_CHECKING:
    import pandas as pd

# A device is offline once it has been silent for this many of its model's heartbeat
# intervals: one missed heartbeat is common (a retry, a busy cell), two is not.
OFFLINE_AFTER_HEARTBEATS = 2.0
LOAD_CHUNK = 10_000

# When a deployed device's silence counts from at the earliest, in SQL over `devices d LEFT
# JOIN rule_state s USING (device_id)`: its deployment to the citizen it is with, when its
# rule state began (migration 0010), so that a device given to the next citizen is not
# silent for the last one's silence. A device never heard counts from then too or, with no
# rule state row (deployed before 0010, or registered deployed by an import, which writes
# none), from when its status became what it is. NULL: not known (heard, deployed before
# 0010). Of a device that is deployed only: the absence rules (`rule_queries.last_heard`) and
# `vagt fleet` (`fleet_cli`) count from it.
SILENT_FROM = ("CASE WHEN d.last_seen IS NULL THEN coalesce(s.began, d.status_since) "
               "ELSE s.began END")

_REGISTRY = "device_id, vendor, model, type, municipality, status"
_STATE = ("extract(epoch FROM last_seen)::float8, battery::float8, "
          "extract(epoch FROM battery_at)::float8, signal::float8, "
          "extract(epoch FROM signal_at)::float8, firmware, "
          "extract(epoch FROM firmware_at)::float8, "
          # never before last_seen: an engine of the release before migration 0020, sharing
          # the subscription during an upgrade, moves last_seen only
          "extract(epoch FROM greatest(last_heard, last_seen))::float8")


@dataclass
class StateUpdate:
    """What one committed batch says about its devices, one row per device."""

    device: I64 = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    seen: F64 = field(default_factory=lambda: np.empty(0))
    battery: F64 = field(default_factory=lambda: np.empty(0))
    battery_at: F64 = field(default_factory=lambda: np.empty(0))
    signal: F64 = field(default_factory=lambda: np.empty(0))
    signal_at: F64 = field(default_factory=lambda: np.empty(0))
    firmware: list[str | None] = field(default_factory=list)   # None: none in the batch
    firmware_at: F64 = field(default_factory=lambda: np.empty(0))
    heard: F64 = field(default_factory=lambda: np.empty(0))   # received, by our clock


class _Codes:
    """A string column as small integer codes, so counting by it is one np.bincount."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._code: dict[str, int] = {}
        self.codes = np.empty(0, dtype=np.int64)

    def code(self, name: str) -> int:
        c = self._code.get(name)
        if c is None:
            c = self._code[name] = len(self.names)
            self.names.append(name)
        return c

    def known(self, name: str) -> int:
        """The code of `name`, or -1 if no device has it (without adding it)."""
        return self._code.get(name, -1)

    def extend(self, names: Iterable[str]) -> None:
        new = np.fromiter((self.code(n) for n in names), dtype=np.int64)
        self.codes = np.concatenate([self.codes, new])

    def counts(self, mask: Bools | None = None) -> dict[str, int]:
        n = np.bincount(self.codes if mask is None else self.codes[mask],
                        minlength=len(self.names))
        return {name: int(k) for name, k in zip(self.names, n) if k}


class Fleet:
    """Registered devices, each with a dense index 0..n-1 that never changes while we run."""

    def __init__(self, catalogue: Catalogue | None = None) -> None:
        self.catalogue = catalogue if catalogue is not None else load_catalogue()
        self.ids: list[str] = []
        self._index: dict[str, int] = {}
        self.vendor: list[str] = []
        self.model: list[str] = []
        self.type: list[str] = []
        self.municipality: list[str] = []
        self.status: list[str] = []
        self.firmware: list[str | None] = []
        self.heartbeat_s = np.empty(0)      # the model's interval; NaN: not in the catalogue
        self.last_seen = np.empty(0)
        self.last_heard = np.empty(0)      # by our clock: when its latest message came
        self.battery = np.empty(0)
        self.battery_at = np.empty(0)
        self.signal = np.empty(0)
        self.signal_at = np.empty(0)
        self.firmware_at = np.empty(0)     # device time of the status message it came from
        self._status = _Codes()
        self._type = _Codes()
        self._place = _Codes()
        # The alarm lane and the bulk lane share one fleet: growth and state updates are
        # serialised; lookups need no lock: a device enters the index last (see _add).
        self.lock = threading.Lock()
        # One more whenever a device's vendor, model, type or municipality changes here (a
        # device redeployed to another municipality, a model corrected by an import): what
        # the rules computed from them (which rules apply, plausible ranges, heartbeats)
        # must be computed again, not only for devices added.
        self.registry_version = 0

    def __len__(self) -> int:
        return len(self.ids)

    # -- registry ------------------------------------------------------------------------------

    def load(self, conn: psycopg.Connection) -> None:
        """Every registered device with its stored state (at start: state survives restarts)."""
        # in parts: 100,000 rows fetched at once held 40 MB of tuples at the peak
        query = f"SELECT {_REGISTRY}, {_STATE} FROM devices ORDER BY device_id"
        with conn.transaction(), in_parts(conn, "vagt_fleet_load", query,
                                          part=LOAD_CHUNK) as parts:
            for rows in parts:
                with self.lock:
                    self._add(rows)

    def lookup(self, device_ids: Sequence[str]) -> I64:
        """Dense indexes of `device_ids`; -1 where the device is not known here (yet)."""
        if not device_ids:
            return np.empty(0, dtype=np.int64)
        return positions(self._index, device_ids, len(device_ids))

    def resolve(self, conn: psycopg.Connection, device_ids: Sequence[str]) -> I64:
        """Like lookup(), but first asks the database about ids not seen before.

        Devices registered while the engine runs (`vagt devices import`) are found this way
        without a restart; ids that are in no table stay -1 (unknown devices).
        """
        idx = self.lookup(device_ids)
        if (idx < 0).any():
            missing = sorted({device_ids[int(i)] for i in np.flatnonzero(idx < 0)})
            rows = conn.execute(
                f"SELECT {_REGISTRY}, {_STATE} FROM devices WHERE device_id = ANY(%s) "
                "ORDER BY device_id", (missing,)).fetchall()
            with self.lock:
                # the other lane may have added some of them meanwhile
                still_missing = [r[0] not in self._index for r in rows]
                self._add(r for r, m in zip(rows, still_missing) if m)
            idx = self.lookup(device_ids)
        return idx

    def refresh(self, conn: psycopg.Connection, known_only: bool = False) -> None:
        """Re-read registry fields and state of every known device, and add new devices
        (with `known_only`, not: a fleet that `resolve` fills as devices send).

        State only moves forward (by device time), so a refresh that raced a batch of this
        process never takes a device back to an older reading.
        """
        where, params = ("WHERE device_id = ANY(%s) ", (list(self.ids),)) if known_only \
            else ("", ())
        query = f"SELECT {_REGISTRY}, {_STATE} FROM devices {where}ORDER BY device_id"
        with conn.transaction(), in_parts(conn, "vagt_fleet_refresh", query, params,
                                          part=LOAD_CHUNK) as parts:
            for rows in parts:
                self._refresh(rows)

    def refresh_devices(self, conn: psycopg.Connection, idx: I64) -> None:
        """Re-read the registry fields and state of the devices `idx` (dense indexes): what
        other processes committed of them since this one last read them."""
        if len(idx) == 0:
            return
        rows = conn.execute(f"SELECT {_REGISTRY}, {_STATE} FROM devices "
                            "WHERE device_id = ANY(%s)", ([self.ids[i] for i in idx.tolist()],)
                            ).fetchall()
        self._refresh(rows)

    def registry_key(self, k: int) -> str:
        """Device `k`'s registry fields as this fleet has them, as one text
        joined by chr(31) as `store._UPDATE_DEVICES` joins the stored ones, which says which
        devices' are others now."""
        return "\x1f".join((self.vendor[k], self.model[k], self.type[k], self.municipality[k],
                             self.status[k]))

    def take_registry(self, rows: Sequence[tuple[object, ...]]) -> None:
        """The registry fields of known devices as read: (device id, vendor, model, type,
        municipality, status) each."""
        if not rows:
            return
        with self.lock:
            known = positions(self._index, (str(r[0]) for r in rows), len(rows))
            self._set_registry([(int(k), r) for k, r in zip(known, rows) if k >= 0])

    def refresh_registry(self, conn: psycopg.Connection, idx: I64) -> None:
        """Re-read the registry fields (vendor, model, type, municipality, status) of the
        devices `idx` in the caller's transaction: what a batch makes of its devices (its
        alerts' municipality, which rules apply, whether a device is retired) is what the
        registry says now, not what it said at the last refresh, up to half a minute ago. A
        personal alarm tested at the installation of a device just deployed to the next
        citizen was labelled with the last citizen's municipality, whose operators saw it
        and the next citizen's did not. Only the registry's columns: they are few and
        short, the state's are the batch's own. The alarm lane's (a few devices a batch);
        a bulk batch's thousands of devices are told by their device-state UPDATE
        (`store.update_device_state`), which it runs anyway: asked here, 30 ms a batch of
        4,700."""
        if len(idx) == 0:
            return
        self.take_registry(conn.execute(
            f"SELECT {_REGISTRY} FROM devices WHERE device_id = ANY(%s)",
            ([self.ids[i] for i in idx.tolist()],)).fetchall())

    def _refresh(self, rows: list[tuple[object, ...]]) -> None:
        with self.lock:
            known = positions(self._index, (str(r[0]) for r in rows), len(rows))
            self._add(r for r, k in zip(rows, known) if k < 0)
            have = [(int(k), r) for k, r in zip(known, rows) if k >= 0]
            if not have:
                return
            idx = np.fromiter((k for k, _ in have), dtype=np.int64, count=len(have))
            self._set_registry(have)
            self._merge(idx, *_state_columns([r for _, r in have]))

    def _set_registry(self, have: list[tuple[int, tuple[object, ...]]]) -> None:
        """The registry columns of the known devices `have` (index, row); the caller holds
        the lock."""
        same = sys.intern
        changed = False
        for k, r in have:
            vendor, model, type_, place, status = (str(r[1]), str(r[2]), str(r[3]),
                                                   str(r[4]), str(r[5]))
            if (vendor, model, type_, place, status) == (
                    self.vendor[k], self.model[k], self.type[k], self.municipality[k],
                    self.status[k]):
                continue
            changed = changed or (vendor, model, type_, place) != (
                self.vendor[k], self.model[k], self.type[k], self.municipality[k])
            self.vendor[k], self.model[k], self.type[k] = same(vendor), same(model), \
                same(type_)
            self.municipality[k], self.status[k] = same(place), same(status)
            self._type.codes[k] = self._type.code(self.type[k])
            self._place.codes[k] = self._place.code(self.municipality[k])
            self._status.codes[k] = self._status.code(self.status[k])
            self.heartbeat_s[k] = self._heartbeat(self.vendor[k], self.model[k])
        if changed:  # after the columns are written: a reader that sees the new version
            self.registry_version += 1   # computes from the new columns

    def place(self, k: int, municipality: str, status: str) -> None:
        """Device `k` where the registry had it at another time (a backtest replays the
        period): its municipality and status, as the rules see them."""
        same = sys.intern
        with self.lock:
            self.municipality[k], self.status[k] = same(municipality), same(status)
            self._place.codes[k] = self._place.code(self.municipality[k])
            self._status.codes[k] = self._status.code(self.status[k])
            self.registry_version += 1   # the rules compute where they apply again

    def _add(self, rows: Iterable[tuple[object, ...]]) -> None:
        new = list(rows)
        if not new:
            return
        # A few vendors, models, places and firmware versions among 100,000 devices: one
        # string object each, not one per device (30 MB at 100,000 devices).
        same = sys.intern
        for r in new:
            self.ids.append(str(r[0]))
            self.vendor.append(same(str(r[1])))
            self.model.append(same(str(r[2])))
            self.type.append(same(str(r[3])))
            self.municipality.append(same(str(r[4])))
            self.status.append(same(str(r[5])))
            self.firmware.append(None if r[11] is None else same(str(r[11])))
        self._type.extend(str(r[3]) for r in new)
        self._place.extend(str(r[4]) for r in new)
        self._status.extend(str(r[5]) for r in new)
        seen, battery, battery_at, signal, signal_at, _fw, firmware_at, heard = \
            _state_columns(new)
        hb = np.array([self._heartbeat(str(r[1]), str(r[2])) for r in new])
        self.heartbeat_s = np.concatenate([self.heartbeat_s, hb])
        self.last_seen = np.concatenate([self.last_seen, seen])
        self.last_heard = np.concatenate([self.last_heard, heard])
        self.battery = np.concatenate([self.battery, battery])
        self.battery_at = np.concatenate([self.battery_at, battery_at])
        self.signal = np.concatenate([self.signal, signal])
        self.signal_at = np.concatenate([self.signal_at, signal_at])
        self.firmware_at = np.concatenate([self.firmware_at, firmware_at])
        # last: a lookup that finds a device finds its arrays too
        start = len(self.ids) - len(new)
        self._index.update(zip(self.ids[start:], range(start, len(self.ids))))

    def _heartbeat(self, vendor: str, model: str) -> float:
        m = self.catalogue.get(vendor, model)
        return float(m.heartbeat_s) if m is not None else np.nan

    # -- state ---------------------------------------------------------------------------------

    def apply(self, u: StateUpdate) -> None:
        """Bring memory in line with a batch that has just been committed."""
        if len(u.device) == 0:
            return
        with self.lock:
            self._merge(u.device, u.seen, u.battery, u.battery_at, u.signal, u.signal_at,
                        u.firmware, u.firmware_at, u.heard)

    def _merge(self, idx: I64, seen: F64, battery: F64, battery_at: F64, signal: F64,
               signal_at: F64, firmware: Sequence[str | None], firmware_at: F64,
               heard: F64) -> None:
        """Newer wins, by device time, value by value (caller holds the lock); last heard
        by our clock."""
        self.last_seen[idx] = np.fmax(self.last_seen[idx], seen)
        self.last_heard[idx] = np.fmax(self.last_heard[idx], heard)
        for value, at, new_value, new_at in ((self.battery, self.battery_at, battery, battery_at),
                                             (self.signal, self.signal_at, signal, signal_at)):
            newer = ~np.isnan(new_at) & ~(at[idx] > new_at)
            value[idx[newer]] = new_value[newer]
            at[idx[newer]] = new_at[newer]
        for k, fw, at in zip(idx.tolist(), firmware, firmware_at.tolist()):
            if fw is not None and not self.firmware_at[k] > at:   # NaN: reported before
                self.firmware[k] = sys.intern(fw)                  # times were kept
                self.firmware_at[k] = np.fmax(self.firmware_at[k], at)

    def clock_behind(self) -> F64:
        """Per device: how far its clock is behind ours, in seconds (NaN: never heard): when
        we last heard it less the device time of its latest message. A late message of old
        device time makes it look further behind until the next. Never less than 0: a clock
        a little ahead (the decoder allows 5 minutes) is taken as right, and so is a
        `last_heard` that an engine of the release before migration 0020 left behind
        `last_seen` (a deadline judged ahead of time would call a dose missed early)."""
        with self.lock:
            with np.errstate(invalid="ignore"):
                return np.maximum(self.last_heard - self.last_seen, 0.0)

    def status_in(self, idx: I64, statuses: Iterable[str]) -> Bools:
        """Per index in `idx`: whether that device's lifecycle status is one of `statuses`."""
        codes = [self._status.known(s) for s in statuses]
        return np.isin(self._status.codes[idx], codes)

    def online(self, now: float, after_heartbeats: float = OFFLINE_AFTER_HEARTBEATS) -> Bools:
        """Per device: heard from within `after_heartbeats` of its model's interval, by our
        clock (a device whose clock runs slow is online while it talks).

        A device never heard from, or of a model without an interval, is not online.
        """
        with np.errstate(invalid="ignore"):
            return np.asarray(now - self.last_heard <= after_heartbeats * self.heartbeat_s)

    def quiet(self, now: float, began: F64 | None = None,
              after_heartbeats: float = 1.0) -> Bools:
        """Per device: silent for longer than `after_heartbeats` of its model's interval, by
        our clock, counted from when we last heard it or, if later, from `began` (per device:
        when it went to the citizen it is with, NaN: unknown), as the absence rules count
        (`rule_queries.last_heard`): a device just given to the next citizen is not silent
        for the last citizen's silence. A device never heard counts from `began`: deployed a
        day ago and not heard since, it is silent (installed, and not talking, as the
        absence rules say too); deployed a minute ago, or with no deployment time known, it
        is not (yet)."""
        since = self.last_heard if began is None else np.fmax(self.last_heard, began)
        with np.errstate(invalid="ignore"):
            return np.asarray(now - since > after_heartbeats * self.heartbeat_s)

    def silent(self, now: float, began: F64 | None = None) -> Bools:
        """Per device: deployed, and quiet for longer than its model's interval (overdue;
        see `quiet`)."""
        deployed = self._status.codes == self._status.known("deployed")
        return np.asarray(deployed & self.quiet(now, began), dtype=bool)

    def counts(self, now: float) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Devices by status (every status, 0 for none), and online devices by (type,
        municipality), for every pair with a deployed or online device: for the metrics. A
        place whose devices all went silent (its network is down) is 0, not gone: a
        series that vanishes is one no alert on `== 0` sees."""
        with self.lock:
            by_status = {str(s): 0 for s in Status} | self._status.counts()
            online = self.online(now)
            shown = online | (self._status.codes == self._status.known(Status.DEPLOYED))
            places = len(self._place.names)
            pair = self._type.codes * places + self._place.codes
            size = len(self._type.names) * places
            n_online = np.bincount(pair[online], minlength=size)
            n_shown = np.bincount(pair[shown], minlength=size)
        by_place = {(self._type.names[int(k) // places], self._place.names[int(k) % places]):
                    int(n_online[k]) for k in np.flatnonzero(n_shown)}
        return by_status, by_place

    def frame(self, now: float, began: F64 | None = None) -> pd.DataFrame:
        """The fleet as a table, one row per device, for queries and reports (`began`: see
        `silent`). `silent_s` is by our clock, from when we last heard the device. `online`:
        heard within two intervals; `overdue` (deployed devices only) and `offline`: silent
        for longer than one and two, from the deployment if later (see `quiet`): a device
        deployed a minute ago and never heard is none of the three."""
        import pandas as pd  # here: the engine's processes do without it (vagt.arrays)

        with self.lock:
            return pd.DataFrame({
                "device_id": self.ids, "vendor": self.vendor, "model": self.model,
                "type": self.type, "municipality": self.municipality, "status": self.status,
                "firmware": self.firmware, "heartbeat_s": self.heartbeat_s.copy(),
                "last_seen": self.last_seen.copy(), "last_heard": self.last_heard.copy(),
                "silent_s": now - self.last_heard,
                "battery": self.battery.copy(), "signal": self.signal.copy(),
                "online": self.online(now), "overdue": self.silent(now, began),
                "offline": self.quiet(now, began, OFFLINE_AFTER_HEARTBEATS),
            })


def _state_columns(rows: Sequence[tuple[object, ...]]
                   ) -> tuple[F64, F64, F64, F64, F64, list[str | None], F64, F64]:
    """The state columns (after the six registry columns) of `rows` as arrays."""
    n = len(rows)

    def floats(col: int) -> F64:
        return np.fromiter((np.nan if r[col] is None else float(str(r[col])) for r in rows),
                           dtype=np.float64, count=n)

    firmware = [None if r[11] is None else str(r[11]) for r in rows]
    return (floats(6), floats(7), floats(8), floats(9), floats(10), firmware, floats(12),
            floats(13))
