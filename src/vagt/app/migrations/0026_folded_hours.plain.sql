-- The vendor report's hourly counts of days older than a recent window (retention.HOURS_KEPT),
-- folded: per device and UTC day, 24 counts per column of 0019's hourly tables (element h:
-- the hour from h:00 UTC), so that the hours, most of the counts' size (a device-year heard
-- every hour: 1.23 MB of hours, 0.06 MB of days), can be deleted with nothing lost.
--
-- `vagt db prune` and the engine's daily prune (`vagt.app.hours_fold`) fold them: in one
-- transaction an hour's rows are deleted and their counts added here, element by element,
-- so a row can be folded at any time, and more than once for a day. A late row for a folded
-- hour goes into the hourly tables as any row does (the refresh does not read them back:
-- its row holds its own count alone), and the next prune adds it here. The report reads a
-- stay's partial first and last day (its edges) from the hours and from here together:
-- an hour of a folded day was heard if it holds a reading or an event (`readings`,
-- `events` above 0, as an hourly row is there only if one came), and the counts add up.
--
-- A table of its own, not columns of device_daily: the days the report reads for every
-- stay stay as narrow as they are (their key's index holds them), the edges read a day
-- here by the same key, and TimescaleDB's device_daily is a view of continuous aggregates
-- that can take no columns of ours (the .timescale flavour makes this same table, which
-- stays empty there: the aggregates keep their hours).
CREATE TABLE device_hours_folded (
    day           timestamptz NOT NULL,   -- 00:00 UTC, by device time
    device_id     text NOT NULL,
    readings      integer[] NOT NULL CHECK (cardinality(readings) = 24),
    measurements  integer[] NOT NULL CHECK (cardinality(measurements) = 24),
    events        integer[] NOT NULL CHECK (cardinality(events) = 24),
    faults        integer[] NOT NULL CHECK (cardinality(faults) = 24),
    PRIMARY KEY (device_id, day)
);

-- Two days' folded counts of one column added hour by hour.
CREATE FUNCTION vagt_add_hours(a integer[], b integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT array_agg(x + y ORDER BY h) FROM unnest(a, b) WITH ORDINALITY AS u(x, y, h)
$$;
