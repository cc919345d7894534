-- A batch whose counters reach both at or below the device's last counter and 63 or more
-- away from its highest (a redelivery after a restart together with a device's flush of a
-- hundred messages: 90..200 on a top of 100; or 0..300 on a top of 100) was counted by the
-- window of bits up to the batch's highest, which does not reach all of them: counters the
-- batch brought were counted missing, and gaps it filled were not taken back. Such a batch
-- (its highest 63 or more above its lowest: rare) now brings its counters as well, and the
-- late branch counts them one by one: those above the top are new, those at or below it
-- within 63 whose bit is unset fill a gap. (Late counters 63 or more below the top still
-- fill no gap: see 0013.) The 7-argument vagt_seq_gaps stays for an engine of the release
-- before, sharing the database while the engines are upgraded one by one.
CREATE FUNCTION vagt_seq_gaps_late(gaps bigint, top bigint, win bigint, hi bigint,
                                   seqs bigint[])
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT greatest(0, gaps + (greatest(top, hi) - top)
    - (SELECT count(*) FROM unnest(seqs) s WHERE s > top)
    - (SELECT count(*) FROM unnest(seqs) s
       WHERE s <= top AND top - s < 63
         AND (coalesce(win, 9223372036854775807) >> (top - s)::int) & 1 = 0))
$$;

-- `seqs`: the batch's distinct counters when its highest is 63 or more above its lowest,
-- else NULL (its bits say everything).
CREATE FUNCTION vagt_seq_gaps(gaps bigint, top bigint, win bigint, hi bigint, lo bigint,
                              n bigint, bits bigint, seqs bigint[])
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN hi IS NULL THEN gaps
    WHEN lo > coalesce(top, lo - 1) THEN gaps + (hi - coalesce(top, lo - 1)) - n
    WHEN seqs IS NOT NULL THEN vagt_seq_gaps_late(gaps, top, win, hi, seqs)
    ELSE vagt_seq_gaps(gaps, top, win, hi, lo, n, bits) END
$$;
