"""The partition worker under replication, in one process with real shared memory: the high
watermark follows the in-sync cells, acks=all completions wait for it, min.insync.replicas refuses
before the append, and a shrink below the minimum fails held batches after the append."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shmbroker.config import LogConfig
from shmbroker.ring.control import CONTROL_BYTES, ControlReader, ControlWriter, IsrCells, create_control
from shmbroker.ring.lane import LaneProducer, create_lane
from shmbroker.workers.partition import PartitionWorker, WorkerSpec
from tests.unit.disk.conftest import make_batch

ACKS_ALL, ACKS_1 = -1, 1


class Rig:
    def __init__(self, directory: Path, min_insync: int) -> None:
        self.control_name, self.control = create_control(0)
        self.lane_name, self.lane = create_lane(1 << 16, partition_id=0, control_name=self.control_name)
        spec = WorkerSpec(
            "t", 0, directory, LogConfig(min_insync_replicas=min_insync), self.control_name, leader_epoch=3
        )
        self.writer = ControlWriter.attach(self.control_name)
        self.worker = PartitionWorker(spec, self.writer)
        self.worker.attach(self.lane_name, producer_id=7, pid=0, trusted=True)
        self.producer = LaneProducer.attach(self.lane_name)
        region = self.control.block.slice(0, CONTROL_BYTES)
        self.cells = IsrCells(region)  # the replicator's end
        self.reader = ControlReader(self.control.block.slice(0, CONTROL_BYTES))
        self.sequence = 0

    def send(self, acks: int, n: int = 2) -> int:
        self.sequence += 1
        assert self.producer.try_send(make_batch([b"v"] * n), sequence=self.sequence, acks=acks)
        self.worker.turn()
        return self.sequence

    def done(self) -> dict[int, tuple[int, int]]:
        return {c.sequence: (c.base_offset, c.error_code) for c in self.producer.poll_completions()}

    def isr(self, followers: int, min_leo: int) -> None:
        self.cells.write(followers, min_leo)
        self.worker.on_isr_change()

    def close(self) -> None:
        self.producer.close()
        self.worker.close()
        self.writer.close()
        self.cells.close()
        self.reader.close()
        self.lane.close()
        self.lane.unlink()
        self.control.close()
        self.control.unlink()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "t-0", min_insync=2)
    try:
        yield r
    finally:
        r.close()


def test_alone_below_min_insync_acks_all_is_refused_before_the_append(rig: Rig) -> None:
    seq = rig.send(ACKS_ALL)
    assert rig.done() == {seq: (-1, 19)}  # NOT_ENOUGH_REPLICAS
    assert rig.reader.read().log_end_offset == 0
    seq = rig.send(ACKS_1)
    assert rig.done() == {seq: (0, 0)}  # acks=1 goes on
    snap = rig.reader.read()
    assert (snap.log_end_offset, snap.high_watermark, snap.leader_epoch) == (2, 2, 3)


def test_acks_all_waits_for_the_follower_and_the_high_watermark_follows_it(rig: Rig) -> None:
    rig.isr(1, 0)  # a follower joins at the log end (0)
    first = rig.send(ACKS_ALL)
    later = rig.send(ACKS_1)  # queues behind it: completions stay in order
    assert rig.done() == {}
    snap = rig.reader.read()
    assert (snap.log_end_offset, snap.high_watermark) == (4, 0)  # consumers see nothing yet
    rig.isr(1, 2)
    assert rig.done() == {first: (0, 0), later: (2, 0)}
    assert rig.reader.read().high_watermark == 2
    rig.isr(1, 4)
    assert rig.reader.read().high_watermark == 4
    rig.isr(1, 1)  # a stale pair of cells: the high watermark never goes back
    assert rig.reader.read().high_watermark == 4


def test_a_shrink_below_the_minimum_fails_held_batches_after_the_append(rig: Rig) -> None:
    rig.isr(1, 0)
    held = rig.send(ACKS_ALL)
    rig.isr(0, 0)  # the follower fell out: the leader stands alone, below min.insync.replicas=2
    assert rig.done() == {held: (0, 20)}  # NOT_ENOUGH_REPLICAS_AFTER_APPEND: appended, not acked
    snap = rig.reader.read()
    assert (snap.log_end_offset, snap.high_watermark) == (2, 2)
    assert rig.worker.log.recovery_point == 2  # alone: fsynced before answering


def test_batches_carry_the_leader_epoch(tmp_path: Path) -> None:
    r = Rig(tmp_path / "t-0", min_insync=1)
    try:
        r.send(ACKS_ALL)
        assert r.done() == {1: (0, 0)}  # alone and min 1: fsync, then ack
        assert r.worker.log.epochs.entries[-1] == (3, 0)
    finally:
        r.close()


def test_a_restarted_worker_keeps_the_high_watermark_below_unreplicated_records(rig: Rig) -> None:
    """A worker killed while its follower lags must not come back with the high watermark at its log
    end: consumers would read records only the leader has, which a failover could then take away."""
    rig.isr(1, 0)
    rig.send(ACKS_1)
    snap = rig.reader.read()
    assert (snap.log_end_offset, snap.high_watermark) == (2, 0)
    rig.worker.close()  # the successor takes over the same control block, as after a SIGKILL
    rig.writer.close()
    rig.writer = ControlWriter.attach(rig.control_name)
    rig.worker = PartitionWorker(rig.worker.spec, rig.writer)
    snap = rig.reader.read()
    assert (snap.log_end_offset, snap.high_watermark) == (2, 0)
    rig.isr(1, 2)  # the follower catches up
    assert rig.reader.read().high_watermark == 2
