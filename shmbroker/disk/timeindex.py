"""``.timeindex``: (largest timestamp so far in the segment, relative offset) about every
``index.interval.bytes``, appended only when the timestamp grows, so both columns increase.

    entry 12 bytes: timestamp_ms i64 | relative_offset u32   (big-endian, as Kafka)

An entry (T, o) says: every batch up to and including the one starting at relative offset ``o``
has ``max_timestamp <= T``. The last entry is refreshed when a segment is sealed, so it holds
the segment's largest timestamp, which time retention and a clean open read without a scan.
"""

from __future__ import annotations

import numpy as np

from shmbroker.disk.index import SparseIndex

TIMEINDEX_ENTRY = np.dtype([("timestamp_ms", ">i8"), ("relative_offset", ">u4")])
assert TIMEINDEX_ENTRY.itemsize == 12


class TimeIndex(SparseIndex):
    dtype = TIMEINDEX_ENTRY

    @property
    def last_timestamp_ms(self) -> int:
        """The largest timestamp indexed, or -1 when empty."""
        return int(self._columns["timestamp_ms"][self.count - 1]) if self.count else -1

    def maybe_append(self, timestamp_ms: int, relative_offset: int) -> bool:
        """Add (timestamp, offset) if the timestamp is larger than the last entry's; say whether."""
        if self.count:
            last_offset = int(self._columns["relative_offset"][self.count - 1])
            if timestamp_ms <= self.last_timestamp_ms or relative_offset < last_offset:
                return False
            if relative_offset == last_offset:  # same batch re-indexed at seal: raise it in place
                self._columns["timestamp_ms"][self.count - 1] = timestamp_ms
                self.truncate_entries(self.count - 1)
                self.count += 1
                return True
        self._append(timestamp_ms, relative_offset)
        return True

    def lookup_before(self, timestamp_ms: int) -> int:
        """Relative offset to start a search for ``timestamp_ms``: of the last entry with T < it, else 0."""
        timestamps = self._columns["timestamp_ms"][: self.count]
        i = int(np.searchsorted(timestamps, timestamp_ms, side="left")) - 1
        return int(self._columns["relative_offset"][i]) if i >= 0 else 0

    def truncate_to_offset(self, relative_offset: int) -> None:
        """Drop entries recorded at or after ``relative_offset`` (their batches are gone)."""
        offsets = self._columns["relative_offset"][: self.count]
        self.truncate_entries(int(np.searchsorted(offsets, relative_offset, side="left")))

    def is_sane(self) -> bool:
        if self.count < 2:
            return True
        return bool(
            np.all(np.diff(self.column("timestamp_ms").astype(np.int64)) > 0)
            and np.all(np.diff(self.column("relative_offset").astype(np.int64)) >= 0)
        )
