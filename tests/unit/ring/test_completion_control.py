"""Completion queue, control block (seqlock) and wake flags over bytearrays."""

from __future__ import annotations

import random
import threading
import time

import pytest

from shmbroker.errors import BrokenError
from shmbroker.ring.completion import COMPLETION, ENTRY_BYTES, Completion, CompletionReader, CompletionWriter
from shmbroker.ring.control import (
    CONTROL_BYTES,
    SEQ,
    SEQ_OFFSET,
    SLEEPING_OFFSET,
    SNAPSHOT,
    SNAPSHOT_OFFSET,
    ControlReader,
    ControlSnapshot,
    ControlWriter,
    ErrorKind,
    WorkerState,
    init_control,
)
from shmbroker.ring.doorbell import LocalBell, WakeFlag
from shmbroker.ring.layout import POSITION, READ_POSITION_OFFSET, WRITE_POSITION_OFFSET
from tests.unit.ring.conftest import new_region


def completion(sequence: int) -> Completion:
    return Completion(sequence, sequence * 10, -1, sequence % 7, 0)


def test_completion_layout_is_pinned() -> None:
    assert ENTRY_BYTES == COMPLETION.size == 32
    assert COMPLETION.pack(*Completion(1, -1, -1, 3, 87)) == (
        (1).to_bytes(8, "little")
        + b"\xff" * 16
        + (3).to_bytes(4, "little")
        + (87).to_bytes(2, "little")
        + b"\0\0"
    )


def test_completions_round_trip_across_the_wrap() -> None:
    region = new_region(256, entry_bytes=ENTRY_BYTES)  # 8 entries
    writer, reader = CompletionWriter(region[:]), CompletionReader(region[:])
    assert writer.capacity_entries == 8
    sequence = 0
    for burst in (5, 6, 8, 1, 7):
        batch = [completion(sequence + i) for i in range(burst)]
        assert writer.try_post(batch)
        assert reader.ready()
        assert reader.poll() == batch
        assert not reader.ready()
        sequence += burst


def test_full_completion_queue_posts_nothing() -> None:
    region = new_region(256, entry_bytes=ENTRY_BYTES)
    writer, reader = CompletionWriter(region[:]), CompletionReader(region[:])
    assert writer.try_post([completion(i) for i in range(6)])
    assert not writer.try_post([completion(i) for i in range(3)])
    assert writer.try_post([completion(6), completion(7)])  # exactly full
    assert [c.sequence for c in reader.poll()] == list(range(8))
    assert writer.try_post([completion(i) for i in range(8)])


def test_completion_reader_rejects_hostile_cursors() -> None:
    region = new_region(256, entry_bytes=ENTRY_BYTES)
    reader = CompletionReader(region[:])
    for write in (16, 512):  # not a whole entry; more than the capacity ahead
        POSITION.pack_into(region, WRITE_POSITION_OFFSET, write)
        with pytest.raises(BrokenError, match="cursors"):
            reader.poll()
    POSITION.pack_into(region, WRITE_POSITION_OFFSET, 0)
    writer = CompletionWriter(region[:])
    writer.try_post([completion(i) for i in range(8)])
    POSITION.pack_into(region, READ_POSITION_OFFSET, 2**40)
    with pytest.raises(BrokenError, match="cursors"):
        writer.try_post([completion(9)])


def test_frame_ring_is_not_a_completion_queue() -> None:
    with pytest.raises(BrokenError, match="entries"):
        CompletionReader(new_region(256))


# --- control block ---


def control_region() -> memoryview:
    region = memoryview(bytearray(CONTROL_BYTES))
    init_control(region, partition_id=7, doorbell_name="/shmb-bell")
    return region


def test_control_layout_is_pinned() -> None:
    assert (SEQ_OFFSET, SNAPSHOT_OFFSET, SNAPSHOT_OFFSET + SNAPSHOT.size, SLEEPING_OFFSET) == (
        128,
        136,
        248,
        256,
    )
    assert len(SNAPSHOT.unpack(bytes(SNAPSHOT.size))) == len(ControlSnapshot._fields)


def test_control_publishes_what_readers_see() -> None:
    region = control_region()
    writer, reader = ControlWriter(region[:]), ControlReader(region[:])
    assert (reader.partition_id, reader.doorbell_name) == (7, "/shmb-bell")
    assert reader.read().state == WorkerState.STARTING
    writer.set_state(WorkerState.READY)
    writer.record_append(log_end_offset=100, high_watermark=90, batches=2, records=100, n_bytes=6400)
    writer.record_append(log_end_offset=150, high_watermark=150, batches=1, records=50, n_bytes=3200)
    writer.count_error(ErrorKind.TOO_LARGE)
    writer.bump_segment_generation(log_start_offset=40)
    snap = reader.read()
    assert (snap.state, snap.log_end_offset, snap.high_watermark) == (WorkerState.READY, 150, 150)
    assert (snap.batches_in, snap.records_in, snap.bytes_in, snap.errors_too_large) == (3, 150, 9600, 1)
    assert (snap.segment_generation, snap.log_start_offset) == (1, 40)
    assert snap.update_time_ns > 0
    assert snap.worker_pid > 0
    assert reader.offsets() == (150, 150)
    assert SEQ.unpack_from(region, SEQ_OFFSET)[0] % 2 == 0


def test_reader_gives_up_on_a_writer_that_died_mid_update() -> None:
    region = control_region()
    reader = ControlReader(region[:])
    SEQ.pack_into(region, SEQ_OFFSET, 13)  # odd forever: the writer was killed between its stores
    started = time.monotonic()
    with pytest.raises(BrokenError, match="mid-update"):
        reader.read(deadline_s=0.02)
    assert time.monotonic() - started < 1
    ControlWriter(region[:])  # a restarted worker makes seq even again
    assert reader.read().state == WorkerState.STARTING


def test_a_restarted_worker_keeps_the_offsets_readers_saw() -> None:
    region = control_region()
    first = ControlWriter(region[:])
    first.set_state(WorkerState.READY)
    first.record_append(log_end_offset=500, high_watermark=480, batches=7, records=500, n_bytes=1)
    ControlWriter(region[:])  # the restarted worker, before its recovery publishes anything
    snap = ControlReader(region[:]).read()
    assert (snap.state, snap.log_end_offset, snap.high_watermark, snap.batches_in) == (
        WorkerState.STARTING, 500, 480, 7,
    )  # fmt: skip


def test_a_worker_killed_mid_update_leaves_no_torn_offsets_behind() -> None:
    region = control_region()
    ControlWriter(region[:]).record_append(
        log_end_offset=500, high_watermark=480, batches=7, records=1, n_bytes=1
    )
    SEQ.pack_into(region, SEQ_OFFSET, SEQ.unpack_from(region, SEQ_OFFSET)[0] + 1)  # died after the odd store
    ControlWriter(region[:])
    snap = ControlReader(region[:]).read()
    assert (snap.log_end_offset, snap.high_watermark, snap.batches_in) == (
        0,
        0,
        7,
    )  # offsets unknown, counters kept


def test_reader_retries_past_a_concurrent_update() -> None:
    region = control_region()
    reader = ControlReader(region[:])
    SEQ.pack_into(region, SEQ_OFFSET, 3)
    timer = threading.Timer(0.005, lambda: SEQ.pack_into(region, SEQ_OFFSET, 4))
    timer.start()
    assert reader.read(deadline_s=2).state == WorkerState.STARTING
    timer.join()


def test_control_rejects_bad_magic() -> None:
    region = control_region()
    region[:4] = b"NOPE"
    with pytest.raises(BrokenError, match="not a control block"):
        ControlReader(region)


# --- wake flags ---


def test_wake_flag_rings_only_a_sleeper() -> None:
    bell = LocalBell()
    region = memoryview(bytearray(64))
    flag = WakeFlag(region, 8, bell)
    assert not flag.notify()  # nobody sleeps: no ring
    woke: list[bool] = []
    sleeper = threading.Thread(target=lambda: woke.append(flag.sleep(lambda: False, timeout_s=10)))
    sleeper.start()
    deadline = time.monotonic() + 5
    while not flag.sleeping:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert flag.notify()
    sleeper.join(5)
    assert woke == [True]
    assert not flag.sleeping


def test_wake_flag_sleep_returns_at_once_when_ready_and_times_out_otherwise() -> None:
    flag = WakeFlag(memoryview(bytearray(64)), 0, LocalBell())
    assert flag.sleep(lambda: True, timeout_s=10)
    started = time.monotonic()
    assert not flag.sleep(lambda: False, timeout_s=0.01)
    assert 0.005 < time.monotonic() - started < 1
    assert not WakeFlag(memoryview(bytearray(64)), 0, None).sleep(lambda: False, timeout_s=0.001)


def test_a_producer_rings_once_per_sleep_episode() -> None:
    rings: list[int] = []
    bell = LocalBell()
    bell.ring = lambda: rings.append(1)  # type: ignore[method-assign]
    region = memoryview(bytearray(64))
    sleeper, ringer = WakeFlag(region, 0, bell), WakeFlag(region, 0, bell)
    seen: list[int] = []

    def three_commits_while_announced() -> bool:
        seen.append(int.from_bytes(region[:4], "little"))
        for _ in range(3):
            ringer.notify()
        return False

    for _ in range(2):
        sleeper.sleep(three_commits_while_announced, timeout_s=0.001, spin_s=0)
    assert len(rings) == 2  # one per sleep episode, not one per commit
    assert seen == [1, 2]  # the flag holds the episode number while announced
    assert not sleeper.sleeping
    assert not ringer.notify()


@pytest.mark.parametrize("offset", [3, 62])
def test_wake_flag_offset_is_checked(offset: int) -> None:
    with pytest.raises(ValueError, match="offset"):
        WakeFlag(memoryview(bytearray(64)), offset, None)


def test_random_bursts_of_completions() -> None:
    rng = random.Random(5)
    region = new_region(1024, entry_bytes=ENTRY_BYTES)
    writer, reader = CompletionWriter(region[:]), CompletionReader(region[:])
    sent = received = 0
    for _ in range(2000):
        burst = [completion(sent + i) for i in range(rng.randint(0, 40))]
        if writer.try_post(burst):
            sent += len(burst)
        if rng.random() < 0.5:
            got = reader.poll()
            assert [c.sequence for c in got] == list(range(received, received + len(got)))
            received += len(got)
    assert [c.sequence for c in reader.poll()] == list(range(received, sent))
