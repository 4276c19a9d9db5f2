"""One segment of a partition log: a ``.log`` file of record batches plus two sparse indexes.

    00000000000000001234.log        batches in offset order; the first one starts at offset 1234
    00000000000000001234.index      (relative offset, position) every ~index_interval_bytes
    00000000000000001234.timeindex  (largest timestamp so far, relative offset), same rhythm

``size_bytes`` is the logical end; the file is often longer and zero-filled past it. With
``log.preallocate`` it is ``segment_bytes`` long from the start (Kafka's preallocation). Without it,
appends still reserve disk ahead of themselves, ``RESERVE_AHEAD_BYTES`` at a time and never past
``segment_bytes`` (``reserve_limit_bytes``), because writing into already allocated blocks is what
brings an append up to the speed of a plain ``os.write``. ``seal()`` (at a roll or a clean close)
and ``trim()`` cut the file back to ``size_bytes``; after a crash recovery cuts the zero tail.
Nothing reads past ``size_bytes`` here, and other processes read only below the high watermark.
Writes are ``pwritev`` at ``size_bytes``, so a failed or partial write is simply overwritten by
the next one.

``append_verified`` writes batches that live in memory another process can still change (a
producer's shm lane) and then checks what the page cache holds: each stored batch must carry exactly
the header its caller checked and stamped, and a CRC that matches its bytes. The first one that does
not is cut, with everything after it (zeroed, so no stale batch lies past ``size_bytes``); the batches
before it stay appended. Reading back through a short-lived mmap costs a CRC pass over pages still in
cache, instead of a private copy of every batch before its check.
Reads batch headers only, never inside batches. One partition worker owns it; not thread-safe.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from shmbroker import records
from shmbroker.disk.files import INDEX_SUFFIX, LOG_SUFFIX, TIMEINDEX_SUFFIX, segment_name
from shmbroker.disk.index import OffsetIndex
from shmbroker.disk.timeindex import TimeIndex
from shmbroker.errors import CorruptRecordError, KafkaStorageError
from shmbroker.records import (
    BATCH_HEADER,
    CRC_START,
    HEADER_BYTES,
    LOG_OVERHEAD,
    MIN_BATCH_LENGTH,
    BatchHeader,
    crc32c,
    parse_batch_header,
)

WALK_CHUNK_BYTES = 8192  # one pread covers the headers of a few small batches
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
MAX_RELATIVE_OFFSET = 2**32 - 1  # index entries hold offsets relative to the base as u32
# How a preallocated segment gets its length. perf/bench_disk.py on ext4 here: appends into a
# posix_fallocate'd file ran ~0.97x plain os.write against ~0.75x without preallocation and no
# better with a sparse ftruncate (Kafka's setLength), since ext4 then allocates per write. The
# call takes ~1 ms per GiB (the trim at roll ~15 ms). "ftruncate" stays for file systems that
# cannot fallocate (glibc would write zeros instead).
PREALLOCATE_WITH = "fallocate"
# How far appends fallocate ahead of the write position when log.preallocate is off. Most of what
# separated an append from a plain os.write was ext4 allocating blocks write by write (the other
# part is the CRC-32C check); a posix_fallocate'd range removes that, as whole-segment
# preallocation does, but reserves only this much beyond the data instead of segment_bytes per
# partition. 32 MiB is one fallocate per 32 MiB appended (~30 us) and at most 32 MiB of zeros per
# active segment, given back at the roll or a close. perf/bench_disk.py has the numbers (it sets
# this to 0, which turns the reserve off, for the comparison).
RESERVE_AHEAD_BYTES = 32 << 20
# append_verified reads a write back with one pread up to this size (a latency-bound turn of small
# batches: no mmap + munmap per turn), through a short-lived mmap beyond it (no copy of big writes).
VERIFY_BY_PREAD_BYTES = 64 << 10
# Appends are written in calls of at most this many bytes, each ending on a multiple of it: the
# kernel's cost per byte depends on the size of the call. Measured here (a loop of pwritev from a
# shm buffer into a fresh fallocated file, 600 MB a run, sizes alternated, 2 s apart): 1 MiB calls
# 1.3-1.6 GB/s, 512 KiB 4.6-5.6, 128 KiB 4.7-6.0, 32 KiB 3.3-4.5. Likely why: the page cache sizes
# a write's folios after the call, and in this VM the high-order pages a 1 MiB folio needs mostly
# come from memory the guest has not touched for a while, which the host then backs page by page.
# An extra call per 128 KiB costs ~1 us. perf/bench_disk.py compares both ("one pwritev per call").
WRITE_CALL_BYTES = 128 << 10


def pwritev_all(fd: int, views: Sequence[memoryview], position: int, total: int | None = None) -> None:
    """Write every byte of ``views`` (``total`` bytes, if the caller knows) at ``position``: one
    pwritev when it is small, else calls of at most WRITE_CALL_BYTES ending on multiples of it (see
    there); loops over short writes."""
    if total is None:
        total = sum(map(len, views))
    if total <= WRITE_CALL_BYTES and len(views) <= IOV_MAX:
        if os.pwritev(fd, views, position) != total:  # short (rare): again, looping; same bytes, same place
            _pwritev_whole(fd, list(views), position)
        return
    group: list[memoryview] = []
    boundary = (position // WRITE_CALL_BYTES + 1) * WRITE_CALL_BYTES  # where the current call ends
    for view in views:
        while view:
            take = min(len(view), boundary - position)
            group.append(view[:take] if take < len(view) else view)
            view = view[take:]
            position += take
            if position == boundary or len(group) == IOV_MAX:
                _pwritev_whole(fd, group, position - sum(len(v) for v in group))
                group = []
                boundary = (position // WRITE_CALL_BYTES + 1) * WRITE_CALL_BYTES
    if group:
        _pwritev_whole(fd, group, position - sum(len(v) for v in group))


def _pwritev_whole(fd: int, pending: list[memoryview], position: int) -> None:
    """One pwritev of at most IOV_MAX ``pending`` buffers, repeated over the rest of a short write."""
    while pending:
        written = os.pwritev(fd, pending, position)
        position += written
        consumed = 0
        for view in pending:  # drop what was written; keep the unwritten part of a cut buffer
            if written >= len(view):
                written -= len(view)
                consumed += 1
            else:
                pending[consumed] = view[written:]
                break
        pending = pending[consumed:]


class Segment:
    """The files of one segment and what the owner knows about them: sizes, offsets, timestamps."""

    def __init__(
        self,
        directory: Path,
        base_offset: int,
        *,
        index_interval_bytes: int,
        index_max_entries: int,
        reserve_limit_bytes: int = 0,
    ) -> None:
        """``reserve_limit_bytes``: appends fallocate ahead (RESERVE_AHEAD_BYTES) up to this file
        length, normally ``segment_bytes``; 0 turns the reserve off."""
        self.base_offset = self.next_offset = base_offset
        self.path = directory / segment_name(base_offset, LOG_SUFFIX)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.file_bytes = os.fstat(self._fd).st_size  # the file's length, >= size_bytes
        self.size_bytes = self.file_bytes  # the logical end, set right by load() or recover()
        self.size_bytes_written = self.size_bytes  # where the last _write ended (append_verified reads it)
        self.index = OffsetIndex(
            directory / segment_name(base_offset, INDEX_SUFFIX), max_entries=index_max_entries
        )
        self.timeindex = TimeIndex(
            directory / segment_name(base_offset, TIMEINDEX_SUFFIX), max_entries=index_max_entries
        )
        self.max_timestamp_ms = -1  # largest batch max_timestamp in the segment
        self.first_timestamp_ms: int | None = None  # of the first batch: when roll.ms counts from
        self._index_interval_bytes = index_interval_bytes
        self._bytes_since_index_entry = 0
        self._reserve_limit_bytes = reserve_limit_bytes

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def is_empty(self) -> bool:
        return self.size_bytes == 0

    # ---- opening -------------------------------------------------------------------------------
    def load_clean(self) -> bool:
        """After a clean shutdown: trust the file size and the indexes if they look sane.

        Finds next_offset from the last indexed batch with a short header walk. Returns False if
        something is off (then the caller runs ``recover()`` on this segment instead).
        """
        if not self.index.is_sane(self.size_bytes) or not self.timeindex.is_sane():
            return False
        _, position = self.index.lookup(MAX_RELATIVE_OFFSET)
        last: BatchHeader | None = None
        end = position
        try:
            for pos, header in self.walk(position):
                last, end = header, pos + header.size_bytes
        except CorruptRecordError:
            return False
        if last is None:
            return position == 0 and self.size_bytes == 0
        if end != self.size_bytes:
            return False
        self.next_offset = last.next_offset
        self.max_timestamp_ms = max(self.timeindex.last_timestamp_ms, last.max_timestamp_ms)
        self.first_timestamp_ms = parse_batch_header(os.pread(self._fd, HEADER_BYTES, 0)).max_timestamp_ms
        self._bytes_since_index_entry = self.size_bytes - position
        return True

    def rebuild_indexes(self, scanned: records.ValidPrefix) -> None:
        """Index a verified run of batches (from ``records.scan_valid_columns``) from scratch.

        Same entries as appending them one by one (``_commit``), built with numpy: recovery
        of small batches spent 40% of its time here when it went entry by entry."""
        self.index.truncate_entries(0)
        self.timeindex.truncate_entries(0)
        self.size_bytes, self.next_offset = 0, self.base_offset
        self.max_timestamp_ms, self.first_timestamp_ms = -1, None
        self._bytes_since_index_entry = 0
        if scanned.positions:
            positions = np.array(scanned.positions, dtype=np.int64)
            bases = np.array(scanned.base_offsets, dtype=np.int64)
            running_max = np.maximum.accumulate(np.array(scanned.max_timestamps_ms, dtype=np.int64))
            at = self._indexed_batches(positions)
            self.index.extend(bases[at] - self.base_offset, positions[at])
            stamps, relative = running_max[at], bases[at] - self.base_offset
            grows = np.concatenate([[True], np.diff(stamps) > 0]) if len(at) else np.zeros(0, dtype=bool)
            self.timeindex.extend(stamps[grows], relative[grows])
            assert scanned.next_offset is not None
            self.size_bytes, self.next_offset = scanned.end, scanned.next_offset
            self.max_timestamp_ms = int(running_max[-1])
            self.first_timestamp_ms = scanned.max_timestamps_ms[0]
            last_indexed = int(positions[at[-1]]) if len(at) else int(positions[0])
            self._bytes_since_index_entry = scanned.end - last_indexed
        self.index.persist()
        self.timeindex.persist()

    def _indexed_batches(self, positions: np.ndarray) -> np.ndarray:
        """Which of these contiguous batches ``_commit`` would index: Kafka's rule makes batch j
        an entry when the bytes since the last entry (or the start), ``positions[j] - positions[k]``,
        exceed index_interval_bytes. ``after[k]`` is the first such j for each k, so only the chain
        of entries is walked in Python, not every batch."""
        after = np.searchsorted(positions, positions + self._index_interval_bytes, side="right").tolist()
        indexed, k, count = [], after[0], len(after)
        while k < count:
            indexed.append(k)
            k = after[k]
        return np.asarray(indexed, dtype=np.int64)

    # ---- writing -------------------------------------------------------------------------------
    def preallocate(self, segment_bytes: int) -> None:
        """Give the file its full length now (``log.preallocate``); ``trim()`` gives it back."""
        if self.file_bytes >= segment_bytes:
            return
        if PREALLOCATE_WITH == "fallocate":
            os.posix_fallocate(self._fd, 0, segment_bytes)
        else:
            os.ftruncate(self._fd, segment_bytes)
        self.file_bytes = segment_bytes

    def can_take(self, pending_bytes: int, last_offset: int, segment_bytes: int, *, alone: bool) -> bool:
        """Would ``pending_bytes`` of batches ending at ``last_offset`` fit without a roll?

        ``alone``: the pending bytes are one batch, which an empty segment takes whatever its size."""
        room = self.index.max_entries - self.index.count
        time_room = self.timeindex.max_entries - self.timeindex.count
        entries = pending_bytes // self._index_interval_bytes + 1  # at most one per interval
        return (
            (self.size_bytes + pending_bytes <= segment_bytes or (alone and self.is_empty))
            and last_offset - self.base_offset <= MAX_RELATIVE_OFFSET
            and (entries <= min(room, time_room) or (alone and self.is_empty))
        )

    def append(self, views: Sequence[memoryview], headers: Sequence[BatchHeader]) -> list[int]:
        """Write whole, checked, stamped batches starting at next_offset; return their positions."""
        start = self._write(views, headers)
        return self._commit(start, headers)

    def append_verified(
        self, views: Sequence[memoryview], headers: Sequence[BatchHeader], total_bytes: int | None = None
    ) -> tuple[list[int], CorruptRecordError | None]:
        """As ``append`` for batches someone else may still be writing to: ``headers`` are what the
        caller checked and stamped. Returns the positions of the batches appended, a prefix of them,
        and the error of the first whose stored bytes failed the check (None if none did).
        ``total_bytes``: their size together, if the caller knows."""
        start = self._write(views, headers, total_bytes)
        end = self.size_bytes_written
        bad = self._first_bad_stored(start, headers, end)
        if bad is None:
            return self._commit(start, headers), None
        index, error = bad
        positions = self._commit(start, headers[:index]) if index else []
        self._zero(self.size_bytes, end)
        return positions, error

    def _write(
        self, views: Sequence[memoryview], headers: Sequence[BatchHeader], total_bytes: int | None = None
    ) -> int:
        """pwritev the batches at the end of the data; returns where they start. ``size_bytes_written``
        is then where they end (``size_bytes`` moves only at the commit)."""
        start = self.size_bytes
        if total_bytes is None:
            total_bytes = sum(header[1] for header in headers) + LOG_OVERHEAD * len(headers)
        end = start + total_bytes
        self.size_bytes_written = end
        if end > self.file_bytes and self._reserve_limit_bytes and RESERVE_AHEAD_BYTES:
            self._reserve(end)
        try:
            pwritev_all(self._fd, views, start, end - start)
        except OSError as exc:  # ENOSPC, EIO: nothing counts as written; the next pwritev overwrites
            raise KafkaStorageError(f"write to {self.path} at {start} failed: {exc}") from exc
        self.file_bytes = max(self.file_bytes, end)
        return start

    def _first_bad_stored(
        self, start: int, headers: Sequence[BatchHeader], end: int
    ) -> tuple[int, CorruptRecordError] | None:
        """The first batch written at [``start``, ``end``) whose stored header is not ``headers[i]`` or
        whose stored CRC does not match its stored bytes, with the reason; None when every one is sound."""
        if end == start:
            return None
        if end - start <= VERIFY_BY_PREAD_BYTES:
            return self._first_bad_in(memoryview(os.pread(self._fd, end - start, start)), start, 0, headers)
        base = start - start % mmap.ALLOCATIONGRANULARITY
        with (
            mmap.mmap(self._fd, end - base, prot=mmap.PROT_READ, offset=base) as mapped,
            memoryview(mapped) as view,
        ):
            return self._first_bad_in(view, base, start - base, headers)

    def _first_bad_in(
        self, view: memoryview, base: int, position: int, headers: Sequence[BatchHeader]
    ) -> tuple[int, CorruptRecordError] | None:
        """``_first_bad_stored`` over ``view``, file bytes from ``base``; the batches from ``position``."""
        for index, expected in enumerate(headers):
            with view[position : position + expected.size_bytes] as stored:
                if len(stored) != expected.size_bytes:
                    return index, CorruptRecordError(
                        f"read back {len(stored)} of {expected.size_bytes} bytes"
                    )
                found = BATCH_HEADER.unpack_from(stored)  # a plain tuple compares equal to the namedtuple
                if found != expected:
                    return index, CorruptRecordError(
                        f"batch at {self.path.name}:{base + position} changed after its checks: "
                        f"stored header {BatchHeader._make(found)}, checked {expected}"
                    )
                crc = crc32c(stored[CRC_START:])
                if crc != expected.crc:
                    return index, CorruptRecordError(
                        f"batch CRC-32C is {crc:#010x}, header says {expected.crc:#010x}"
                    )
            position += expected.size_bytes
        return None

    def _zero(self, start: int, end: int) -> None:
        """Overwrite [start, end) with zeros: a cut batch leaves nothing a recovery scan could take."""
        zeros = bytes(min(end - start, 1 << 20))
        try:
            while start < end:
                start += os.pwrite(self._fd, zeros[: end - start], start)
        except OSError as exc:
            raise KafkaStorageError(f"zeroing {self.path} at {start} failed: {exc}") from exc

    def _commit(self, start: int, headers: Sequence[BatchHeader]) -> list[int]:
        """Index batches written at ``start`` (Kafka's rule: an entry when more than
        index_interval_bytes went by since the last one) and move the logical end past them."""
        positions = []
        position = start
        since_entry, interval = self._bytes_since_index_entry, self._index_interval_bytes
        max_timestamp_ms = self.max_timestamp_ms
        for header in headers:
            positions.append(position)
            if header[8] > max_timestamp_ms:  # max_timestamp_ms
                max_timestamp_ms = header[8]
            if since_entry > interval:
                relative = header[0] - self.base_offset
                self.index.append(relative, position)
                self.timeindex.maybe_append(max_timestamp_ms, relative)
                since_entry = 0
            size_bytes = header[1] + LOG_OVERHEAD
            since_entry += size_bytes
            position += size_bytes
        if headers:
            if self.first_timestamp_ms is None:
                self.first_timestamp_ms = headers[0][8]
            self.next_offset = headers[-1].next_offset
        self.max_timestamp_ms = max_timestamp_ms
        self._bytes_since_index_entry = since_entry
        self.size_bytes = position
        self.index.persist()
        self.timeindex.persist()
        return positions

    def _reserve(self, end: int) -> None:
        """fallocate the file from its end to RESERVE_AHEAD_BYTES past ``end`` (at most the limit)."""
        target = max(end, min(self._reserve_limit_bytes, end + RESERVE_AHEAD_BYTES))
        try:
            os.posix_fallocate(self._fd, self.file_bytes, target - self.file_bytes)
        except OSError:  # ENOSPC (the write itself may still fit), EINVAL...: only speed is lost
            self._reserve_limit_bytes = 0
            self.file_bytes = os.fstat(self._fd).st_size  # a failed fallocate may have grown it
            return
        self.file_bytes = target

    def truncate_at(self, position: int, next_offset: int) -> None:
        """Cut the log at a batch boundary and drop index entries for what was cut."""
        os.ftruncate(self._fd, position)
        self.size_bytes = self.file_bytes = position
        self.next_offset = next_offset
        self.index.truncate_to_offset(next_offset - self.base_offset)
        self.timeindex.truncate_to_offset(next_offset - self.base_offset)
        self._bytes_since_index_entry = position - self.index.lookup(MAX_RELATIVE_OFFSET)[1]

    def seal(self) -> None:
        """No more appends: final timeindex entry (the segment's max timestamp), trim, persist."""
        if not self.is_empty:
            last_rel = int(self.timeindex.column("relative_offset")[-1]) if self.timeindex.count else 0
            self.timeindex.maybe_append(self.max_timestamp_ms, last_rel)
        self.trim()
        self.index.persist()
        self.timeindex.persist()

    def trim(self) -> None:
        """Give back the preallocated or reserved tail beyond the data."""
        if self.file_bytes > self.size_bytes:
            os.ftruncate(self._fd, self.size_bytes)
            self.file_bytes = self.size_bytes

    def flush(self) -> None:
        os.fdatasync(self._fd)
        self.index.flush()
        self.timeindex.flush()

    def close(self) -> None:
        if self._fd >= 0:
            self.index.close()
            self.timeindex.close()
            os.close(self._fd)
            self._fd = -1

    def delete(self) -> None:
        """Close and unlink the three files; readers' mmaps stay valid (the inode lives on)."""
        self.close()
        for path in (self.path, self.index.path, self.timeindex.path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # ---- reading -------------------------------------------------------------------------------
    def walk(self, position: int, end: int | None = None) -> Iterator[tuple[int, BatchHeader]]:
        """(position, header) of each batch from ``position`` (a batch start) to ``end``.

        Checks only that a header is plausible (magic, length), so damage cannot loop it; CRCs are
        for recovery and ``dump-log --verify``.
        """
        end = self.size_bytes if end is None else end
        buf, buf_start = b"", position
        while position + HEADER_BYTES <= end:
            if position + HEADER_BYTES > buf_start + len(buf):
                buf, buf_start = os.pread(self._fd, WALK_CHUNK_BYTES, position), position
            header = parse_batch_header(buf, position - buf_start)
            if header.magic != records.MAGIC or header.batch_length < MIN_BATCH_LENGTH:
                raise CorruptRecordError(f"{self.path}: no batch header at position {position}")
            yield position, header
            position += header.size_bytes

    def find(self, offset: int) -> tuple[int, BatchHeader] | None:
        """The batch holding ``offset`` (or the first one after it), or None past the end."""
        _, start = self.index.lookup(max(0, offset - self.base_offset))
        for position, header in self.walk(start):
            if header.last_offset >= offset:
                return position, header
        return None

    def read(self, offset: int, max_bytes: int, upto_offset: int) -> tuple[int, int] | None:
        """(position, size) of whole batches from the one holding ``offset``: at most max_bytes but
        at least one batch, none starting at or beyond ``upto_offset``. None if nothing qualifies."""
        found = self.find(offset)
        if found is None or found[1].base_offset >= upto_offset:
            return None
        start, first = found
        end, limit = start + first.size_bytes, start + max_bytes
        if end >= limit or end >= self.size_bytes:
            return start, end - start
        # Every batch before both index positions below fits in max_bytes and starts below
        # upto_offset (index positions are batch starts), so jump there and walk only the rest.
        _, by_bytes = self.index.lookup_position(limit)
        _, by_offset = self.index.lookup(max(0, upto_offset - self.base_offset))
        end = max(end, min(by_bytes, by_offset))
        for position, header in self.walk(end):
            if position + header.size_bytes > limit or header.base_offset >= upto_offset:
                break
            end = position + header.size_bytes
        return start, end - start

    def read_bytes(self, position: int, size: int) -> bytes:
        return os.pread(self._fd, size, position)

    def __repr__(self) -> str:
        offsets = f"{self.base_offset}..{self.next_offset}"
        return f"Segment({self.path.name}, offsets {offsets}, {self.size_bytes} B)"
