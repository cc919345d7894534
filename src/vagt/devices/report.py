"""`vagt report vendors`: how each vendor's (or model's) devices behaved over a period, in
figures that compare vendors fairly: per device-month, per 1,000 measurements, as shares.

Everything is counted only while a device was with a citizen (its assignments, in the
municipality asked for), so stock, repair and the centre's own tests count for no vendor.
Counts come from the per-device counts by hour, day and week (`vagt.devices.report_query`),
which the caller brings up to date first; vendor, model and municipality are joined here,
as they are now (vendor, model) and as they were (municipality, from the assignments).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
import psycopg

from vagt.devices.catalogue import Catalogue
from vagt.devices.report_query import (
    DAY_SLOT_HOURS,
    PER_DEVICE,
    PER_DEVICE_DAYS,
    period_weeks,
)
from vagt.text import shown

HOUR_S = 3600
DEVICE_MONTH_S = 30 * 86400
# The built-in battery_low rule's threshold: the report's default when the rules have none.
LOW_BATTERY = 15.0

PER_DEVICE_COLUMNS = ["device_id", "vendor", "model", "type", "deployed_s", "measurements",
                      "events", "faults", "bad", "slots", "slots_heard", "silent_at_end",
                      "in_catalogue", "battery", "msgs_lost_lifetime"]


def day_slot_hours(heartbeat_s: int) -> int | None:
    """The model's slot in whole hours, if that divides a day (None: it does not)."""
    slot_s = max(heartbeat_s, HOUR_S)
    hours, rest = divmod(slot_s, HOUR_S)
    return hours if rest == 0 and hours in DAY_SLOT_HOURS else None


@dataclass(frozen=True)
class Period:
    start: float          # epoch seconds, device time, from
    end: float            # up to, not including (at most the report's now)
    municipality: str | None = None


# The query's settings, for its transaction only. Memory for each sort and hash, in each
# process: the days are summed per stay in a hash (a few hundred bytes a stay, in each
# parallel worker), which PostgreSQL's default (4 MB) sends to disk past some 10,000
# devices. No JIT: past its cost thresholds (some 20,000 devices a year) PostgreSQL compiled
# and optimised the query's 350 functions in each process, 11 s of a 31 s report at 30,000
# devices, to save less than it cost.
SETTINGS = {"work_mem": "64MB", "jit": "off"}


def per_device(conn: psycopg.Connection, catalogue: Catalogue, period: Period,
               weeks: bool = True) -> pd.DataFrame:
    """One row per device that was with a citizen in the period (see PER_DEVICE_COLUMNS).

    `weeks`: read whole weeks from the weekly counts (plain PostgreSQL has them; on
    TimescaleDB, False: its daily aggregates are what it keeps)."""
    models = list(catalogue)
    # (to the microsecond, as PostgreSQL keeps times; pandas warned of what it dropped)
    start = datetime.fromtimestamp(period.start, UTC)
    end = datetime.fromtimestamp(period.end, UTC)
    w0, w1 = period_weeks(start, end) if weeks else (start, start)
    params = {
        "start": start, "end": end, "w0": w0, "w1": w1, "municipality": period.municipality,
        "vendors": [m.vendor for m in models], "models": [m.model for m in models],
        "heartbeats": [float(m.heartbeat_s) for m in models],
        "slot_hours": [day_slot_hours(m.heartbeat_s) for m in models],
    }
    with conn.transaction():
        for name, value in SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        rows = conn.execute(PER_DEVICE if weeks else PER_DEVICE_DAYS, params).fetchall()
    return pd.DataFrame(rows, columns=PER_DEVICE_COLUMNS)


def summary(devices: pd.DataFrame, by: str, low_battery: float = LOW_BATTERY,
            marks_kept: bool = True) -> pd.DataFrame:
    """Per vendor (by="vendor") or per vendor and model (by="model"): the report's figures.

    Shares and rates are of the group's totals (a device-month of one device weighs as much
    as one of another), not averages of per-device ratios. `marks_kept`: False where the
    period reaches back past the readings' retention: the bad readings are counted from
    their marks, which go with their readings, and `bad_per_1000` is then no figure, not a
    rate over what is left (the other counts outlive the raw rows: a vendor looked flawless,
    0.0 bad per 1,000, for a year the prune had emptied of marks).
    """
    keys = ["vendor"] if by == "vendor" else ["vendor", "model"]
    df = devices.assign(
        device_months=devices["deployed_s"] / DEVICE_MONTH_S,
        silent=devices["silent_at_end"].astype("boolean"),
        low=(devices["battery"] < low_battery).astype(float)
            .where(devices["battery"].notna()),
        lost=devices["msgs_lost_lifetime"].astype(float),
    )
    g = df.groupby(keys, sort=True)
    out = g.agg(devices=("device_id", "size"), device_months=("device_months", "sum"),
                measurements=("measurements", "sum"), events=("events", "sum"),
                faults=("faults", "sum"), bad=("bad", "sum"), slots=("slots", "sum"),
                slots_heard=("slots_heard", "sum"),
                silent_at_end=("silent", lambda s: int(s.sum())),
                silent_checked=("silent", lambda s: int(s.notna().sum())),
                battery_devices=("battery", "count"),
                battery_median=("battery", "median"),
                low_battery=("low", "sum"),
                msgs_lost_lifetime=("lost", "sum"))
    out["msgs_lost_lifetime"] = out["msgs_lost_lifetime"].astype("int64")   # a count
    out["bad_per_1000"] = _ratio(out["bad"] * 1000, out["measurements"]) if marks_kept \
        else np.nan
    out["faults_per_device_month"] = _ratio(out["faults"], out["device_months"])
    out["heard_share"] = _ratio(out["slots_heard"], out["slots"])
    out["silent_at_end_share"] = _ratio(out["silent_at_end"], out["silent_checked"])
    out["low_battery_share"] = _ratio(out["low_battery"], out["battery_devices"])
    out["msgs_lost_lifetime_per_device"] = _ratio(out["msgs_lost_lifetime"], out["devices"])
    return out.reset_index()[keys + FIGURES]


# The report's columns, in order (README "Vendor report" says what each means).
FIGURES = ["devices", "device_months", "measurements", "bad_per_1000", "events", "faults",
           "faults_per_device_month", "heard_share", "silent_at_end", "silent_at_end_share",
           "battery_median",
           "low_battery_share", "msgs_lost_lifetime", "msgs_lost_lifetime_per_device"]

_ROUND = {"device_months": 2, "bad_per_1000": 2, "faults_per_device_month": 3,
          "heard_share": 4, "silent_at_end_share": 4, "battery_median": 1, "low_battery_share": 4,
          "msgs_lost_lifetime_per_device": 2}


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    """num / den, NaN (no figure) where den is 0."""
    den = den.astype(float)
    return (num.astype(float) / den.where(den > 0)).astype(float)


def records(table: pd.DataFrame) -> list[dict[str, object]]:
    """The table as JSON-ready records: numbers rounded, None where there is no figure."""
    out = []
    for row in table.to_dict("records"):
        rec: dict[str, object] = {}
        for k, v in row.items():
            if isinstance(v, float | np.floating):
                f = float(v)
                rec[k] = None if np.isnan(f) else round(f, _ROUND.get(k, 2))
            elif isinstance(v, np.integer):
                rec[k] = int(v)
            else:
                rec[k] = v
        out.append(rec)
    return out


def render(table: pd.DataFrame, period: Period, as_json: bool, low_battery: float) -> str:
    rows = records(table)
    if as_json:
        return orjson.dumps({
            "from": pd.Timestamp(period.start, unit="s", tz="UTC").isoformat(),
            "to": pd.Timestamp(period.end, unit="s", tz="UTC").isoformat(),
            "municipality": period.municipality, "low_battery_below": low_battery,
            "groups": rows}, option=orjson.OPT_INDENT_2).decode()
    if not rows:
        return "no devices were with a citizen in the period"
    # a vendor, model or municipality stored before vagt refused what is not printable:
    # escaped (vagt.text), as in every table the CLI prints
    cells = pd.DataFrame(rows).astype(object).fillna("-").map(
        lambda v: shown(v) if isinstance(v, str) else v)
    return str(cells.to_string(index=False))
