-- Per device and UTC day, for the vendor report over months (`vagt report vendors`): the
-- day's counts and `heard`, a 24-bit mask of its hours in which anything came (bit h: the
-- hour from h:00 UTC). From the mask the report counts the heard slots of any whole-hour
-- length that divides a day with no per-hour rows, and reads hours (0019's aggregates) only
-- at a stay's partial first and last day. The .plain flavour has tables of these names and
-- columns (there bigint where these sums are numeric; the report casts).
--
-- Hierarchical continuous aggregates (a continuous aggregate on a continuous aggregate:
-- TimescaleDB 2.9 and later; 0002 needs 2.13 already, for by_range), over the hourly ones
-- of 0019; the daily bucket is a multiple of the hourly one, as they must be. Every
-- function in them is immutable, as a continuous aggregate requires: the hour of the day is
-- taken from the difference of two timestamps, not from the session's time zone. bit_or
-- has a combine function, so the aggregates are partial-aggregate safe on any release.
-- The default group indexes give (device_id, day) here and (device_id, bucket) on 0019's
-- hourly aggregates, which the report's per-device reads of edge hours use.
-- Real-time (materialized_only = false) down the stack: each level adds what the level
-- below has not materialized yet, to the hypertable at the bottom.
CREATE MATERIALIZED VIEW readings_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS day,
       device_id,
       sum(measurements) AS measurements,
       bit_or(1 << (extract(epoch FROM bucket - time_bucket(INTERVAL '1 day', bucket))
                    / 3600)::integer) AS heard
FROM readings_hourly
GROUP BY time_bucket(INTERVAL '1 day', bucket), device_id
WITH NO DATA;

CREATE MATERIALIZED VIEW events_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS day,
       device_id,
       sum(events) AS events,
       sum(faults) AS faults,
       bit_or(1 << (extract(epoch FROM bucket - time_bucket(INTERVAL '1 day', bucket))
                    / 3600)::integer) AS heard
FROM events_hourly
GROUP BY time_bucket(INTERVAL '1 day', bucket), device_id
WITH NO DATA;

-- Hourly, the last 4 days up to the hour before: the days the hourly policy (3 days) may
-- have changed, whole. Only whole days in the window are materialized, so today waits for
-- tomorrow (real-time aggregation covers it meanwhile; the report reads no partial day).
SELECT add_continuous_aggregate_policy('readings_daily', start_offset => INTERVAL '4 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour');
SELECT add_continuous_aggregate_policy('events_daily', start_offset => INTERVAL '4 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour');
