-- A delivery is given up (a dead letter) after `max_attempts` refusals: answers that this
-- event is wrong in itself (HTTP 400, 409, 413, 422, an error vagt did not foresee). A
-- receiver that is down, unreachable, overloaded or misconfigured (no connection, a timeout,
-- HTTP 5xx, 401, 403, 404, 429, no PUBACK) is tried until it is mended, every `backoff_max` at most:
-- given up after ten tries (17 minutes), the alarms of an outage of the call centre's
-- system were the ones dead-lettered, and it got only those that came after.
-- `attempts` still counts every try (it sets the backoff).
ALTER TABLE alert_deliveries
    ADD COLUMN refusals integer NOT NULL DEFAULT 0;
