"""Log.append_shared: batches written straight from memory someone else can change, then checked as
stored. What passes is appended as a prefix; the first that fails is refused, nothing after it is
appended, and nothing of it is left where a reader or a recovery could take it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shmbroker import records
from shmbroker.disk.log import Log
from shmbroker.errors import CorruptRecordError, RecordTooLargeError
from shmbroker.records import BatchHeader
from tests.unit.disk.conftest import make_batch, small_config


def batches(n: int, *, value_bytes: int = 100, seed: int = 0) -> list[memoryview]:
    rng = random.Random(seed)
    return [memoryview(make_batch([rng.randbytes(value_bytes) for _ in range(3)])) for _ in range(n)]


def headers_of(views: list[memoryview]) -> list[BatchHeader]:
    return [records.parse_batch_header(view) for view in views]


def stored(log_dir: Path) -> list[tuple[int, bytes]]:
    """(base_offset, batch bytes after the stamped fields) of every batch a recovery scan keeps."""
    out = []
    for path in sorted(log_dir.glob("*.log")):
        data = path.read_bytes()
        _end, valid = records.scan_valid_prefix(data)
        for position, header in valid:
            out.append(
                (header.base_offset, data[position + records.MAGIC_OFFSET : position + header.size_bytes])
            )
    return out


def test_sound_batches_append_like_append_many(tmp_path: Path) -> None:
    shared_log = Log.open(tmp_path / "shared-0", small_config(), now_ms=0)
    plain_log = Log.open(tmp_path / "plain-0", small_config(), now_ms=0)
    views = batches(40)  # several segments of 4 KiB: the verified write crosses rolls
    copies = [memoryview(bytearray(v)) for v in views]
    infos, error = shared_log.append_shared(views, headers_of(views), now_ms=5)
    assert error is None
    assert infos == plain_log.append_many(copies, now_ms=5)
    assert len(shared_log.segments) > 1
    shared_log.close()
    plain_log.close()
    assert stored(tmp_path / "shared-0") == stored(tmp_path / "plain-0")


def index_entries(log: Log) -> list[list[list[int]]]:
    """Every column of every segment's offset and time index."""
    return [
        [
            index.column(name).tolist()
            for index in (segment.index, segment.timeindex)
            for name in index.dtype.names
        ]
        for segment in log._segments
    ]


def test_drains_of_a_few_batches_roll_and_index_as_append_many_does(tmp_path: Path) -> None:
    """The worker's usual drain (a few small batches that fit the active segment) takes a shorter
    path than one that must roll; by size, by log.roll.ms or neither, the log comes out the same."""
    config = small_config(roll_ms=50)
    shared_log = Log.open(tmp_path / "shared-0", config, now_ms=0)
    plain_log = Log.open(tmp_path / "plain-0", config, now_ms=0)
    rng = random.Random(3)
    now_ms = 0
    for drain in range(120):
        views = batches(rng.randint(1, 4), value_bytes=rng.choice([10, 100, 400]), seed=drain)
        copies = [memoryview(bytearray(v)) for v in views]
        now_ms += rng.choice([0, 1, 7, 30])
        infos, error = shared_log.append_shared(views, headers_of(views), leader_epoch=2, now_ms=now_ms)
        assert error is None
        assert infos == plain_log.append_many(copies, leader_epoch=2, now_ms=now_ms)
    assert len(shared_log.segments) > 5
    assert [base for base, _path in shared_log.segments] == [base for base, _path in plain_log.segments]
    assert index_entries(shared_log) == index_entries(plain_log)
    assert sum(len(columns[0]) for columns in index_entries(shared_log)) > 10
    shared_log.close()
    plain_log.close()
    assert stored(tmp_path / "shared-0") == stored(tmp_path / "plain-0")


# 100-B values: the write is read back with one pread; 40-KB values: through an mmap.
READ_BACK = pytest.mark.parametrize("value_bytes", [100, 40_000], ids=["pread", "mmap"])


@READ_BACK
def test_a_batch_changed_after_its_checks_is_cut_with_everything_after_it(
    log_dir: Path, value_bytes: int
) -> None:
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)
    views = batches(6, value_bytes=value_bytes)
    headers = headers_of(views)  # what the worker checked (producer id, sequence) ...
    views[3][-1] ^= 0xFF  # ... before the producer scribbled on the frame
    infos, error = log.append_shared(views, headers, now_ms=5)
    assert isinstance(error, CorruptRecordError) and "CRC" in str(error)
    assert [info.base_offset for info in infos] == [0, 3, 6]  # 3 records each: a prefix of three
    assert log.log_end_offset == 9
    end = log.read(0, 1 << 20)
    assert end is not None and end.position + end.size == sum(len(v) for v in views[:3])
    # The cut batch and the ones after it are zeroed: nothing past the end a recovery could take.
    data = log.segments[-1][1].read_bytes()
    assert data[end.size :].count(0) == len(data) - end.size
    more, error = log.append_shared(views[4:], headers[4:], now_ms=6)  # the rest, as the worker does
    assert error is None and [info.base_offset for info in more] == [9, 12]
    log.close(clean=False)
    reopened = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)  # a crash recovery
    assert reopened.log_end_offset == 15
    reopened.close()
    assert [offset for offset, _ in stored(log_dir)] == [0, 3, 6, 9, 12]


@READ_BACK
@pytest.mark.parametrize("field", ["producer_id", "base_sequence", "records_count", "crc"])
def test_a_stored_header_that_is_not_the_checked_one_is_cut(
    log_dir: Path, field: str, value_bytes: int
) -> None:
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)
    views = batches(3, value_bytes=value_bytes)
    headers = headers_of(views)
    changed = headers[1]._replace(**{field: getattr(headers[1], field) + 1})  # checked one thing...
    infos, error = log.append_shared(views, [headers[0], changed, headers[2]], now_ms=5)  # ...stored another
    assert isinstance(error, CorruptRecordError) and "changed after its checks" in str(error)
    assert [info.base_offset for info in infos] == [0]
    assert log.log_end_offset == 3
    log.close()
    assert [offset for offset, _ in stored(log_dir)] == [0]


def test_header_errors_refuse_before_anything_of_that_batch_is_written(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(max_message_bytes=600), now_ms=0)
    views = batches(2) + batches(1, value_bytes=300) + batches(1)  # the third is too large
    infos, error = log.append_shared(views, headers_of(views), now_ms=5)
    assert isinstance(error, RecordTooLargeError)
    assert [info.base_offset for info in infos] == [0, 3]
    wrong = bytearray(views[3])
    wrong[16] = 1  # magic 1
    infos, error = log.append_shared([memoryview(wrong)], headers_of([memoryview(wrong)]), now_ms=5)
    assert isinstance(error, CorruptRecordError) and infos == []
    short = views[3][:-1]
    infos, error = log.append_shared([short], headers_of([views[3]]), now_ms=5)
    assert isinstance(error, CorruptRecordError) and "buffer holds" in str(error) and infos == []
    with pytest.raises(TypeError, match="read-only"):
        log.append_shared([memoryview(bytes(views[3]))], headers_of([views[3]]), now_ms=5)
    assert log.log_end_offset == 6
    log.close()


def test_log_append_time_checks_a_private_copy_first(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(message_timestamp_type="LogAppendTime"), now_ms=0)
    views = batches(3)
    headers = headers_of(views)
    views[1][-1] ^= 0xFF  # a re-CRC must never bless bytes that were bad when they came
    infos, error = log.append_shared(views, headers, now_ms=77)
    assert isinstance(error, CorruptRecordError)
    assert [(info.base_offset, info.log_append_time_ms) for info in infos] == [(0, 77)]
    log.close()
    assert [offset for offset, _ in stored(log_dir)] == [0]
