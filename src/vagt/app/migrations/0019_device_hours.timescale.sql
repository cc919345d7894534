-- Per device and hour: how many readings and events came, for the vendor report
-- (`vagt report vendors`): continuous aggregates over the readings and events hypertables.
-- The .plain flavour has tables of the same names and columns, kept by the report.
--
-- One aggregate per hypertable, grouped by device_id only: a continuous aggregate reads one
-- hypertable, and before TimescaleDB 2.10 joins none; vendor, model and municipality are
-- joined at query time (they change: a device moves between municipalities).
-- Buckets are by device time (time_bucket on the hypertable's time column, UTC hours).
-- FILTER is avoided in the aggregates: sum(CASE ...) is accepted by every release.
--
-- WITH NO DATA: a migration runs in a transaction, where a continuous aggregate cannot be
-- filled; the policy and the report's own refresh of its period
-- (`refresh_continuous_aggregate`, `vagt.app.device_hours.refresh`) fill it. Real-time
-- aggregation (materialized_only = false, off by default since 2.13) adds the hours not
-- materialized yet when it is read.
CREATE MATERIALIZED VIEW readings_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
       device_id,
       count(*) AS readings,
       sum(CASE WHEN metric IN ('battery', 'signal') THEN 0 ELSE 1 END) AS measurements
FROM readings
GROUP BY time_bucket(INTERVAL '1 hour', time), device_id
WITH NO DATA;

CREATE MATERIALIZED VIEW events_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
       device_id,
       count(*) AS events,
       sum(CASE WHEN starts_with(code, 'fault.') THEN 1 ELSE 0 END) AS faults
FROM events
GROUP BY time_bucket(INTERVAL '1 hour', time), device_id
WITH NO DATA;

-- Every 30 minutes, the last 3 days up to the hour before: devices flush what they buffered
-- in an outage of a day or two; older late rows are materialized when a report refreshes
-- its period.
SELECT add_continuous_aggregate_policy('readings_hourly', start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes');
SELECT add_continuous_aggregate_policy('events_hourly', start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes');

