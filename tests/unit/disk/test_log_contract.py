"""One contract, every implementation: the in-memory model and the disk Log behave alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from shmbroker.disk.log import Log
from shmbroker.errors import OffsetOutOfRangeError
from tests.unit.disk.conftest import MemoryLog, make_batch, read_bytes, small_config


class Contract(Protocol):
    @property
    def log_start_offset(self) -> int: ...
    @property
    def log_end_offset(self) -> int: ...
    def append(self, batch: bytearray) -> int: ...
    def read(self, offset: int, max_bytes: int, *, upto_offset: int | None = None) -> bytes | None: ...
    def truncate_to(self, offset: int) -> None: ...


class DiskAdapter:
    def __init__(self, log: Log) -> None:
        self.log = log

    @property
    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    def append(self, batch: bytearray) -> int:
        return self.log.append(batch, now_ms=0).base_offset

    def read(self, offset: int, max_bytes: int, *, upto_offset: int | None = None) -> bytes | None:
        return read_bytes(self.log, offset, max_bytes, upto_offset)

    def truncate_to(self, offset: int) -> None:
        self.log.truncate_to(offset)


class MemoryAdapter(MemoryLog):
    def append(self, batch: bytearray, *, now_ms: int = 0) -> int:
        return super().append(batch)


@pytest.fixture(params=["memory", "disk"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Contract]:
    if request.param == "memory":
        yield MemoryAdapter()
    else:
        disk = Log.open(tmp_path / "p-0", small_config(segment_bytes=1 << 20), now_ms=0)
        yield DiskAdapter(disk)
        disk.close()


ONE, TWO = make_batch([b"a"]), make_batch([b"b", b"c"])


def test_offsets_are_dense_from_zero(log: Contract) -> None:
    assert [log.append(make_batch([b"x"] * n)) for n in (1, 3, 2)] == [0, 1, 4]
    assert log.log_end_offset == 6


def test_read_at_the_end_is_none_and_past_it_raises(log: Contract) -> None:
    assert log.read(0, 100) is None
    log.append(TWO)
    assert log.read(2, 100) is None
    with pytest.raises(OffsetOutOfRangeError):
        log.read(3, 100)


def test_read_starts_at_the_batch_holding_the_offset(log: Contract) -> None:
    log.append(ONE)
    log.append(TWO)
    both = log.read(0, 1 << 20)
    assert both is not None
    assert len(both) == len(ONE) + len(TWO)
    second = log.read(2, 1 << 20)
    assert second is not None
    assert second[:8] == (1).to_bytes(8, "big")


def test_read_returns_one_whole_batch_even_past_max_bytes(log: Contract) -> None:
    log.append(TWO)
    log.append(ONE)
    got = log.read(1, 1)
    assert got is not None
    assert len(got) == len(TWO)


def test_read_stops_below_upto(log: Contract) -> None:
    for _ in range(3):
        log.append(ONE)
    got = log.read(0, 1 << 20, upto_offset=2)
    assert got is not None
    assert len(got) == 2 * len(ONE)
    assert log.read(2, 1 << 20, upto_offset=2) is None


def test_truncate_drops_the_batch_holding_the_offset(log: Contract) -> None:
    log.append(ONE)
    log.append(TWO)
    log.truncate_to(2)  # offset 2 sits in the batch 1-2: it goes whole
    assert log.log_end_offset == 1
    assert log.append(ONE) == 1
