-- `seq_gaps` counts the message counters that never reached vagt. It was counted from one
-- engine's memory of the device's last counter, as messages came: a counter above the last
-- one plus one was a gap, and a message that came after a higher one (the alarm lane's
-- before the bulk lane's, a device's buffered flush, the other engine's batch with $share)
-- never took its gap back. With two engines sharing the subscription, every message of the
-- other engine's batches counted as lost.
--
-- Now the device's own row decides, under its lock, with a window of which of the last 63
-- counters up to `last_seq` have come (`seq_window`: bit i set when last_seq - i came). A
-- batch brings, per device, its highest counter, its lowest, how many distinct ones, and
-- the same kind of bits up to its highest (`store.update_device_state`):
-- - counters above `last_seq` that the batch does not have are gaps;
-- - a counter at or below `last_seq` whose bit is not set fills a gap it left (one that came
--   again, a redelivery, finds its bit set and counts nothing);
-- - counters 63 or more below the top count nothing: a device whose counter starts again
--   (a reboot) is seen again once it passes its old high, as before;
-- - before a device's first counter nothing is missing.
-- NULL window (a device counted before this migration): all came, nothing to fill.
ALTER TABLE devices
    ADD COLUMN seq_window bigint;

-- x shifted k bits up, kept to 63 bits (PostgreSQL shifts by k mod 64).
CREATE FUNCTION vagt_shl63(x bigint, k bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN k >= 63 THEN 0::bigint ELSE (x << k::int) & 9223372036854775807 END
$$;

-- the k lowest bits set (all 63 from 63 on)
CREATE FUNCTION vagt_low63(k bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN k >= 63 THEN 9223372036854775807 ELSE (1::bigint << k::int) - 1 END
$$;

-- The window after a batch: the device's, moved up to the new top, with the batch's.
-- `top`/`win`: the device's last counter and window (NULL: none yet); `hi`, `lo`, `bits`:
-- the batch's (NULL hi: no counter in the batch).
CREATE FUNCTION vagt_seq_window(top bigint, win bigint, hi bigint, lo bigint, bits bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN hi IS NULL THEN win ELSE
    vagt_shl63(coalesce(win, 9223372036854775807), greatest(coalesce(top, lo - 1), hi)
               - coalesce(top, lo - 1))
    | vagt_shl63(bits, greatest(coalesce(top, lo - 1), hi) - hi) END
$$;

-- The gaps after a batch of `n` distinct counters (see above).
CREATE FUNCTION vagt_seq_gaps(gaps bigint, top bigint, win bigint, hi bigint, lo bigint,
                              n bigint, bits bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN hi IS NULL THEN gaps
    -- all above the device's top (the usual case): what lies between that the batch lacks
    WHEN lo > coalesce(top, lo - 1) THEN gaps + (hi - coalesce(top, lo - 1)) - n
    -- some at or below it: the new ones the batch lacks, less the old gaps it fills
    ELSE greatest(0, gaps
        + (greatest(top, hi) - top)
        - bit_count((vagt_shl63(bits, greatest(top, hi) - hi)
                     & vagt_low63(greatest(top, hi) - top))::bit(64))
        - bit_count((vagt_shl63(bits, greatest(top, hi) - hi)
                     & ~vagt_shl63(coalesce(win, 9223372036854775807), greatest(top, hi) - top)
                     & ~vagt_low63(greatest(top, hi) - top)
                     & 9223372036854775807)::bit(64))) END
$$;
