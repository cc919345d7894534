-- The vendor report's per-device days (`vagt report vendors`), readings and events together:
-- `heard` is the day's 24-bit mask of hours in which anything came, a reading's hours and
-- an event's OR-ed. The .plain flavour has a table of this name and these columns, and one
-- of weeks, both kept by the report's refresh. Here a continuous aggregate reads one
-- hypertable (or one continuous aggregate) only, so the days are a view over 0022's daily
-- aggregates (readings days with their events day, then the events days with no readings
-- day), real-time as they are; each part takes a query's conditions on day and device_id
-- to the aggregates' own indexes. There are no weekly counts: a view of them would read
-- these days again, so the report reads the days themselves here. Counts are integers, as
-- the plain table's (the aggregates' sums are numeric).
CREATE VIEW device_daily AS
SELECT r.day, r.device_id, r.measurements::integer AS measurements,
       coalesce(v.events, 0)::integer AS events, coalesce(v.faults, 0)::integer AS faults,
       r.heard | coalesce(v.heard, 0) AS heard
FROM readings_daily r
LEFT JOIN events_daily v ON v.device_id = r.device_id AND v.day = r.day
UNION ALL
SELECT v.day, v.device_id, 0, v.events::integer, v.faults::integer, v.heard
FROM events_daily v
WHERE NOT EXISTS (SELECT FROM readings_daily r WHERE r.device_id = v.device_id AND r.day = v.day);
