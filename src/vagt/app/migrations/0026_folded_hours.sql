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
-- A day with no event has no events' arrays (NULL), one with no reading no readings' (a
-- device-day of a device heard every hour: some 0.47 KB here, 3 KB of hours).
-- A table of its own, not columns of device_daily: the days the report reads for every
-- stay stay as narrow as they are (their key's index holds them), the edges read a day
-- here by the same key, and TimescaleDB's device_daily is a view of continuous aggregates
-- that can take no columns of ours.
--
-- One flavour: on TimescaleDB the same table, which stays empty. The hours there are
-- continuous aggregates, and their rows are not ours to delete: a refresh over a range
-- whose hours were deleted would make them again from the raw rows (kept
-- READINGS_RETENTION), and the daily aggregates over them would lose their counts if
-- refreshed after; past the raw rows' retention their hours are what the days were made
-- from. So `vagt db prune` folds nothing there, and the report, which reads a stay's edges
-- from the hours and this table together, reads the hours alone: its query is one for both.
CREATE TABLE device_hours_folded (
    day           timestamptz NOT NULL,   -- 00:00 UTC, by device time
    device_id     text NOT NULL,
    readings      integer[] CHECK (cardinality(readings) = 24),       -- NULL: no reading
    measurements  integer[] CHECK (cardinality(measurements) = 24),   -- that day
    events        integer[] CHECK (cardinality(events) = 24),         -- NULL: no event
    faults        integer[] CHECK (cardinality(faults) = 24),         -- that day
    CHECK ((readings IS NULL) = (measurements IS NULL) AND (events IS NULL) = (faults IS NULL)
           AND (readings IS NOT NULL OR events IS NOT NULL)),
    PRIMARY KEY (device_id, day)
);

-- Two days' folded counts of one column added hour by hour (NULL: none).
CREATE FUNCTION vagt_add_hours(a integer[], b integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
                ELSE (SELECT array_agg(x + y ORDER BY h)
                      FROM unnest(a, b) WITH ORDINALITY AS u(x, y, h)) END
$$;
