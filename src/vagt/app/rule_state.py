"""The rules' per-device state in the `rule_state` table, shared by every engine process.

With `$share` the broker hands a device's messages to whichever engine is free, so a `for`
timer, a stuck run or a flapping count must continue in the other process. Each process
keeps the state in memory (the rule engine's arrays) as a cache of the table:

- before its rules see a batch (or a tick touches a device), a transaction locks the
  devices' rows in device order (`lock`) and reads again the rows whose version is not the
  one this process last wrote or read: another process changed them;
- after evaluation the new state goes into memory at once and into the rows in the same
  transaction (`save`), with a new random version. If that transaction rolls back, or the
  write itself fails, the versions no longer match (memory is `UNSAVED` until the write
  succeeds) and the next lock reads the rows again.

Only the devices whose state the rules moved are written (`RuleEngine.moved`): most
messages (a heartbeat whose battery is fine) move nothing but which rows the rules have
seen, and those devices' state stays in memory as it is in the row. How far the rules have
seen a device's rows is its `devices.last_seen`, which every batch moves; the batch's
device-state UPDATE returns it from before the batch for the devices whose rows are late
(`store.update_device_state`), and `Locked` holds it. A device's state that is
written is the row's state with every batch since, so late rows since the row's `as_of`
are evaluated again from the row itself (`rewind`); the rows of a device left unwritten for
`IDLE_MAX` of its batches are written all the same, so that this goes back only so far.

So two processes evaluate one device one after the other, each from the state the other
committed, and the alerts are those one process would raise. `refresh` reads what other
processes wrote lately, so that a deadline one of them set (a dose due) is ticked here too.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from vagt.app import db
from vagt.arrays import F64, I64, Bools
from vagt.devices.fleet import Fleet
from vagt.rules import Batch, Evaluation, RuleEngine
from vagt.rules.persist import Layout, layout, pack, unpack

UNKNOWN = np.iinfo(np.int64).min   # a version no row has: read the row
# Memory holds state its row may not have (written in a statement that had not succeeded, or
# in a transaction that rolled back): read the row, and a row never written empties memory.
UNSAVED = UNKNOWN + 1
# The layout of a state reset to empty, written when a device is deployed to a citizen
# (migration 0010, `vagt_reset_rule_state`): the device's arrays go back to their fills. A
# row never written (layout NULL) leaves memory as it is (see `_take`).
EMPTY_LAYOUT = 0
RESTORE_CHUNK = 10_000
# Devices whose state is packed and written at a time. The first tick after a backlog
# writes the state of most of the fleet (what the batches left unwritten, see IDLE_MAX):
# packed at once for 100,000 devices, its matrices and rows took 80 MB more for a moment;
# 10,000 at a time, 20 MB (the rules' 110 numeric slots a device, column by column and
# then as one matrix), 2,500 at a time 5 MB, in the same time (benchmarks.rules' state at
# 200,000 devices packed in 3.8 s either way; docs/performance.md, "thirteenth session").
SAVE_CHUNK = 2_500
# Devices whose rule-state versions are read a statement at a time when they are locked
# (`lock`). The first sweep after a backlog touches most of the fleet (every device heard
# behind its own clock starts the clock rule's wait): read at once, a Python tuple a row,
# they were about 250 bytes a device, 50 MB for a moment at 200,000 devices.
VERSIONS_PART = 10_000
# A device whose batches moved nothing is written at its IDLE_MAX-th (see the module's text).
IDLE_MAX = 8
# Rows written by another process are read again if written this long before the last
# refresh began: `updated_at` is the writer's transaction start, and it commits later.
REFRESH_OVERLAP_S = 120.0

# Only the rows that are missing: ON CONFLICT alone would wait for every transaction that
# is writing one of the others (an engine starting beside a running one would wait).
_CREATE_MISSING = """
INSERT INTO rule_state (device_id)
SELECT d FROM unnest(%s::text[]) AS d
WHERE NOT EXISTS (SELECT 1 FROM rule_state r WHERE r.device_id = d) ORDER BY d
ON CONFLICT DO NOTHING
"""

# The empty state of a device seen before is as of its latest message: its rows before were
# never evaluated from it (see migration 0009).
_CREATE_ALL = """
INSERT INTO rule_state (device_id, as_of)
SELECT device_id, extract(epoch FROM last_seen)::float8 FROM devices d
WHERE NOT EXISTS (SELECT 1 FROM rule_state r WHERE r.device_id = d.device_id)
ORDER BY device_id
ON CONFLICT DO NOTHING
"""

# The devices' rows are the lock: a bulk batch's device-state UPDATE holds them already;
# other callers take them in device order. (A join with unnest() walked the whole index.)
# One row back, not one a device (a sweep locks most of the fleet at times).
_LOCK = """
SELECT count(*) FROM (SELECT 1 FROM devices WHERE device_id = ANY(%s)
ORDER BY device_id FOR NO KEY UPDATE) AS locked
"""

# A statement of its own, after the lock: in READ COMMITTED a statement reads the snapshot it
# began with, so versions read in the statement that waited for the lock (a CTE on the
# device-state UPDATE was tried, to save the round trip) are those from before the other
# process committed, and the rules would go on from stale state. A test fails so. (How far
# the rules had seen the devices' rows was read here too, joining `devices`: that took
# 2.6 times as long as this, 1 s more in a drain of 200,000 messages.)
_VERSIONS = """
SELECT device_id, version, as_of, prev_as_of, extract(epoch FROM began)::float8
FROM rule_state WHERE device_id = ANY(%s)
"""

_CURRENT = """
SELECT device_id, layout, slots, vals, texts FROM rule_state WHERE device_id = ANY(%s)
"""

_PREV = """
SELECT device_id, prev_layout, prev_slots, prev_vals, prev_texts FROM rule_state
WHERE device_id = ANY(%s)
"""

_READ = """
SELECT device_id, version, layout, slots, vals, texts FROM rule_state WHERE device_id = ANY(%s)
"""

# How far back late rows can go (see `Locked.late`). A state becomes `prev`, the one they go
# back to, once it was written CHECKPOINT_AGE_S before: an engine commits what it holds in
# seconds (20,000 messages in flight a lane at thousands a second), so no engine still holds
# a row older than that state, however the broker spread a device's messages. A `prev` kept
# CHECKPOINT_MAX_S gives way even so: a device written more than once a minute on end would
# be replayed from ever further back.
CHECKPOINT_AGE_S = 60.0
CHECKPOINT_MAX_S = 600.0

# Rows from more than this before a device's deployment (`rule_state.began`) are the last
# citizen's, flushed from the device's buffer at the next citizen's home: stored, and the
# rules skip them. The margin is for a device whose clock lags: the next citizen's own rows
# come after the deployment (registered at the centre before the device is installed), and
# a clock later by more than an hour is not mistaken for the last citizen's time.
BEGAN_MARGIN_S = 3600.0

# The state before this write becomes `prev` if it is old enough (above), or if there was
# none (empty: any row can go back to it); not when this write went back to `prev` itself
# (`keep`: a replay, or a tick, which takes no rows).
_ROTATE = """(NOT c.keep AND (s.layout IS NULL
    OR s.updated_at <= now() - make_interval(secs => %(age)b)
    OR coalesce(s.prev_since, '-infinity') <= now() - make_interval(secs => %(longest)b)))"""

# Binary parameters (%b): text dumping escaped every byte string with a regex (50 ms a batch).
_SAVE = f"""
WITH layout AS (
    INSERT INTO rule_state_layouts (id, spec) VALUES (%(key)b, %(spec)b) ON CONFLICT DO NOTHING
)
UPDATE rule_state s SET version = c.version, writer = %(writer)b, layout = %(key)b,
       slots = c.slots, vals = c.vals, texts = c.texts, updated_at = now(),
       as_of = greatest(s.as_of, nullif(c.as_of, 'NaN')),  -- NaN: greatest of all
       prev_layout = CASE WHEN {_ROTATE} THEN s.layout ELSE s.prev_layout END,
       prev_slots = CASE WHEN {_ROTATE} THEN s.slots ELSE s.prev_slots END,
       prev_vals = CASE WHEN {_ROTATE} THEN s.vals ELSE s.prev_vals END,
       prev_texts = CASE WHEN {_ROTATE} THEN s.texts ELSE s.prev_texts END,
       prev_as_of = CASE WHEN NOT {_ROTATE} THEN s.prev_as_of
                         ELSE coalesce(s.as_of, '-Infinity'::float8) END,
       prev_since = CASE WHEN {_ROTATE} THEN now() ELSE s.prev_since END
FROM unnest(%(ids)b::text[], %(versions)b::int8[], %(slots)b::bytea[], %(vals)b::bytea[],
            %(texts)b::text[], %(as_of)b::float8[], %(keep)b::bool[])
     AS c(device_id, version, slots, vals, texts, as_of, keep)
WHERE s.device_id = c.device_id
"""

_CHANGED_ELSEWHERE = """
SELECT device_id, version, layout, slots, vals, texts FROM rule_state
WHERE writer <> %s AND layout IS NOT NULL AND updated_at > to_timestamp(%s)
"""

_ALL = "SELECT device_id, version, layout, slots, vals, texts FROM rule_state"

Row = tuple[str, int, int | None, bytes | None, bytes | None, str | None]


@dataclass(frozen=True)
class Late:
    """Which devices of a batch have late rows, as masks over the lock's devices: rows newer
    than the stored state (`again`: evaluate them again from it), rows older than that but
    newer than the earlier state (`back`: from `prev`), and rows too old even for that."""

    again: Bools
    back: Bools
    too_late: Bools

    @property
    def replayed(self) -> Bools:
        return self.again | self.back


@dataclass(frozen=True)
class Locked:
    """What `lock` found, per device of the lock (in its order): the device time up to which
    the rules had seen its rows where they are late (`seen`: NaN, not late), the one up to
    which its stored state has (`as_of`: NaN, from the first), the one of its earlier
    state, `prev` (NaN: none to go back to), and the time its state began, its deployment to
    the citizen it is with (`began`, NaN: before migration 0010)."""

    seen: F64
    as_of: F64
    prev_as_of: F64
    began: F64

    def late(self, first: F64) -> Late:
        """For rows beginning at device time `first` (per device): which are late (their
        device's rows were seen as new or newer), and from where they are evaluated again."""
        late = first <= self.seen                # False where not late (NaN)
        again = late & ~(first <= self.as_of)    # a row never written is as of the first
        back = late & ~again & (first > self.prev_as_of)
        return Late(again, back, late & ~again & ~back)

    def since(self, late: Late) -> F64:
        """Per device: the device time its rows are evaluated again after (-inf: all)."""
        since = np.where(late.again, self.as_of, self.prev_as_of)
        return np.where(np.isnan(since), -np.inf, since)


def without_last_citizens(batch: Batch, devs: I64, first: F64, began: F64
                          ) -> tuple[Batch, Batch, int]:
    """The batch without the rows of `devs` (sorted; their rows begin at `first`) from more
    than BEGAN_MARGIN_S before their deployment (`began`, NaN: none known): what the device
    kept from the last citizen. Also those rows, and how many devices had such rows."""
    earlier = first < began - BEGAN_MARGIN_S
    if not earlier.any():
        return batch, Batch.empty(), 0
    newer, older = batch.split(devs[earlier], began[earlier] - BEGAN_MARGIN_S)
    return newer, older, int(earlier.sum())


@dataclass(frozen=True)
class Seen:
    """What a batch's evaluation took, for `save`: per device (sorted) the device time up to
    which its state has seen rows now, the devices evaluated again from a stored state
    (`rewind`), and of those the ones evaluated again from `prev`, which stays `prev`.

    A device evaluated again from its stored state moves `prev` on as any write does: its
    stored state is one late rows can go back to. Often it is the device's first write (its
    row never written: batches that moved nothing); kept, it would leave the device with no
    `prev` at all, and later rows older than that write were skipped."""

    devices: I64
    latest: F64
    replayed: I64
    from_prev: I64


class SharedRuleState:
    """This process's view of the `rule_state` table (see the module's text)."""

    def __init__(self, engine: RuleEngine, fleet: Fleet) -> None:
        self.engine = engine
        self.fleet = fleet
        self.writer = secrets.randbits(62)
        self._versions = np.full(0, UNKNOWN, dtype=np.int64)
        self._idle = np.zeros(0, dtype=np.int16)   # batches since the device was written
        self._lock = threading.Lock()      # the versions and idle arrays
        self._layouts: dict[int, Layout] = {}
        self._rng = np.random.default_rng()
        self._refreshed: float | None = None   # database time the last refresh began
        self.checkpoint_age_s = CHECKPOINT_AGE_S
        self.checkpoint_max_s = CHECKPOINT_MAX_S

    # -- in a transaction -------------------------------------------------------------------

    def lock(self, conn: psycopg.Connection, devs: I64, held: bool = False,
             seen: F64 | None = None) -> Locked:
        """Lock the devices `devs` (dense indexes, sorted) until the transaction ends, unless
        `held` (this transaction updated their `devices` rows already), and read into memory
        the rule state another process changed. `seen`: per device, the device time up to
        which the rules had seen its rows (NaN: not late; see `Locked`)."""
        if len(devs) == 0:
            return Locked(np.empty(0), np.empty(0), np.empty(0), np.empty(0))
        ids = [self.fleet.ids[d] for d in devs.tolist()]
        as_of, prev_as_of, began = (np.full(len(devs), np.nan) for _ in range(3))
        for start in range(0, len(ids), VERSIONS_PART):
            part = ids[start:start + VERSIONS_PART]
            with db.by_key_index(conn):
                if start == 0 and not held:   # all of them, in one statement: in device
                    conn.execute(_LOCK, (ids,))   # order (parts would each take their own)
                locked = conn.execute(_VERSIONS, (part,)).fetchall()
            if len(locked) < len(part):  # a device registered since start, or a row whose
                have = {r[0] for r in locked}  # creation rolled back with its first batch
                missing = [i for i in part if i not in have]
                conn.execute(_CREATE_MISSING, (missing,))
                locked += [(i, 0, None, None, None) for i in missing]
            idx = self.fleet.lookup([r[0] for r in locked])
            self._read_stale(conn, locked, idx)
            for out, c in ((as_of, 2), (prev_as_of, 3), (began, 4)):
                _by_device(devs, idx, locked, c, out)
        return Locked(np.full(len(devs), np.nan) if seen is None else seen, as_of, prev_as_of,
                      began)

    def rewind(self, conn: psycopg.Connection, devs: I64, prev: bool = True) -> None:
        """Put the earlier state (`prev`) of `devs` into memory, or with `prev` False their
        stored state (their rows are held)."""
        if len(devs) == 0:
            return
        ids = [self.fleet.ids[d] for d in devs.tolist()]
        with db.by_key_index(conn):
            rows = conn.execute(_PREV if prev else _CURRENT, (ids,)).fetchall()
        idx = self.fleet.lookup([r[0] for r in rows])
        self._unpack(conn, idx, [r[1] for r in rows], [r[2] for r in rows],
                     [r[3] for r in rows], [r[4] for r in rows])
        # memory is not the row's state now: if no save follows, read it
        self._set_versions(idx[idx >= 0], UNKNOWN)

    def sync(self, conn: psycopg.Connection, devs: I64) -> F64:
        """Read into memory the committed state of `devs` (sorted) that another process
        changed, without locking (the alarm lane's first transaction: it waits for no one,
        and its state is evaluated again under the lock afterwards). Returns per device when
        its state began (`Locked.began`)."""
        if len(devs) == 0:
            return np.empty(0)
        ids = [self.fleet.ids[d] for d in devs.tolist()]
        with db.by_key_index(conn):
            rows = conn.execute(_VERSIONS, (ids,)).fetchall()
        idx = self.fleet.lookup([r[0] for r in rows])
        self._read_stale(conn, rows, idx)
        return _by_device(devs, idx, rows, 4)

    def _read_stale(self, conn: psycopg.Connection, versions: Sequence[tuple[Any, ...]],
                    now: I64 | None = None) -> int:
        """Read the rows whose version (device id, version, ...) is not the one in memory;
        `now`: their dense indexes, if the caller has them."""
        if now is None:
            now = self.fleet.lookup([r[0] for r in versions])
        version = np.fromiter((r[1] for r in versions), dtype=np.int64, count=len(versions))
        stale = (now >= 0) & (version != self._seen(np.where(now >= 0, now, 0)))
        if not stale.any():
            return 0
        changed = [r[0] for r, s in zip(versions, stale.tolist()) if s]
        return self._take(conn, conn.execute(_READ, (changed,)).fetchall())

    def save(self, conn: psycopg.Connection, devs: I64, seen: Seen | None = None) -> None:
        """Write the in-memory state of `devs`, whose rows this transaction holds. `seen`:
        the rows it took (see `Seen`); without, a tick's (no rows, `prev` kept). In parts
        of SAVE_CHUNK devices, in the same transaction."""
        for start in range(0, len(devs), SAVE_CHUNK):
            self._save(conn, devs[start:start + SAVE_CHUNK], seen)

    def _save(self, conn: psycopg.Connection, devs: I64, seen: Seen | None) -> None:
        if len(devs) == 0:
            return
        with self.engine.lock:
            packed = pack(self.engine, devs)
        versions = self._rng.integers(1, 2**62, size=len(devs))
        lay = packed.layout
        ids = [self.fleet.ids[d] for d in devs.tolist()]
        latest = np.full(len(devs), np.nan)   # NaN: took no rows (the SQL makes it NULL)
        keep = np.ones(len(devs), dtype=bool)
        if seen is not None:
            at = np.searchsorted(seen.devices, devs)
            found = (at < len(seen.devices)) & \
                (seen.devices[np.minimum(at, len(seen.devices) - 1)] == devs)
            latest = np.where(found, seen.latest[np.minimum(at, len(seen.devices) - 1)],
                              np.nan)
            # a device the rules touched without rows of its own keeps `prev`, as in a tick
            keep = np.isin(devs, seen.from_prev) | ~found
        with db.by_key_index(conn):
            conn.execute(_SAVE, {
                "key": lay.key, "spec": lay.spec, "writer": self.writer, "ids": ids,
                "versions": versions.tolist(), "slots": packed.slots, "vals": packed.values,
                "texts": packed.texts, "as_of": latest.tolist(), "keep": keep.tolist(),
                "age": self.checkpoint_age_s, "longest": self.checkpoint_max_s})
        self._layouts[lay.key] = lay
        self._set_versions(devs, versions)

    def evaluate(self, conn: psycopg.Connection, evaluate: Callable[[], Evaluation],
                 held: I64 | None = None, seen: Seen | None = None,
                 on_locked: Callable[[I64], None] | None = None) -> Evaluation:
        """Run `evaluate` on current state: lock the devices it touches, and run it again
        until it touches none it had not locked. The state of the devices whose state it
        moved (or that it evaluated again from a stored state, or left unwritten for
        IDLE_MAX batches) goes into memory and the rows; the others' stays as it was.

        `held`: devices already locked (a batch's). A timer tick cannot know beforehand which
        devices it touches: it asks its own memory, locks those, and asks again, since until
        the lock another process, or a lane of this one, may have committed a batch of them
        (a dose taken that the first answer called missed). `on_locked(devs)` runs after
        each lock, before `evaluate` runs again: to read what else the rules go by.
        """
        locked = held if held is not None else np.empty(0, dtype=np.int64)
        # A round must not wait for a device while the rounds before hold others: a batch
        # holding that one and waiting, in device order, for one of these would be a
        # deadlock. A later round gives back what the earlier took (to the savepoint) and
        # takes them all in one round, in device order. (A batch's own, `held`, are all
        # taken at once by its device-state UPDATE.)
        rounds = held is None
        if rounds:
            conn.execute("SAVEPOINT vagt_rule_locks")
        while True:
            ev = evaluate()
            touched = np.setdiff1d(ev.devices(), locked)
            if len(touched) == 0:
                break
            if rounds and len(locked):
                conn.execute("ROLLBACK TO SAVEPOINT vagt_rule_locks")
                touched = np.union1d(locked, touched)
            self.lock(conn, touched)
            if on_locked is not None:
                on_locked(touched)
            locked = np.union1d(locked, touched)
        if rounds:
            conn.execute("RELEASE SAVEPOINT vagt_rule_locks")
        write = self.engine.moved(ev)
        if seen is not None:
            write = np.union1d(write, seen.replayed)
        write = np.union1d(write, self._idle_long(np.setdiff1d(ev.changed_devices(), write)))
        # Until `save` has written it, memory is ahead of the rows: if the statement fails
        # (the connection drops), the batch is retried from the rows, not from memory, where
        # the rules have seen its rows already and would fire nothing (an alert was lost so)
        self._set_versions(write, UNSAVED)
        self.engine.apply(ev, write)
        self.save(conn, write, seen)
        return ev

    # -- outside the batches ----------------------------------------------------------------

    def restore(self, conn: psycopg.Connection) -> int:
        """Every stored row into memory (at start: the rules continue where they were), after
        making a row for every registered device that has none (so batches need not)."""
        conn.execute(_CREATE_ALL)
        taken = 0
        with db.in_parts(conn, "vagt_rule_state_restore", _ALL, part=RESTORE_CHUNK) as parts:
            for rows in parts:
                taken += self._take(conn, rows)
        return taken

    def refresh(self, conn: psycopg.Connection) -> int:
        """Read the rows other processes wrote since the last refresh (a little before)."""
        now = float(conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()[0])  # type: ignore[index]
        since = -np.inf if self._refreshed is None else self._refreshed - REFRESH_OVERLAP_S
        self._refreshed = now
        rows = conn.execute(_CHANGED_ELSEWHERE, (self.writer, max(since, 0.0))).fetchall()
        return self._take(conn, rows, only_changed=True)

    # -- helpers ------------------------------------------------------------------------------

    def _grow(self, n: int) -> None:
        if len(self._versions) < n:
            size = max(n, 2 * len(self._versions))
            self._versions = _grown(self._versions, size, UNKNOWN)
            self._idle = _grown(self._idle, size, 0)

    def _set_versions(self, devs: I64, versions: I64 | int) -> None:
        """Memory's version of `devs`: it holds their row's state, or not (UNSAVED, UNKNOWN)."""
        if len(devs):
            with self._lock:
                self._grow(int(devs.max()) + 1)
                self._versions[devs] = versions
                self._idle[devs] = 0

    def _idle_long(self, devs: I64) -> I64:
        """Count a batch that left `devs` unwritten; those it was the IDLE_MAX-th of."""
        if len(devs) == 0:
            return devs
        with self._lock:
            self._grow(int(devs.max()) + 1)
            self._idle[devs] += 1
            return devs[self._idle[devs] >= IDLE_MAX]

    def _seen(self, devs: I64) -> I64:
        if len(devs) == 0:
            return np.empty(0, dtype=np.int64)
        with self._lock:
            self._grow(int(devs.max()) + 1)
            return self._versions[devs].copy()

    def _take(self, conn: psycopg.Connection, rows: Sequence[Row],
              only_changed: bool = False) -> int:
        """Rows into memory; returns how many changed memory.

        A row never written (no layout) leaves memory as it is, unless this process wrote it
        in a transaction that rolled back: then the device's state is reset.
        """
        if not rows:
            return 0
        idx = self.fleet.lookup([r[0] for r in rows])
        version = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        ok = idx >= 0
        seen = self._seen(np.where(ok, idx, 0))
        if only_changed:
            ok &= version != seen
        has = np.fromiter((r[2] is not None for r in rows), dtype=bool, count=len(rows))
        stored = ok & has
        rolled_back = ok & ~has & (seen != UNKNOWN) & (seen != version)
        take = np.flatnonzero(stored | rolled_back).tolist()
        self._unpack(conn, idx[take], [rows[j][2] for j in take], [rows[j][3] for j in take],
                     [rows[j][4] for j in take], [rows[j][5] for j in take])
        self._set_versions(idx[ok], version[ok])
        return int(stored.sum() + rolled_back.sum())

    def _unpack(self, conn: psycopg.Connection, idx: I64, layouts: Sequence[int | None],
                slots: Sequence[bytes | None], vals: Sequence[bytes | None],
                texts: Sequence[str | None]) -> None:
        """Stored states into memory; a NULL layout or EMPTY_LAYOUT is the empty state."""
        groups: dict[int, list[int]] = {}
        empty: list[int] = []
        for j, key in enumerate(layouts):
            if key is None or key == EMPTY_LAYOUT:
                empty.append(j)
            else:
                groups.setdefault(int(key), []).append(j)
        self._learn_layouts(conn, list(groups))
        with self.engine.lock:
            for key, js in groups.items():
                unpack(self.engine, idx[js], self._layouts[key], [slots[j] or b"" for j in js],
                       [vals[j] or b"" for j in js], [texts[j] for j in js])
            if empty:
                k = len(empty)
                unpack(self.engine, idx[empty], layout(self.engine), [b""] * k, [b""] * k,
                       [None] * k)

    def _learn_layouts(self, conn: psycopg.Connection, keys: list[int]) -> None:
        missing = [k for k in keys if k not in self._layouts]
        if missing:
            for key, spec in conn.execute(
                    "SELECT id, spec FROM rule_state_layouts WHERE id = ANY(%s)", (missing,)):
                self._layouts[int(key)] = Layout(str(spec))


def _by_device(devs: I64, idx: I64, rows: Sequence[tuple[Any, ...]], column: int,
               out: F64 | None = None) -> F64:
    """Per device of `devs` (sorted), the float in `column` of its row (`idx`: each row's
    dense index, -1 unknown; NaN where NULL or no row). Into `out` if given, where only the
    devices of `rows` are set."""
    if out is None:
        out = np.full(len(devs), np.nan)
    ok = idx >= 0
    out[np.searchsorted(devs, idx[ok])] = np.array([r[column] for r in rows],
                                                   dtype=np.float64)[ok]
    return out


def _grown(a: npt.NDArray[Any], size: int, fill: int) -> npt.NDArray[Any]:
    """`a` with `size` rows, the new ones `fill`."""
    grown = np.full(size, fill, dtype=a.dtype)
    grown[:len(a)] = a
    return grown
