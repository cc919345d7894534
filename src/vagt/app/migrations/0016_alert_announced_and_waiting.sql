-- What the call centre's systems have heard of an alert, and how long its citizen has waited.
--
-- `announced`: they were told of the alert's current episode (`opened`, or `reopened`); an
-- alert held back from its opening or reopening (a silence, a device in repair) is not, and
-- is announced when it comes back (`suppression.reconcile`). `ever_announced`: they were told
-- of it at all, so that what comes back is `opened` the first time and `reopened` after.
-- Kept on the row: the outbox forgets delivered events after its retention, and a note is an
-- event that announces nothing. Alerts from before this migration were announced.
ALTER TABLE alerts
    ADD COLUMN announced boolean NOT NULL DEFAULT true,
    ADD COLUMN ever_announced boolean NOT NULL DEFAULT true,
    -- when its citizen began to wait: its opening or reopening. `queued_at` is when it last
    -- became claimable (a release makes it so again, and its time to claim is measured
    -- from then); the queue is taken in the order of this, so that an alarm an operator
    -- released is not put behind the alarms that came while it was held.
    ADD COLUMN waiting_since timestamptz;
ALTER TABLE alerts
    ALTER COLUMN announced SET DEFAULT false,
    ALTER COLUMN ever_announced SET DEFAULT false;
UPDATE alerts SET waiting_since = coalesce(queued_at, opened_at);

DROP INDEX alerts_claimable_idx;
CREATE INDEX alerts_claimable_idx ON alerts (priority, waiting_since, id) WHERE status = 'open';
