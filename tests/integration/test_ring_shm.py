"""Lanes, control blocks and doorbells across real processes over real POSIX shared memory.

The test process plays the broker: it creates (and unlinks) every block and semaphore; children
(fresh interpreters via subprocess, so no multiprocessing resource tracker is involved) only attach, as
producers and workers do. A child prints its result as one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import crc32c
import posix_ipc
import pytest

from shmbroker.errors import BrokenError
from shmbroker.ring.block import SharedBlock
from shmbroker.ring.completion import Completion
from shmbroker.ring.control import ControlBlock, ControlReader, ControlWriter, WorkerState, create_control
from shmbroker.ring.lane import LaneBlock, LaneProducer, LaneWorker, create_lane

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CHILD = (
    "import json, sys; import tests.integration.test_ring_shm as m; "
    "print(json.dumps(getattr(m, sys.argv[1])(*json.loads(sys.argv[2]))))"
)
CRC = 4  # each test payload starts with the CRC-32C of the rest


def make_payload(rng: random.Random, pool: bytes, max_bytes: int) -> bytes:
    n = rng.randint(0, max_bytes - CRC)
    start = rng.randint(0, len(pool) - n)
    body = pool[start : start + n]
    return crc32c.crc32c(body).to_bytes(CRC, "little") + body


def check_payload(payload: memoryview) -> bool:
    return int.from_bytes(payload[:CRC], "little") == crc32c.crc32c(payload[CRC:])


# --- children (module level: run in a fresh interpreter by start()) ---


def produce(lane_name: str, n_frames: int, seed: int, acks: int, first_sequence: int) -> list[Any]:
    """Send n_frames (forever if 0) with sequences from first_sequence; report completions seen."""
    rng, pool = random.Random(seed), random.Random(seed).randbytes(1 << 16)
    producer = LaneProducer.attach(lane_name)
    max_bytes = min(producer.max_batch_bytes, 4000)
    completions: list[Completion] = []
    sequence, deadline = first_sequence, time.monotonic() + 60
    while (n_frames == 0 or sequence < first_sequence + n_frames) and time.monotonic() < deadline:
        payload = make_payload(rng, pool, max_bytes)
        while not producer.try_send(payload, sequence=sequence, acks=acks, notify=False):
            completions.extend(producer.poll_completions())
            producer.notify()
        sequence += 1
    producer.notify()
    while producer.in_flight and time.monotonic() < deadline:
        completions.extend(producer.wait_completions(1.0))
    in_order = [c.sequence for c in completions] == list(range(first_sequence, sequence))
    ok = in_order and all(c.base_offset == c.sequence * 2 and c.error_code == 0 for c in completions)
    producer.close()
    return [sequence - first_sequence, len(completions), ok]


def produce_in_place(lane_name: str, n_frames: int, seed: int, first_sequence: int) -> list[Any]:
    """As ``produce`` with acks=0, but each frame is claimed and filled in place 64 bytes at a time
    (a wide window for a SIGKILL to land mid-fill), then committed."""
    rng, pool = random.Random(seed), random.Random(seed).randbytes(1 << 16)
    producer = LaneProducer.attach(lane_name)
    max_bytes = min(producer.max_batch_bytes, 4000)
    sequence, deadline = first_sequence, time.monotonic() + 60
    while (n_frames == 0 or sequence < first_sequence + n_frames) and time.monotonic() < deadline:
        payload = make_payload(rng, pool, max_bytes)
        while (frame := producer.try_claim(len(payload), acks=0)) is None:
            producer.notify()
        for start in range(0, len(payload), 64):
            frame[start : start + 64] = payload[start : start + 64]
        producer.commit(sequence=sequence, acks=0, notify=False)
        sequence += 1
    producer.notify()
    producer.close()
    return [sequence - first_sequence]


def work(lane_name: str, n_frames: int) -> list[int]:
    """Drain n_frames, checking sequence order and CRC; complete each with base_offset = 2 * sequence."""
    worker = LaneWorker.attach(lane_name)
    expected, bad, n_bytes = 0, 0, 0
    deadline = time.monotonic() + 60
    while expected < n_frames and time.monotonic() < deadline:
        requests = worker.drain(1 << 20)
        done = []
        for sequence, acks, batch in requests:
            bad += sequence != expected or not check_payload(batch)
            n_bytes += len(batch)
            expected += 1
            if acks:
                done.append(Completion(sequence, sequence * 2, -1, 1, 0))
        worker.release()
        worker.complete_many(done)
    worker.close()
    return [expected, bad, n_bytes]


def hammer_control(control_name: str, seconds: float) -> None:
    """Publish as fast as possible: log_end = i, high_watermark = i - i % 3, batches_in = i."""
    writer = ControlWriter.attach(control_name)
    writer.set_state(WorkerState.READY)
    i, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(1000):
            i += 1
            writer.record_append(log_end_offset=i, high_watermark=i - i % 3, batches=1, records=0, n_bytes=0)
    writer.set_state(WorkerState.STOPPING)
    writer.close()


def sleepy_worker(control_name: str, lane_name: str, rounds: int) -> None:
    """Sleep on the worker doorbell with a 30 s timeout; each wakeup drains and completes."""
    control = ControlWriter.attach(control_name)
    worker = LaneWorker.attach(lane_name)
    control.set_state(WorkerState.READY)
    for _ in range(rounds):
        while not control.wake_flag.sleep(worker.has_requests, timeout_s=30):
            pass
        requests = worker.drain(1 << 20)
        worker.release()
        worker.complete_many([Completion(sequence, 0, -1, 1, 0) for sequence, _, _ in requests])
    worker.close()
    control.close()


# --- fixtures ---


@pytest.fixture
def broker(shm_name: str) -> Iterator[Callable[..., tuple[str, LaneBlock, str, ControlBlock]]]:
    """Create a control block and a lane on it (as the supervisor would); unlink both afterwards."""
    made: list[LaneBlock | ControlBlock] = []

    def make(
        capacity_bytes: int = 1 << 20, completion_entries: int = 1024
    ) -> tuple[str, LaneBlock, str, ControlBlock]:
        control_name, control = create_control(5, name=shm_name)
        made.append(control)
        lane_name, lane = create_lane(
            capacity_bytes, partition_id=5, control_name=control_name, completion_entries=completion_entries
        )
        made.append(lane)
        return lane_name, lane, control_name, control

    yield make
    for handle in made:
        handle.close()
        handle.unlink()
        assert not os.path.exists(f"/dev/shm{handle.name}"), f"{handle.name} left in /dev/shm"
        assert not os.path.exists(f"/dev/shm/sem.{handle.name[1:]}"), f"semaphore {handle.name} left"


def start(target: Callable[..., object], *args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, target.__name__, json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout_s: float = 60) -> Any:
    """Wait for a child (killing it at the deadline) and return what it printed."""
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=5)
        raise
    assert process.returncode == 0, f"child exited {process.returncode}"
    return json.loads(out)


# --- tests ---


def test_blocks_and_doorbells_are_private_and_unlinked(broker: Any) -> None:
    lane_name, _lane, control_name, _ = broker()
    for name in (lane_name, control_name):
        assert stat.S_IMODE(os.stat(f"/dev/shm{name}").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(f"/dev/shm/sem.{name[1:]}").st_mode) == 0o600
    assert lane_name.startswith("/shmb-")
    assert len(lane_name) == 6 + 32
    with pytest.raises(posix_ipc.ExistentialError):  # O_CREX: a name is never reused silently
        SharedBlock.create(4096, name=lane_name)


def test_attaching_a_missing_block_is_broken(shm_name: str) -> None:
    with pytest.raises(BrokenError, match="does not exist"):
        LaneProducer.attach(shm_name)
    with pytest.raises(BrokenError, match="does not exist"):
        ControlReader.attach(shm_name)


def test_closing_with_views_still_held_does_not_raise(shm_name: str) -> None:
    with SharedBlock.create(4096, name=shm_name) as block:
        held = block.slice(0, 64)
        held[0] = 7
    assert held[0] == 7  # still mapped until the last view goes
    held.release()


def test_200k_frames_cross_process_in_order_with_crc_and_completions(broker: Any) -> None:
    lane_name, *_ = broker(capacity_bytes=1 << 20)
    n_frames = 200_000
    worker = start(work, lane_name, n_frames)
    producer = start(produce, lane_name, n_frames, 7, 1, 0)
    assert finish(producer) == [n_frames, n_frames, True], "producer: sent, completed, completions in order"
    assert finish(worker)[:2] == [n_frames, 0], "worker: frames seen, frames out of order or with bad CRC"


def _kill_mid_write_then_resume(broker: Any, killed: Any, resumed: Any, warm_frames: int) -> list[Any]:
    """Run ``killed(lane)`` (a producer that never stops) until ``warm_frames`` frames arrived, SIGKILL
    it, check that only whole committed frames follow, then run ``resumed(lane, first_sequence)`` for
    1000 frames; every frame must arrive in sequence and whole. Returns the second producer's report."""
    lane_name, *_ = broker(capacity_bytes=1 << 16)
    worker = LaneWorker.attach(lane_name)
    producer = killed(lane_name)
    expected, deadline = 0, time.monotonic() + 30

    def drain_checked() -> int:
        nonlocal expected
        requests = worker.drain(1 << 20)
        for sequence, _, batch in requests:
            assert sequence == expected, f"frame {sequence} where {expected} was due"
            assert check_payload(batch), f"frame {expected} torn"
            expected += 1
        worker.release()
        return len(requests)

    while expected < warm_frames:
        assert time.monotonic() < deadline
        drain_checked()
    os.kill(producer.pid, signal.SIGKILL)  # most likely mid-memcpy, or between a claim and its commit
    producer.communicate(timeout=10)  # reaps it and closes its stdout pipe
    while drain_checked():
        pass  # everything committed before the kill, whole, and nothing of the frame being written
    assert worker.drain(1 << 20) == []
    killed_at = expected
    second = resumed(lane_name, killed_at)  # a new producer resumes; the killed one's room is free
    while expected < killed_at + 1000:
        assert time.monotonic() < deadline
        drain_checked()
    report = finish(second)
    worker.close()
    return report


def test_producer_killed_mid_write_leaves_the_worker_able_to_continue(broker: Any) -> None:
    _kill_mid_write_then_resume(
        broker,
        lambda lane: start(produce, lane, 0, 11, 0, 0),  # acks=0, forever
        lambda lane, first: start(produce, lane, 1000, 12, 0, first),
        warm_frames=20_000,
    )


def test_producer_killed_mid_fill_of_an_in_place_frame_leaves_nothing_torn(broker: Any) -> None:
    report = _kill_mid_write_then_resume(
        broker,
        lambda lane: start(produce_in_place, lane, 0, 21, 0),  # forever
        lambda lane, first: start(produce_in_place, lane, 1000, 22, first),
        warm_frames=5_000,
    )
    assert report == [1000]


def test_seqlock_readers_never_see_a_torn_pair(broker: Any) -> None:
    _, _, control_name, _ = broker()
    writer = start(hammer_control, control_name, 1.5)
    reader = ControlReader.attach(control_name)
    deadline, reads, seen = time.monotonic() + 10, 0, set()
    while reader.read().state != WorkerState.READY:
        assert time.monotonic() < deadline
    while (snapshot := reader.read()).state == WorkerState.READY:
        end, hw = snapshot.log_end_offset, snapshot.high_watermark
        assert hw == end - end % 3, f"torn snapshot {snapshot}"
        assert snapshot.batches_in == end, f"torn snapshot {snapshot}"
        reads += 1
        seen.add(end)
        assert time.monotonic() < deadline
    finish(writer)
    reader.close()
    assert reads > 1000, f"too little overlap to prove anything: {reads} reads"
    assert len(seen) > 100, f"too little overlap to prove anything: {len(seen)} values"


def test_doorbells_wake_a_sleeping_worker_and_a_waiting_producer(broker: Any) -> None:
    lane_name, _, control_name, _ = broker()
    rounds = 5
    worker = start(sleepy_worker, control_name, lane_name, rounds)
    producer = LaneProducer.attach(lane_name)
    control = ControlReader.attach(control_name)
    for sequence in range(rounds):
        deadline = time.monotonic() + 20
        while not control.worker_sleeping:
            assert time.monotonic() < deadline, "worker never went to sleep"
            time.sleep(0.001)
        started = time.monotonic()
        assert producer.try_send(b"ping", sequence=sequence, acks=1)
        done = producer.wait_completions(10, max_sleep_s=10)  # only the completion doorbell ends it early
        assert [c.sequence for c in done] == [sequence]
        assert time.monotonic() - started < 1.0, "a doorbell did not ring (the sleeps last 10-30 s)"
    finish(worker)
    producer.close()
    control.close()
