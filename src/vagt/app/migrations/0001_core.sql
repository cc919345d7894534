-- The core schema: devices, readings, events, dead letters, alerts and their audit trail.
-- Runs the same on plain PostgreSQL and on TimescaleDB; 0002 adds what differs.

CREATE TABLE devices (
    device_id      text PRIMARY KEY,
    vendor         text NOT NULL,
    model          text NOT NULL,
    type           text NOT NULL,
    municipality   text NOT NULL,
    status         text NOT NULL DEFAULT 'deployed',
    attributes     jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the CSV's further columns
    registered_at  timestamptz NOT NULL DEFAULT now(),
    -- fleet state, updated by every committed batch
    last_seen      timestamptz,     -- the device time of its latest message
    battery        real,
    battery_at     timestamptz,
    signal         real,
    signal_at      timestamptz,
    firmware       text,
    last_seq       bigint,          -- the device's own message counter, when it sends one
    seq_gaps       bigint NOT NULL DEFAULT 0  -- messages the counter says never reached us
) WITH (fillfactor = 70);  -- every batch updates fleet state: room on the page for HOT updates

CREATE TABLE readings (
    time         timestamptz NOT NULL,
    device_id    text NOT NULL,
    metric       text NOT NULL,
    value        double precision NOT NULL,
    unit         text NOT NULL,
    received_at  timestamptz NOT NULL,
    -- the idempotency key: a device measures one metric once at one instant,
    -- so a redelivered message inserts nothing
    PRIMARY KEY (device_id, metric, time)
);

CREATE TABLE events (
    time         timestamptz NOT NULL,
    device_id    text NOT NULL,
    code         text NOT NULL,
    severity     text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (device_id, code, time)
);

CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text NOT NULL,
    payload      bytea NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    device_id    text,
    -- sha256(topic, 0x00, payload): the same bytes redelivered are kept once
    digest       bytea NOT NULL UNIQUE
);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, received_at);

CREATE TABLE alerts (
    id               bigserial PRIMARY KEY,
    fingerprint      text NOT NULL,          -- rule + device (+ grouping labels)
    rule             text NOT NULL,
    device_id        text,
    labels           jsonb NOT NULL DEFAULT '{}'::jsonb,
    summary          text NOT NULL,
    severity         text NOT NULL,
    priority         smallint NOT NULL,      -- 1 is most urgent
    queue            text NOT NULL,
    status           text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'claimed', 'acknowledged', 'resolved', 'suppressed')),
    opened_at        timestamptz NOT NULL,   -- when the condition was first seen (device time)
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_fired_at    timestamptz NOT NULL,
    repeat_count     integer NOT NULL DEFAULT 1,
    claimed_at       timestamptz,
    claimed_by       text,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    resolved_by      text,
    note             text
);
-- One alert that is not resolved per fingerprint: a repeat updates it instead of opening another.
CREATE UNIQUE INDEX alerts_one_active_per_fingerprint
    ON alerts (fingerprint) WHERE status <> 'resolved';
CREATE INDEX alerts_queue_status_idx ON alerts (queue, status, priority, opened_at);
-- the engine asks whether a firing is newer than the last resolved alert of its fingerprint
CREATE INDEX alerts_fingerprint_time_idx ON alerts (fingerprint, last_fired_at);

CREATE TABLE alert_audit (
    id           bigserial PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alerts (id),
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,              -- an operator's name, or 'vagt' / 'rule:NAME'
    action       text NOT NULL,              -- open, repeat, claim, ack, resolve
    from_status  text,
    to_status    text NOT NULL,
    note         text
);
CREATE INDEX alert_audit_alert_idx ON alert_audit (alert_id, at);

-- Every change an operator or the service centre makes outside the alert queue.
CREATE TABLE audit_log (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    subject  text NOT NULL,
    details  jsonb NOT NULL DEFAULT '{}'::jsonb
);
