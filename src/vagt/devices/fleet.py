"""The fleet in memory: a dense index per registered device and its state in numpy arrays.

The rules engine reads these arrays by device index; the pipeline resolves a batch's device
ids to indexes in one vectorised lookup and asks the database only for ids it has not seen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import psycopg

_COLUMNS = "device_id, vendor, model, type, municipality, status, last_seq"


class Fleet:
    """Registered devices, each with a dense index 0..n-1 that never changes while we run."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._index = pd.Index([], dtype=object)
        self.vendor: list[str] = []
        self.model: list[str] = []
        self.type: list[str] = []
        self.municipality: list[str] = []
        self.status: list[str] = []
        self.last_seq = np.full(0, -1, dtype=np.int64)
        # The alarm lane and the bulk lane share one fleet: growth and state updates are
        # serialised; lookups read an index that is swapped whole, so they need no lock.
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def _add(self, rows: Iterable[tuple[object, ...]]) -> None:
        new_seq: list[int] = []
        for device_id, vendor, model, type_, municipality, status, last_seq in rows:
            self.ids.append(str(device_id))
            self.vendor.append(str(vendor))
            self.model.append(str(model))
            self.type.append(str(type_))
            self.municipality.append(str(municipality))
            self.status.append(str(status))
            new_seq.append(-1 if last_seq is None else int(str(last_seq)))
        if new_seq:
            self.last_seq = np.concatenate([self.last_seq, np.array(new_seq, dtype=np.int64)])
            self._index = pd.Index(self.ids, dtype=object)

    def load(self, conn: psycopg.Connection) -> None:
        """Read every registered device (at start)."""
        rows = conn.execute(f"SELECT {_COLUMNS} FROM devices ORDER BY device_id").fetchall()
        with self.lock:
            self._add(rows)

    def lookup(self, device_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Dense indexes of `device_ids`; -1 where the device is not known here (yet)."""
        if not device_ids:
            return np.empty(0, dtype=np.int64)
        return np.asarray(self._index.get_indexer(device_ids), dtype=np.int64)

    def resolve(self, conn: psycopg.Connection,
                device_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Like lookup(), but first asks the database about ids not seen before.

        Devices registered while the engine runs (`vagt devices import`) are found this way
        without a restart; ids that are in no table stay -1 (unknown devices).
        """
        idx = self.lookup(device_ids)
        if (idx < 0).any():
            missing = sorted({device_ids[int(i)] for i in np.flatnonzero(idx < 0)})
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM devices WHERE device_id = ANY(%s) ORDER BY device_id",
                (missing,),
            ).fetchall()
            with self.lock:
                # the other lane may have added some of them meanwhile
                still_missing = self._index.get_indexer([r[0] for r in rows]) < 0
                self._add(r for r, m in zip(rows, still_missing) if m)
            idx = self.lookup(device_ids)
        return idx
