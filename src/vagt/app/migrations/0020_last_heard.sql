-- When the centre last heard from each device: the broker's receipt time of its latest
-- message, by the centre's clock. `last_seen` is the device's own clock, and silence was
-- judged from it against ours: a gateway whose clock runs 20 minutes slow, heard seconds
-- ago, was "silent", and every heartbeat cleared an absence alert that the next sweep
-- opened again. Silence, online and overdue are now judged from `last_heard`; `last_seen`
-- still orders the device's data (late rows, the rules' watermarks).
-- Every batch, of either lane or of any engine, takes the greatest: a batch that commits
-- after a later one never takes it back.
-- Before this column only the device time was kept: it is the best guess until the device
-- is heard again.
ALTER TABLE devices
    ADD COLUMN last_heard timestamptz;

UPDATE devices SET last_heard = last_seen WHERE last_seen IS NOT NULL;
