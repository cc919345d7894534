-- An audit trail is listed by its time (`alerts show`: ORDER BY at, id), and its time was
-- now(), the start of the transaction that wrote it. The engine's batch transaction starts
-- before it waits for an operator's row lock, so a rule's clear or reopen written after an
-- operator's acknowledgement was listed before it, and the trail contradicted the alert.
-- clock_timestamp() is when the row was written: the order things happened in, as the
-- operators' own rows (which give it explicitly) always were.
ALTER TABLE alert_audit ALTER COLUMN at SET DEFAULT clock_timestamp();
ALTER TABLE audit_log ALTER COLUMN at SET DEFAULT clock_timestamp();
