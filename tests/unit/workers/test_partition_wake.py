"""The partition worker's run loop wakes readers asleep on the control block's event counter after
each turn that appended (ring/control.py), in a real worker process over real shared memory."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

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


def test_a_turn_wakes_a_reader_long_before_its_timeout(tmp_path: Path) -> None:
    control_name, control = create_control(0)
    lane_name, lane = create_lane(1 << 16, partition_id=0, control_name=control_name)
    spec = WorkerSpec("t", 0, tmp_path / "t-0", LogConfig(), control_name)
    ctx = mp.get_context("fork")  # the worker body, as the supervisor's fork server runs it
    ours, theirs = ctx.Pipe()
    worker = ctx.Process(target=partition.run, args=(spec, theirs), daemon=True)
    reader = ControlReader.attach(control_name)
    producer = None
    try:
        worker.start()
        _wait_for(lambda: reader.read().state == WorkerState.READY, "READY worker")
        ours.send(("attach", lane_name, 7, 0, True))
        producer = LaneProducer.attach(lane_name)
        time.sleep(0.1)  # the worker attaches, finds nothing, and goes to sleep
        for sequence in range(3):
            seen = reader.events()
            assert reader.offsets()[1] == sequence  # nothing new yet: a reader would sleep now
            assert producer.try_send(make_batch([b"v"]), sequence=sequence, acks=1)
            started = time.monotonic()
            reader.wait_event(seen, SLEEP_S)
            assert time.monotonic() - started < SLEEP_S / 2, "the worker's turn did not wake the reader"
            _wait_for(lambda n=sequence + 1: reader.offsets()[1] == n, "new high watermark")  # type: ignore[misc]
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
