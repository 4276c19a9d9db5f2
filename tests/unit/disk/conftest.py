"""Batches for the disk tests, built by kafka-python (an independent encoder), and a model log."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from shmbroker.config import LogConfig
from shmbroker.disk.log import Log
from shmbroker.errors import OffsetOutOfRangeError
from shmbroker.records import parse_batch_header


def make_batch(
    values: Sequence[bytes], *, timestamp_ms: int = 1_000, keys: Sequence[bytes | None] | None = None
) -> bytearray:
    """One RecordBatch v2 (base offset 0, uncompressed); record i has timestamp timestamp_ms + i."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 30,
    )  # fmt: skip
    for i, value in enumerate(values):
        key = keys[i] if keys is not None else None
        builder.append(i, timestamp=timestamp_ms + i, key=key, value=value, headers=[])
    return bytearray(builder.build())


def random_batch(rng: random.Random, *, timestamp_ms: int = 1_000, max_records: int = 5) -> bytearray:
    count = rng.randint(1, max_records)
    return make_batch([rng.randbytes(rng.randint(0, 300)) for _ in range(count)], timestamp_ms=timestamp_ms)


class MemoryLog:
    """The model: a list of stamped batches with dense offsets. Same contract as the disk Log."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []
        self.bases: list[int] = []
        self.log_start_offset = self.log_end_offset = 0

    def append(self, batch: bytearray, *, now_ms: int = 0) -> int:
        base = self.log_end_offset
        stamped = bytearray(batch)
        stamped[0:8] = base.to_bytes(8, "big", signed=True)
        stamped[12:16] = (-1).to_bytes(4, "big", signed=True)
        self.batches.append(bytes(stamped))
        self.bases.append(base)
        self.log_end_offset = parse_batch_header(stamped).next_offset
        return base

    def read(self, offset: int, max_bytes: int, *, upto_offset: int | None = None) -> bytes | None:
        if not self.log_start_offset <= offset <= self.log_end_offset:
            raise OffsetOutOfRangeError(str(offset))
        upto = self.log_end_offset if upto_offset is None else min(upto_offset, self.log_end_offset)
        if offset >= upto:
            return None
        i = bisect.bisect_right(self.bases, offset) - 1
        out = bytearray(self.batches[i])
        for j in range(i + 1, len(self.batches)):
            if self.bases[j] >= upto or len(out) + len(self.batches[j]) > max_bytes:
                break
            out += self.batches[j]
        return bytes(out)

    def drop_before(self, offset: int) -> None:
        while self.bases and self.bases[0] < offset:
            self.bases.pop(0)
            self.batches.pop(0)
        self.log_start_offset = offset

    def truncate_to(self, offset: int) -> None:
        # a batch holding ``offset`` goes whole: keep batches whose last offset < offset
        while self.batches and parse_batch_header(self.batches[-1]).last_offset >= offset:
            self.batches.pop()
            self.log_end_offset = self.bases.pop()


def read_bytes(log: Log, offset: int, max_bytes: int, upto_offset: int | None = None) -> bytes | None:
    """The disk log's FileSlice as bytes, for comparing with the model."""
    found = log.read(offset, max_bytes, upto_offset=upto_offset)
    if found is None:
        return None
    with open(found.path, "rb") as f:
        f.seek(found.position)
        return f.read(found.size)


def small_config(**changes: object) -> LogConfig:
    settings: dict[str, object] = {"segment_bytes": 4096, "index_interval_bytes": 512, **changes}
    return LogConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "topic-0"
