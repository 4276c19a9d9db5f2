"""The partition worker's run loop wakes readers asleep on the control block's event counter after
each turn that appended (ring/control.py), in a real worker process over real shared memory."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shmbroker import records
from shmbroker.config import LogConfig
from shmbroker.ring import futex
from shmbroker.ring.control import ControlReader, WorkerState, create_control
from shmbroker.ring.lane import LaneProducer, create_lane
from shmbroker.workers import partition
from shmbroker.workers.specs import WorkerSpec
from tests.unit.disk.conftest import make_batch

pytestmark = pytest.mark.skipif(not futex.available(), reason="no futex syscall on this platform")
DEADLINE_S = 10.0
SLEEP_S = 5.0  # far above any wake: a reader that sleeps this long was not woken


def _wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S} s"
        time.sleep(0.01)


@contextmanager
def _worker(
    tmp_path: Path, *, trusted: bool, spin_s: float = 0.0
) -> Iterator[tuple[ControlReader, LaneProducer]]:
    """A real worker process with one lane attached (the router's if ``trusted``, else a local one
    of producer id 0); stopped cleanly at the end (asserted), killed if the test failed first."""
    control_name, control = create_control(0)
    lane_name, lane = create_lane(1 << 16, partition_id=0, control_name=control_name)
    spec = WorkerSpec("t", 0, tmp_path / "t-0", LogConfig(), control_name, spin_s=spin_s)
    ctx = mp.get_context("fork")  # the worker body, as the supervisor's fork server runs it
    ours, theirs = ctx.Pipe()
    worker = ctx.Process(target=partition.run, args=(spec, theirs), daemon=True)
    reader = ControlReader.attach(control_name)
    producer = None
    try:
        worker.start()
        _wait_for(lambda: reader.read().state == WorkerState.READY, "READY worker")
        ours.send(("attach", lane_name, 0, 0, trusted))
        producer = LaneProducer.attach(lane_name)
        yield reader, producer
        ours.send(("stop",))
        worker.join(DEADLINE_S)
        assert worker.exitcode == 0
    finally:
        if producer is not None:
            producer.close()
        if worker.is_alive():
            worker.kill()
            worker.join(DEADLINE_S)
        reader.close()
        lane.close()
        lane.unlink()
        control.close()
        control.unlink()


def test_a_turn_wakes_a_reader_long_before_its_timeout(tmp_path: Path) -> None:
    with _worker(tmp_path, trusted=True) as (reader, producer):
        time.sleep(0.1)  # the worker attaches, finds nothing, and goes to sleep
        for sequence in range(3):
            seen = reader.events()
            assert reader.offsets()[1] == sequence  # nothing new yet: a reader would sleep now
            assert producer.try_send(make_batch([b"v"]), sequence=sequence, acks=1)
            started = time.monotonic()
            reader.wait_event(seen, SLEEP_S)
            assert time.monotonic() - started < SLEEP_S / 2, "the worker's turn did not wake the reader"
            _wait_for(lambda n=sequence + 1: reader.offsets()[1] == n, "new high watermark")  # type: ignore[misc]


@pytest.mark.parametrize("trusted", [False, True], ids=["local-lane", "router-lane"])
def test_the_worker_spins_after_a_local_batch_then_sleeps(tmp_path: Path, trusted: bool) -> None:
    """shm.worker.spin.us: after a local producer's batch the worker keeps looking (its sleeping flag
    stays down) for spin_s, then sleeps on its doorbell; after the router's batch it sleeps at once."""
    spin_s = 0.5  # far above a turn and any scheduling delay on a loaded host
    with _worker(tmp_path, trusted=trusted, spin_s=spin_s) as (reader, producer):
        _wait_for(lambda: reader.worker_sleeping, "sleeping idle worker")
        batch = make_batch([b"v"])
        if not trusted:  # a local lane's batch carries its producer id and the frame's sequence
            batch = records.encode_values([b"v"], timestamp_ms=1, producer_id=0, base_sequence=0)
        assert producer.try_send(batch, sequence=0, acks=1)
        _wait_for(lambda: reader.offsets()[1] == 1, "appended batch")
        appended = time.monotonic()
        slept_within: list[float] = []
        while time.monotonic() - appended < spin_s * 0.6:
            if reader.worker_sleeping:
                slept_within.append(time.monotonic() - appended)
                break
            time.sleep(0.001)
        if trusted:
            assert slept_within, "the worker spun after the router's batch"
        else:
            assert not slept_within, f"the worker slept {slept_within[0] * 1e3:.0f} ms after a local batch"
            _wait_for(lambda: reader.worker_sleeping, "sleep after the spin")
