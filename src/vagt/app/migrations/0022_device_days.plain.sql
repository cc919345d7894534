-- Per device and UTC day, for the vendor report over months (`vagt report vendors`): the
-- day's counts and `heard`, a 24-bit mask of its hours in which anything came (bit h: the
-- hour from h:00 UTC). From the mask the report counts the heard slots of any whole-hour
-- length that divides a day (1, 2, 3, 4, 6, 8, 12, 24 hours) with no per-hour rows, and
-- reads hours (0019's tables) only at a stay's partial first and last day. A year at
-- 100,000 devices is ~36 M device-days against ~900 M device-hours.
--
-- The same names and columns as the .timescale flavour's hierarchical continuous
-- aggregates. Kept by `vagt.app.device_hours.refresh` in the transaction that adds the new
-- rows to the hourly tables, from the hours it adds: counts are added, masks OR-ed.
-- Keyed by device first, as TimescaleDB's group index on the aggregates: an events day
-- finds its readings day, and a stay its days, by key.
CREATE TABLE readings_daily (
    day           timestamptz NOT NULL,   -- 00:00 UTC, by device time
    device_id     text NOT NULL,
    measurements  bigint NOT NULL,
    heard         integer NOT NULL,       -- bit h: a reading in hour h of the day (UTC)
    PRIMARY KEY (device_id, day)
);

CREATE TABLE events_daily (
    day        timestamptz NOT NULL,
    device_id  text NOT NULL,
    events     bigint NOT NULL,
    faults     bigint NOT NULL,
    heard      integer NOT NULL,          -- bit h: an event in hour h of the day (UTC)
    PRIMARY KEY (device_id, day)
);

-- A refresh running now must not add hours these backfills do not see (the lock is the
-- refresh's own, taken before its snapshot; this waits for it to end).
SELECT pg_advisory_xact_lock(33321144214385267);   -- device_hours.REFRESH_LOCK_KEY

INSERT INTO readings_daily (day, device_id, measurements, heard)
SELECT date_bin(INTERVAL '1 day', bucket, TIMESTAMPTZ '2000-01-03 00:00+00'), device_id,
       sum(measurements),
       bit_or(1 << (extract(epoch FROM bucket - date_bin(INTERVAL '1 day', bucket,
                                                        TIMESTAMPTZ '2000-01-03 00:00+00'))
                    / 3600)::integer)
FROM readings_hourly
GROUP BY 1, 2;

INSERT INTO events_daily (day, device_id, events, faults, heard)
SELECT date_bin(INTERVAL '1 day', bucket, TIMESTAMPTZ '2000-01-03 00:00+00'), device_id,
       sum(events), sum(faults),
       bit_or(1 << (extract(epoch FROM bucket - date_bin(INTERVAL '1 day', bucket,
                                                        TIMESTAMPTZ '2000-01-03 00:00+00'))
                    / 3600)::integer)
FROM events_hourly
GROUP BY 1, 2;

-- The report reads a stay's edge hours per device: the hourly tables' keys lead with the
-- device (the refresh's ON CONFLICT (bucket, device_id) is served by either order).
CREATE UNIQUE INDEX readings_hourly_device_bucket ON readings_hourly (device_id, bucket);
ALTER TABLE readings_hourly DROP CONSTRAINT readings_hourly_pkey;
ALTER TABLE readings_hourly ADD CONSTRAINT readings_hourly_pkey
    PRIMARY KEY USING INDEX readings_hourly_device_bucket;
CREATE UNIQUE INDEX events_hourly_device_bucket ON events_hourly (device_id, bucket);
ALTER TABLE events_hourly DROP CONSTRAINT events_hourly_pkey;
ALTER TABLE events_hourly ADD CONSTRAINT events_hourly_pkey
    PRIMARY KEY USING INDEX events_hourly_device_bucket;
