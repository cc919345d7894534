-- Plain PostgreSQL: readings and events are append-mostly and queried by time ranges,
-- so a BRIN index on time is small and enough. Retention is `vagt db prune`
-- (vagt.app.retention; the engine runs it daily).
CREATE INDEX readings_time_brin ON readings USING brin (time);
CREATE INDEX events_time_brin ON events USING brin (time);
