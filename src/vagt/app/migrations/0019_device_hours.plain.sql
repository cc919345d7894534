-- Per device and hour: how many readings and events came, for the vendor report
-- (`vagt report vendors`). Read by the report instead of a year of raw rows (at 100,000
-- devices, billions of them); the same table names as TimescaleDB's continuous aggregates in
-- the .timescale flavour, with the same columns and the same numbers.
--
-- Kept up to date by the report itself (`vagt.app.device_hours.refresh`), incrementally: a
-- row is added to its hour once, when the first refresh after its commit sees it. Which rows
-- are new is decided by transaction, not by clock: each row keeps the id of the transaction
-- that stored it (`stored_xid`), and the refresh keeps the snapshot it read with; the next one
-- adds the rows its own snapshot sees and the last one did not. A clock (received_at, or the
-- time of storing) cannot say that: a batch held while the database was away commits with an
-- old received_at, and a transaction that began before a watermark commits after it. Rows
-- are bucketed by device time, so a device's buffered flush after an outage lands in the
-- hours it was measured in, however late it comes.
--
-- Rows stored before this migration have no stored_xid: the first refresh takes them all.
-- The default is set apart from ADD COLUMN, so the column costs no table rewrite.
ALTER TABLE readings ADD COLUMN stored_xid bigint;
ALTER TABLE readings ALTER COLUMN stored_xid SET DEFAULT pg_current_xact_id()::text::bigint;
ALTER TABLE events ADD COLUMN stored_xid bigint;
ALTER TABLE events ALTER COLUMN stored_xid SET DEFAULT pg_current_xact_id()::text::bigint;
-- Their BRIN indexes are built by the first refresh, CONCURRENTLY (device_hours): here, in
-- the migration's transaction, the build would hold the lock of the ALTERs above over a
-- scan of every reading, and the lanes of engines still running (alarms into events
-- included) would wait for it.

-- `measurements`: readings other than the status metrics battery and signal.
CREATE TABLE readings_hourly (
    bucket        timestamptz NOT NULL,   -- the hour (UTC), by device time
    device_id     text NOT NULL,
    readings      bigint NOT NULL,
    measurements  bigint NOT NULL,
    PRIMARY KEY (bucket, device_id)
);

-- `faults`: events whose code begins `fault.` (the catalogue's and the rules' fault codes).
CREATE TABLE events_hourly (
    bucket     timestamptz NOT NULL,
    device_id  text NOT NULL,
    events     bigint NOT NULL,
    faults     bigint NOT NULL,
    PRIMARY KEY (bucket, device_id)
);

-- The snapshot the last refresh read with (none: never refreshed).
CREATE TABLE hourly_refresh (
    name      text PRIMARY KEY,
    snapshot  pg_snapshot NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
