"""A lane: one local producer's shared-memory path to one partition worker, and the answers back.

One shm block, created and unlinked by the broker (``create_lane``); the producer and the worker only
attach. Little-endian::

    offset size field                                      written by
         0    4 magic b"SHBL"                               broker, at creation
         4    2 version (1)                                 broker, at creation
         8    4 partition_id (u32)                          broker, at creation
        16    8 request_capacity_bytes                      broker, at creation
        24    8 completion_capacity_bytes                   broker, at creation
        64   64 control block name (ASCII, NUL-padded)      broker, at creation
       128   64 completion doorbell name (ASCII)            broker, at creation
       192    4 producer_pid, 4 producer_state              producer, at attach and close
       256    4 producer waiting flag (doorbell.py)         producer; read by the worker
       320      request ring (layout.py): 192 + request_capacity_bytes; producer -> worker
          ...   completion queue (completion.py): 192 + completion_capacity_bytes; worker -> producer

A request frame carries one RecordBatch v2 as its payload, the producer's u64 sequence number as its
tag, and the acks level in its flags (0 -> acks=0, 1 -> acks=1, 2 -> acks=all). The worker posts one
completion per batch sent with acks != 0. Waking: the producer rings the worker's doorbell (semaphore
named in the control block, flag in the control block) after a send; the worker rings the lane's
completion doorbell (flag above) after posting, so ``wait_completions`` sleeps instead of spinning.

Everything a worker reads here may come from a broken or hostile producer: bad cursors, frames or
flags raise ``BrokenError`` and the worker drops the lane; batches themselves are checked by records.py.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

from shmbroker.errors import BrokenError
from shmbroker.ring.block import SharedBlock, new_name
from shmbroker.ring.completion import (
    ENTRY_BYTES,
    Completion,
    CompletionFields,
    CompletionReader,
    CompletionWriter,
)
from shmbroker.ring.control import CONTROL_BYTES, SLEEPING_OFFSET, check_control
from shmbroker.ring.doorbell import (
    DEFAULT_WAIT_S,
    FLAG,
    Bell,
    Doorbell,
    SocketBell,
    WakeFlag,
    socket_bell_address,
    spin,
)
from shmbroker.ring.layout import CACHE_LINE, get_name, init_ring, put_ascii, ring_bytes
from shmbroker.ring.ring import FrameType, RingReader, RingWriter

LANE_MAGIC = b"SHBL"
LANE_VERSION = 1
LANE_HEADER = struct.Struct("<4sH2xI4xQQ")  # magic, version, partition_id, request/completion capacity
NAME_FIELD_BYTES = CACHE_LINE
CONTROL_NAME_OFFSET = CACHE_LINE
COMPLETION_BELL_NAME_OFFSET = 2 * CACHE_LINE
PRODUCER = struct.Struct("<II")  # producer_pid, producer_state
PRODUCER_OFFSET = 3 * CACHE_LINE
PRODUCER_WAITING_OFFSET = 4 * CACHE_LINE
REQUEST_RING_OFFSET = 5 * CACHE_LINE
ACKS_TO_FLAGS = {0: 0, 1: 1, -1: 2}
FLAGS_TO_ACKS = (0, 1, -1)
DEFAULT_COMPLETION_ENTRIES = 1024


class ProducerState(IntEnum):
    NONE = 0
    ATTACHED = 1
    CLOSED = 2


class LaneInfo(NamedTuple):
    partition_id: int
    request_capacity_bytes: int
    completion_capacity_bytes: int
    control_name: str
    completion_bell_name: str

    @property
    def completion_offset(self) -> int:
        return REQUEST_RING_OFFSET + ring_bytes(self.request_capacity_bytes)

    @property
    def lane_bytes(self) -> int:
        return self.completion_offset + ring_bytes(self.completion_capacity_bytes)


# (sequence, acks, batch): acks is Kafka's 0, 1 or -1 (all); batch is the batch in the ring, writable,
# valid until release(). A plain tuple for speed (ring.py says why).
Request = tuple[int, int, memoryview]
_BATCH = int(FrameType.BATCH)


def lane_bytes(request_capacity_bytes: int, completion_entries: int = DEFAULT_COMPLETION_ENTRIES) -> int:
    return LaneInfo(0, request_capacity_bytes, completion_entries * ENTRY_BYTES, "", "").lane_bytes


def init_lane(region: memoryview, info: LaneInfo) -> None:
    """Format a lane (broker only, before the producer or the worker learns its name)."""
    if len(region) < info.lane_bytes:
        raise ValueError(f"lane needs {info.lane_bytes} bytes, got {len(region)}")
    region[:REQUEST_RING_OFFSET] = bytes(REQUEST_RING_OFFSET)
    LANE_HEADER.pack_into(
        region, 0, LANE_MAGIC, LANE_VERSION, info.partition_id,
        info.request_capacity_bytes, info.completion_capacity_bytes,
    )  # fmt: skip
    put_ascii(region, CONTROL_NAME_OFFSET, NAME_FIELD_BYTES, info.control_name)
    put_ascii(region, COMPLETION_BELL_NAME_OFFSET, NAME_FIELD_BYTES, info.completion_bell_name)
    init_ring(region[REQUEST_RING_OFFSET:], info.request_capacity_bytes)
    init_ring(region[info.completion_offset :], info.completion_capacity_bytes, entry_bytes=ENTRY_BYTES)


def check_lane(region: memoryview) -> LaneInfo:
    """Read and check a lane header; ``BrokenError`` if it is not a lane or does not fit ``region``."""
    if len(region) < REQUEST_RING_OFFSET:
        raise BrokenError(f"lane block of {len(region)} bytes is smaller than its header")
    magic, version, partition_id, request_capacity, completion_capacity = LANE_HEADER.unpack_from(region, 0)
    if magic != LANE_MAGIC or version != LANE_VERSION:
        raise BrokenError(f"not a lane: magic {magic!r} version {version}")
    info = LaneInfo(
        partition_id,
        request_capacity,
        completion_capacity,
        get_name(region, CONTROL_NAME_OFFSET, NAME_FIELD_BYTES),
        get_name(region, COMPLETION_BELL_NAME_OFFSET, NAME_FIELD_BYTES),
    )
    try:
        size = info.lane_bytes
    except ValueError as exc:
        raise BrokenError(f"lane header has bad capacities: {exc}") from exc
    if size > len(region):
        raise BrokenError(f"lane header claims {size} bytes; the block has {len(region)}")
    return info


class _Owned:
    """Views, blocks and bells an attached end opened itself and must close, newest first."""

    def __init__(self) -> None:
        self.items: list[memoryview | SharedBlock | Doorbell | SocketBell] = []

    def close(self) -> None:
        while self.items:
            item = self.items.pop()
            item.release() if isinstance(item, memoryview) else item.close()


class LaneProducer:
    """The producer's end of one lane. One per lane, in the producer process; not thread-safe.

    Backpressure: ``try_send`` returns False when the request ring is full, or when ``completion
    capacity`` batches with acks != 0 await their completion (so the worker always has room to answer).
    """

    def __init__(
        self, region: memoryview, *, worker_wake: WakeFlag | None = None, completion_bell: Bell | None = None
    ) -> None:
        self.info = check_lane(region)
        self._region = region
        self._requests = RingWriter(region[REQUEST_RING_OFFSET : self.info.completion_offset])
        self._completions = CompletionReader(region[self.info.completion_offset : self.info.lane_bytes])
        self._waiting = WakeFlag(region, PRODUCER_WAITING_OFFSET, completion_bell)
        self._worker_wake = worker_wake
        self.max_in_flight = self._completions.capacity_entries
        self.max_batch_bytes = self._requests.max_payload_bytes
        self.in_flight = 0  # batches sent with acks != 0 and not yet completed
        self._owned = _Owned()
        self._closed = False
        PRODUCER.pack_into(region, PRODUCER_OFFSET, os.getpid(), ProducerState.ATTACHED)

    @classmethod
    def attach(cls, name: str) -> LaneProducer:
        """Attach the lane ``name``, its worker's control block and both doorbells."""
        owned = _Owned()
        try:
            block = SharedBlock.attach(name, min_bytes=REQUEST_RING_OFFSET)
            owned.items.append(block)
            info = check_lane(block.view)
            control = SharedBlock.attach(info.control_name, min_bytes=CONTROL_BYTES)
            owned.items.append(control)
            _, worker_bell_name = check_control(control.view)
            worker_bell = Doorbell.attach(worker_bell_name)
            owned.items.append(worker_bell)
            completion_bell = Doorbell.attach(info.completion_bell_name)
            owned.items.append(completion_bell)
            control_view = control.slice(0, CONTROL_BYTES)
            owned.items.append(control_view)
            worker_wake = WakeFlag(control_view, SLEEPING_OFFSET, worker_bell)
            producer = cls(
                block.slice(0, info.lane_bytes), worker_wake=worker_wake, completion_bell=completion_bell
            )
        except BaseException:
            owned.close()
            raise
        producer._owned = owned
        return producer

    def try_send(
        self, batch: bytes | bytearray | memoryview, *, sequence: int, acks: int, notify: bool = True
    ) -> bool:
        """Put one batch in the lane and commit it; False (nothing sent) means full: retry later.

        ``notify`` rings the worker if it sleeps; pass False inside a burst and call ``notify()`` after.
        """
        flags = ACKS_TO_FLAGS.get(acks)
        if flags is None:
            raise ValueError(f"acks must be 0, 1 or -1 (all), got {acks}")
        if acks and self.in_flight >= self.max_in_flight:
            return False
        if not self._requests.try_write(FrameType.BATCH, batch, flags=flags, tag=sequence):
            return False
        if acks:
            self.in_flight += 1
        if notify and self._worker_wake is not None:
            self._worker_wake.notify()
        return True

    def try_claim(self, batch_bytes: int, *, acks: int) -> memoryview | None:
        """Room for one batch of ``batch_bytes`` to build in place (ring.py), or None when full, as
        ``try_send``. Fill the view, then ``commit``; a producer killed before that sent nothing."""
        if acks not in ACKS_TO_FLAGS:
            raise ValueError(f"acks must be 0, 1 or -1 (all), got {acks}")
        if acks and self.in_flight >= self.max_in_flight:
            return None
        return self._requests.try_claim(batch_bytes)

    def commit(self, *, sequence: int, acks: int, notify: bool = True) -> None:
        """Send the batch built in the view ``try_claim`` returned (which is released here)."""
        self._requests.commit(_BATCH, flags=ACKS_TO_FLAGS[acks], tag=sequence)
        if acks:
            self.in_flight += 1
        if notify and self._worker_wake is not None:
            self._worker_wake.notify()

    def cancel_claim(self) -> None:
        """Give up an uncommitted claim (the worker never saw it)."""
        self._requests.cancel_claim()

    def notify(self) -> bool:
        """Ring the worker if it announced it sleeps. True if it rang."""
        return self._worker_wake is not None and self._worker_wake.notify()

    def poll_completions(self) -> list[Completion]:
        """Every completion the worker posted since the last call; never blocks."""
        done = self._completions.poll()
        # max(): a restarted worker may answer a batch twice (it re-reads what its predecessor had
        # appended and answered but not yet released); the producer ignores the second answer.
        self.in_flight = max(0, self.in_flight - len(done))
        return done

    def wait_completions(
        self, timeout_s: float, *, max_sleep_s: float = DEFAULT_WAIT_S, spin_s: float = 0.0
    ) -> list[Completion]:
        """Completions, sleeping on the doorbell until some arrive or ``timeout_s`` passes ([] then).

        Each sleep lasts at most ``max_sleep_s``, which caps a wakeup lost to store->load reordering.
        ``spin_s`` polls first (doorbell.spin, which yields the core between looks: an earlier spin
        without the yield took the CPU its worker needed on a busy 2-vCPU host, round trip p50 ~95
        -> ~390 us). A wait no longer than ``spin_s`` is spun whole: a timed sleep that short
        overshoots by the kernel's timer slack (50 us).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.poll_completions()
            if done:
                return done
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if remaining <= spin_s:
                spin(self._completions.ready, remaining)
                continue
            self._waiting.sleep(self._completions.ready, min(remaining - spin_s, max_sleep_s), spin_s=spin_s)

    def announce_wait(self) -> bool:
        """Announce a wait for completions that happens elsewhere (a poll on the lane's socket bell,
        ``LaneWorker.attach(wake_socket=True)``); True if completions are there already (then do not
        wait). Call ``end_wait()`` after the wait either way."""
        self._waiting.announce()
        return self._completions.ready()

    def end_wait(self) -> None:
        self._waiting.clear()

    def unread_bytes(self) -> int:
        """Bytes the worker has not taken yet; 0 means even acks=0 batches have reached the worker."""
        return self._requests.unread_bytes()

    def close(self) -> None:
        """Mark the lane closed for the worker and drop every view. Idempotent. Never unlinks."""
        if self._closed:
            return
        self._closed = True
        PRODUCER.pack_into(self._region, PRODUCER_OFFSET, os.getpid(), ProducerState.CLOSED)
        self._requests.close()
        self._completions.close()
        self._waiting.close()
        if self._worker_wake is not None:
            self._worker_wake.close()
        self._region.release()
        self._owned.close()


class LaneWorker:
    """The partition worker's end of one lane. One per lane, in the worker process; not thread-safe."""

    def __init__(self, region: memoryview, *, completion_bell: Bell | None = None) -> None:
        self.info = check_lane(region)
        self._region = region
        self._requests = RingReader(region[REQUEST_RING_OFFSET : self.info.completion_offset])
        self._completions = CompletionWriter(region[self.info.completion_offset : self.info.lane_bytes])
        self._producer_wake = WakeFlag(region, PRODUCER_WAITING_OFFSET, completion_bell)
        self._owned = _Owned()
        self._closed = False

    @classmethod
    def attach(cls, name: str, *, wake_socket: bool = False) -> LaneWorker:
        """Attach the lane ``name`` and its completion doorbell: the lane's semaphore, or with
        ``wake_socket`` the datagram socket bell its producer polls (the router's lanes)."""
        owned = _Owned()
        try:
            block = SharedBlock.attach(name, min_bytes=REQUEST_RING_OFFSET)
            owned.items.append(block)
            info = check_lane(block.view)
            bell: Doorbell | SocketBell
            if wake_socket:
                bell = SocketBell(socket_bell_address(name))
            else:
                bell = Doorbell.attach(info.completion_bell_name)
            owned.items.append(bell)
            worker = cls(block.slice(0, info.lane_bytes), completion_bell=bell)
        except BaseException:
            owned.close()
            raise
        worker._owned = owned
        return worker

    def drain(self, max_bytes: int) -> list[Request]:
        """Every committed batch not drained yet, up to ``max_bytes`` of ring (at least one batch).

        The views stay valid, and the ring space stays taken, until ``release()``: append them all
        (one ``os.writev``), then release. ``BrokenError`` on a malformed frame.
        """
        out: list[Request] = []
        for frame_type, flags, tag, payload in self._requests.peek(max_bytes):
            if frame_type != _BATCH or flags > 2:
                raise BrokenError(f"lane frame type {frame_type} flags {flags}: not a batch")
            out.append((tag, FLAGS_TO_ACKS[flags], payload))
        return out

    def release(self) -> int:
        """Give back the space of everything drained (one store); returns bytes released."""
        return self._requests.release()

    def has_requests(self) -> bool:
        """Whether committed batches wait; the ``ready`` check for sleeping on the worker's doorbell."""
        return self._requests.committed_bytes() > 0

    def complete(
        self, sequence: int, base_offset: int, error_code: int = 0, records_count: int = 0,
        *, log_append_time_ms: int = -1,
    ) -> None:  # fmt: skip
        """Post one completion and wake the producer if it waits."""
        self.complete_many([Completion(sequence, base_offset, log_append_time_ms, records_count, error_code)])

    def complete_many(self, completions: Sequence[CompletionFields]) -> None:
        """Post completions with one commit and at most one wakeup. ``BrokenError`` if the queue is full,
        which only a producer that broke its in-flight limit (or forged the read cursor) can cause.
        Entries are ``Completion`` objects or plain ``(sequence, base_offset, log_append_time_ms,
        records_count, error_code)`` tuples."""
        if not self._completions.try_post(completions):
            raise BrokenError(f"completion queue full: the producer of partition {self.info.partition_id} "
                              f"exceeded {self._completions.capacity_entries} batches in flight")  # fmt: skip
        self._producer_wake.notify()

    @property
    def producer_pid(self) -> int:
        return int(PRODUCER.unpack_from(self._region, PRODUCER_OFFSET)[0])

    @property
    def producer_state(self) -> int:
        """A ``ProducerState`` value, as the producer last wrote it (may be garbage: compare it)."""
        return int(PRODUCER.unpack_from(self._region, PRODUCER_OFFSET)[1])

    @property
    def producer_waiting(self) -> bool:
        return bool(FLAG.unpack_from(self._region, PRODUCER_WAITING_OFFSET)[0])

    def close(self) -> None:
        """Drop every view (unreleased batches stay in the ring). Idempotent. Never unlinks."""
        if self._closed:
            return
        self._closed = True
        self._requests.close()
        self._completions.close()
        self._producer_wake.close()
        self._region.release()
        self._owned.close()


class LaneBlock:
    """The broker's handle on a lane it created: it owns, and finally unlinks, the block and the bell."""

    def __init__(self, block: SharedBlock, bell: Doorbell, info: LaneInfo) -> None:
        self.block, self.bell, self.info = block, bell, info
        self.name = block.name

    def close(self) -> None:
        self.bell.close()
        self.block.close()

    def unlink(self) -> None:
        self.bell.unlink()
        self.block.unlink()


def create_lane(
    capacity_bytes: int, *, partition_id: int, control_name: str,
    completion_entries: int = DEFAULT_COMPLETION_ENTRIES, name: str | None = None,
) -> tuple[str, LaneBlock]:  # fmt: skip
    """Broker: create a lane (request ring of ``capacity_bytes``, a power of two) and its completion
    doorbell, both 0600 and O_CREX under one name. The broker hands the name to producer and worker,
    and unlinks with ``LaneBlock.unlink()`` when either side is done or dead."""
    info = LaneInfo(partition_id, capacity_bytes, completion_entries * ENTRY_BYTES, control_name, "")
    name = name or new_name()
    info = info._replace(completion_bell_name=name)
    size = info.lane_bytes
    bell = Doorbell.create(name)
    try:
        block = SharedBlock.create(size, name=name)
    except BaseException:
        bell.close()
        bell.unlink()
        raise
    init_lane(block.view, info)
    return name, LaneBlock(block, bell, info)
