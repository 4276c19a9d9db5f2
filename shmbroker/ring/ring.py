"""Single-producer, single-consumer byte ring of frames over a ring region (layout.py draws the bytes).

The producer (``RingWriter``) writes a whole frame, then stores the new write position: that store is
the commit, and a reader never looks past it, so a producer killed mid-frame costs only that frame. When
a frame does not fit before the end of the data area, a PAD frame fills the tail first, so frames never
wrap and every payload is one contiguous ``memoryview``. The largest frame is half the capacity, which
guarantees any legal frame fits once the consumer has caught up.

A frame can also be built in place: ``try_claim(n)`` reserves room for an ``n``-byte payload and hands
out a view of it, the caller fills it, and ``commit(...)`` writes the frame header and stores the write
position. Until that store nothing of the claim is visible, so a producer killed while filling costs
only that frame, as with ``try_write``. One claim at a time; ``try_write``, a new claim or ``close``
cancel an uncommitted one (and release its view).

The consumer (``RingReader``) takes every committed frame at once with ``peek(max_bytes)`` (payloads
are views straight into the ring: no copy, writable so a worker can stamp offsets in place) and gives
the space back with one store of the read position in ``release()``. The ring never opens shared
memory; block.py does, so these classes run on ``memoryview(bytearray(n))`` in unit tests.

Each end is owned by exactly one process and is not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from shmbroker.errors import BrokenError
from shmbroker.ring.layout import (
    DATA_OFFSET,
    FRAME_ALIGNMENT,
    FRAME_HEADER,
    READ_INDEX,
    WRITE_INDEX,
    attach_ring,
    check_positions,
    cursor_view,
)

Buffer = bytes | bytearray | memoryview


class FrameType(IntEnum):
    PAD = 0  # filler up to the end of the data area; readers skip it
    BATCH = 1  # one record batch (records.py), opaque to the ring


# (frame_type, flags, tag, payload): tag is a u64 the producer chose (the lane's sequence number); the
# payload view is valid until the reader's next release(). A plain tuple, not a NamedTuple: building a
# NamedTuple costs ~25x a tuple, which showed up at the top of the 100-B-frame profile.
Frame = tuple[int, int, int, memoryview]
_PAD, _HEADER, _ALIGN_MASK = int(FrameType.PAD), FRAME_HEADER.size, FRAME_ALIGNMENT - 1


@dataclass(frozen=True)
class RingStatistics:
    capacity_bytes: int
    used_bytes: int  # committed and not yet released, PAD included
    write_position: int
    read_position: int


class RingWriter:
    """The producing end: exactly one per ring, in exactly one process."""

    def __init__(self, region: memoryview) -> None:
        """Take over ``region`` (a view this end owns; ``close`` releases it) and check its header."""
        self._capacity, self._write, read = attach_ring(region, entry_bytes=0)
        self._buf = region
        self._cursors = cursor_view(region)
        self._mask = self._capacity - 1
        self.max_payload_bytes = self._capacity // 2 - FRAME_HEADER.size
        # The consumer's cursor as last seen. Reloading it only when the ring looks full keeps the
        # producer off the consumer's cache line on the fast path (the Disruptor's cached gating sequence).
        self._read_seen = read
        # An uncommitted try_claim: payload view, frame's data offset, payload size, write position after it.
        self._claimed: memoryview | None = None
        self._claim_start = self._claim_bytes = self._claim_end = 0

    def try_write(self, frame_type: int, payload: Buffer, *, flags: int = 0, tag: int = 0) -> bool:
        """Append one frame and commit it. False, having written nothing, if the ring lacks room."""
        # len() is the byte count for any payload the slice assignment below accepts ('B' views).
        if self._claimed is not None:
            self.cancel_claim()
        n = len(payload)
        if n > self.max_payload_bytes:  # a caller bug, not backpressure: this frame would never fit
            raise ValueError(f"payload of {n} bytes; this ring takes at most {self.max_payload_bytes}")
        write = self._write
        step = (_HEADER + n + _ALIGN_MASK) & ~_ALIGN_MASK  # align(), inlined: this is the hot path
        tail_room = self._capacity - (write & self._mask)
        pad = tail_room if step > tail_room else 0
        if write + pad + step - self._read_seen > self._capacity and not self._has_room(pad + step):
            return False
        if pad:
            FRAME_HEADER.pack_into(self._buf, DATA_OFFSET + (write & self._mask), pad, _PAD, 0, 0)
            write += pad
        start = DATA_OFFSET + (write & self._mask)
        FRAME_HEADER.pack_into(self._buf, start, _HEADER + n, frame_type, flags, tag)
        body = start + _HEADER
        self._buf[body : body + n] = payload
        self._write = write + step
        # The commit: one aligned 8-byte store, after the frame's stores (x86-64 keeps store order).
        self._cursors[WRITE_INDEX] = self._write
        return True

    def try_claim(self, payload_bytes: int) -> memoryview | None:
        """Reserve a frame for ``payload_bytes`` and return its payload to fill in place; None if the
        ring lacks room. Nothing is visible to the reader until ``commit``."""
        if self._claimed is not None:
            self.cancel_claim()
        n = payload_bytes
        if not 0 <= n <= self.max_payload_bytes:
            raise ValueError(f"payload of {n} bytes; this ring takes at most {self.max_payload_bytes}")
        write = self._write
        step = (_HEADER + n + _ALIGN_MASK) & ~_ALIGN_MASK
        tail_room = self._capacity - (write & self._mask)
        pad = tail_room if step > tail_room else 0
        if write + pad + step - self._read_seen > self._capacity and not self._has_room(pad + step):
            return None
        if pad:  # written now, published only by the commit: a cancelled claim leaves a harmless PAD
            FRAME_HEADER.pack_into(self._buf, DATA_OFFSET + (write & self._mask), pad, _PAD, 0, 0)
            write += pad
        start = DATA_OFFSET + (write & self._mask)
        self._claim_start, self._claim_bytes, self._claim_end = start, n, write + step
        self._claimed = self._buf[start + _HEADER : start + _HEADER + n]
        return self._claimed

    def commit(self, frame_type: int, *, flags: int = 0, tag: int = 0) -> None:
        """Publish the claimed frame (header, then the write position). Releases the claim's view."""
        claimed = self._claimed
        if claimed is None:
            raise ValueError("commit without a claim")
        self._claimed = None
        claimed.release()  # BufferError if the caller still exports it: a bug, and nothing committed
        start, n = self._claim_start, self._claim_bytes
        FRAME_HEADER.pack_into(self._buf, start, _HEADER + n, frame_type, flags, tag)
        self._write = self._claim_end
        # The commit: as in try_write, one aligned 8-byte store after every store of the frame.
        self._cursors[WRITE_INDEX] = self._write

    def cancel_claim(self) -> None:
        """Forget an uncommitted claim (nothing was visible; its space is free for the next frame)."""
        claimed, self._claimed = self._claimed, None
        if claimed is not None:
            try:
                claimed.release()
            except BufferError:
                pass  # still exported by the caller; a stale view, never committed

    def _has_room(self, n_bytes: int) -> bool:
        read: int = self._cursors[READ_INDEX]
        check_positions(self._write, read, self._capacity, FRAME_ALIGNMENT)
        self._read_seen = read
        return self._write + n_bytes - read <= self._capacity

    def unread_bytes(self) -> int:
        """Committed bytes the consumer has not released yet (0 = it has taken everything)."""
        read: int = self._cursors[READ_INDEX]
        check_positions(self._write, read, self._capacity, FRAME_ALIGNMENT)
        self._read_seen = read
        return self._write - read

    def statistics(self) -> RingStatistics:
        used = self.unread_bytes()
        return RingStatistics(self._capacity, used, self._write, self._write - used)

    def close(self) -> None:
        """Drop this end's view of the region (the block's owner unmaps it)."""
        self.cancel_claim()
        self._cursors.release()
        self._buf.release()


class RingReader:
    """The consuming end: exactly one per ring, in exactly one process.

    Invariant: ``read <= peeked <= write``; ``read`` is what shared memory holds, ``peeked`` is how far
    ``peek`` has handed frames out. Space between them stays untouched by the writer until ``release``.
    """

    def __init__(self, region: memoryview) -> None:
        self._capacity, write, self._read = attach_ring(region, entry_bytes=0)
        self._buf = region
        self._cursors = cursor_view(region)
        self._mask = self._capacity - 1
        self._peeked = self._read
        self._write_seen = write
        self._handed_out: list[memoryview] = []

    def peek(self, max_bytes: int) -> list[Frame]:
        """Every committed frame not yet peeked, up to ``max_bytes`` of ring space (always at least one).

        PAD frames are skipped. Payloads stay valid until ``release()``. Raises ``BrokenError`` when the
        producer's cursor or a frame header is impossible; the loop advances at least 16 bytes a frame
        and stops at the checked write position, so it ends even on garbage.
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        write: int = self._cursors[WRITE_INDEX]
        if write == self._peeked:
            return []
        check_positions(write, self._read, self._capacity, FRAME_ALIGNMENT)
        self._write_seen = write
        buf, mask, capacity, unpack = self._buf, self._mask, self._capacity, FRAME_HEADER.unpack_from
        frames: list[Frame] = []
        handed_out = self._handed_out
        position, taken = self._peeked, 0
        while position < write:
            slot = position & mask
            length, frame_type, flags, tag = unpack(buf, DATA_OFFSET + slot)
            step = (length + _ALIGN_MASK) & ~_ALIGN_MASK
            if length < _HEADER or slot + step > capacity or position + step > write:
                raise BrokenError(
                    f"bad frame at position {position}: length {length}, type {frame_type}, "
                    f"{write - position} committed bytes left, {capacity - slot} before the ring's end"
                )
            if frame_type != _PAD:
                if frames and taken + step > max_bytes:
                    break
                body = DATA_OFFSET + slot + _HEADER
                payload = buf[body : body + length - _HEADER]
                handed_out.append(payload)
                frames.append((frame_type, flags, tag, payload))
            taken += step
            position += step
        self._peeked = position
        return frames

    def release(self) -> int:
        """Give back the space of every peeked frame with one store of the read position.

        Releases the payload views handed out, so a stale one raises ValueError instead of reading
        bytes the producer is overwriting. Returns the bytes released.
        """
        for view in self._handed_out:
            try:
                view.release()
            except BufferError:
                pass  # the caller still exports it (e.g. numpy); it stays mapped but is stale now
        self._handed_out.clear()
        released = self._peeked - self._read
        if released:
            self._read = self._peeked
            self._cursors[READ_INDEX] = self._read
        return released

    def committed_bytes(self) -> int:
        """Committed bytes not yet peeked (0 = nothing new). Checks the producer's cursor."""
        write: int = self._cursors[WRITE_INDEX]
        check_positions(write, self._read, self._capacity, FRAME_ALIGNMENT)
        self._write_seen = write
        return write - self._peeked

    def statistics(self) -> RingStatistics:
        self.committed_bytes()
        return RingStatistics(self._capacity, self._write_seen - self._read, self._write_seen, self._read)

    def close(self) -> None:
        """Release handed-out payloads (without committing them) and this end's view of the region."""
        for view in self._handed_out:
            try:
                view.release()
            except BufferError:
                pass
        self._handed_out.clear()
        self._cursors.release()
        self._buf.release()
