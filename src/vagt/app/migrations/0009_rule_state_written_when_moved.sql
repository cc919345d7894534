-- A device's rule state is written when the rules decide something new for it (a run begun,
-- an alert raised, a dose waiting), not for every message: a heartbeat whose battery is fine
-- moved only the time of the latest battery reading the rules had seen, and rewrote the row
-- (197,585 rows for a drain of 200,000 messages, a quarter of PostgreSQL's time).
--
-- So `rule_state.as_of` says how far the stored state has seen rows, and the device's own
-- row how far the rules have seen them in any engine's memory: every batch the rules
-- evaluate moves `last_seen`, and `seen_before` keeps what it was before the latest one, for
-- that batch to tell whether its rows are late (older than rows evaluated before them).
ALTER TABLE devices
    ADD COLUMN seen_before timestamptz;  -- last_seen before the latest batch's UPDATE

-- A row never written holds the empty state as of the device's latest message: its rows
-- before were never evaluated from it (they came before vagt's rules, or before this row).
UPDATE rule_state r SET as_of = extract(epoch FROM d.last_seen)::float8
FROM devices d
WHERE d.device_id = r.device_id AND r.layout IS NULL AND r.as_of IS NULL
  AND d.last_seen IS NOT NULL;
