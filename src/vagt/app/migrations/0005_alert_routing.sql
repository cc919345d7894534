-- The call-centre queue: routing, time to claim, reopening, suppression (silences and
-- inhibition), the delivery outbox, and the operator accounts and API tokens of the REST API.

ALTER TABLE alerts
    ADD COLUMN extra_queues    text[] NOT NULL DEFAULT '{}',  -- further routes matched (`continue`)
    ADD COLUMN route           text,                          -- the route that chose the queue
    ADD COLUMN base_priority   smallint,                      -- the priority before escalation
    ADD COLUMN queued_at       timestamptz,   -- when it last became claimable (open)
    ADD COLUMN time_to_claim   interval,      -- from its route (or its priority)
    ADD COLUMN claim_deadline  timestamptz,   -- queued_at + the priority's time to claim
    ADD COLUMN breaches        integer NOT NULL DEFAULT 0,    -- times the deadline passed unclaimed
    ADD COLUMN escalated_at    timestamptz,
    ADD COLUMN reopen_count    integer NOT NULL DEFAULT 0,
    ADD COLUMN reopened_at     timestamptz,
    ADD COLUMN resolution_code text,
    ADD COLUMN suppressed_at   timestamptz,
    ADD COLUMN suppressed_reason text,
    -- the municipality scope of the API: from the device's assignment when the alert opened
    ADD COLUMN municipality    text GENERATED ALWAYS AS (labels ->> 'municipality') STORED;

-- alerts from before: their priority as it is, an hour to claim from when they were created
UPDATE alerts SET base_priority = priority, queued_at = created_at,
                  time_to_claim = interval '1 hour',
                  claim_deadline = created_at + interval '1 hour'
WHERE base_priority IS NULL;

-- `next` and escalation: the open alerts of a queue, most urgent first; overdue ones
CREATE INDEX alerts_claimable_idx ON alerts (priority, queued_at, id) WHERE status = 'open';
CREATE INDEX alerts_deadline_idx ON alerts (claim_deadline) WHERE status = 'open';
CREATE INDEX alerts_municipality_idx ON alerts (municipality, status);
-- inhibition finds source and target alerts by label values
CREATE INDEX alerts_labels_idx ON alerts USING gin (labels jsonb_path_ops)
    WHERE status <> 'resolved';

ALTER TABLE alert_audit ADD COLUMN details jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Silences and maintenance windows: alerts whose labels match every matcher while
-- starts_at <= now < ends_at (and not expired) are kept as suppressed.
CREATE TABLE silences (
    id          bigserial PRIMARY KEY,
    matchers    jsonb NOT NULL,        -- [{"name":..., "op": "=|!=|=~|!~", "value":...}]
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    author      text NOT NULL,
    comment     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expired_at  timestamptz,           -- ended early by someone
    expired_by  text,
    CHECK (ends_at > starts_at),
    CHECK (jsonb_typeof(matchers) = 'array' AND jsonb_array_length(matchers) > 0)
);
CREATE INDEX silences_active_idx ON silences (ends_at) WHERE expired_at IS NULL;

-- The outbox: written in the transaction that changed the alert; a delivery row per
-- configured target is written with it, so a receiver that is down loses nothing.
CREATE TABLE delivery_targets (
    name        text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('webhook', 'mqtt')),
    events      text[] NOT NULL DEFAULT '{}',   -- empty = every event
    enabled     boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alert_outbox (
    id          bigserial PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alerts (id),
    event       text NOT NULL,           -- opened, reopened, escalated, claimed, ...
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    payload     jsonb NOT NULL
);

CREATE TABLE alert_deliveries (
    outbox_id        bigint NOT NULL REFERENCES alert_outbox (id),
    target           text NOT NULL REFERENCES delivery_targets (name),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    dead_at          timestamptz,          -- the last try failed: a dead letter, kept
    last_error       text,
    PRIMARY KEY (outbox_id, target)
);
CREATE INDEX alert_deliveries_due_idx ON alert_deliveries (target, next_attempt_at, outbox_id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;

-- Operator accounts of the REST API. Passwords are stored as scrypt hashes only.
CREATE TABLE operators (
    username       text PRIMARY KEY,
    password_hash  text,                 -- NULL: the account signs in with tokens only
    role           text NOT NULL CHECK (role IN ('operator', 'supervisor', 'admin')),
    municipality   text,                 -- NULL: every municipality; else only this one's alerts
    queues         text[] NOT NULL DEFAULT '{}',   -- the queues `next` takes from; empty = all
    created_at     timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz
);

-- API tokens, for the call-centre operator's own system: only their SHA-256 is stored.
CREATE TABLE api_tokens (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    username      text NOT NULL REFERENCES operators (username),
    token_sha256  bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
