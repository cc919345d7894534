-- Readings the rules judged implausible for the device's model (validity rules): kept in
-- `readings` as they came, marked here, left out of every rule and counted per model.
CREATE TABLE bad_readings (
    time        timestamptz NOT NULL,
    device_id   text NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    vendor      text NOT NULL,
    model       text NOT NULL,
    marked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, metric, time)
);
CREATE INDEX bad_readings_model_idx ON bad_readings (vendor, model, metric, time);
