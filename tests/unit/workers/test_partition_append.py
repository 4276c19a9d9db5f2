"""One drain of a local lane through the partition worker, in one process with real shared memory
and real files: what its one-pass path (``_append_plain``) and the general path must agree on. A
drain is made of several frames committed before one ``turn()``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shmbroker import records
from shmbroker.config import LogConfig
from shmbroker.errors import CorruptRecordError, InvalidRecordError
from shmbroker.ring.control import CONTROL_BYTES, ControlReader, ControlWriter, create_control
from shmbroker.ring.lane import LaneProducer, create_lane
from shmbroker.workers.partition import PartitionWorker, WorkerSpec

PRODUCER_ID = 7


class Rig:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.control_name, self.control = create_control(0)
        self.lane_name, self.lane = create_lane(1 << 16, partition_id=0, control_name=self.control_name)
        self.writer = ControlWriter.attach(self.control_name)
        self.worker = self._worker()
        self.producer = LaneProducer.attach(self.lane_name)
        self.reader = ControlReader(self.control.block.slice(0, CONTROL_BYTES))

    def _worker(self) -> PartitionWorker:
        spec = WorkerSpec("t", 0, self.directory, LogConfig(), self.control_name)
        worker = PartitionWorker(spec, self.writer)
        worker.attach(self.lane_name, producer_id=PRODUCER_ID, pid=os.getpid(), trusted=False)
        return worker

    def send(
        self, sequence: int, value: bytes, *, acks: int = 1, crc_ok: bool = True, owner: int = PRODUCER_ID
    ) -> None:
        batch = records.encode_values([value], timestamp_ms=1, producer_id=owner, base_sequence=sequence)
        if not crc_ok:
            batch[-1] ^= 0xFF  # the CRC no longer matches: found only when the stored bytes are checked
        assert self.producer.try_send(batch, sequence=sequence, acks=acks)

    def turn(self) -> dict[int, tuple[int, int]]:
        assert self.worker.turn() > 0
        return {c.sequence: (c.base_offset, c.error_code) for c in self.producer.poll_completions()}

    def values(self) -> list[bytes | None]:
        """The stored records' values, in offset order, as a recovery scan finds them (offsets dense)."""
        out: list[bytes | None] = []
        for _base, path in self.worker.log.segments:
            data = path.read_bytes()
            for position, header in records.scan_valid_prefix(data)[1]:
                batch = memoryview(data)[position : position + header.size_bytes]
                for record in records.decode_batch(batch, max_uncompressed_bytes=1 << 20):
                    assert record.offset == len(out)
                    out.append(record.value)
        return out

    def close(self) -> None:
        self.producer.close()
        self.worker.close()
        self.writer.close()
        self.reader.close()
        self.lane.close()
        self.lane.unlink()
        self.control.close()
        self.control.unlink()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "t-0")
    try:
        yield r
    finally:
        r.close()


def test_a_drain_of_sound_batches_is_appended_in_order_and_answered(rig: Rig) -> None:
    for sequence in range(4):
        rig.send(sequence, b"v%d" % sequence)
    assert rig.turn() == {0: (0, 0), 1: (1, 0), 2: (2, 0), 3: (3, 0)}
    snapshot = rig.reader.read()
    counts = (snapshot.log_end_offset, snapshot.high_watermark, snapshot.batches_in, snapshot.records_in)
    assert counts == (4, 4, 4, 4)
    assert rig.values() == [b"v0", b"v1", b"v2", b"v3"]


def test_a_batch_whose_stored_crc_fails_is_refused_and_the_rest_of_the_drain_goes_on(rig: Rig) -> None:
    rig.send(0, b"good")
    rig.send(1, b"torn", crc_ok=False)
    rig.send(2, b"after")
    rig.send(3, b"last")
    done = rig.turn()
    assert done[0] == (0, 0) and done[2] == (1, 0) and done[3] == (2, 0)
    assert done[1] == (-1, CorruptRecordError.kafka_code)
    assert list(done) == [0, 1, 2, 3]  # answered in lane order
    assert rig.values() == [b"good", b"after", b"last"]  # offsets stay dense
    snapshot = rig.reader.read()
    assert (snapshot.log_end_offset, snapshot.errors_corrupt) == (3, 1)


def test_an_alien_batch_goes_to_the_general_path_and_is_refused_alone(rig: Rig) -> None:
    rig.send(0, b"mine")
    rig.send(1, b"forged", owner=PRODUCER_ID + 1)
    rig.send(2, b"mine too")
    assert rig.turn() == {0: (0, 0), 1: (-1, InvalidRecordError.kafka_code), 2: (1, 0)}
    assert rig.values() == [b"mine", b"mine too"]


def test_a_batch_appended_before_a_restart_is_answered_with_its_offset_not_appended_again(rig: Rig) -> None:
    rig.send(0, b"a")
    rig.send(1, b"b")
    assert rig.turn() == {0: (0, 0), 1: (1, 0)}
    # A restarted worker re-reads frames its predecessor appended but did not release: the same
    # (producer id, sequence) again, beside a new one.
    rig.worker.close()
    rig.worker = rig._worker()
    rig.send(1, b"b")
    rig.send(2, b"c")
    assert rig.turn() == {1: (1, 0), 2: (2, 0)}
    assert rig.values() == [b"a", b"b", b"c"]


def test_acks_0_batches_are_appended_and_not_answered(rig: Rig) -> None:
    rig.send(0, b"quiet", acks=0)
    rig.send(1, b"heard", acks=1)
    assert rig.turn() == {1: (1, 0)}
    assert rig.values() == [b"quiet", b"heard"]
