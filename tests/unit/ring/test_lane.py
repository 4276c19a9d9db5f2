"""A lane over a bytearray: producer -> worker batches, completions back, backpressure, hostile frames."""

from __future__ import annotations

import threading
import time

import pytest

from shmbroker.errors import BrokenError
from shmbroker.ring.control import CONTROL_BYTES, SLEEPING_OFFSET, ControlWriter, init_control
from shmbroker.ring.doorbell import LocalBell, WakeFlag
from shmbroker.ring.lane import (
    COMPLETION_BELL_NAME_OFFSET,
    REQUEST_RING_OFFSET,
    LaneInfo,
    LaneProducer,
    LaneWorker,
    ProducerState,
    check_lane,
    init_lane,
    lane_bytes,
)
from shmbroker.ring.layout import DATA_OFFSET, FRAME_HEADER


def new_lane(capacity_bytes: int = 4096, completion_entries: int = 8) -> memoryview:
    info = LaneInfo(3, capacity_bytes, completion_entries * 32, "/shmb-control", "/shmb-lane")
    region = memoryview(bytearray(info.lane_bytes))
    init_lane(region, info)
    return region


def test_lane_size_and_header() -> None:
    region = new_lane()
    assert lane_bytes(4096, 8) == len(region) == 320 + 192 + 4096 + 192 + 256
    info = check_lane(region)
    assert (info.partition_id, info.control_name, info.completion_bell_name) == (
        3,
        "/shmb-control",
        "/shmb-lane",
    )


def test_batches_go_in_and_completions_come_back() -> None:
    region = new_lane()
    producer, worker = LaneProducer(region[:]), LaneWorker(region[:])
    assert (worker.producer_state, worker.producer_pid > 0) == (ProducerState.ATTACHED, True)
    assert producer.try_send(b"batch-1", sequence=1, acks=1)
    assert producer.try_send(b"batch-2", sequence=2, acks=-1)
    assert producer.try_send(b"batch-3", sequence=3, acks=0)
    assert producer.in_flight == 2
    assert worker.has_requests()
    drained = worker.drain(1 << 20)
    assert [(sequence, acks, bytes(batch)) for sequence, acks, batch in drained] == [
        (1, 1, b"batch-1"),
        (2, -1, b"batch-2"),
        (3, 0, b"batch-3"),
    ]
    assert producer.unread_bytes() > 0
    worker.release()
    assert producer.unread_bytes() == 0
    assert not worker.has_requests()
    worker.complete(1, 100, records_count=5)
    worker.complete(2, -1, error_code=2)
    done = producer.poll_completions()
    assert [(c.sequence, c.base_offset, c.error_code, c.records_count) for c in done] == [
        (1, 100, 0, 5),
        (2, -1, 2, 0),
    ]
    assert producer.in_flight == 0
    producer.close()
    producer.close()
    assert worker.producer_state == ProducerState.CLOSED
    worker.close()


def test_in_flight_limit_keeps_the_completion_queue_from_overflowing() -> None:
    region = new_lane(completion_entries=4)
    producer, worker = LaneProducer(region[:]), LaneWorker(region[:])
    for sequence in range(4):
        assert producer.try_send(b"x", sequence=sequence, acks=1)
    assert not producer.try_send(b"x", sequence=4, acks=1)  # 4 awaiting completion
    assert producer.try_send(b"x", sequence=4, acks=0)  # acks=0 expects no answer
    requests = worker.drain(1 << 20)
    worker.release()
    worker.complete_many([])
    for sequence, _, _ in requests[:4]:
        worker.complete(sequence, sequence)
    with pytest.raises(BrokenError, match="in flight"):
        worker.complete(99, 99)  # only a producer that ignores the limit (or a worker bug) gets here
    assert len(producer.poll_completions()) == 4
    assert producer.try_send(b"x", sequence=5, acks=1)


def test_full_request_ring_is_backpressure() -> None:
    region = new_lane(capacity_bytes=256)
    producer, worker = LaneProducer(region[:]), LaneWorker(region[:])
    assert producer.max_batch_bytes == 112
    sent = 0
    while producer.try_send(bytes(48), sequence=sent, acks=0):
        sent += 1
    assert sent == 4
    assert len(worker.drain(1 << 20)) == 4
    worker.release()
    assert producer.try_send(bytes(48), sequence=sent, acks=0)


def test_bad_acks_is_a_caller_error() -> None:
    producer = LaneProducer(new_lane())
    with pytest.raises(ValueError, match="acks"):
        producer.try_send(b"x", sequence=1, acks=2)


@pytest.mark.parametrize(("frame_type", "flags"), [(7, 0), (1, 3)], ids=["unknown-type", "bad-acks-flags"])
def test_worker_rejects_malformed_frames(frame_type: int, flags: int) -> None:
    region = new_lane()
    producer, worker = LaneProducer(region[:]), LaneWorker(region[:])
    producer.try_send(b"x", sequence=1, acks=1)
    start = REQUEST_RING_OFFSET + DATA_OFFSET
    length = FRAME_HEADER.unpack_from(region, start)[0]
    FRAME_HEADER.pack_into(region, start, length, frame_type, flags, 1)
    with pytest.raises(BrokenError, match="not a batch"):
        worker.drain(1 << 20)


@pytest.mark.parametrize("corrupt", ["magic", "capacity", "name"])
def test_check_lane_rejects_corrupt_headers(corrupt: str) -> None:
    region = new_lane()
    if corrupt == "magic":
        region[:4] = b"XXXX"
    elif corrupt == "capacity":
        region[16:24] = (1 << 40).to_bytes(8, "little")
    else:
        region[COMPLETION_BELL_NAME_OFFSET] = ord("x")
    with pytest.raises(BrokenError):
        LaneWorker(region)


def test_wait_completions_sleeps_until_the_worker_posts() -> None:
    region = new_lane()
    bell = LocalBell()
    producer = LaneProducer(region[:], completion_bell=bell)
    worker = LaneWorker(region[:], completion_bell=bell)
    producer.try_send(b"x", sequence=1, acks=1)
    assert producer.wait_completions(0.01) == []

    def answer() -> None:
        deadline = time.monotonic() + 5
        while not worker.producer_waiting and time.monotonic() < deadline:
            pass
        worker.drain(100)
        worker.release()
        worker.complete(1, 0)

    thread = threading.Thread(target=answer)
    thread.start()
    done = producer.wait_completions(10, max_sleep_s=10)
    thread.join(5)
    assert [c.sequence for c in done] == [1]


def test_wait_completions_spins_first_and_takes_a_completion_without_announcing_a_sleep() -> None:
    region = new_lane()
    bell = LocalBell()
    producer = LaneProducer(region[:], completion_bell=bell)
    worker = LaneWorker(region[:], completion_bell=bell)
    producer.try_send(b"x", sequence=1, acks=1)
    slept: list[bool] = []

    def answer() -> None:
        time.sleep(0.05)  # well inside the producer's 5-s spin
        slept.append(worker.producer_waiting)
        worker.drain(100)
        worker.release()
        worker.complete(1, 0)

    thread = threading.Thread(target=answer)
    thread.start()
    done = producer.wait_completions(10, spin_s=5.0)
    thread.join(5)
    assert [c.sequence for c in done] == [1]
    assert slept == [False]  # it was spinning: no sleep announced, so the worker rang nobody


def test_a_wait_shorter_than_the_spin_is_spun_whole_and_ends_at_its_deadline() -> None:
    region = new_lane()
    producer = LaneProducer(region[:], completion_bell=LocalBell())
    producer.try_send(b"x", sequence=1, acks=1)
    started = time.monotonic()
    assert producer.wait_completions(0.02, spin_s=5.0) == []
    assert 0.02 <= time.monotonic() - started < 1.0  # not the 5-s spin: bounded by the wait


def test_producer_rings_a_sleeping_worker() -> None:
    control = memoryview(bytearray(CONTROL_BYTES))
    init_control(control, partition_id=3, doorbell_name="/shmb-control")
    bell = LocalBell()
    control_writer = ControlWriter(control[:], bell=bell)
    region = new_lane()
    producer = LaneProducer(region[:], worker_wake=WakeFlag(control[:], SLEEPING_OFFSET, bell))
    worker = LaneWorker(region[:])
    assert not producer.notify()  # the worker is awake: no ring
    woke: list[bool] = []
    sleeper = threading.Thread(
        target=lambda: woke.append(control_writer.wake_flag.sleep(worker.has_requests, 10))
    )
    sleeper.start()
    deadline = time.monotonic() + 5
    while not control_writer.wake_flag.sleeping:
        assert time.monotonic() < deadline
    assert producer.try_send(b"wake up", sequence=1, acks=0)
    sleeper.join(5)
    assert woke == [True]
    assert [bytes(batch) for _, _, batch in worker.drain(100)] == [b"wake up"]


def test_socket_bell_wakes_a_poll_once_per_announced_wait() -> None:
    """The router's lanes: the worker's completion rings a datagram socket the producer polls.

    No ring while the producer has not announced a wait; one per announced wait (episode), however
    many completions the worker posts meanwhile; a wait announced with completions already there
    says so, so the caller does not sleep on them.
    """
    import select

    from shmbroker.ring.block import new_name
    from shmbroker.ring.doorbell import SocketBell, SocketWaiter, socket_bell_address

    address = socket_bell_address(new_name())
    waiter = SocketWaiter(address)
    bell = SocketBell(address)
    try:
        region = new_lane()
        producer = LaneProducer(region[:])
        worker = LaneWorker(region[:], completion_bell=bell)
        poller = select.poll()
        poller.register(waiter.fd, select.POLLIN)

        assert producer.try_send(b"a", sequence=1, acks=1)
        worker.drain(100)
        worker.release()
        worker.complete(1, 0)  # nobody announced a wait: no datagram
        assert poller.poll(0) == []
        assert [c.sequence for c in producer.poll_completions()] == [1]

        assert producer.try_send(b"b", sequence=2, acks=1)
        assert producer.try_send(b"c", sequence=3, acks=1)
        assert not producer.announce_wait()  # nothing completed yet: the caller may sleep
        worker.drain(100)
        worker.release()
        worker.complete(2, 1)
        worker.complete(3, 2)  # same episode: no second ring
        assert poller.poll(5000), "the completion did not ring the socket bell"
        assert waiter.drain() == 1
        producer.end_wait()
        assert [c.sequence for c in producer.poll_completions()] == [2, 3]

        assert producer.try_send(b"d", sequence=4, acks=1)
        worker.drain(100)
        worker.release()
        worker.complete(4, 3)
        assert producer.announce_wait()  # already there: do not sleep
        producer.end_wait()
    finally:
        bell.close()
        waiter.close()


def test_socket_bell_names_are_exclusive_and_ringing_nobody_is_harmless() -> None:
    from shmbroker.ring.block import new_name
    from shmbroker.ring.doorbell import SocketBell, SocketWaiter, socket_bell_address

    address = socket_bell_address(new_name())
    bell = SocketBell(address)
    bell.ring()  # nobody bound: no error (the waiter's bounded poll covers it)
    waiter = SocketWaiter(address)
    try:
        with pytest.raises(OSError, match="in use"):
            SocketWaiter(address)  # taken: the router then watches that lane through its futex thread
        for _ in range(1000):
            bell.ring()  # a full socket queue is a wake already pending, not an error
        assert waiter.drain() >= 1
    finally:
        waiter.close()
        bell.close()


def test_a_batch_built_in_place_goes_in_like_a_sent_one() -> None:
    region = new_lane(completion_entries=2)
    producer, worker = LaneProducer(region[:]), LaneWorker(region[:])
    for sequence in range(2):
        frame = producer.try_claim(5, acks=1)
        assert frame is not None
        frame[:] = b"built"
        assert producer.unread_bytes() == 32 * sequence  # nothing of it shows before the commit
        producer.commit(sequence=sequence, acks=1)
    assert producer.in_flight == 2
    assert producer.try_claim(5, acks=1) is None  # the in-flight limit holds for claims too
    assert producer.try_claim(5, acks=0) is not None
    producer.cancel_claim()
    assert [(s, a, bytes(b)) for s, a, b in worker.drain(1 << 20)] == [(0, 1, b"built"), (1, 1, b"built")]
    worker.release()
    with pytest.raises(ValueError, match="acks"):
        producer.try_claim(5, acks=2)
