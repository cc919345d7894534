-- The device lifecycle: statuses the database itself holds to, and assignments kept as history.
-- The allowed transitions are listed in vagt.devices.lifecycle and in README ("Devices");
-- the trigger below refuses any other change of status, whoever makes it.

-- A device is registered into the centre's stock; it is deployed only with an assignment.
ALTER TABLE devices ALTER COLUMN status SET DEFAULT 'in_stock';
ALTER TABLE devices ADD CONSTRAINT devices_status_known
    CHECK (status IN ('in_stock', 'deployed', 'in_repair', 'retired', 'lost'));
-- When the status last changed: how long a device has been in stock, in repair, deployed.
ALTER TABLE devices ADD COLUMN status_since timestamptz;
UPDATE devices SET status_since = registered_at;
ALTER TABLE devices ALTER COLUMN status_since SET DEFAULT now();
ALTER TABLE devices ALTER COLUMN status_since SET NOT NULL;
CREATE INDEX devices_status_idx ON devices (status);

CREATE FUNCTION vagt_device_status_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.status, NEW.status) NOT IN (
            ('in_stock', 'deployed'), ('deployed', 'in_stock'), ('deployed', 'in_repair'),
            ('in_stock', 'in_repair'), ('in_repair', 'in_stock'),
            ('in_stock', 'retired'), ('in_repair', 'retired'),
            ('deployed', 'lost'), ('in_stock', 'lost'), ('in_repair', 'lost')) THEN
        RAISE EXCEPTION 'device %: % -> % is not an allowed transition',
            OLD.device_id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation',
                  HINT = 'see the lifecycle table in the README; retired and lost are final';
    END IF;
    RETURN NEW;
END $$;

-- Only rows whose status changes: the engine's fleet-state updates never fire it.
CREATE TRIGGER devices_status_transition
    BEFORE UPDATE OF status ON devices
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION vagt_device_status_transition();

-- Who had a device, where, from when until when: how reuse is seen. A citizen is a
-- pseudonymous reference; anything shaped like a CPR number (DDMMYY-XXXX, 10 digits) is
-- refused here as well as by vagt.
CREATE TABLE device_assignments (
    id            bigserial PRIMARY KEY,
    device_id     text NOT NULL REFERENCES devices (device_id),
    citizen_ref   text NOT NULL
                  CHECK (citizen_ref !~ '(^|[^A-Za-z0-9])[0-9]{6}[- ]?[0-9]{4}($|[^A-Za-z0-9])'),
    municipality  text NOT NULL CHECK (municipality <> ''),
    since         timestamptz NOT NULL,
    until         timestamptz,               -- NULL while the device is with the citizen
    CHECK (until IS NULL OR until >= since)
);
-- At most one open assignment per device.
CREATE UNIQUE INDEX device_assignments_one_open ON device_assignments (device_id)
    WHERE until IS NULL;
CREATE INDEX device_assignments_device_idx ON device_assignments (device_id, since);
CREATE INDEX device_assignments_citizen_idx ON device_assignments (citizen_ref);

-- Devices registered before 0003 kept the citizen as an attribute: make it the open
-- assignment, from registration on (the best date known).
INSERT INTO device_assignments (device_id, citizen_ref, municipality, since)
SELECT device_id, attributes->>'citizen_ref', municipality, registered_at
FROM devices
WHERE status = 'deployed' AND municipality <> ''
  AND coalesce(attributes->>'citizen_ref', '') <> ''
  AND attributes->>'citizen_ref' !~ '(^|[^A-Za-z0-9])[0-9]{6}[- ]?[0-9]{4}($|[^A-Za-z0-9])';
UPDATE devices SET attributes = attributes - 'citizen_ref'
WHERE device_id IN (SELECT device_id FROM device_assignments);

-- A device's audit trail (show) reads audit_log by subject.
CREATE INDEX audit_log_subject_idx ON audit_log (subject, at);
