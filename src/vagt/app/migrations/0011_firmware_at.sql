-- The device time of the status message the firmware version came from, as battery and
-- signal have: a status message buffered on the device, or held up between the two lanes,
-- that arrives after a newer one no longer puts back the firmware the device had before an
-- update (staff read the fleet's firmware to plan and check vendors' updates).
-- NULL: reported before this column (any report replaces it, as before).
ALTER TABLE devices
    ADD COLUMN firmware_at timestamptz;
