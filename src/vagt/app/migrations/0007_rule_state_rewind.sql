-- Late rows: with a shared subscription, one engine may commit a device's newer messages
-- while another still holds older ones; a device's own buffered flush can also come after
-- its live readings. The rules then skipped the older rows, and an alert they make could be
-- missed. Each row keeps the state before its last write (`prev_*`) and the device time up to
-- which each state has seen rows (`as_of`): rows older than `as_of` but newer than
-- `prev_as_of` are evaluated in order, from `prev`, with the stored rows since.
ALTER TABLE rule_state
    ADD COLUMN as_of        float8,     -- the latest device time the state has seen (epoch s)
    ADD COLUMN prev_layout  bigint,     -- the state before the last write that took rows;
    ADD COLUMN prev_slots   bytea,      -- prev_layout NULL with prev_as_of -Infinity: empty
    ADD COLUMN prev_vals    bytea,
    ADD COLUMN prev_texts   text,
    ADD COLUMN prev_as_of   float8;     -- NULL: no state to go back to
