"""`vagt fleet`: the fleet's state, from the database, with the queries the service centre asks:
which devices are overdue (silent, by the centre's clock, for longer than their model's
heartbeat), which are offline (two heartbeats), both counted from the deployment if that is
later, which have a low battery, and counts by municipality, vendor, model or type."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd
import psycopg

from vagt.app.cli_support import format_table, local_time
from vagt.devices.catalogue import Catalogue
from vagt.devices.fleet import SILENT_FROM, Fleet
from vagt.devices.lifecycle import Status

GROUPS = ("municipality", "vendor", "model", "type", "status")
# The table says these as words, as the CLI's other tables say a state (enabled, revoked,
# claimed); JSON keeps them booleans.
FLAGS = ("online", "overdue", "offline")
_YES_NO = {True: "yes", False: "no"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overdue", action="store_true",
                   help="only deployed devices silent for longer than their model's heartbeat "
                        "interval, counted from when they were last heard or deployed, "
                        "whichever is later (a device never heard counts from its deployment)")
    p.add_argument("--offline", action="store_true",
                   help="only deployed devices silent for longer than two heartbeat "
                        "intervals, counted as for --overdue (so a device deployed a minute "
                        "ago and never heard is not offline yet, one deployed days ago is)")
    p.add_argument("--low-battery", type=float, metavar="PERCENT",
                   help="only deployed devices whose latest battery level is below PERCENT")
    for g in GROUPS:
        # a misspelt status (in-stock) is refused, as `devices list` refuses it, not answered
        # with "no devices match"
        p.add_argument(f"--{g}", help=f"only devices with this {g}",
                       choices=[s.value for s in Status] if g == "status" else None)
    p.add_argument("--by", choices=GROUPS,
                   help="print counts (devices, online, overdue, low battery) per group "
                        "instead, of deployed devices (with --status: of that status; by "
                        "status: of all)")
    p.add_argument("--json", action="store_true", help="print JSON")


def query(conn: psycopg.Connection, catalogue: Catalogue, args: argparse.Namespace,
          now: float | None = None) -> pd.DataFrame:
    """The devices the arguments select, from the fleet state as the engine restores it.

    Offline, low battery and counts by group are of the devices that should be talking,
    the deployed ones, unless `--status` says which (or the counts are by status): a
    device on a shelf is not offline, and its battery from its last citizen is stale."""
    fleet = Fleet(catalogue)
    fleet.load(conn)
    now = time.time() if now is None else now
    df = fleet.frame(now, _began(conn, fleet))
    keep = np.ones(len(df), dtype=bool)
    if args.status is None and (args.offline or args.low_battery is not None or
                                args.by not in (None, "status")):
        keep &= (df["status"] == "deployed").to_numpy()
    if args.overdue:
        keep &= df["overdue"].to_numpy()
    if args.offline:
        keep &= df["offline"].to_numpy()
    if args.low_battery is not None:
        keep &= (df["battery"] < args.low_battery).to_numpy()
    for g in GROUPS:
        value = getattr(args, g)
        if value is not None:
            keep &= (df[g] == value).to_numpy()
    return df[keep]


def _began(conn: psycopg.Connection, fleet: Fleet) -> npt.NDArray[np.float64]:
    """Per deployed device, when it went to the citizen it is with (NaN: not deployed, or
    unknown): its silence counts from then at the earliest, as the absence rules count it
    (`fleet.SILENT_FROM`), so that a device installed days ago that never spoke is seen."""
    began = np.full(len(fleet), np.nan)
    rows = conn.execute(
        f"SELECT d.device_id, extract(epoch FROM {SILENT_FROM})::float8 "
        "FROM devices d LEFT JOIN rule_state s ON s.device_id = d.device_id "
        "WHERE d.status = 'deployed'").fetchall()
    if rows:
        idx = fleet.lookup([str(d) for d, _ in rows])
        ok = idx >= 0
        began[idx[ok]] = np.array([t for _, t in rows], dtype=np.float64)[ok]
    return began


def summary(df: pd.DataFrame, by: str, low_battery: float = 20.0) -> pd.DataFrame:
    """Per group: devices, online, overdue, and how many are below `low_battery` percent."""
    grouped = df.assign(low_battery=df["battery"] < low_battery).groupby(by, sort=True)
    out = grouped.agg(devices=("device_id", "size"), online=("online", "sum"),
                      overdue=("overdue", "sum"), low_battery=("low_battery", "sum"))
    return out.reset_index()


def render(df: pd.DataFrame, args: argparse.Namespace) -> str:
    if args.by:
        low = args.low_battery if args.low_battery is not None else 20.0
        table = summary(df, args.by, low)
        if args.json:
            return orjson.dumps(table.to_dict("records"), option=orjson.OPT_INDENT_2 |
                                orjson.OPT_SERIALIZE_NUMPY).decode()
        if table.empty:
            return "no devices match"
        return format_table(
            [args.by.upper(), "DEVICES", "ONLINE", "OVERDUE", f"BATTERY BELOW {low:g} %"],
            [[str(group) or "-", *map(str, counts)]
             for group, *counts in table.itertuples(index=False)])
    if args.json:
        rows = df.assign(
            last_seen=_iso(df["last_seen"]), last_heard=_iso(df["last_heard"]),
            silent_s=[None if np.isnan(s) else round(float(s)) for s in df["silent_s"]],
            battery=[None if np.isnan(b) else float(b) for b in df["battery"]],
            signal=[None if np.isnan(b) else float(b) for b in df["signal"]],
        )
        columns = ["device_id", "type", "vendor", "model", "municipality", "status",
                   "last_seen", "last_heard", "silent_s", "online", "overdue", "offline",
                   "battery", "signal", "firmware"]
        records = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
                   for r in rows[columns].to_dict("records")]
        return orjson.dumps(records, option=orjson.OPT_INDENT_2).decode()
    if df.empty:
        return "no devices match"
    return format_table(["DEVICE", "TYPE", "VENDOR", "MODEL", "MUNICIPALITY", "STATUS",
                         "LAST SEEN", "LAST HEARD", "SILENT FOR", "ONLINE", "OVERDUE",
                         "OFFLINE", "BATTERY", "SIGNAL", "FIRMWARE"],
                        [_cells(r) for r in df.itertuples(index=False)])


def _cells(r: Any) -> list[str]:
    """One device as `vagt devices list` prints one: local times to the minute, battery in
    whole percent, "-" for what is not known."""
    return [r.device_id, r.type, r.vendor, r.model, r.municipality or "-", r.status,
            local_time(_time(r.last_seen), "never"), local_time(_time(r.last_heard), "never"),
            "-" if np.isnan(r.silent_s) else _span(r.silent_s),
            *(_YES_NO[bool(getattr(r, f))] for f in FLAGS),
            "-" if np.isnan(r.battery) else f"{r.battery:.0f} %",
            "-" if np.isnan(r.signal) else f"{r.signal:.0f} dBm",
            r.firmware if isinstance(r.firmware, str) else "-"]   # pandas may say NaN


def _time(t: float) -> datetime | None:
    return None if np.isnan(t) else datetime.fromtimestamp(t, UTC)


def _span(seconds: float) -> str:
    """A silence at a glance: its two largest units (3d 4h, 12m 5s)."""
    s = max(round(seconds), 0)
    parts = [(s // 86400, "d"), (s // 3600 % 24, "h"), (s // 60 % 60, "m"), (s % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n}{unit}" for n, unit in parts[:2])


def _iso(times: pd.Series) -> list[str | None]:
    return [None if np.isnan(t) else
            pd.Timestamp(t, unit="s", tz="UTC").isoformat(timespec="seconds") for t in times]
