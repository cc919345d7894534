-- The escalation timer looks every 15 s for claimed alerts not acknowledged in time
-- (`[escalation.time_to_acknowledge]`). Claims are few at any moment, and the alerts of
-- years are many: a partial index finds the few.
CREATE INDEX alerts_claimed_idx ON alerts (claimed_at) WHERE status = 'claimed';
