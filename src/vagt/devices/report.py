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


def _day_slots_sql(mask: str, hours: str, blocks: tuple[str, str] | None = None) -> str:
    """SQL for how many n-hour slots (`hours`, one of DAY_SLOT_HOURS) `mask` has a bit in:
    the mask folded so that a block's first bit is set if any of its bits is, then counted.
    `blocks`: SQL for the first and the end of the day's blocks (0 to 24/n) to count, where
    not all of them."""
    cases = []
    for n in DAY_SLOT_HOURS:
        folded = " | ".join([mask] + [f"({mask} >> {j})" for j in range(1, n)])
        firsts = sum(1 << (k * n) for k in range(24 // n))
        if blocks is not None:   # (no blocks where the end is before the first)
            lo, hi = (f"(least(greatest({b}, 0), {24 // n}) * {n})"
                      for b in (blocks[0], f"greatest({blocks[1]}, {blocks[0]})"))
            firsts_sql = f"({firsts} & ((1 << {hi}) - (1 << {lo})))"
        else:
            firsts_sql = str(firsts)
        cases.append(f"WHEN {n} THEN bit_count((({folded}) & {firsts_sql})::bit(24))")
    return f"(CASE {hours} {' '.join(cases)} END)"


def _heard_after_sql(mask: str, day: str, after: str) -> str:
    """SQL: whether `mask` (of the day from `day`) has an hour that begins after `after`."""
    first = f"floor(extract(epoch FROM {after} - {day}) / 3600)::integer + 1"
    return f"(({mask} >> least(greatest({first}, 0), 24)) <> 0)"


# One row per device deployed in the period: its spans with a citizen (in the period, up to
# the report's `now`), and what the per-device counts, bad readings, its last battery level
# and its message counter say about them. An hour counts for a span if they overlap.
# A span's whole UTC days [ds, de) are read from the daily counts (`device_daily`, 0023:
# readings and events together), the hours before and after them (its edges, at most a
# day's each) from the hourly ones (0019). Heard slots of whole days are counted from the
# days' hour masks. A slot that does not divide a day (a catalogue heartbeat of 5 h, or a
# week) is counted from its span's heard hours, one by one.
#
# The period's days are joined to the spans by a hash of the spans (a day is matched by its
# device, then its span's range), read once in the order they are stored, by parallel
# workers where there are some, and summed per span as they come. Spans are `spans_slot`
# written out there (NOT MATERIALIZED: a materialized CTE can be read by no parallel worker,
# and the planner knows none of its columns, so it guessed a few hundred devices and read
# each one's days by key, a page a day, 5x slower at 10,000 devices and worse once the days
# outgrow memory); the small joins read the spans computed once (`spans_once`).
_PER_DEVICE = f"""
WITH spans AS (
    SELECT a.id, a.device_id,
           greatest(a.since, %(start)s) AS s,
           least(coalesce(a.until, 'infinity'), %(end)s) AS e
    FROM device_assignments a
    WHERE a.since < %(end)s AND coalesce(a.until, 'infinity') > %(start)s
      AND (%(municipality)s::text IS NULL OR a.municipality = %(municipality)s::text)
),
spans_slot AS NOT MATERIALIZED (
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
spans_once AS MATERIALIZED (SELECT * FROM spans_slot),
edges AS (      -- the hours of a span outside its whole days: before them, and after
    SELECT sp.id, sp.device_id, x.lo, x.hi
    FROM spans_once sp
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
days AS (       -- a span's whole days, summed per span (a slot that does not divide a
                -- day: per day, the day's hours counted one by one below)
    SELECT sp.id, CASE WHEN sp.slot_hours IS NULL THEN d.day END AS day,
           sum(d.measurements) AS measurements, sum(d.events) AS events,
           sum(d.faults) AS faults,
           sum({_day_slots_sql("d.heard", "sp.slot_hours")}) AS slots_heard,
           bool_or(CASE WHEN sp.e >= %(end)s AND d.day > sp.quiet_after - INTERVAL '24 hours'
                        THEN {_heard_after_sql("d.heard", "d.day", "sp.quiet_after")} END)
               AS heard_at_end,
           bit_or(CASE WHEN sp.slot_hours IS NULL THEN d.heard END) AS heard
    FROM spans_slot sp JOIN device_daily d
      ON d.device_id = sp.device_id AND d.day >= sp.ds AND d.day < sp.de
    WHERE d.day >= %(start)s AND d.day < %(end)s
    GROUP BY 1, 2
),
edge_days AS (  -- an edge's heard hours as a mask of its day (an edge is within one day)
    SELECT h.id, x.day, bit_or(1 << (extract(epoch FROM h.bucket - x.day) / 3600)::integer)
               AS heard
    FROM edge_hours h
    CROSS JOIN LATERAL (SELECT date_bin(INTERVAL '1 day', h.bucket,
                                        TIMESTAMPTZ '2000-01-03 00:00+00') AS day) x
    GROUP BY 1, 2
),
other_slots AS (   -- slots that do not divide a day: those of the spans' heard hours
    SELECT h.id, floor(date_part('epoch', h.bucket) / sp.slot_s) AS slot,
           sp.first_slot, sp.end_slot
    FROM edge_hours h JOIN spans_once sp USING (id)
    WHERE sp.slot_hours IS NULL
    UNION ALL   -- a day's: each slot its hours are in, heard if the mask has one of them
    SELECT d.id, k.slot, sp.first_slot, sp.end_slot
    FROM days d JOIN spans_once sp USING (id)
    CROSS JOIN LATERAL (SELECT date_part('epoch', d.day) AS t0) t
    CROSS JOIN LATERAL (    -- (OFFSET 0: per day, not joined with every day)
        SELECT k.slot, ceil((k.slot * sp.slot_s - t.t0) / 3600) AS lo,
               ceil(((k.slot + 1) * sp.slot_s - t.t0) / 3600) AS hi
        FROM generate_series(floor(t.t0 / sp.slot_s)::bigint,
                             floor((t.t0 + 23 * 3600) / sp.slot_s)::bigint) AS k(slot)
        OFFSET 0) k
    WHERE d.day IS NOT NULL
      AND d.heard & ((1 << least(k.hi, 24)::integer) - (1 << greatest(k.lo, 0)::integer)) <> 0
),
other_slots_heard AS (  -- each distinct slot once (a slot of days heard in two: once)
    SELECT id, count(*) AS slots_heard
    FROM (SELECT DISTINCT id, slot FROM other_slots
          WHERE slot >= first_slot AND slot < end_slot) x
    GROUP BY id
),
parts AS (
    SELECT device_id, extract(epoch FROM e - s) AS deployed_s, 0::bigint AS measurements,
           0::bigint AS events, 0::bigint AS faults,
           greatest(end_slot - first_slot, 0) AS slots, 0::bigint AS slots_heard,
           -- still with the citizen at the end, for a slot or more: checked for silence
           e >= %(end)s AND e - s >= make_interval(secs => slot_s) AS checked,
           NULL::boolean AS heard_at_end, in_catalogue
    FROM spans_once
    UNION ALL
    SELECT sp.device_id, 0, h.measurements, h.events, h.faults, 0, 0, NULL,
           CASE WHEN sp.e >= %(end)s THEN h.bucket > sp.quiet_after END, NULL
    FROM edge_hours h JOIN spans_once sp USING (id)
    UNION ALL
    SELECT sp.device_id, 0, d.measurements, d.events, d.faults, 0, d.slots_heard, NULL,
           d.heard_at_end, NULL
    FROM days d JOIN spans_once sp USING (id)
    UNION ALL   -- the slots of an edge's day inside the span
    SELECT sp.device_id, 0, 0, 0, 0, 0,
           {_day_slots_sql("e.heard", "sp.slot_hours", blocks=(
               "(sp.first_slot - date_part('epoch', e.day) / sp.slot_s)::integer",
               "(sp.end_slot - date_part('epoch', e.day) / sp.slot_s)::integer"))},
           NULL, NULL, NULL
    FROM edge_days e JOIN spans_once sp USING (id)
    WHERE sp.slot_hours IS NOT NULL
    UNION ALL
    SELECT sp.device_id, 0, 0, 0, 0, 0, o.slots_heard, NULL, NULL, NULL
    FROM other_slots_heard o JOIN spans_once sp USING (id)
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
    FROM spans_once sp JOIN bad_readings b
      ON b.device_id = sp.device_id
     AND date_bin(INTERVAL '1 hour', b.time, TIMESTAMPTZ '2000-01-03 00:00+00')
         > sp.s - INTERVAL '1 hour'
     AND date_bin(INTERVAL '1 hour', b.time, TIMESTAMPTZ '2000-01-03 00:00+00') < sp.e
    GROUP BY sp.device_id
),
battery AS (      -- the last battery level each device reported with a citizen
    SELECT DISTINCT ON (sp.device_id) sp.device_id, last.value AS battery
    FROM spans_once sp
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


# The query's settings, for its transaction only. Memory for each sort and hash, in each
# process: the days are summed per stay in a hash (a few hundred bytes a stay, in each
# parallel worker), which PostgreSQL's default (4 MB) sends to disk past some 10,000
# devices. No JIT: past its cost thresholds (some 20,000 devices a year) PostgreSQL compiled
# and optimised the query's 350 functions in each process, 11 s of a 31 s report at 30,000
# devices, to save less than it cost.
SETTINGS = {"work_mem": "64MB", "jit": "off"}


def per_device(conn: psycopg.Connection, catalogue: Catalogue, period: Period) -> pd.DataFrame:
    """One row per device that was with a citizen in the period (see PER_DEVICE_COLUMNS)."""
    with conn.transaction():
        for name, value in SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        rows = _per_device_rows(conn, catalogue, period)
    return pd.DataFrame(rows, columns=PER_DEVICE_COLUMNS)


def _per_device_rows(conn: psycopg.Connection, catalogue: Catalogue,
                     period: Period) -> list[tuple[object, ...]]:
    models = list(catalogue)
    return conn.execute(_PER_DEVICE, {
        # (to the microsecond, as PostgreSQL keeps times; pandas warned of what it dropped)
        "start": datetime.fromtimestamp(period.start, UTC),
        "end": datetime.fromtimestamp(period.end, UTC),
        "municipality": period.municipality,
        "vendors": [m.vendor for m in models], "models": [m.model for m in models],
        "heartbeats": [float(m.heartbeat_s) for m in models],
        "slot_hours": [day_slot_hours(m.heartbeat_s) for m in models],
    }).fetchall()


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
