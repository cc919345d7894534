-- The rules' per-device state (`for` timers, stuck runs, flapping counts, a pending dose),
-- kept beside the device so that every engine process continues from where another left
-- off: with a shared subscription ($share) the broker hands a device's messages to any of
-- them. Whoever evaluates a device's rules holds its `devices` row (the batch's device-state
-- UPDATE, or FOR NO KEY UPDATE) and writes this row in the same transaction as the alerts. A process keeps the rows in memory
-- and reads a row again only when its `version` (a random number per write) is not the one
-- it wrote or read last. The state also survives a restart.
CREATE TABLE rule_state_layouts (
    id    bigint PRIMARY KEY,      -- from a hash of `spec`
    spec  text NOT NULL            -- JSON: which rule and array each slot of a row holds
);

CREATE TABLE rule_state (
    device_id   text PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
    version     bigint NOT NULL DEFAULT 0,
    writer      bigint NOT NULL DEFAULT 0,    -- the process that wrote it (a random number)
    layout      bigint,    -- rule_state_layouts.id, written in the same statement (no FK:
                           -- its check on every first write cost 10 ms a batch)
    slots       bytea,                        -- uint16 slot numbers, little-endian
    vals        bytea,                        -- float64 per slot, little-endian
    texts       text,                         -- JSON {slot: text} of text slots, or NULL
    updated_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);  -- room for HOT updates: a row is rewritten by most batches
