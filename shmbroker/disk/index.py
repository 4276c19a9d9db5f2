"""Sparse index files: fixed-width big-endian entries, held in memory as native numpy columns.

    .index       entry 8 bytes:  relative_offset u32 | position u32      (big-endian, as Kafka)
    .timeindex   entry 12 bytes: timestamp_ms i64    | relative_offset u32

``relative_offset`` is ``batch base offset - segment base offset``; ``position`` is the byte where
that batch starts in the ``.log`` file. One entry is added about every ``index.interval.bytes`` of
log (Kafka's rule), at batch boundaries only, so every position in an index starts a batch.
Offsets and positions strictly increase; a lookup is one ``np.searchsorted`` on a contiguous native
column (a field view of the big-endian file array would be copied on every search).

Entries are appended in memory and written to the file by ``persist()`` (one ``pwrite`` per call).
The file may lag the log and may end in a torn entry; both are harmless, because the log is the
truth: an index only tells a reader where to *start* scanning, and recovery rebuilds it.
Owned by one partition worker; other processes only read the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

INDEX_ENTRY = np.dtype([("relative_offset", ">u4"), ("position", ">u4")])
assert INDEX_ENTRY.itemsize == 8


_STRUCT_CODES = {("u", 4): "I", ("i", 4): "i", ("u", 8): "Q", ("i", 8): "q"}


def entry_struct(dtype: np.dtype[np.void]) -> struct.Struct:
    """The same big-endian entry as a struct, for writing a few entries without numpy's overhead."""
    codes = []
    for name in dtype.names or ():
        field = dtype[name]
        if field.byteorder not in (">", "|") and field.itemsize > 1:
            raise ValueError(f"index field {name} is not big-endian")
        codes.append(_STRUCT_CODES[(field.kind, field.itemsize)])
    entry = struct.Struct(">" + "".join(codes))
    assert entry.size == dtype.itemsize
    return entry


def load_entries(path: Path, dtype: np.dtype[np.void]) -> npt.NDArray[np.void]:
    """Whole entries of an index file (a torn last entry is ignored); empty if the file is missing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    whole = len(data) - len(data) % dtype.itemsize
    return np.frombuffer(data[:whole], dtype=dtype)


class SparseIndex:
    """An append-only file of fixed-width entries plus native in-memory columns for lookup."""

    dtype: np.dtype[np.void]
    _entry: struct.Struct  # the dtype as a struct (set per subclass)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "dtype" in cls.__dict__:
            cls._entry = entry_struct(cls.dtype)

    def __init__(self, path: Path, *, max_entries: int) -> None:
        self.path = path
        self.max_entries = max_entries
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        entries = load_entries(path, self.dtype)
        capacity = max(1024, len(entries))
        self._columns: dict[str, npt.NDArray[np.generic]] = {
            name: np.empty(capacity, dtype=self.dtype[name].newbyteorder("="))
            for name in self.dtype.names or ()
        }
        self.count = len(entries)
        for name, column in self._columns.items():
            column[: self.count] = entries[name]
        self._persisted = self.count
        if os.fstat(self._fd).st_size != self.count * self.dtype.itemsize:
            os.ftruncate(self._fd, self.count * self.dtype.itemsize)  # drop a torn entry

    def column(self, name: str) -> npt.NDArray[np.generic]:
        return self._columns[name][: self.count]

    @property
    def is_full(self) -> bool:
        return self.count >= self.max_entries

    def _append(self, *values: int) -> None:
        if self.count == len(next(iter(self._columns.values()))):
            for name, column in self._columns.items():
                grown = np.empty(2 * len(column), dtype=column.dtype)
                grown[: self.count] = column[: self.count]
                self._columns[name] = grown
        for column, value in zip(self._columns.values(), values, strict=True):
            column[self.count] = value
        self.count += 1

    def extend(self, *columns: npt.NDArray[np.generic]) -> None:
        """Append many entries at once, one array per column in file order (recovery's bulk path)."""
        count = len(columns[0])
        while self.count + count > len(next(iter(self._columns.values()))):
            for name, column in self._columns.items():
                grown = np.empty(2 * len(column), dtype=column.dtype)
                grown[: self.count] = column[: self.count]
                self._columns[name] = grown
        for column, values in zip(self._columns.values(), columns, strict=True):
            column[self.count : self.count + count] = values
        self.count += count

    def persist(self) -> None:
        """Write the entries not yet in the file, with one pwrite."""
        start, count = self._persisted, self.count
        if start == count:
            return
        if count - start <= 4:
            # The worker's case: an entry every index.interval.bytes, persisted after each append.
            # A structured numpy array for one entry cost ~6 us; packing it costs ~1.5.
            entry = type(self)._entry
            columns = list(self._columns.values())
            data = b"".join(entry.pack(*(int(c[i]) for c in columns)) for i in range(start, count))
        else:
            out = np.empty(count - start, dtype=self.dtype)
            for name, column in self._columns.items():
                out[name] = column[start:count]
            data = out.tobytes()
        os.pwrite(self._fd, data, start * self.dtype.itemsize)
        self._persisted = count

    def truncate_entries(self, count: int) -> None:
        """Keep the first ``count`` entries, in memory and in the file."""
        count = min(count, self.count)
        self.count = count
        self._persisted = min(self._persisted, count)
        os.ftruncate(self._fd, self._persisted * self.dtype.itemsize)

    def flush(self) -> None:
        self.persist()
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            self.persist()
            os.close(self._fd)
            self._fd = -1


class OffsetIndex(SparseIndex):
    """``.index``: relative offset of a batch's base offset -> its position in the ``.log``."""

    dtype = INDEX_ENTRY

    def append(self, relative_offset: int, position: int) -> None:
        """Add an entry; both fields must exceed the last entry's (callers index batch starts)."""
        if self.count:
            last_offset = int(self._columns["relative_offset"][self.count - 1])
            last_position = int(self._columns["position"][self.count - 1])
            if relative_offset <= last_offset or position <= last_position:
                raise ValueError(
                    f"index entry ({relative_offset}, {position}) after ({last_offset}, {last_position})"
                )
        self._append(relative_offset, position)

    def lookup(self, relative_offset: int) -> tuple[int, int]:
        """(relative_offset, position) of the last entry at or below ``relative_offset``; (0, 0) if none."""
        offsets = self._columns["relative_offset"][: self.count]
        i = int(np.searchsorted(offsets, relative_offset, side="right")) - 1
        if i < 0:
            return 0, 0
        return int(offsets[i]), int(self._columns["position"][i])

    def lookup_position(self, position: int) -> tuple[int, int]:
        """(relative_offset, position) of the last entry whose position is at or below ``position``."""
        positions = self._columns["position"][: self.count]
        i = int(np.searchsorted(positions, position, side="right")) - 1
        if i < 0:
            return 0, 0
        return int(self._columns["relative_offset"][i]), int(positions[i])

    def truncate_to_offset(self, relative_offset: int) -> None:
        """Drop entries for batches starting at or after ``relative_offset``."""
        offsets = self._columns["relative_offset"][: self.count]
        self.truncate_entries(int(np.searchsorted(offsets, relative_offset, side="left")))

    def is_sane(self, log_size_bytes: int) -> bool:
        """Strictly increasing columns and every position inside the log: cheap check at a clean open."""
        offsets = self.column("relative_offset").astype(np.int64)
        positions = self.column("position").astype(np.int64)
        if self.count == 0:
            return True
        return bool(
            np.all(np.diff(offsets) > 0) and np.all(np.diff(positions) > 0) and positions[-1] < log_size_bytes
        )
