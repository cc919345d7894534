-- What the call centre's systems last heard of an alert (`suppression.reconcile` asks when
-- it releases one that was held back: one never announced is announced as opened then).
CREATE INDEX alert_outbox_alert_idx ON alert_outbox (alert_id, id);
