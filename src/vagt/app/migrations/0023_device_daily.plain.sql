-- One row per device and UTC day for the vendor report (`vagt report vendors`), readings and
-- events together: `heard` is the day's 24-bit mask of hours in which anything came (bit h:
-- the hour from h:00 UTC; a reading's hours and an event's OR-ed). 0022 kept readings' and
-- events' days apart, so the report found, for each events day, its readings day by key to
-- OR the masks: a probe per events day, and a year's days read device by device, page by
-- page at random. One table the report reads once, by a hash of the stays, in parallel.
--
-- Keyed by day first: a report reads the days of its period (a range of the key), never one
-- device's days by key. The refresh (`vagt.app.device_hours`) upserts by the same key, in the
-- transaction that adds the new rows to the hourly tables: counts added, masks OR-ed.
-- The .timescale flavour has a view of this name and these columns over 0022's continuous
-- aggregates, which stay there.
-- Counts are integers: a device's day is far below 2^31 of anything, and a sum of integers
-- keeps a plain number per group where one of bigints keeps a pointer to one.
CREATE TABLE device_daily (
    day           timestamptz NOT NULL,   -- 00:00 UTC, by device time
    device_id     text NOT NULL,
    measurements  integer NOT NULL,       -- readings other than battery and signal
    events        integer NOT NULL,
    faults        integer NOT NULL,       -- events whose code begins `fault.`
    heard         integer NOT NULL,       -- bit h: a reading or an event in hour h (UTC)
    PRIMARY KEY (day, device_id)
);

-- A refresh running now must not add to 0022's tables after this has read them (the lock
-- is the refresh's own, taken before its snapshot; this waits for it to end). Nothing else
-- is locked: the daily tables are the refresh's and the report's alone, and readings and
-- events, which the lanes write, are not read here.
SELECT pg_advisory_xact_lock(33321144214385267);   -- device_hours.REFRESH_LOCK_KEY

INSERT INTO device_daily (day, device_id, measurements, events, faults, heard)
SELECT day, device_id, coalesce(r.measurements, 0), coalesce(v.events, 0),
       coalesce(v.faults, 0), coalesce(r.heard, 0) | coalesce(v.heard, 0)
FROM readings_daily r FULL JOIN events_daily v USING (device_id, day);

-- Dropped, not left behind: a refresh of a release before this one (a CLI not yet
-- upgraded) would add the new rows to them and not here, and keep its snapshot, so this
-- table would miss them for good. Without them such a refresh fails and adds nothing.
DROP TABLE readings_daily, events_daily;

-- The report's plan rests on the table's size and its days' spread: known from the start.
ANALYZE device_daily;
