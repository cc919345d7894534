-- A device the centre gives to another citizen starts with no rule state. The rules kept
-- state per device, so a reused scale compared the next citizen's weight with the last
-- citizen's (a "gain" of the difference between two people), and a dose the last citizen
-- had due, a `for` timer or a flapping count ran on into the next citizen's alerts.
--
-- Deploying a device (the command, or an import) calls this in its transaction, holding the
-- devices' rows, as an engine does before it evaluates them:
-- - layout 0 is the empty state, written: every engine that reads the row (its version is
--   new to all) sets the device's arrays to their fills; a row never written (layout NULL)
--   leaves an engine's memory as it is, so it cannot say this;
-- - `prev`, where late rows go back to, is the empty state too;
-- - `as_of` and `prev_as_of` are the deployment's time: rows from before it that come late
--   are stored, and the rules skip them (they are the last citizen's); a replay of late rows
--   reads only rows after it.
-- - `began` is the deployment's time: the rules' history reads (a weight window after a
--   restart) begin there (`rule_queries.reading_history`). NULL: all the device's rows (it
--   was deployed before this migration).
ALTER TABLE rule_state
    ADD COLUMN began timestamptz;

CREATE FUNCTION vagt_reset_rule_state(ids text[], deployed timestamptz) RETURNS void
LANGUAGE sql AS $$
INSERT INTO rule_state (device_id, version, writer, layout, as_of, prev_as_of,
                         prev_since, updated_at, began)
SELECT d, 1 + floor(random() * 4.6e18)::int8, 0, 0, extract(epoch FROM deployed)::float8,
       extract(epoch FROM deployed)::float8, now(), now(), deployed
FROM unnest(ids) AS d
ORDER BY d
ON CONFLICT (device_id) DO UPDATE SET
    version = excluded.version, writer = 0, layout = 0, slots = NULL, vals = NULL,
    texts = NULL, as_of = excluded.as_of, prev_layout = NULL, prev_slots = NULL,
    prev_vals = NULL, prev_texts = NULL, prev_as_of = excluded.prev_as_of,
    prev_since = now(), updated_at = now(), began = deployed
$$;
