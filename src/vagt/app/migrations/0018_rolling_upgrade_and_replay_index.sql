-- 1. A replay of late rows reads each late device's events from a time on
--    (`rule_queries.stored_batch`), in the live batch's transaction. Readings have their
--    metric in the key to narrow by (the query goes metric by metric); events' codes are
--    whatever the devices send, so the key's prefix read a device's whole history, and with
--    20 late devices the planner scanned the whole table. Events are few beside readings:
--    one more index costs the drain little.
CREATE INDEX events_device_time_idx ON events (device_id, time);

-- 2. An engine of the release before 0016, sharing the database while the engines are
--    upgraded one by one, inserts alerts without `waiting_since`: NULL sorted last in the
--    queue (ORDER BY priority, waiting_since, id), so its fall alarm at 10:00 was listed
--    after a newer engine's at 10:05. It inserts `queued_at = now()`, which is what the
--    column is on an opening; a reopening of its own sets `queued_at` and leaves
--    `waiting_since` as the last episode had it (the trigger below).
ALTER TABLE alerts ALTER COLUMN waiting_since SET DEFAULT now();
UPDATE alerts SET waiting_since = coalesce(queued_at, opened_at) WHERE waiting_since IS NULL;
ALTER TABLE alerts ALTER COLUMN waiting_since SET NOT NULL;

-- 3. `announced` and `ever_announced` (0016) are set by the opened and reopened events this
--    release writes (`outbox.enqueue`). The release before writes those events without
--    setting them: its alert, announced `opened`, stayed "never told", and when a silence
--    held it back and let it go, it was announced `opened` a second time. Now writing such
--    an event sets them, whoever writes it; and a reopening (its count goes up) makes the
--    alert's episode a new one, not yet told and waiting from its reopening, as this
--    release's reopening writes it.
CREATE FUNCTION vagt_outbox_announces() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE alerts a SET announced = true, ever_announced = true
    FROM added n
    WHERE n.event IN ('opened', 'reopened') AND a.id = n.alert_id
      AND NOT (a.announced AND a.ever_announced);
    RETURN NULL;
END
$$;
CREATE TRIGGER alert_outbox_announces AFTER INSERT ON alert_outbox
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION vagt_outbox_announces();

CREATE FUNCTION vagt_alert_reopened() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.announced := false;
    NEW.waiting_since := NEW.queued_at;
    RETURN NEW;
END
$$;
CREATE TRIGGER alert_reopened BEFORE UPDATE OF reopen_count ON alerts
    FOR EACH ROW WHEN (NEW.reopen_count > OLD.reopen_count)
    EXECUTE FUNCTION vagt_alert_reopened();
