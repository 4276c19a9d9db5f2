"""Completion queue: fixed 32-byte entries flowing back from the partition worker to one producer.

A ring region (layout.py) with ``entry_bytes = 32``; the capacity is a multiple of 32, so an entry
never wraps. The WORKER is the only writer of the write position and the PRODUCER the only writer of
the read position: the reverse of the request ring in the same lane. One entry per acknowledged batch::

    offset size field
         0    8 sequence             u64: the producer's sequence number of the batch
         8    8 base_offset          i64: first offset assigned, -1 on error
        16    8 log_append_time_ms   i64: -1 unless the topic uses LogAppendTime
        24    4 records_count        u32
        28    2 error_code           i16: Kafka's error code, 0 = appended
        30    2 (reserved, zero)

The producer keeps at most ``capacity_entries`` batches in flight (lane.py enforces it), so an honest
producer never leaves the worker without a free entry; a full queue therefore means a broken
producer, and ``try_post`` returns False for the worker to drop the lane.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from shmbroker.errors import BrokenError
from shmbroker.ring.layout import (
    DATA_OFFSET,
    READ_INDEX,
    WRITE_INDEX,
    attach_ring,
    check_positions,
    cursor_view,
)


class Completion(NamedTuple):
    sequence: int
    base_offset: int
    log_append_time_ms: int
    records_count: int
    error_code: int


# What a worker may post: a Completion, or for speed a plain tuple in the same field order (building a
# NamedTuple costs ~1 us on this host, a tuple ~15 ns).
CompletionFields = tuple[int, int, int, int, int]

COMPLETION = struct.Struct("<QqqIh2x")  # one code per Completion field, in order, then the reserved pad
ENTRY_BYTES = COMPLETION.size  # 32


class CompletionWriter:
    """The worker's end. Single writer of the write position; not thread-safe."""

    def __init__(self, region: memoryview) -> None:
        self._capacity, self._write, self._read_seen = attach_ring(region, entry_bytes=ENTRY_BYTES)
        self._buf = region
        self._cursors = cursor_view(region)
        self._mask = self._capacity - 1
        self.capacity_entries = self._capacity // ENTRY_BYTES

    def try_post(self, entries: Sequence[CompletionFields]) -> bool:
        """Write all ``entries`` and commit them with one store. False, writing nothing, if they don't fit."""
        if not entries:
            return True
        n_bytes = len(entries) * ENTRY_BYTES
        if self._write + n_bytes - self._read_seen > self._capacity:
            read: int = self._cursors[READ_INDEX]
            check_positions(self._write, read, self._capacity, ENTRY_BYTES)
            self._read_seen = read
            if self._write + n_bytes - read > self._capacity:
                return False
        buf, mask, position = self._buf, self._mask, self._write
        for entry in entries:
            COMPLETION.pack_into(buf, DATA_OFFSET + (position & mask), *entry)
            position += ENTRY_BYTES
        self._write = position
        self._cursors[WRITE_INDEX] = position  # the commit, after the entries
        return True

    def close(self) -> None:
        self._cursors.release()
        self._buf.release()


class CompletionReader:
    """The producer's end. Single writer of the read position; not thread-safe."""

    def __init__(self, region: memoryview) -> None:
        self._capacity, _, self._read = attach_ring(region, entry_bytes=ENTRY_BYTES)
        self._buf = region
        self._cursors = cursor_view(region)
        self._mask = self._capacity - 1
        self.capacity_entries = self._capacity // ENTRY_BYTES

    def ready(self) -> bool:
        """Whether a committed entry waits (one 8-byte load, checked only for equality)."""
        return bool(self._cursors[WRITE_INDEX] != self._read)

    def poll(self) -> list[Completion]:
        """Copy out every committed entry and release them (one read-position store)."""
        write: int = self._cursors[WRITE_INDEX]
        if write == self._read:
            return []
        check_positions(write, self._read, self._capacity, ENTRY_BYTES)
        out: list[Completion] = []
        start, end = self._read & self._mask, ((write - 1) & self._mask) + 1
        # At most two contiguous runs: to the end of the data area, then from its start.
        runs = [(start, end)] if start < end else [(start, self._capacity), (0, end)]
        for lo, hi in runs:
            out.extend(
                map(Completion._make, COMPLETION.iter_unpack(self._buf[DATA_OFFSET + lo : DATA_OFFSET + hi]))
            )
        if len(out) * ENTRY_BYTES != write - self._read:  # unreachable unless the arithmetic above is wrong
            raise BrokenError(f"completion queue read {len(out)} entries for {write - self._read} bytes")
        self._read = write
        self._cursors[READ_INDEX] = write
        return out

    def close(self) -> None:
        self._cursors.release()
        self._buf.release()
