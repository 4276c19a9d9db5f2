"""Read-only access to a partition log from another process (local consumers).

The partition worker appends; any number of ``LogReader`` processes mmap the same segment files
read-only and serve whole batches below the high watermark the worker publishes (``upto_offset``).
A reader never takes a lock, never writes a file, and cannot wedge the worker.

Why it cannot crash (SIGBUS) or read torn bytes:
- every batch with base offset < ``upto_offset`` was fully written before the watermark was
  published, and the segment list is re-read after the caller got ``upto_offset`` whenever a read
  touches the last known segment, so every segment holding offsets below it is known;
- the reader never looks at a header it does not need: it stops after the batch holding
  ``min(upto_offset, next segment base) - 1`` instead of peeking at the next one, so it never
  touches the zeros past the data (``log.preallocate``, or the append reserve of segment.py: the
  active file is usually longer than its data), which a roll may have cut from under its mapping;
- a segment deleted by retention stays mapped while views into it live (the inode survives), but
  a new read below the first remaining segment gets OffsetOutOfRangeError.
``truncate_to`` in the worker (replication) shrinks files: readers must stay below the watermark.
"""

from __future__ import annotations

import bisect
import mmap
import os
from pathlib import Path

import numpy as np

from shmbroker.disk.files import INDEX_SUFFIX, LOG_SUFFIX, list_segment_bases, segment_name
from shmbroker.disk.index import INDEX_ENTRY
from shmbroker.errors import CorruptRecordError, OffsetOutOfRangeError
from shmbroker.records import BATCH_HEADER, HEADER_BYTES, MAGIC, MIN_BATCH_LENGTH, BatchHeader


class _Stale(Exception):
    """The segments as last listed cannot answer a read; a new listing might."""


class _MappedSegment:
    """One segment's ``.log`` mapped read-only and its ``.index`` as native columns."""

    def __init__(self, directory: Path, base_offset: int) -> None:
        self.base_offset = base_offset
        self.path = directory / segment_name(base_offset, LOG_SUFFIX)
        self.index_path = directory / segment_name(base_offset, INDEX_SUFFIX)
        self._map: mmap.mmap | None = None
        self.mapped_bytes = 0
        self.index_loaded = False  # True once a sealed segment's whole index was read
        self.offsets = np.empty(0, dtype=np.uint32)  # relative offsets of indexed batch starts
        self.positions = np.empty(0, dtype=np.uint32)
        # The index file kept open while its segment is active: one fstat per read tells whether it
        # grew or was deleted (st_nlink 0), where a stat by name, then open + read + close cost ~4x.
        self._index_fd: int | None = None
        self._capacity = np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.uint32)

    def exists(self) -> bool:
        return self.path.exists()

    def remap(self) -> None:
        """Map the file at its current length (called when a read needs bytes past the mapping)."""
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > self.mapped_bytes:
                # The old map is dropped, not closed: views handed out keep it alive.
                self._map = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
                self.mapped_bytes = size

    def refresh_index(self) -> bool:
        """Pick up entries the worker appended since; a torn last entry waits for next time. False
        when the index file is not there (the segment deleted, or one just being created)."""
        fd = self._index_fd
        if fd is None:
            try:
                fd = self._index_fd = os.open(self.index_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
        stat = os.fstat(fd)
        if stat.st_nlink == 0:  # unlinked: retention took the segment
            return False
        have = len(self.offsets) * INDEX_ENTRY.itemsize
        if stat.st_size < have + INDEX_ENTRY.itemsize:
            return True
        data = os.pread(fd, stat.st_size - have, have)
        new = np.frombuffer(data, dtype=INDEX_ENTRY, count=len(data) // INDEX_ENTRY.itemsize)
        count, grown = len(self.offsets), len(self.offsets) + len(new)
        offsets, positions = self._capacity
        if grown > len(offsets):  # doubling: appending entries one read at a time stays linear
            size = max(grown, 2 * len(offsets), 64)
            offsets, positions = np.empty(size, dtype=np.uint32), np.empty(size, dtype=np.uint32)
            offsets[:count], positions[:count] = self.offsets, self.positions
            self._capacity = offsets, positions
        offsets[count:grown] = new["relative_offset"]
        positions[count:grown] = new["position"]
        self.offsets, self.positions = offsets[:grown], positions[:grown]
        return True

    def close_index(self) -> None:
        """Close the index file (a sealed segment's index is read once; the reader drops it)."""
        if self._index_fd is not None:
            os.close(self._index_fd)
            self._index_fd = None

    def header_at(self, position: int) -> BatchHeader:
        if position + HEADER_BYTES > self.mapped_bytes:
            self.remap()
        if self._map is None or position + HEADER_BYTES > self.mapped_bytes:
            raise CorruptRecordError(f"{self.path}: batch header at {position} is past the file end")
        header = BatchHeader._make(BATCH_HEADER.unpack_from(self._map, position))
        if header.magic != MAGIC or header.batch_length < MIN_BATCH_LENGTH:
            raise CorruptRecordError(f"{self.path}: no batch header at position {position}")
        if position + header.size_bytes > self.mapped_bytes:
            self.remap()
        return header

    def _index_floor(self, column: np.ndarray, key: int) -> tuple[int, int]:
        """(offset, position) of the last index entry whose ``column`` value is <= key; else the start."""
        i = int(column.searchsorted(key, side="right")) - 1  # the method: no fromnumeric wrapper
        if i < 0:
            return self.base_offset, 0
        return self.base_offset + int(self.offsets[i]), int(self.positions[i])

    def read(self, offset: int, max_bytes: int, limit_offset: int) -> memoryview | None:
        """Whole batches from the one holding ``offset``, none starting at or past ``limit_offset``."""
        found = self.span(offset, max_bytes, limit_offset)
        if found is None:
            return None
        assert self._map is not None
        return memoryview(self._map)[found[0] : found[1]]

    def span(self, offset: int, max_bytes: int, limit_offset: int) -> tuple[int, int, int] | None:
        """``(start, end, next_offset)``: the byte range ``read`` would return, and the offset after it."""
        _, position = self._index_floor(self.offsets, max(0, offset - self.base_offset))
        while True:  # find the batch holding offset; all these batches lie below limit_offset
            header = self.header_at(position)
            if header.last_offset >= offset:
                break
            if header.next_offset >= limit_offset:
                return None
            position += header.size_bytes
        start, end, next_offset = position, position + header.size_bytes, header.next_offset
        # Every batch before both index entries fits in max_bytes and starts below limit_offset
        # (index positions are batch starts), so jump there and walk only the rest.
        jump = min(
            self._index_floor(self.positions, start + max_bytes),
            self._index_floor(self.offsets, limit_offset - self.base_offset),
        )
        if jump[1] > end:
            next_offset, end = jump
        while next_offset < limit_offset:
            try:
                header = self.header_at(end)
            except CorruptRecordError:
                break  # the good batches before it now; the next read starts at it and raises
            if end + header.size_bytes - start > max_bytes:
                break
            end += header.size_bytes
            next_offset = header.next_offset
        return start, end, next_offset


class LogReader:
    """Reads one partition directory without ever writing it. One per consumer, not thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._segments: dict[int, _MappedSegment] = {}
        self._bases: list[int] = []
        self._relist()

    def _relist(self) -> None:
        bases = list_segment_bases(self.directory)
        segments = {b: self._segments.get(b) or _MappedSegment(self.directory, b) for b in bases}
        for base, segment in self._segments.items():
            if base not in segments or base != bases[-1]:
                segment.close_index()  # gone, or sealed: a later read there reopens it once
        self._segments, self._bases = segments, bases

    @property
    def log_start_offset(self) -> int | None:
        return self._bases[0] if self._bases else None

    def read(self, offset: int, max_bytes: int, *, upto_offset: int) -> memoryview | None:
        """Whole batches from the one holding ``offset``: at least one, else up to max_bytes; none
        whose base offset is >= ``upto_offset``. None when ``offset >= upto_offset``.

        The view points into a read-only mapping; it stays valid as long as it is referenced."""
        found = self.locate(offset, max_bytes, upto_offset=upto_offset)
        if found is None:
            return None
        segment, start, end, _next = found
        assert segment._map is not None
        return memoryview(segment._map)[start:end]

    def locate_file(
        self, offset: int, max_bytes: int, *, upto_offset: int
    ) -> tuple[Path, int, int, int] | None:
        """Where ``read`` would read: ``(segment path, start, end, next_offset)``, for ``sendfile``."""
        found = self.locate(offset, max_bytes, upto_offset=upto_offset)
        if found is None:
            return None
        segment, start, end, next_offset = found
        return segment.path, start, end, next_offset

    def locate(
        self, offset: int, max_bytes: int, *, upto_offset: int
    ) -> tuple[_MappedSegment, int, int, int] | None:
        if offset >= upto_offset:
            if self._bases and offset < self._bases[0]:
                raise OffsetOutOfRangeError(f"offset {offset} is below {self._bases[0]}")
            return None
        # The segments listed last time first: listing the directory cost a tail reader ~8 us of its
        # ~19 us per read. A roll shows as a read past the end of the last segment we know (a bad
        # header or None), a deletion as a segment file gone; either way list again and look again.
        # The caller read upto_offset before calling, so that listing has every segment below it.
        if self._bases:
            try:
                return self._find(offset, max_bytes, upto_offset, listed=False)
            except (_Stale, CorruptRecordError, OffsetOutOfRangeError):
                pass
        self._relist()
        return self._find(offset, max_bytes, upto_offset, listed=True)

    def _find(
        self, offset: int, max_bytes: int, upto_offset: int, *, listed: bool
    ) -> tuple[_MappedSegment, int, int, int] | None:
        """``locate`` over the segments as listed; unless just ``listed``, _Stale where a listing
        could tell more (the segment is gone, or nothing was found below upto_offset)."""
        i = bisect.bisect_right(self._bases, offset) - 1
        if i < 0:
            start = self._bases[0] if self._bases else "nothing"
            raise OffsetOutOfRangeError(
                f"offset {offset} is below the log start ({start}) in {self.directory}"
            )
        last = len(self._bases) - 1
        if not listed and i < last and not self._segments[self._bases[i]].exists():
            raise _Stale  # (the last one's index refresh below tells the same with its one stat)
        while i <= last:
            segment = self._segments[self._bases[i]]
            next_base = self._bases[i + 1] if i < last else upto_offset
            limit = min(upto_offset, next_base)
            if i == last or not segment.index_loaded:
                # The active segment's index grows; a sealed one's is read once. (Without it a read
                # walked every batch header from the segment start: quadratic over a segment.)
                if not segment.refresh_index() and not listed:
                    raise _Stale
                segment.index_loaded = i < last
                if segment.index_loaded:
                    segment.close_index()
            try:
                found = segment.span(offset, max_bytes, limit) if offset < limit else None
            except FileNotFoundError as exc:
                if not listed:
                    raise _Stale from exc
                raise OffsetOutOfRangeError(f"segment {segment.path} was deleted") from exc
            if found is not None:
                return segment, *found
            i += 1
        if not listed:
            raise _Stale
        return None

    def close(self) -> None:
        """Drop the mappings (views already handed out keep theirs alive) and the index files."""
        for segment in self._segments.values():
            segment.close_index()
        self._segments.clear()
        self._bases = []
