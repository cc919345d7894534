-- The vendor report's per-device counts (`vagt report vendors`) by day, readings and events
-- together, and by week. 0022 kept readings' and events' days apart: for each events day
-- the report found its readings day by key to OR the hour masks, and it read each device's
-- days by key, a heap page a day at random, so a year at 30,000 devices took 87 s and grew
-- faster than the fleet. Now a year is some 53 weekly rows a device, and the days of the
-- partial weeks at its ends.
--
-- device_daily: a device's UTC day, `heard` its 24-bit mask of hours in which anything came
-- (bit h: the hour from h:00 UTC; a reading's hours and an event's OR-ed). Keyed by device,
-- with the counts in the key's index, for a span's days in the middle of a period (a move
-- between citizens, a slot that does not divide a day): read from the index alone, not a
-- heap page a day; a BRIN index on the day for the days at a period's ends, read for every
-- device (rows come in day by day).
-- device_weekly: a device's week (from Monday 00:00 UTC, as date_bin from 2000-01-03 makes
-- it), with the heard slots of each slot length that divides a day (`slots_{n}h`: per day,
-- the n-hour blocks of the day's mask with a bit, summed over the week's days), so a whole
-- week is one row whatever the model's heartbeat. Keyed by week: a report reads the weeks of
-- its period. Counts are integers: a device's week is far below 2^31 of anything, and a sum
-- of integers keeps a number per group where a sum of bigints keeps a pointer to one.
--
-- Both are kept by the refresh (`vagt.app.device_hours`) in the transaction that adds the
-- new rows to the hourly tables: counts added, masks OR-ed, and each week's slot counts
-- moved by what the new hours add to its days' masks.
-- The .timescale flavour has a view for the days (device_daily) and no weekly counts: there
-- the report reads the days of 0022's daily continuous aggregates.
CREATE TABLE device_daily (
    day           timestamptz NOT NULL,   -- 00:00 UTC, by device time
    device_id     text NOT NULL,
    measurements  integer NOT NULL,       -- readings other than battery and signal
    events        integer NOT NULL,
    faults        integer NOT NULL,       -- events whose code begins `fault.`
    heard         integer NOT NULL,       -- bit h: a reading or an event in hour h (UTC)
    PRIMARY KEY (device_id, day) INCLUDE (measurements, events, faults, heard)
);

CREATE TABLE device_weekly (
    week          timestamptz NOT NULL,   -- Monday 00:00 UTC, by device time
    device_id     text NOT NULL,
    measurements  integer NOT NULL,
    events        integer NOT NULL,
    faults        integer NOT NULL,
    slots_1h      integer NOT NULL,       -- heard hours
    slots_2h      integer NOT NULL,       -- heard 2-hour blocks (00-02, 02-04, ... UTC)
    slots_3h      integer NOT NULL,
    slots_4h      integer NOT NULL,
    slots_6h      integer NOT NULL,
    slots_8h      integer NOT NULL,
    slots_12h     integer NOT NULL,
    slots_24h     integer NOT NULL,       -- heard days
    PRIMARY KEY (week, device_id)
);

-- A refresh running now must not add to 0022's tables after this has read them (the lock
-- is the refresh's own, taken before its snapshot; this waits for it to end). Nothing else
-- is locked: the daily tables are the refresh's and the report's alone, and readings and
-- events, which the lanes write, are not read here.
SELECT pg_advisory_xact_lock(33321144214385267);   -- device_hours.REFRESH_LOCK_KEY

INSERT INTO device_daily (day, device_id, measurements, events, faults, heard)
SELECT day, device_id, coalesce(r.measurements, 0), coalesce(v.events, 0),
       coalesce(v.faults, 0), coalesce(r.heard, 0) | coalesce(v.heard, 0)
FROM readings_daily r FULL JOIN events_daily v USING (device_id, day)
ORDER BY day;                             -- in the order the refresh adds days

CREATE INDEX device_daily_day_brin ON device_daily USING brin (day)
    WITH (autosummarize = on);

-- The slot counts as vagt.devices.report_query.slots_sql writes them (1, 2, 3, 4, 6, 8,
-- 12 and 24 hours): the mask folded so that a block's first bit is set if any of its bits
-- is, then counted (up to 4 hours), or each block tested.
INSERT INTO device_weekly
SELECT date_bin(INTERVAL '7 days', day, TIMESTAMPTZ '2000-01-03 00:00+00'), device_id,
       sum(measurements), sum(events), sum(faults),
       sum(bit_count(((heard) & 16777215)::bit(24))::integer),
       sum(bit_count(((heard | (heard >> 1)) & 5592405)::bit(24))::integer),
       sum(bit_count(((heard | (heard >> 1) | (heard >> 2)) & 2396745)::bit(24))::integer),
       sum(bit_count(((heard | (heard >> 1) | (heard >> 2) | (heard >> 3)) & 1118481)::bit(24))
           ::integer),
       sum((((heard & 63) <> 0)::integer + ((heard & 4032) <> 0)::integer
            + ((heard & 258048) <> 0)::integer + ((heard & 16515072) <> 0)::integer)),
       sum((((heard & 255) <> 0)::integer + ((heard & 65280) <> 0)::integer
            + ((heard & 16711680) <> 0)::integer)),
       sum((((heard & 4095) <> 0)::integer + ((heard & 16773120) <> 0)::integer)),
       sum((((heard & 16777215) <> 0)::integer))
FROM device_daily
GROUP BY 1, 2;

-- Dropped, not left behind: a refresh of a release before this one (a CLI not yet
-- upgraded) would add the new rows to them and not here, and keep its snapshot, so these
-- tables would miss them for good. Without them such a refresh fails and adds nothing.
DROP TABLE readings_daily, events_daily;

-- The report's plan rests on the tables' sizes and their days' spread: known from the start.
ANALYZE device_daily;
ANALYZE device_weekly;
