"""Per-partition control block: the partition worker's public state, readable by anyone without asking.

Little-endian, 448 bytes::

    offset size field                                   written by
         0    4 magic b"SHBC"                            supervisor, at creation
         4    2 version (1)                              supervisor, at creation
         8    4 partition_id (u32)                       supervisor, at creation
        64   64 worker doorbell name (ASCII, NUL-padded) supervisor, at creation
       128    8 seq: odd while an update is in progress  worker
       136    4 state (WorkerState)            \\         worker, all of these under seq
       140    4 worker_pid                      |
       144    4 leader_epoch (i32), 4 reserved  |
       152    8 log_start_offset                |
       160    8 log_end_offset                  |
       168    8 high_watermark                  |
       176    8 segment_generation: bumped when  |
                retention removed segments (not  |
                on a roll: readers list the dir) |
       184    8 update_time_ns (time.time_ns)    |
       192   56 counters u64: batches_in,        |
                records_in, bytes_in, errors     |
                corrupt/too_large/storage/other /
       256    4 worker sleeping flag (doorbell.py) worker; read by producers
       320    8 isr_seq: a seqlock of its own         \
       328    8 isr_followers: followers in the ISR     | the replicator (leader role), the only
       336    8 isr_min_leo: their smallest log end    /  writer; the worker reads them
       384    4 readers' event counter (u32, futex)    worker; readers sleep on it
       388    4 readers' wait announcements (u32)      readers: +1 before each wait
       448      end

Seqlock: the single writer makes ``seq`` odd, stores the snapshot, makes ``seq`` even again (x86-64
keeps the three stores in order). A reader loads ``seq``, the snapshot, ``seq``, and accepts only an even,
unchanged value, so ``(log_end_offset, high_watermark)`` is never torn. No lock exists that a dead
process could hold: a worker killed mid-update leaves ``seq`` odd, and readers give up after a bounded
time with ``BrokenError`` until the restarted worker re-initializes the block.

The in-sync cells are the replicator's word to the worker (``IsrCells``): how many followers are in
the in-sync set and the smallest log end among them. The worker turns them into the high watermark,
so the worker stays the only writer of the snapshot. They have their own seqlock and writer, and sit
in their own cache line, away from the worker's seq.

The readers' event counter wakes whoever waits for the partition to move (local consumers for the
high watermark, the router for its completions and parked fetches): after every turn that
published or completed anything, the worker adds 1 and wakes every sleeper on the word
(``ring/futex.py``, a shared futex). A reader loads the counter *before* it checks for new data and
sleeps only while the counter still holds that value, so it cannot sleep through an event that came
after its check. Every sleep is bounded by the reader's timeout, so a dead or restarting worker costs
readers one timeout per wait, never a hang.

The wake is a futex syscall, ~4 us on this VM, and most turns have nobody asleep (a producer-only
partition, a consumer that is busy reading). So a reader also adds 1 to the announcement word when
it loads the counter to wait (``events()``), and the worker wakes only when that word moved since its
last wake: bump the counter, fence, load the word (the same store-then-load pairing as doorbell.py,
each side storing before it loads the other's word). Two readers adding at once may lose one of the
two adds; the word still moved, so the wake happens. What remains is a window of a few instructions
(a reader's add read before the worker's last look, written after it, with an unchanged sum) in
which a reader's announcement can go unseen: it then sleeps until its timeout, the same bound as a
lost doorbell. A reader killed at any instruction leaves at most one spurious wake behind.
"""

from __future__ import annotations

import os
import struct
import time
from enum import IntEnum
from typing import NamedTuple

from shmbroker.errors import BrokenError
from shmbroker.ring import futex
from shmbroker.ring.block import SharedBlock, new_name
from shmbroker.ring.doorbell import FLAG, Bell, Doorbell, WakeFlag, full_fence
from shmbroker.ring.layout import CACHE_LINE, get_name, put_ascii


class WorkerState(IntEnum):
    STARTING = 0
    READY = 1
    STOPPING = 2


class ErrorKind(IntEnum):
    CORRUPT = 0
    TOO_LARGE = 1
    STORAGE = 2
    OTHER = 3


class ControlSnapshot(NamedTuple):
    state: int
    worker_pid: int
    leader_epoch: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    segment_generation: int
    update_time_ns: int
    batches_in: int
    records_in: int
    bytes_in: int
    errors_corrupt: int
    errors_too_large: int
    errors_storage: int
    errors_other: int


CONTROL_MAGIC = b"SHBC"
CONTROL_VERSION = 3
IDENTITY = struct.Struct("<4sH2xI")  # magic, version, partition_id
NAME_FIELD_BYTES = CACHE_LINE
DOORBELL_NAME_OFFSET = CACHE_LINE
SEQ_OFFSET = 2 * CACHE_LINE
SEQ = struct.Struct("<Q")
SNAPSHOT = struct.Struct("<IIi4xqqqQQ7Q")  # one code per ControlSnapshot field, in order
_TIME_INDEX = ControlSnapshot._fields.index("update_time_ns")
_NEW = tuple.__new__  # a NamedTuple from a tuple of its fields in order, without _make's checks
SNAPSHOT_OFFSET = SEQ_OFFSET + SEQ.size
SLEEPING_OFFSET = 4 * CACHE_LINE  # its own cache line: producers poll it on every notify
ISR_OFFSET = 5 * CACHE_LINE  # isr_seq, isr_followers, isr_min_leo as native u64/i64 items
EVENTS_OFFSET = 6 * CACHE_LINE  # its own cache line: readers load it on every wait
ANNOUNCE_OFFSET = EVENTS_OFFSET + 4  # the readers' wait announcements, next to the counter they wait on
CONTROL_BYTES = 7 * CACHE_LINE
EVENTS_MASK = 0xFFFFFFFF
READ_DEADLINE_S = 0.05  # a writer preempted mid-update on a busy 2-core host keeps seq odd for ~1 ms


def init_control(region: memoryview, *, partition_id: int, doorbell_name: str) -> None:
    """Format a control block (supervisor, before any worker or reader learns its name)."""
    if len(region) < CONTROL_BYTES:
        raise ValueError(f"control block needs {CONTROL_BYTES} bytes, got {len(region)}")
    region[:CONTROL_BYTES] = bytes(CONTROL_BYTES)
    IDENTITY.pack_into(region, 0, CONTROL_MAGIC, CONTROL_VERSION, partition_id)
    put_ascii(region, DOORBELL_NAME_OFFSET, NAME_FIELD_BYTES, doorbell_name)
    SNAPSHOT.pack_into(region, SNAPSHOT_OFFSET, *_EMPTY)


_EMPTY = ControlSnapshot(WorkerState.STARTING, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def seq_cell(region: memoryview) -> memoryview:
    """The seq field as a one-item native u64 view (whole 8-byte loads and stores); caller releases it."""
    return region[SEQ_OFFSET : SEQ_OFFSET + SEQ.size].cast("Q")


def _counters(raw: tuple[int, ...]) -> dict[str, int]:
    """The counter fields of a possibly torn snapshot: statistics, so a stale or zeroed one is tolerable."""
    snapshot = ControlSnapshot._make(raw)
    return {name: getattr(snapshot, name) for name in ControlSnapshot._fields[8:]}


def check_control(region: memoryview) -> tuple[int, str]:
    """Check magic and version; return ``(partition_id, worker doorbell name)``. ``BrokenError`` if bad."""
    if len(region) < CONTROL_BYTES:
        raise BrokenError(f"control block of {len(region)} bytes; need {CONTROL_BYTES}")
    magic, version, partition_id = IDENTITY.unpack_from(region, 0)
    if magic != CONTROL_MAGIC or version != CONTROL_VERSION:
        raise BrokenError(f"not a control block: magic {magic!r} version {version}")
    return partition_id, get_name(region, DOORBELL_NAME_OFFSET, NAME_FIELD_BYTES)


class ControlWriter:
    """The partition worker's end: the only writer of everything past offset 128. Not thread-safe."""

    def __init__(self, region: memoryview, *, bell: Bell | None = None) -> None:
        self.partition_id, self.doorbell_name = check_control(region)
        self._buf = region
        # seq goes through a 'Q' cast: one 8-byte store (struct.pack_into zero-fills first; layout.py).
        self._seq_cell = seq_cell(region)
        left = self._seq_cell[0]
        # A restarted worker carries its predecessor's offsets and counters over, so readers never see
        # the high watermark fall back to 0 while it recovers. If the predecessor died mid-update (seq
        # odd) the snapshot may be torn: then offsets start from 0, which can only hide records, never
        # show one above the real high watermark.
        previous = (
            _EMPTY if left & 1 else ControlSnapshot._make(SNAPSHOT.unpack_from(region, SNAPSHOT_OFFSET))
        )
        if left & 1:
            previous = previous._replace(**_counters(SNAPSHOT.unpack_from(region, SNAPSHOT_OFFSET)))
        self._seq = (left + 1) & ~1  # even, whatever a killed predecessor left behind
        self._seq_cell[0] = self._seq
        self.current = previous._replace(state=WorkerState.STARTING, worker_pid=os.getpid())
        self.wake_flag = WakeFlag(region, SLEEPING_OFFSET, bell)
        # Counted on from what a predecessor left: a reader holding an old value then wakes at once.
        self._events = region[EVENTS_OFFSET : EVENTS_OFFSET + 4].cast("I")
        self._events_address = futex.address_of(region, EVENTS_OFFSET)
        self._announced = region[ANNOUNCE_OFFSET : ANNOUNCE_OFFSET + 4].cast("I")
        self._announced_at_wake = -1  # the first turn wakes whoever a predecessor left asleep
        self._owned: tuple[SharedBlock, Doorbell] | None = None
        self.publish(self.current)  # our pid and STARTING, visible at once

    @classmethod
    def attach(cls, name: str) -> ControlWriter:
        """The worker's end over the shm block ``name``, with its doorbell opened; close() closes both."""
        block = SharedBlock.attach(name, min_bytes=CONTROL_BYTES)
        try:
            _, doorbell_name = check_control(block.view)
            bell = Doorbell.attach(doorbell_name)
        except BaseException:
            block.close()
            raise
        writer = cls(block.slice(0, CONTROL_BYTES), bell=bell)
        writer._owned = (block, bell)
        return writer

    def publish(self, snapshot: ControlSnapshot) -> None:
        """Store ``snapshot`` (stamped with the current time) under the seqlock."""
        # Not _replace: at one publish per worker turn its keyword machinery (1.7 us) showed.
        now_ns = time.time_ns()
        self._store(_NEW(ControlSnapshot, (*snapshot[:_TIME_INDEX], now_ns, *snapshot[_TIME_INDEX + 1 :])))

    def _store(self, snapshot: ControlSnapshot) -> None:
        cell, seq = self._seq_cell, self._seq
        cell[0] = seq + 1  # odd: update in progress
        SNAPSHOT.pack_into(self._buf, SNAPSHOT_OFFSET, *snapshot)
        cell[0] = seq + 2  # even: the snapshot is whole
        self._seq = seq + 2
        self.current = snapshot

    def wake_readers(self) -> bool:
        """After a turn that published or completed something: bump the event counter and wake every
        reader asleep on it, if a reader announced a wait since the last wake. True if it woke."""
        self._events[0] = (self._events[0] + 1) & EVENTS_MASK  # after the data: x86 keeps stores in order
        full_fence()  # the counter's store before the announcement's load (the module docstring)
        announced = self._announced[0]
        if announced == self._announced_at_wake:
            return False
        self._announced_at_wake = announced
        futex.wake(self._events_address)
        return True

    def isr_cells(self) -> IsrCells:
        """The worker's view of the in-sync cells (the replicator writes them)."""
        return IsrCells(self._buf)

    def set_state(self, state: WorkerState) -> None:
        self.publish(self.current._replace(state=state))

    def record_append(
        self, *, log_end_offset: int, high_watermark: int, batches: int, records: int, n_bytes: int
    ) -> None:
        """After one drain's append: new offsets and counters, published together."""
        c = self.current
        # The worker's hottest publish, built in one go (two _replace calls cost ~3.8 us, this 0.6).
        self._store(
            _NEW(
                ControlSnapshot,
                (
                    c.state,
                    c.worker_pid,
                    c.leader_epoch,
                    c.log_start_offset,
                    log_end_offset,
                    high_watermark,
                    c.segment_generation,
                    time.time_ns(),
                    c.batches_in + batches,
                    c.records_in + records,
                    c.bytes_in + n_bytes,
                    c.errors_corrupt,
                    c.errors_too_large,
                    c.errors_storage,
                    c.errors_other,
                ),
            )
        )

    def count_error(self, kind: ErrorKind, n: int = 1) -> None:
        field = ("errors_corrupt", "errors_too_large", "errors_storage", "errors_other")[kind]
        self.publish(self.current._replace(**{field: getattr(self.current, field) + n}))

    def bump_segment_generation(self, *, log_start_offset: int) -> None:
        """After a retention pass removed segments (a roll does not call this: a LogReader finds a new
        segment by listing the directory when it reaches the end of the one it reads)."""
        c = self.current
        self.publish(
            c._replace(segment_generation=c.segment_generation + 1, log_start_offset=log_start_offset)
        )

    def close(self) -> None:
        self.wake_flag.close()
        self._events.release()
        self._announced.release()
        self._seq_cell.release()
        self._buf.release()
        if self._owned:
            block, bell = self._owned
            bell.close()
            block.close()


class ControlReader:
    """Anyone's end: reads snapshots, never writes. Safe against a writer killed at any instruction."""

    def __init__(self, region: memoryview) -> None:
        self.partition_id, self.doorbell_name = check_control(region)
        self._buf = region
        self._seq_cell = seq_cell(region)
        self._events = region[EVENTS_OFFSET : EVENTS_OFFSET + 4].cast("I")
        self.events_address = futex.address_of(region, EVENTS_OFFSET)
        self._announce = region[ANNOUNCE_OFFSET : ANNOUNCE_OFFSET + 4].cast("I")
        self._block: SharedBlock | None = None
        self._last_offsets: tuple[int, int] | None = None

    @classmethod
    def attach(cls, name: str) -> ControlReader:
        block = SharedBlock.attach(name, min_bytes=CONTROL_BYTES)
        try:
            reader = cls(block.slice(0, CONTROL_BYTES))
        except BaseException:
            block.close()
            raise
        reader._block = block
        return reader

    def read(self, deadline_s: float = READ_DEADLINE_S) -> ControlSnapshot:
        """A consistent snapshot. ``BrokenError`` if the writer stays mid-update for ``deadline_s``."""
        buf, cell = self._buf, self._seq_cell
        deadline = 0.0
        while True:
            # Up to 100 quick tries, then yield the CPU (the writer may be descheduled) until the deadline.
            for _ in range(100):
                before = cell[0]
                if not before & 1:
                    snapshot = SNAPSHOT.unpack_from(buf, SNAPSHOT_OFFSET)
                    if cell[0] == before:
                        return ControlSnapshot._make(snapshot)
            now = time.monotonic()
            if not deadline:
                deadline = now + deadline_s
            elif now > deadline:
                raise BrokenError(
                    f"control block of partition {self.partition_id} stuck mid-update (seq {before})"
                )
            os.sched_yield()

    def offsets(self) -> tuple[int, int]:
        """``(log_end_offset, high_watermark)``, a consistent pair.

        If the writer stays mid-update past the read deadline (descheduled on a loaded host, or
        killed there: its successor resets the seqlock), the last pair read is returned: a reader
        then sees no progress for a moment, never a torn value and never an error. BrokenError
        only if no pair was ever read.
        """
        try:
            snapshot = self.read()
        except BrokenError:
            if self._last_offsets is None:
                raise
            return self._last_offsets
        self._last_offsets = (snapshot.log_end_offset, snapshot.high_watermark)
        return self._last_offsets

    @property
    def worker_sleeping(self) -> bool:
        return bool(FLAG.unpack_from(self._buf, SLEEPING_OFFSET)[0])

    def events(self) -> int:
        """The readers' event counter, with a wait announced: call it *before* looking for new data,
        then ``wait_event`` (or futex-wait on ``events_address``) if there was none."""
        self._announce[0] = (self._announce[0] + 1) & EVENTS_MASK
        full_fence()  # the announcement's store before the counter's load (the module docstring)
        return int(self._events[0])

    def wait_event(self, seen: int, timeout_s: float) -> bool:
        """Sleep until the worker's next turn moves the counter past ``seen``, at most ``timeout_s``.
        True if it moved (or already had); False on timeout. Either way, look for data again."""
        return futex.wait(self.events_address, seen, timeout_s)

    def close(self) -> None:
        self._events.release()
        self._announce.release()
        self._seq_cell.release()
        self._buf.release()
        if self._block is not None:
            self._block.close()


class IsrCells:
    """The in-sync cells: written by the replicator only, read by the worker (and status).

    ``(followers, min_leo)``: followers in the in-sync set and the smallest log end offset among
    them (meaningless when followers is 0). Same seqlock as the snapshot, over three u64 cells."""

    def __init__(self, region: memoryview) -> None:
        check_control(region)
        self._cells = region[ISR_OFFSET : ISR_OFFSET + 24].cast("q")
        self.version = -1

    def write(self, followers: int, min_leo: int) -> None:
        cells = self._cells
        seq = cells[0] & ~1
        cells[0] = seq + 1
        cells[1] = followers
        cells[2] = min_leo
        cells[0] = seq + 2

    def read(self) -> tuple[int, int]:
        """A consistent pair; ``(0, 0)`` while the writer is stuck mid-update (a dead replicator
        mid-store: the leader then stands alone, which acks=all answers with an fsync)."""
        cells = self._cells
        for _ in range(1000):
            before = cells[0]
            if not before & 1:
                followers, min_leo = cells[1], cells[2]
                if cells[0] == before:
                    self.version = before
                    return followers, min_leo
        return 0, 0

    def changed(self) -> bool:
        """Cheap: did the writer store anything since the last ``read``?"""
        return bool(self._cells[0] != self.version)

    def close(self) -> None:
        self._cells.release()


class ControlBlock:
    """The supervisor's handle: it created the block and the worker's doorbell, and unlinks both."""

    def __init__(self, block: SharedBlock, doorbell: Doorbell) -> None:
        self.block, self.doorbell = block, doorbell
        self.name = block.name

    def close(self) -> None:
        self.doorbell.close()
        self.block.close()

    def unlink(self) -> None:
        self.doorbell.unlink()
        self.block.unlink()


def create_control(partition_id: int, *, name: str | None = None) -> tuple[str, ControlBlock]:
    """Supervisor: create and format a control block and its worker doorbell (both 0600, O_CREX).

    The doorbell semaphore takes the block's own name (POSIX keeps the two namespaces apart), so one
    name identifies, and one cleanup removes, both.
    """
    name = name or new_name()
    doorbell = Doorbell.create(name)
    try:
        block = SharedBlock.create(CONTROL_BYTES, name=name)
    except BaseException:
        doorbell.close()
        doorbell.unlink()
        raise
    init_control(block.view, partition_id=partition_id, doorbell_name=doorbell.name)
    return block.name, ControlBlock(block, doorbell)
