-- A batch whose counters reach both at or below the device's last counter and more than 63
-- above it (a redelivery after a restart together with a device's flush of a hundred
-- messages: 90..200 on a top of 100) counted the counters between top + 1 and hi - 63 as
-- missing: the window of bits up to the batch's highest does not reach them. The batch now
-- brings which of the 63 counters from its lowest came as well (`lobits`, bit i: lo + i),
-- so that the counters at or below the top are counted, and those above are the rest.
-- (Late counters more than 63 below the top still fill no gap: see 0013.)
DROP FUNCTION vagt_seq_gaps(bigint, bigint, bigint, bigint, bigint, bigint, bigint);

CREATE FUNCTION vagt_seq_gaps(gaps bigint, top bigint, win bigint, hi bigint, lo bigint,
                              n bigint, bits bigint, lobits bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN hi IS NULL THEN gaps
    -- all above the device's top (the usual case): what lies between that the batch lacks
    WHEN lo > coalesce(top, lo - 1) THEN gaps + (hi - coalesce(top, lo - 1)) - n
    -- some at or below it: the new ones the batch lacks, less the old gaps it fills
    ELSE greatest(0, gaps
        + (greatest(top, hi) - top)
        - CASE WHEN top - lo < 63   -- the batch's counters above the top: all but those below
               THEN n - bit_count((lobits & vagt_low63(top - lo + 1))::bit(64))
               ELSE bit_count((vagt_shl63(bits, greatest(top, hi) - hi)
                               & vagt_low63(greatest(top, hi) - top))::bit(64)) END
        - bit_count((vagt_shl63(bits, greatest(top, hi) - hi)
                     & ~vagt_shl63(coalesce(win, 9223372036854775807), greatest(top, hi) - top)
                     & ~vagt_low63(greatest(top, hi) - top)
                     & 9223372036854775807)::bit(64))) END
$$;
