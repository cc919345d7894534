-- TimescaleDB: readings and events become hypertables (7-day chunks) with compression after
-- 7 days and retention of 3 years (the centre's reporting horizon for vendor tenders).
-- The primary keys include time, as hypertables require.
SELECT create_hypertable('readings', by_range('time', INTERVAL '7 days'), migrate_data => true);
SELECT create_hypertable('events', by_range('time', INTERVAL '7 days'), migrate_data => true);
ALTER TABLE readings SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'time DESC');
ALTER TABLE events SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'time DESC');
SELECT add_compression_policy('readings', INTERVAL '7 days');
SELECT add_compression_policy('events', INTERVAL '7 days');
SELECT add_retention_policy('readings', INTERVAL '3 years');
SELECT add_retention_policy('events', INTERVAL '3 years');
