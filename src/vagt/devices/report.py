"""`vagt report vendors`: how each vendor's (or model's) devices behaved over a period, in
figures that compare vendors fairly: per device-month, per 1,000 measurements, as shares.

Everything is counted only while a device was with a citizen (its assignments, in the
municipality asked for), so stock, repair and the centre's own tests count for no vendor.
Counts come from the hourly per-device counts (`readings_hourly`, `events_hourly`, migration
0019), which the caller brings up to date first; vendor, model and municipality are joined
here, as they are now (vendor, model) and as they were (municipality, from the assignments).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
import psycopg

from vagt.devices.catalogue import Catalogue

HOUR_S = 3600
DEVICE_MONTH_S = 30 * 86400
# The built-in battery_low rule's threshold: the report's default when the rules have none.
LOW_BATTERY = 15.0

# Whole-hour slot lengths that divide a day: a day's heard slots are counted from its
# 24-bit hour mask (bit h: something came in hour h, UTC), one slot a block of n bits.
DAY_SLOT_HOURS = (1, 2, 3, 4, 6, 8, 12, 24)


def _day_slots_sql(mask: str, hours: str) -> str:
    """SQL for how many n-hour slots (`hours`, one of DAY_SLOT_HOURS) `mask` has a bit in:
    the mask folded so that a block's first bit is set if any of its bits is, then counted."""
    cases = []
    for n in DAY_SLOT_HOURS:
        folded = " | ".join([mask] + [f"({mask} >> {j})" for j in range(1, n)])
        firsts = sum(1 << (k * n) for k in range(24 // n))
        cases.append(f"WHEN {n} THEN bit_count((({folded}) & {firsts})::bit(24))")
    return f"(CASE {hours} {' '.join(cases)} END)"


def _heard_after_sql(mask: str, day: str, after: str) -> str:
    """SQL: whether `mask` (of the day from `day`) has an hour that begins after `after`."""
    first = f"floor(extract(epoch FROM {after} - {day}) / 3600)::integer + 1"
    return f"(({mask} >> least(greatest({first}, 0), 24)) <> 0)"


# One row per device deployed in the period: its spans with a citizen (in the period, up to
# the report's `now`), and what the per-device counts, bad readings, its last battery level
# and its message counter say about them. An hour counts for a span if they overlap.
# A span's whole UTC days [ds, de) are read from the daily counts (0022), the hours before
# and after them (its edges, at most a day's each) from the hourly ones (0019). Heard slots
# of whole days are counted from the days' hour masks, readings' and events' OR-ed: summed
# over the readings days, plus on each events day what its events add to the readings'.
# A slot that does not divide a day (a catalogue heartbeat of 5 h, or a week) is counted
# from its span's heard hours, one by one.
_PER_DEVICE = f"""
WITH spans AS (
    SELECT a.id, a.device_id,
           greatest(a.since, %(start)s) AS s,
           least(coalesce(a.until, 'infinity'), %(end)s) AS e
    FROM device_assignments a
    WHERE a.since < %(end)s AND coalesce(a.until, 'infinity') > %(start)s
      AND (%(municipality)s::text IS NULL OR a.municipality = %(municipality)s::text)
),
spans_slot AS MATERIALIZED (   -- computed once: the joins below compare its columns
    -- the expected-contact slot: the model's heartbeat, at least an hour (a model not in the
    -- catalogue: an hour)
    SELECT sp.*, x.slot_s, c.vendor IS NOT NULL AS in_catalogue,
           CASE WHEN c.vendor IS NULL THEN 1 ELSE c.slot_hours END AS slot_hours,
           ceil(extract(epoch FROM sp.s) / x.slot_s) AS first_slot,
           floor(extract(epoch FROM sp.e) / x.slot_s) AS end_slot,
           date_bin(INTERVAL '1 day', sp.s - INTERVAL '1 microsecond',
                    TIMESTAMPTZ '2000-01-03 00:00+00') + INTERVAL '24 hours' AS ds,
           date_bin(INTERVAL '1 day', sp.e, TIMESTAMPTZ '2000-01-03 00:00+00') AS de,
           -- an hour that begins after this is in the span's last slot (silent_at_end)
           sp.e - make_interval(secs => x.slot_s) - INTERVAL '1 hour' AS quiet_after
    FROM spans sp JOIN devices d USING (device_id)
    LEFT JOIN unnest(%(vendors)s::text[], %(models)s::text[], %(heartbeats)s::float8[],
                     %(slot_hours)s::int[])
         AS c(vendor, model, heartbeat_s, slot_hours) ON c.vendor = d.vendor AND c.model = d.model
    CROSS JOIN LATERAL (SELECT greatest(coalesce(c.heartbeat_s, 3600), 3600) AS slot_s) x
    WHERE sp.e > sp.s
),
edges AS (      -- the hours of a span outside its whole days: before them, and after
    SELECT sp.id, sp.device_id, x.lo, x.hi
    FROM spans_slot sp
    CROSS JOIN LATERAL (VALUES
        (date_bin(INTERVAL '1 hour', sp.s, TIMESTAMPTZ '2000-01-03 00:00+00'),
         least(sp.ds, sp.e)),
        (greatest(sp.de, sp.ds), sp.e)) AS x(lo, hi)
    WHERE x.lo < x.hi
),
edge_hours AS (  -- a range of the (device_id, bucket) key per edge (OFFSET 0: never a scan
                 -- of the whole hourly table, whatever the planner guesses of the edges)
    SELECT e.id, h.bucket, h.measurements, 0::bigint AS events, 0::bigint AS faults
    FROM edges e CROSS JOIN LATERAL (
        SELECT h.bucket, h.measurements FROM readings_hourly h
        WHERE h.device_id = e.device_id AND h.bucket >= e.lo AND h.bucket < e.hi
        OFFSET 0) h
    UNION ALL
    SELECT e.id, h.bucket, 0, h.events, h.faults
    FROM edges e CROSS JOIN LATERAL (
        SELECT h.bucket, h.events, h.faults FROM events_hourly h
        WHERE h.device_id = e.device_id AND h.bucket >= e.lo AND h.bucket < e.hi
        OFFSET 0) h
),
-- What each part of a span adds, one row each, summed per device below in one hash
-- aggregate (no join between per-span aggregates: the planner cannot guess their sizes).
-- `heard_at_end`: an hour with data in the last slot, counted only for the span that is
-- checked for silence (with the citizen at the period's end; a device has one at most).
readings_days AS (
    SELECT sp.device_id, r.measurements, 0::bigint AS events, 0::bigint AS faults,
           {_day_slots_sql("r.heard", "sp.slot_hours")} AS slots_heard,
           CASE WHEN sp.e >= %(end)s AND r.day > sp.quiet_after - INTERVAL '24 hours'
                THEN {_heard_after_sql("r.heard", "r.day", "sp.quiet_after")} END
               AS heard_at_end
    FROM spans_slot sp JOIN readings_daily r
      ON r.device_id = sp.device_id AND r.day >= sp.ds AND r.day < sp.de
    WHERE r.day >= %(start)s AND r.day < %(end)s
),
events_days AS (
    SELECT sp.device_id, 0::bigint AS measurements, v.events, v.faults,
           {_day_slots_sql("(v.heard | coalesce(r.heard, 0))", "sp.slot_hours")}
               - {_day_slots_sql("coalesce(r.heard, 0)", "sp.slot_hours")} AS slots_heard,
           CASE WHEN sp.e >= %(end)s AND v.day > sp.quiet_after - INTERVAL '24 hours'
                THEN {_heard_after_sql("v.heard", "v.day", "sp.quiet_after")} END
               AS heard_at_end
    FROM spans_slot sp JOIN events_daily v
      ON v.device_id = sp.device_id AND v.day >= sp.ds AND v.day < sp.de
    LEFT JOIN readings_daily r ON r.day = v.day AND r.device_id = v.device_id
    WHERE v.day >= %(start)s AND v.day < %(end)s
),
other_slots AS (   -- slots that do not divide a day: the spans' heard hours, one by one
    SELECT h.id, h.bucket FROM edge_hours h
    UNION ALL
    SELECT sp.id, d.day + make_interval(hours => b.h)
    FROM spans_slot sp
    JOIN (SELECT day, device_id, heard FROM readings_daily
          UNION ALL SELECT day, device_id, heard FROM events_daily) d
      ON d.device_id = sp.device_id AND d.day >= sp.ds AND d.day < sp.de
    CROSS JOIN generate_series(0, 23) AS b(h)
    WHERE sp.slot_hours IS NULL AND d.heard & (1 << b.h) <> 0
      AND d.day >= %(start)s AND d.day < %(end)s
),
slots_by_hour AS (  -- the distinct slots heard in edge hours (and in every hour, above)
    SELECT sp.device_id, h.id, floor(extract(epoch FROM h.bucket) / sp.slot_s) AS slot,
           sp.first_slot, sp.end_slot
    FROM other_slots h JOIN spans_slot sp USING (id)
    GROUP BY 1, 2, 3, 4, 5          -- each distinct slot once (a hash, not a sort)
),
parts AS (
    SELECT device_id, extract(epoch FROM e - s) AS deployed_s, 0::bigint AS measurements,
           0::bigint AS events, 0::bigint AS faults,
           greatest(end_slot - first_slot, 0) AS slots, 0::bigint AS slots_heard,
           -- still with the citizen at the end, for a slot or more: checked for silence
           e >= %(end)s AND e - s >= make_interval(secs => slot_s) AS checked,
           NULL::boolean AS heard_at_end, in_catalogue
    FROM spans_slot
    UNION ALL
    SELECT sp.device_id, 0, h.measurements, h.events, h.faults, 0, 0, NULL,
           CASE WHEN sp.e >= %(end)s THEN h.bucket > sp.quiet_after END, NULL
    FROM edge_hours h JOIN spans_slot sp USING (id)
    UNION ALL
    SELECT device_id, 0, measurements, events, faults, 0, slots_heard, NULL, heard_at_end, NULL
    FROM readings_days
    UNION ALL
    SELECT device_id, 0, measurements, events, faults, 0, slots_heard, NULL, heard_at_end, NULL
    FROM events_days
    UNION ALL
    SELECT device_id, 0, 0, 0, 0, 0, 1, NULL, NULL, NULL
    FROM slots_by_hour WHERE slot >= first_slot AND slot < end_slot
),
per_device AS (
    SELECT device_id, sum(deployed_s) AS deployed_s, sum(measurements) AS measurements,
           sum(events) AS events, sum(faults) AS faults, sum(slots) AS slots,
           sum(slots_heard) AS slots_heard,
           -- nothing in the last slot's hours
           CASE WHEN bool_or(checked) THEN NOT bool_or(heard_at_end) IS TRUE END
               AS silent_at_end,
           bool_or(in_catalogue) AS in_catalogue
    FROM parts
    GROUP BY device_id
),
bad AS (
    SELECT sp.device_id, count(*) AS bad
    FROM spans_slot sp JOIN bad_readings b
      ON b.device_id = sp.device_id
     AND date_bin(INTERVAL '1 hour', b.time, TIMESTAMPTZ '2000-01-03 00:00+00')
         > sp.s - INTERVAL '1 hour'
     AND date_bin(INTERVAL '1 hour', b.time, TIMESTAMPTZ '2000-01-03 00:00+00') < sp.e
    GROUP BY sp.device_id
),
battery AS (      -- the last battery level each device reported with a citizen
    SELECT DISTINCT ON (sp.device_id) sp.device_id, last.value AS battery
    FROM spans_slot sp
    CROSS JOIN LATERAL (
        SELECT r.value, r.time FROM readings r
        WHERE r.device_id = sp.device_id AND r.metric = 'battery'
          AND r.time >= sp.s AND r.time < sp.e
        ORDER BY r.time DESC LIMIT 1) last
    ORDER BY sp.device_id, last.time DESC
)
SELECT d.device_id, d.vendor, d.model, d.type,
       p.deployed_s::float8, p.measurements::int8, p.events::int8, p.faults::int8,
       coalesce(bad.bad, 0)::int8, p.slots::int8, p.slots_heard::int8, p.silent_at_end,
       p.in_catalogue, battery.battery::float8, d.seq_gaps
FROM per_device p JOIN devices d USING (device_id)
LEFT JOIN bad USING (device_id)
LEFT JOIN battery USING (device_id)
ORDER BY d.device_id
"""

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


def per_device(conn: psycopg.Connection, catalogue: Catalogue, period: Period) -> pd.DataFrame:
    """One row per device that was with a citizen in the period (see PER_DEVICE_COLUMNS)."""
    models = list(catalogue)
    rows = conn.execute(_PER_DEVICE, {
        # (to the microsecond, as PostgreSQL keeps times; pandas warned of what it dropped)
        "start": datetime.fromtimestamp(period.start, UTC),
        "end": datetime.fromtimestamp(period.end, UTC),
        "municipality": period.municipality,
        "vendors": [m.vendor for m in models], "models": [m.model for m in models],
        "heartbeats": [float(m.heartbeat_s) for m in models],
        "slot_hours": [day_slot_hours(m.heartbeat_s) for m in models],
    }).fetchall()
    return pd.DataFrame(rows, columns=PER_DEVICE_COLUMNS)


def summary(devices: pd.DataFrame, by: str, low_battery: float = LOW_BATTERY) -> pd.DataFrame:
    """Per vendor (by="vendor") or per vendor and model (by="model"): the report's figures.

    Shares and rates are of the group's totals (a device-month of one device weighs as much
    as one of another), not averages of per-device ratios.
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
    out["bad_per_1000"] = _ratio(out["bad"] * 1000, out["measurements"])
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
    shown = pd.DataFrame(rows).astype(object).fillna("-")
    return str(shown.to_string(index=False))
