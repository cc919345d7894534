-- Late rows go back to a state old enough. `prev` was the state before the last write, so
-- rows older than two writes of a device were skipped; with two engines a drain commits a
-- device more than once while the other holds its older rows, and the alerts then depended
-- on how the broker spread the messages. Now `prev` moves on only to a state written a
-- minute before (no engine holds a row that long), or when it has been kept ten minutes
-- (a device written more than once a minute on end is not replayed from ever further back):
-- `prev_since` is when it became `prev`.
ALTER TABLE rule_state
    ADD COLUMN prev_since timestamptz;   -- NULL: before this column, treated as long ago
