-- The vendor report's hourly counts of days older than a recent window, folded: per device
-- and UTC day, 24 counts per column of the hourly counts (element h: the hour from h:00 UTC).
-- The .plain flavour folds its hourly tables into this table and deletes them (see it).
--
-- Here the same table, which stays empty: the hours are continuous aggregates, and their
-- rows are not ours to delete. A refresh over a range whose hours were deleted would make
-- them again from the raw rows (kept READINGS_RETENTION), and the daily aggregates over
-- them would lose their counts if refreshed after; past the raw rows' retention their hours
-- are what the days were made from. So `vagt db prune` folds nothing on TimescaleDB, and
-- the report, which reads a stay's edges from the hours and this table together, reads
-- the hours alone. The same table on both, so that the report's query is one.
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
