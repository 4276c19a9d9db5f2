"""The disk Log against the in-memory model: appends, reads at every offset, rolls, retention, reopen."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from shmbroker.config import LogConfig
from shmbroker.disk import segment as segment_module
from shmbroker.disk.files import CLEAN_SHUTDOWN_FILE
from shmbroker.disk.log import Log
from shmbroker.errors import ClosedError, OffsetOutOfRangeError
from shmbroker.records import check_batch, parse_batch_header
from tests.unit.disk.conftest import MemoryLog, make_batch, random_batch, read_bytes, small_config


def check_against_model(log: Log, model: MemoryLog, rng: random.Random) -> None:
    """Every offset, random max_bytes and upto. A read stops at its segment's end (as Kafka's)."""
    assert (log.log_start_offset, log.log_end_offset) == (model.log_start_offset, model.log_end_offset)
    bases = [base for base, _ in log.segments]
    for offset in range(model.log_start_offset, model.log_end_offset + 1):
        max_bytes = rng.choice([1, 200, 1000, 5000])
        upto = rng.choice([None, rng.randint(offset, model.log_end_offset + 1)])
        segment_end = next((b for b in bases if b > offset), model.log_end_offset)
        expected = model.read(offset, max_bytes, upto_offset=min(upto or segment_end, segment_end))
        if offset < model.log_end_offset and (upto is None or offset < upto):
            assert expected is not None
        assert read_bytes(log, offset, max_bytes, upto) == expected


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("preallocate", [False, True])
def test_log_matches_model_through_rolls_retention_and_reopen(
    log_dir: Path, seed: int, preallocate: bool
) -> None:
    rng = random.Random(seed)
    config = small_config(preallocate=preallocate, retention_bytes=12_000, retention_ms=-1)
    log, model, now = Log.open(log_dir, config, now_ms=0), MemoryLog(), 0
    for step in range(6):
        for _ in range(rng.randint(5, 40)):
            now += 1
            batch = random_batch(rng, timestamp_ms=now)
            infos = log.append_many([batch], now_ms=now)
            assert infos[0].base_offset == model.append(batch)
        if step % 2:
            deleted = log.apply_retention(now)
            if deleted:
                model.drop_before(log.log_start_offset)
        check_against_model(log, model, rng)
        log.close(clean=rng.random() < 0.5)
        log = Log.open(log_dir, config, now_ms=now)
    check_against_model(log, model, rng)
    assert len(log.segments) > 1
    log.close()


def test_append_many_stamps_dense_offsets_and_rolls(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    batches = [make_batch([b"x" * 100] * 3) for _ in range(50)]
    infos = log.append_many(batches, leader_epoch=7, now_ms=5)
    assert [i.base_offset for i in infos] == list(range(0, 150, 3))
    assert [i.last_offset for i in infos] == list(range(2, 150, 3))
    for batch, info in zip(batches, infos, strict=True):
        header = check_batch(batch, max_batch_bytes=1 << 20)  # stamped in place, CRC still valid
        assert (header.base_offset, header.partition_leader_epoch) == (info.base_offset, 7)
    assert log.log_end_offset == 150
    assert len(log.segments) > 1
    assert all(size <= 4096 for size in (p.stat().st_size for _, p in log.segments))
    log.close()


def test_one_batch_bigger_than_a_segment_gets_its_own_segment(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    log.append(make_batch([b"a"]), now_ms=0)
    info = log.append(make_batch([b"z" * 6000]), now_ms=0)
    assert info.position == 0
    assert len(log.segments) == 2
    found = log.read(1, 10)
    assert found is not None
    assert found.size > 6000
    log.close()


def test_roll_by_time(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(roll_ms=100), now_ms=0)
    log.append(make_batch([b"a"]), now_ms=0)
    log.append(make_batch([b"a"]), now_ms=50)
    assert len(log.segments) == 1
    log.append(make_batch([b"a"]), now_ms=150)
    assert [base for base, _ in log.segments] == [0, 2]
    log.close()


def test_read_range_checks(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    assert log.read(0, 100) is None
    log.append(make_batch([b"a", b"b"]), now_ms=0)
    assert log.read(2, 100) is None
    with pytest.raises(OffsetOutOfRangeError):
        log.read(3, 100)
    with pytest.raises(OffsetOutOfRangeError):
        log.read(-1, 100)
    found = log.read(1, 100)
    assert found is not None
    assert (found.position, found.first_offset, found.base_offset) == (0, 0, 0)
    assert os.pread(found.fd, found.size, found.position)[:8] == bytes(8)
    log.close()
    with pytest.raises(ClosedError):
        log.append(make_batch([b"a"]), now_ms=0)


def test_retention_by_time_keeps_active_segment(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(retention_ms=1000), now_ms=0)
    for t in range(0, 3000, 10):
        log.append(make_batch([b"v" * 200], timestamp_ms=t), now_ms=t)
    segments_before = len(log.segments)
    deleted = log.apply_retention(3000)
    assert 0 < deleted < segments_before
    assert log.log_start_offset == log.segments[0][0]
    remaining = len(log.segments)
    assert log.apply_retention(10**9) == remaining - 1  # everything is old; the active one stays
    assert len(log.segments) == 1
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100)
    log.close()


def test_offset_for_timestamp(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    for i in range(100):  # record j of batch i has timestamp 1000 + 10*i + j, 3 records a batch
        log.append(make_batch([b"v" * 50] * 3, timestamp_ms=1000 + 10 * i), now_ms=0)
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(1000 + 10 * 42) == 42 * 3
    assert log.offset_for_timestamp(1000 + 10 * 42 + 1) == 42 * 3 + 1
    assert log.offset_for_timestamp(1000 + 10 * 42 + 3) == 43 * 3
    assert log.offset_for_timestamp(10**9) is None
    log.close()


def test_log_append_time(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(message_timestamp_type="LogAppendTime"), now_ms=0)
    batch = make_batch([b"a", b"b"], timestamp_ms=5)
    info = log.append(batch, now_ms=777)
    header = check_batch(batch, max_batch_bytes=1 << 20)
    assert info.log_append_time_ms == 777
    assert header.max_timestamp_ms == 777
    assert header.attributes & 0x08
    log.close()


def test_truncate_to(log_dir: Path) -> None:
    rng = random.Random(9)
    log, model = Log.open(log_dir, small_config(), now_ms=0), MemoryLog()
    for _ in range(60):
        batch = random_batch(rng)
        log.append(batch, now_ms=0)
        model.append(batch)
    for target in (model.log_end_offset - 1, 100, 37, 1):
        log.truncate_to(target)
        model.truncate_to(target)
        check_against_model(log, model, rng)
        batch = random_batch(rng)
        assert log.append(batch, now_ms=0).base_offset == model.append(batch)
    log.truncate_to(0)
    assert (log.log_start_offset, log.log_end_offset, len(log.segments)) == (0, 0, 1)
    log.close()
    log = Log.open(log_dir, small_config(), now_ms=0)
    assert log.log_end_offset == 0
    log.close()


def test_clean_marker_is_written_at_close_and_removed_at_open(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    log.append(make_batch([b"a"]), now_ms=0)
    log.close()
    assert (log_dir / CLEAN_SHUTDOWN_FILE).exists()
    log = Log.open(log_dir, small_config(), now_ms=0)
    assert not (log_dir / CLEAN_SHUTDOWN_FILE).exists()
    assert not log.statistics().recovered_at_open
    log.close(clean=False)
    log = Log.open(log_dir, small_config(), now_ms=0)
    stats = log.statistics()
    assert stats.recovered_at_open
    assert stats.log_end_offset == 1
    assert stats.bytes_cut_at_open == 0
    log.close()


def test_flush_policy_moves_the_recovery_point(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(flush_interval_messages=4), now_ms=0)
    log.append(make_batch([b"a"] * 3), now_ms=0)
    assert log.statistics().recovery_point == 0
    log.append(make_batch([b"a"] * 3), now_ms=0)
    assert log.statistics().recovery_point == 6
    log.close()
    log = Log.open(log_dir, LogConfig(flush_interval_ms=100), now_ms=0)
    log.append(make_batch([b"a"]), now_ms=50)
    assert not log.maybe_flush(60)
    assert log.maybe_flush(100)
    assert log.statistics().recovery_point == 7
    log.close()


def test_statistics(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    batch = make_batch([b"abc"])
    log.append(batch, now_ms=0)
    stats = log.statistics()
    assert (stats.segments, stats.size_bytes, stats.log_end_offset) == (1, len(batch), 1)
    assert parse_batch_header(batch).base_offset == 0
    log.close()


def test_truncate_to_the_start_then_append_survives_reopen(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    log.append(make_batch([b"a"]), now_ms=0)
    log.truncate_to(0)
    log.append(make_batch([b"b"]), now_ms=0)
    log.close(clean=False)
    log = Log.open(log_dir, small_config(), now_ms=0)
    assert log.log_end_offset == 1
    assert b"b" in (read_bytes(log, 0, 100) or b"")
    log.close()


def test_appends_reserve_a_bounded_run_ahead_never_past_segment_bytes(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segment_module, "RESERVE_AHEAD_BYTES", 3000)
    config = small_config(segment_bytes=8192)
    rng, model = random.Random(5), MemoryLog()
    log = Log.open(log_dir, config, now_ms=0)
    for _ in range(60):
        batch = random_batch(rng)
        log.append(batch, now_ms=0)
        model.append(batch)
        active = log.segments[-1][1]
        data_bytes = log.statistics().active_segment_bytes
        assert data_bytes <= active.stat().st_size <= max(data_bytes, min(8192, data_bytes + 3000))
        for sealed in [path for _, path in log.segments[:-1]]:  # a roll gave the reserve back
            assert sealed.stat().st_size <= 8192
    check_against_model(log, model, rng)  # reads never see the zeros past the data
    log.close(clean=False)  # an unclean close gives the reserve back too (preallocate keeps its length)
    assert sum(path.stat().st_size for _, path in log.segments) == len(b"".join(model.batches))
    log = Log.open(log_dir, config, now_ms=0)
    assert log.statistics().bytes_cut_at_open == 0
    check_against_model(log, model, rng)
    log.close()


def test_a_failed_reserve_only_costs_speed(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int, offset: int, length: int) -> None:
        os.ftruncate(fd, offset + 100)  # as a fallocate that ran out of space part way may leave it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)
    model = MemoryLog()
    for i in range(5):
        batch = make_batch([b"v" * (10 * i)])
        log.append(batch, now_ms=0)
        model.append(batch)
    assert read_bytes(log, 0, 1 << 20) == b"".join(model.batches)
    log.close()
    assert (log_dir / "00000000000000000000.log").read_bytes() == b"".join(model.batches)
