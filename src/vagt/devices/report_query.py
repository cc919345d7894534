"""The vendor report's per-device query, and the SQL that counts heard slots in a day's
24-bit hour mask (bit h: something came in hour h, UTC), which the plain refresh shares.

A span's time with a citizen is read at three grains: its whole weeks from the weekly
counts (`device_weekly`, plain PostgreSQL, migration 0023), its other whole days from the
daily ones (`device_daily`, 0023), and the hours before and after its whole days (its
edges, at most a day's each) from the hourly ones (0019) and, for days whose hours the
prune folded, from their folded counts (`device_hours_folded`, 0026).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# Whole-hour slot lengths that divide a day: a day's heard slots are counted from its hour
# mask, one slot a block of n bits; the weekly counts keep a sum for each (`slots_{n}h`).
DAY_SLOT_HOURS = (1, 2, 3, 4, 6, 8, 12, 24)

ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)   # time_bucket's: midnight UTC, a Monday
_ORIGIN_SQL = "TIMESTAMPTZ '2000-01-03 00:00+00'"

# Whole weeks end this much before a span's last whole day at the latest: its last slot's
# hours (at most a day and an hour, `heard_at_end`) are then read from days and hours.
WEEK_END_MARGIN = timedelta(days=2)


def slots_sql(mask: str, n: int, blocks: tuple[str, str] | None = None) -> str:
    """SQL for how many n-hour slots (n in DAY_SLOT_HOURS) `mask` has a bit in: up to 4
    hours the mask folded so that a block's first bit is set if any of its bits is, then
    counted; longer slots (4 blocks a day at most) each block tested. `blocks`: SQL for the
    first and the end of the day's blocks (0 to 24/n) to count, where not all of them (none
    where the end is before the first)."""
    if n > 4:
        tests = []
        for k in range(24 // n):
            test = f"({mask} & {((1 << n) - 1) << (k * n)}) <> 0"
            if blocks is not None:
                test += f" AND {k} >= {blocks[0]} AND {k} < {blocks[1]}"
            tests.append(f"({test})::integer")
        return f"({' + '.join(tests)})"
    folded = " | ".join([f"{mask}"] + [f"({mask} >> {j})" for j in range(1, n)])
    firsts = str(sum(1 << (k * n) for k in range(24 // n)))
    if blocks is not None:
        lo, hi = (f"(least(greatest({b}, 0), {24 // n}) * {n})"
                  for b in (blocks[0], f"greatest({blocks[1]}, {blocks[0]})"))
        firsts = f"({firsts} & ((1 << {hi}) - (1 << {lo})))"
    return f"bit_count((({folded}) & {firsts})::bit(24))::integer"


def _day_slots_sql(mask: str, hours: str, blocks: tuple[str, str] | None = None) -> str:
    """`slots_sql` for the slot length `hours` (SQL) names."""
    cases = " ".join(f"WHEN {n} THEN {slots_sql(mask, n, blocks)}" for n in DAY_SLOT_HOURS)
    return f"(CASE {hours} {cases} END)"


def _heard_after_sql(mask: str, day: str, after: str) -> str:
    """SQL: whether `mask` (of the day from `day`) has an hour that begins after `after`."""
    first = f"floor(extract(epoch FROM {after} - {day}) / 3600)::integer + 1"
    return f"(({mask} >> least(greatest({first}, 0), 24)) <> 0)"


def _bin(t: datetime, width: timedelta) -> datetime:
    """date_bin(width, t, ORIGIN)."""
    return ORIGIN + (t - ORIGIN) // width * width


def period_weeks(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The period's whole weeks [w0, w1), as a span of the whole period has them (w1 = w0:
    none). The days outside them are read for every span in two ranges of days; those in
    them only for the spans whose whole weeks are others, each by its key."""
    w0 = _bin(_bin(start - timedelta(microseconds=1), timedelta(days=1)) + timedelta(days=1)
              - timedelta(microseconds=1), timedelta(days=7)) + timedelta(days=7)
    w1 = _bin(_bin(end, timedelta(days=1)) - WEEK_END_MARGIN, timedelta(days=7))
    return w0, max(w0, w1)


def _weeks_sql(weeks: bool) -> tuple[str, str, str, str]:
    """The spans' whole weeks [wl, wh), the CTE summing them and its part of `parts` (SQL):
    none without the weekly counts (TimescaleDB, whose daily aggregates are what it keeps).
    A slot that does not divide a day is counted from days (and hours) only."""
    if not weeks:
        return "dd.ds", "dd.ds", "", ""
    # hours, not days: a day added to a timestamptz is a calendar day of the session's time
    # zone (25 hours when Danish clocks go back), as date_bin's are not
    ws = (f"date_bin(INTERVAL '7 days', dd.ds - INTERVAL '1 microsecond', {_ORIGIN_SQL}) "
          "+ INTERVAL '168 hours'")
    we = (f"date_bin(INTERVAL '7 days', dd.de - INTERVAL '{WEEK_END_MARGIN.days * 24} hours', "
          f"{_ORIGIN_SQL})")
    wl = f"CASE WHEN x.slot_hours IS NULL THEN dd.ds ELSE {ws} END"
    wh = f"CASE WHEN x.slot_hours IS NULL THEN dd.ds ELSE greatest({we}, {ws}) END"
    picked = " ".join(f"WHEN {n} THEN w.slots_{n}h" for n in DAY_SLOT_HOURS)
    cte = f"""
weeks AS (      -- a span's whole weeks, summed per span
    SELECT sp.id, sum(w.measurements) AS measurements, sum(w.events) AS events,
           sum(w.faults) AS faults, sum(CASE sp.slot_hours {picked} END) AS slots_heard
    FROM spans_slot sp JOIN (   -- (OFFSET 0: the weeks read once, never per span by key)
        SELECT * FROM device_weekly w WHERE w.week >= %(start)s AND w.week < %(end)s
        OFFSET 0) w
      ON w.device_id = sp.device_id AND w.week >= sp.wl AND w.week < sp.wh
    GROUP BY 1
),"""
    part = """
    UNION ALL
    SELECT sp.device_id, 0, w.measurements, w.events, w.faults, 0, w.slots_heard, NULL,
           NULL, NULL
    FROM weeks w JOIN spans_once sp USING (id)"""
    return wl, wh, cte, part


def per_device_sql(weeks: bool) -> str:
    """One row per device deployed in the period: its spans with a citizen (in the period,
    up to the report's `now`), and what the per-device counts, bad readings, its last battery
    level and its message counter say about them. An hour counts for a span if they overlap;
    its rows once, if two spans of the device share it (a device given to the next citizen
    within the hour its last stay ended in).

    The weeks, and the days at the period's ends (outside its whole weeks), are read once
    for the whole period and joined to a hash of the spans (a row matched by its device,
    then by its span's range), summed per span as they come, by parallel workers where the
    planner finds them worth it. OFFSET 0 fences those reads: the planner cannot guess how
    many spans there are and would read them span by span, by key. The spans are
    `spans_slot` written out there (NOT MATERIALIZED: a materialized CTE can be read by no
    parallel worker, and the planner knows none of its columns); the small joins read them
    computed once (`spans_once`). A span whose whole weeks are not the period's (a stay
    that began or ended in it, a slot that does not divide a day) has its days inside the
    period's weeks read by its key, from the key's index alone. Every part of a span is a
    row of `parts`, summed per device.

    Parameters: start, end, municipality, the catalogue's vendors, models, heartbeats and
    slot_hours, and the period's whole weeks w0, w1 (`period_weeks`: for any w0 <= w1 the
    figures are the same, only the reads differ)."""
    wl, wh, weeks_cte, weeks_part = _weeks_sql(weeks)
    edge_blocks = ("(sp.first_slot - date_part('epoch', e.day) / sp.slot_s)::integer",
                   "(sp.end_slot - date_part('epoch', e.day) / sp.slot_s)::integer")
    return f"""
WITH stays AS (
    SELECT a.id, a.device_id,
           greatest(a.since, %(start)s) AS s,
           least(coalesce(a.until, 'infinity'), %(end)s) AS e
    FROM device_assignments a
    WHERE a.since < %(end)s AND coalesce(a.until, 'infinity') > %(start)s
      AND (%(municipality)s::text IS NULL OR a.municipality = %(municipality)s::text)
),
spans AS (      -- `counted_from`: an hour that begins before it is the device's stay's
                -- before (one ended within the hour this one began in), whose rows are
                -- counted there, not again here
    SELECT st.*, coalesce(lag(st.e) OVER (PARTITION BY st.device_id ORDER BY st.s),
                          '-infinity') AS counted_from
    FROM stays st
),
spans_slot AS NOT MATERIALIZED (
    -- the expected-contact slot: the model's heartbeat, at least an hour (a model not in the
    -- catalogue: an hour); whole days [ds, de), whole weeks [wl, wh) among them
    SELECT sp.*, x.slot_s, c.vendor IS NOT NULL AS in_catalogue, x.slot_hours,
           ceil(extract(epoch FROM sp.s) / x.slot_s) AS first_slot,
           floor(extract(epoch FROM sp.e) / x.slot_s) AS end_slot,
           dd.ds, dd.de, {wl} AS wl, {wh} AS wh,
           -- an hour that begins after this is in the span's last slot (silent_at_end)
           sp.e - make_interval(secs => x.slot_s) - INTERVAL '1 hour' AS quiet_after
    FROM spans sp JOIN devices d USING (device_id)
    LEFT JOIN unnest(%(vendors)s::text[], %(models)s::text[], %(heartbeats)s::float8[],
                     %(slot_hours)s::int[])
         AS c(vendor, model, heartbeat_s, slot_hours) ON c.vendor = d.vendor AND c.model = d.model
    CROSS JOIN LATERAL (
        SELECT greatest(coalesce(c.heartbeat_s, 3600), 3600) AS slot_s,
               CASE WHEN c.vendor IS NULL THEN 1 ELSE c.slot_hours END AS slot_hours) x
    CROSS JOIN LATERAL (
        SELECT date_bin(INTERVAL '1 day', sp.s - INTERVAL '1 microsecond', {_ORIGIN_SQL})
                   + INTERVAL '24 hours' AS ds,
               date_bin(INTERVAL '1 day', sp.e, {_ORIGIN_SQL}) AS de) dd
    WHERE sp.e > sp.s
    OFFSET 0    -- joined as a whole: the catalogue's join not put off to the days' rows
),
spans_once AS MATERIALIZED (SELECT * FROM spans_slot),
edges AS (      -- the hours of a span outside its whole days: before them, and after
    SELECT sp.id, sp.device_id, x.lo, x.hi
    FROM spans_once sp
    CROSS JOIN LATERAL (VALUES
        (date_bin(INTERVAL '1 hour', sp.s, {_ORIGIN_SQL}), least(sp.ds, sp.e)),
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
    UNION ALL   -- and the folded hours of the edge's day (0026), by its key: each hour with
                -- a reading or an event, as an hourly row is (counts add up with an hour's
                -- late row, not folded yet; a NULL array: none that day)
    SELECT e.id, f.bucket, f.measurements, f.events, f.faults
    FROM edges e CROSS JOIN LATERAL (
        SELECT f.day + make_interval(hours => u.h::integer - 1) AS bucket,
               coalesce(u.measurements, 0)::bigint AS measurements,
               coalesce(u.events, 0)::bigint AS events, coalesce(u.faults, 0)::bigint AS faults
        FROM device_hours_folded f
        CROSS JOIN LATERAL unnest(f.readings, f.measurements, f.events, f.faults)
             WITH ORDINALITY AS u(readings, measurements, events, faults, h)
        WHERE f.device_id = e.device_id
          AND f.day = date_bin(INTERVAL '1 day', e.lo, {_ORIGIN_SQL})
          AND (u.readings > 0 OR u.events > 0)
        OFFSET 0) f
    WHERE f.bucket >= e.lo AND f.bucket < e.hi
),
-- What each part of a span adds, one row each, summed per device below in one hash
-- aggregate (no join between per-span aggregates: the planner cannot guess their sizes).
-- `heard_at_end`: an hour with data in the last slot, counted only for the span that is
-- checked for silence (with the citizen at the period's end; a device has one at most).
day_rows AS (   -- a span's whole days outside its whole weeks: those outside the period's
                -- whole weeks for every span, by a hash of the spans (two ranges of days)...
    SELECT sp.id, sp.slot_hours, sp.e, sp.quiet_after, d.day, d.measurements, d.events,
           d.faults, d.heard
    FROM spans_slot sp JOIN (   -- (OFFSET 0: the days read once, never per span by key)
        SELECT * FROM device_daily d
        WHERE (d.day >= %(start)s AND d.day < %(w0)s) OR (d.day >= %(w1)s AND d.day < %(end)s)
        OFFSET 0) d
      ON d.device_id = sp.device_id AND d.day >= sp.ds AND d.day < sp.de
     AND (d.day < sp.wl OR d.day >= sp.wh)   -- (not the span's weeks, wherever w0, w1 are)
    UNION ALL   -- ...and those in them, for a span whose whole weeks are others, by key
    SELECT sp.id, sp.slot_hours, sp.e, sp.quiet_after, d.day, d.measurements, d.events,
           d.faults, d.heard
    FROM spans_slot sp
    CROSS JOIN LATERAL (VALUES
        (greatest(sp.ds, %(w0)s), least(sp.wl, sp.de, %(w1)s)),
        (greatest(sp.wh, sp.ds, %(w0)s), least(sp.de, %(w1)s))) AS r(lo, hi)
    CROSS JOIN LATERAL (
        SELECT d.day, d.measurements, d.events, d.faults, d.heard FROM device_daily d
        WHERE d.device_id = sp.device_id AND d.day >= r.lo AND d.day < r.hi
        OFFSET 0) d
    WHERE NOT (sp.wl <= %(w0)s AND sp.wh >= %(w1)s) AND r.lo < r.hi
),
days AS (       -- summed per span (a slot that does not divide a day: per day, the day's
                -- slots counted one by one below)
    SELECT id, CASE WHEN slot_hours IS NULL THEN day END AS day,
           sum(measurements) AS measurements, sum(events) AS events, sum(faults) AS faults,
           sum({_day_slots_sql("heard", "slot_hours")}) AS slots_heard,
           bool_or(CASE WHEN e >= %(end)s AND day > quiet_after - INTERVAL '24 hours'
                        THEN {_heard_after_sql("heard", "day", "quiet_after")} END)
               AS heard_at_end,
           bit_or(CASE WHEN slot_hours IS NULL THEN heard END) AS heard
    FROM day_rows
    GROUP BY 1, 2
),{weeks_cte}
edge_days AS (  -- an edge's heard hours as a mask of its day (an edge is within one day)
    SELECT h.id, x.day, bit_or(1 << (extract(epoch FROM h.bucket - x.day) / 3600)::integer)
               AS heard
    FROM edge_hours h
    CROSS JOIN LATERAL (SELECT date_bin(INTERVAL '1 day', h.bucket, {_ORIGIN_SQL}) AS day) x
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
    SELECT sp.device_id, 0, h.measurements * x.own, h.events * x.own, h.faults * x.own,
           0, 0, NULL, CASE WHEN sp.e >= %(end)s THEN h.bucket > sp.quiet_after END, NULL
    FROM edge_hours h JOIN spans_once sp USING (id)
    -- an hour of two stays is heard in both, its rows counted in the first
    CROSS JOIN LATERAL (SELECT (h.bucket >= sp.counted_from)::integer AS own) x
    UNION ALL
    SELECT sp.device_id, 0, d.measurements, d.events, d.faults, 0, d.slots_heard, NULL,
           d.heard_at_end, NULL
    FROM days d JOIN spans_once sp USING (id){weeks_part}
    UNION ALL   -- the slots of an edge's day inside the span
    SELECT sp.device_id, 0, 0, 0, 0, 0,
           {_day_slots_sql("e.heard", "sp.slot_hours", blocks=edge_blocks)},
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
     AND date_bin(INTERVAL '1 hour', b.time, {_ORIGIN_SQL}) > sp.s - INTERVAL '1 hour'
     AND date_bin(INTERVAL '1 hour', b.time, {_ORIGIN_SQL}) < sp.e
     AND date_bin(INTERVAL '1 hour', b.time, {_ORIGIN_SQL}) >= sp.counted_from
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


# Plain PostgreSQL's, with the weekly counts; TimescaleDB's, with days and hours alone.
PER_DEVICE = per_device_sql(weeks=True)
PER_DEVICE_DAYS = per_device_sql(weeks=False)
