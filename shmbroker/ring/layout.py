"""The ring region: one cursor header plus a data area, shared by the byte ring and the completion queue.

Little-endian, drawn once here; every ring in a lane starts with this header::

    offset  size  field                                        written by
         0     4  magic b"SHBR"                                creator, once, before publishing the name
         4     2  version (1)                                  creator, once
         6     2  entry_bytes: 0 = variable frames (ring.py),  creator, once
                  else the fixed entry size (completion.py)
         8     8  capacity_bytes: a power of two >= 64         creator, once
        64     8  write position (bytes, only grows)           the producing end only
       128     8  read position (bytes, only grows)            the consuming end only
       192        data area: capacity_bytes bytes

    frame (entry_bytes == 0), FRAME_ALIGNMENT-aligned, never wraps the end of the data area:
        | length u32 (header + payload, unaligned) | type u16 | flags u16 | tag u64 | payload | pad |

Each cursor sits alone in its 64-byte cache line and has exactly one writer process, so no lock exists
that a dead process could hold, and the two ends do not false-share. A byte lives at data offset
``position & (capacity_bytes - 1)``. ``read <= write <= read + capacity_bytes`` always holds for honest
ends; each end checks it on every load of the other's cursor and raises ``BrokenError`` otherwise.

Memory ordering (x86-64 only): a cursor is one aligned 8-byte store, which x86-64 keeps whole. Cursors
are stored and loaded through ``cursor_view`` (a memoryview cast to native 'Q': item assignment is one
8-byte ``memcpy``, one ``mov``), never ``struct.pack_into``, which zero-fills its target before packing
(CPython's ``s_pack_internal``), so a concurrent reader can see 0: the stress test caught exactly that.
x86-64 (TSO) never reorders a store with an earlier store, nor a load with an earlier load. So "write
the frame, then store the write position" publishes the frame, and "load the write position, then load
the frame" never sees a frame older than the position. The cross-process stress test checks both.
"""

from __future__ import annotations

import struct

from shmbroker.errors import BrokenError

CACHE_LINE = 64
RING_MAGIC = b"SHBR"
RING_VERSION = 1
RING_HEADER = struct.Struct("<4sHHQ")  # magic, version, entry_bytes, capacity_bytes
WRITE_POSITION_OFFSET = CACHE_LINE
READ_POSITION_OFFSET = 2 * CACHE_LINE
DATA_OFFSET = 3 * CACHE_LINE  # 192
POSITION = struct.Struct("<Q")  # for formatting and tests only; live cursors go through cursor_view
WRITE_INDEX = WRITE_POSITION_OFFSET // POSITION.size  # item indexes into cursor_view()
READ_INDEX = READ_POSITION_OFFSET // POSITION.size

FRAME_HEADER = struct.Struct("<IHHQ")  # length, type, flags, tag: 16 bytes
# Frames start on 16-byte boundaries, so the tail room before the end of the data area is either 0 or
# big enough for a PAD frame's header.
FRAME_ALIGNMENT = 16
MIN_CAPACITY_BYTES = 64


def align(n_bytes: int) -> int:
    """``n_bytes`` rounded up to the frame alignment."""
    return (n_bytes + FRAME_ALIGNMENT - 1) & ~(FRAME_ALIGNMENT - 1)


def ring_bytes(capacity_bytes: int) -> int:
    """Size of a ring region (header + data) for a data area of ``capacity_bytes``."""
    check_capacity(capacity_bytes)
    return DATA_OFFSET + capacity_bytes


def check_capacity(capacity_bytes: int) -> None:
    """A caller's capacity must be a power of two >= 64 (a plain ValueError: it is an argument)."""
    if capacity_bytes < MIN_CAPACITY_BYTES or capacity_bytes & (capacity_bytes - 1):
        raise ValueError(
            f"ring capacity {capacity_bytes} bytes: must be a power of two >= {MIN_CAPACITY_BYTES}"
        )


def init_ring(region: memoryview, capacity_bytes: int, *, entry_bytes: int = 0) -> None:
    """Format a ring region. Creator only, before any other process learns the block's name."""
    needed = ring_bytes(capacity_bytes)
    if len(region) < needed:
        raise ValueError(f"ring of {capacity_bytes} bytes needs a {needed}-byte region, got {len(region)}")
    if entry_bytes and (entry_bytes % FRAME_ALIGNMENT or capacity_bytes % entry_bytes):
        raise ValueError(f"entry of {entry_bytes} bytes must divide the capacity and be 16-aligned")
    region[:DATA_OFFSET] = bytes(DATA_OFFSET)
    RING_HEADER.pack_into(region, 0, RING_MAGIC, RING_VERSION, entry_bytes, capacity_bytes)


def attach_ring(region: memoryview, *, entry_bytes: int) -> tuple[int, int, int]:
    """Check a ring region's header; return ``(capacity_bytes, write_position, read_position)``.

    Everything here comes from shared memory, so every field is checked: a region that a broken or
    hostile process scribbled on raises ``BrokenError``, never an IndexError or an endless loop later.
    """
    if len(region) < DATA_OFFSET + MIN_CAPACITY_BYTES:
        raise BrokenError(f"ring region of {len(region)} bytes is smaller than the smallest ring")
    magic, version, found_entry_bytes, capacity = RING_HEADER.unpack_from(region, 0)
    if magic != RING_MAGIC or version != RING_VERSION:
        raise BrokenError(
            f"not a ring: magic {magic!r} version {version}; want {RING_MAGIC!r} v{RING_VERSION}"
        )
    if found_entry_bytes != entry_bytes:
        raise BrokenError(f"ring holds {found_entry_bytes}-byte entries; this end expects {entry_bytes}")
    if capacity < MIN_CAPACITY_BYTES or capacity & (capacity - 1) or DATA_OFFSET + capacity > len(region):
        raise BrokenError(f"ring capacity {capacity} bytes does not fit a {len(region)}-byte region")
    cursors = cursor_view(region)
    write, read = cursors[WRITE_INDEX], cursors[READ_INDEX]
    cursors.release()
    check_positions(write, read, capacity, entry_bytes or FRAME_ALIGNMENT)
    return capacity, write, read


def cursor_view(region: memoryview) -> memoryview:
    """The ring header as native u64 items, so ``view[WRITE_INDEX] = n`` is one whole 8-byte store.

    The caller releases it (before the block is closed). Native order is little-endian on x86-64, the
    only platform this module's memory-ordering argument covers.
    """
    return region[:DATA_OFFSET].cast("Q")


def check_positions(write: int, read: int, capacity_bytes: int, granule_bytes: int) -> None:
    """Raise ``BrokenError`` unless ``read <= write <= read + capacity`` and both sit on a granule."""
    if not read <= write <= read + capacity_bytes:
        raise BrokenError(f"ring cursors out of range: write {write}, read {read}, capacity {capacity_bytes}")
    if write % granule_bytes or read % granule_bytes:
        raise BrokenError(f"ring cursors write {write} / read {read} are not {granule_bytes}-byte aligned")


def put_ascii(region: memoryview, offset: int, field_bytes: int, text: str) -> None:
    """Store ``text`` NUL-padded in a fixed field (names of shm blocks and semaphores)."""
    raw = text.encode("ascii")
    if len(raw) >= field_bytes:
        raise ValueError(f"{text!r} is longer than its {field_bytes - 1}-byte field")
    region[offset : offset + field_bytes] = raw.ljust(field_bytes, b"\0")


def get_name(region: memoryview, offset: int, field_bytes: int) -> str:
    """Read a NUL-padded POSIX IPC name from shared memory, refusing anything but ``/[A-Za-z0-9._-]+``."""
    raw = bytes(region[offset : offset + field_bytes]).split(b"\0", 1)[0]
    allowed = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
    if len(raw) < 2 or raw[:1] != b"/" or raw[1:].strip(allowed):
        raise BrokenError(f"bad IPC name in shared memory at offset {offset}: {raw!r}")
    return raw.decode("ascii")
