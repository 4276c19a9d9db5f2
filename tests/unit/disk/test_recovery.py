"""Crash and corruption: a cut or scribbled log reopens to exactly its valid prefix, offsets dense."""

from __future__ import annotations

import os
import random
import shutil
import struct
from pathlib import Path

import pytest

from shmbroker import records
from shmbroker.disk import dumplog
from shmbroker.disk.files import CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE
from shmbroker.disk.log import Log
from shmbroker.disk.recovery import recover_segment
from shmbroker.disk.segment import Segment
from shmbroker.errors import CorruptRecordError, RecordTooLargeError
from shmbroker.records import iter_batches
from tests.unit.disk.conftest import MemoryLog, make_batch, random_batch, read_bytes, small_config


def build(log_dir: Path, batches: int, seed: int = 0, **config: object) -> tuple[MemoryLog, list[int]]:
    """A log of random batches, closed uncleanly; returns the model and the batch sizes."""
    rng = random.Random(seed)
    log, model, sizes = Log.open(log_dir, small_config(**config), now_ms=0), MemoryLog(), []
    for _ in range(batches):
        batch = random_batch(rng)
        log.append(batch, now_ms=0)
        model.append(batch)
        sizes.append(len(batch))
    log.close(clean=False)
    return model, sizes


def all_bytes(log: Log) -> bytes:
    """Everything the log serves, read forward from its start."""
    out, offset = b"", log.log_start_offset
    while (chunk := read_bytes(log, offset, 1 << 30)) is not None:
        out += chunk
        offset = [h for _, h in iter_batches(chunk)][-1].next_offset
    return out


def test_recover_cuts_at_every_byte_of_the_last_batch(log_dir: Path) -> None:
    model, sizes = build(log_dir, 6, segment_bytes=1 << 20)
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)
    last = make_batch([b"k" * 20, b"v" * 30], timestamp_ms=5)  # small, so ~150 reopens stay fast
    log.append(last, now_ms=0)
    model.append(last)
    sizes.append(len(last))
    log.close(clean=False)
    segment_path = log_dir / "00000000000000000000.log"
    whole = segment_path.read_bytes()
    last_start = len(whole) - sizes[-1]
    prefix = b"".join(model.batches[:-1])
    for cut in range(last_start, len(whole)):
        segment_path.write_bytes(whole[:cut])
        log = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)
        assert log.log_end_offset == model.bases[-1]
        assert all_bytes(log) == prefix
        # counted up to the last non-zero byte: a zero tail may be preallocation, not data
        assert log.statistics().bytes_cut_at_open == len(whole[last_start:cut].rstrip(b"\0"))
        log.close(clean=False)
        assert segment_path.read_bytes() == prefix


@pytest.mark.parametrize("seed", range(8))
def test_recover_cuts_random_garbage_after_a_random_point(log_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    model, _ = build(log_dir, 80, seed=seed)  # several segments of 4 KiB
    paths = sorted(log_dir.glob("*.log"))
    victim = rng.choice(paths)
    data = bytearray(victim.read_bytes())
    point = rng.randrange(len(data))
    data[point:] = rng.randbytes(rng.randint(1, 3 * (len(data) - point) + 1))
    victim.write_bytes(data)
    log = Log.open(log_dir, small_config(), now_ms=0)
    # The valid prefix: every whole batch before the first damaged byte, globally.
    survivors, position_in_log = [], 0
    base_of_victim = int(victim.name[:20])
    for base, batch in zip(model.bases, model.batches, strict=True):
        in_victim = base_of_victim <= base < _next_base(paths, victim)
        if base > base_of_victim and not in_victim:
            break
        if in_victim:
            if position_in_log + len(batch) > point:
                break
            position_in_log += len(batch)
        survivors.append(batch)
    assert log.log_end_offset == (model.bases[len(survivors)] if len(survivors) < len(model.bases)
                                  else model.log_end_offset)  # fmt: skip
    assert all_bytes(log) == b"".join(survivors)
    assert [base for base, _ in log.segments] == sorted(int(p.name[:20]) for p in log_dir.glob("*.log"))
    after = make_batch([b"after"])
    assert log.append(after, now_ms=0).base_offset == log.log_end_offset - 1  # dense from there on
    log.close()


def _next_base(paths: list[Path], victim: Path) -> int:
    later = [int(p.name[:20]) for p in paths if p.name > victim.name]
    return later[0] if later else 2**63


def test_recovery_rebuilds_lost_indexes(log_dir: Path) -> None:
    model, _ = build(log_dir, 80)
    for index in log_dir.glob("*.index"):
        index.unlink()
    for index in log_dir.glob("*.timeindex"):
        index.write_bytes(b"\xff" * 13)
    log = Log.open(log_dir, small_config(), now_ms=0)
    assert all_bytes(log) == b"".join(model.batches)
    assert sum(p.stat().st_size for p in log_dir.glob("*.index")) > 0
    log.close()


def test_clean_open_with_a_damaged_index_falls_back_to_a_scan(log_dir: Path) -> None:
    model, _ = build(log_dir, 80)
    Log.open(log_dir, small_config(), now_ms=0).close()  # now clean
    for index in log_dir.glob("*.index"):
        index.write_bytes(b"\x00\x00\x00\x05\x7f\x00\x00\x00")  # position far past the end
    log = Log.open(log_dir, small_config(), now_ms=0)
    assert all_bytes(log) == b"".join(model.batches)
    log.close()


def test_preallocated_zero_tail_is_cut_but_not_counted(log_dir: Path) -> None:
    model, _ = build(log_dir, 3, preallocate=True, segment_bytes=1 << 16)
    active = log_dir / "00000000000000000000.log"
    assert active.stat().st_size == 1 << 16  # unclean close left the preallocated length
    log = Log.open(log_dir, small_config(segment_bytes=1 << 16), now_ms=0)
    assert log.statistics().bytes_cut_at_open == 0
    assert log.log_end_offset == model.log_end_offset
    log.close()
    assert active.stat().st_size == len(b"".join(model.batches))  # clean close trims


def test_recovery_point_limits_the_scan(log_dir: Path) -> None:
    rng = random.Random(5)
    log = Log.open(log_dir, small_config(), now_ms=0)
    for _ in range(60):
        log.append(random_batch(rng), now_ms=0)
    log.flush()
    first = sorted(log_dir.glob("*.log"))[0]
    log.close(clean=False)
    assert int((log_dir / RECOVERY_POINT_FILE).read_text()) == log.log_end_offset
    data = bytearray(first.read_bytes())
    data[100] ^= 0xFF  # below the recovery point: fsynced, trusted, not rescanned
    first.write_bytes(data)
    log = Log.open(log_dir, small_config(), now_ms=0)
    assert log.statistics().bytes_cut_at_open == 0
    log.close(clean=False)
    assert dumplog.main([str(log_dir), "--verify"]) == 1  # but dump-log --verify sees it


def test_flipped_bit_in_sealed_segment_fails_dump_log_verify(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build(log_dir, 80)
    assert dumplog.main([str(log_dir), "--verify"]) == 0
    sealed = sorted(log_dir.glob("*.log"))[1]
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 0x10
    sealed.write_bytes(data)
    capsys.readouterr()
    assert dumplog.main([str(sealed), "--verify"]) != 0
    assert "CRC" in capsys.readouterr().err
    assert dumplog.main([str(sealed)]) == 0  # without --verify it only reports


def test_marker_is_gone_while_recovery_runs(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(log_dir, 10)
    Log.open(log_dir, small_config(), now_ms=0).close()
    (log_dir / "00000000000000000000.index").write_bytes(b"\0\0\0\5\x7f\0\0\0")  # forces a scan

    def crash(segment: Segment, *, max_batch_bytes: int) -> int:
        raise KeyboardInterrupt  # a crash in the middle of recovery

    monkeypatch.setattr("shmbroker.disk.recovery.recover_segment", crash)
    with pytest.raises(KeyboardInterrupt):
        Log.open(log_dir, small_config(), now_ms=0)
    assert not (log_dir / CLEAN_SHUTDOWN_FILE).exists()
    monkeypatch.undo()
    log = Log.open(log_dir, small_config(), now_ms=0)
    assert log.statistics().recovered_at_open
    assert log.log_end_offset > 0
    log.close()


def test_recover_segment_counts_cut_bytes(log_dir: Path) -> None:
    build(log_dir, 3, segment_bytes=1 << 20)
    path = log_dir / "00000000000000000000.log"
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"\x01" * 10 + b"\x00" * 50)
    segment = Segment(log_dir, 0, index_interval_bytes=512, index_max_entries=100)
    assert recover_segment(segment, max_batch_bytes=1 << 20) == 10
    assert os.fstat(segment.fd).st_size == size
    segment.close()


def test_recover_log_main(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(log_dir, 5, segment_bytes=1 << 20)
    with (log_dir / "00000000000000000000.log").open("ab") as f:
        f.write(b"\x07" * 33)
    assert dumplog.recover_main([str(log_dir)]) == 0
    assert "33 bytes cut" in capsys.readouterr().out


def test_recovery_rebuilds_the_indexes_appends_built(log_dir: Path) -> None:
    build(log_dir, 120)
    Log.open(log_dir, small_config(), now_ms=0).close()  # clean: the active segment is sealed too
    before = {p.name: p.read_bytes() for p in log_dir.glob("*index")}
    assert any(before.values())
    Log.open(log_dir, small_config(), now_ms=0, force_recovery=True).close()
    assert {p.name: p.read_bytes() for p in log_dir.glob("*index")} == before


def test_recovery_keeps_batches_above_a_lowered_max_message_bytes(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)
    log.append(make_batch([b"x" * 5000]), now_ms=0)
    log.close(clean=False)
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20, max_message_bytes=1000), now_ms=0)
    assert log.log_end_offset == 1
    log.close()


@pytest.mark.parametrize("torn_bytes", [0, 1, 40, -2], ids=["none", "1B", "40B", "all-but-2B"])
def test_crash_inside_the_append_reserve_keeps_every_batch(log_dir: Path, torn_bytes: int) -> None:
    """A crash leaves the reserve's zeros after the data, maybe with a torn batch at their start."""
    config = small_config(segment_bytes=1 << 20)
    rng, model = random.Random(3), MemoryLog()
    log = Log.open(log_dir, config, now_ms=0)
    for _ in range(20):
        batch = random_batch(rng)
        log.append(batch, now_ms=0)
        model.append(batch)
    name, data_bytes = "00000000000000000000.log", log.statistics().size_bytes
    assert (log_dir / name).stat().st_size == 1 << 20 > data_bytes  # reserved ahead, up to segment_bytes
    crashed = log_dir.parent / "crashed"
    shutil.copytree(log_dir, crashed)  # what a SIGKILL now would leave: this log is never closed
    log.close()
    torn = make_batch([b"t" * 100])
    torn[0:8] = model.log_end_offset.to_bytes(8, "big")
    torn = torn[:torn_bytes]  # not -1: the last byte is 0 (no headers), which the zeros would supply
    with (crashed / name).open("r+b") as f:
        f.seek(data_bytes)
        f.write(torn)
    recovered = Log.open(crashed, config, now_ms=0)
    assert recovered.log_end_offset == model.log_end_offset
    assert all_bytes(recovered) == b"".join(model.batches)
    assert recovered.statistics().bytes_cut_at_open == len(torn.rstrip(b"\0"))  # zeros are not data
    assert (crashed / name).stat().st_size == data_bytes
    assert recovered.append(make_batch([b"after"]), now_ms=0).base_offset == model.log_end_offset
    recovered.close()


def _reference_scan(buf: bytes, *, max_batch_bytes: int, expect_offset: int | None) -> records.ValidPrefix:
    """The scan as written before scan_valid_columns inlined it: check_header on a BatchHeader."""
    position, positions, bases, stamps, next_offset = 0, [], [], [], None
    while len(buf) - position >= records.HEADER_BYTES:
        header = records.parse_batch_header(buf, position)
        try:
            records.check_header(header, max_batch_bytes=max_batch_bytes)
        except (CorruptRecordError, RecordTooLargeError):
            break
        batch_end = position + header.size_bytes
        if (
            batch_end > len(buf)
            or records.crc32c(buf[position + records.CRC_START : batch_end]) != header.crc
        ):
            break
        if expect_offset is not None:
            if header.base_offset != expect_offset:
                break
            expect_offset = header.next_offset
        positions.append(position)
        bases.append(header.base_offset)
        stamps.append(header.max_timestamp_ms)
        next_offset = header.next_offset
        position = batch_end
    return records.ValidPrefix(position, positions, bases, stamps, next_offset)


@pytest.mark.parametrize("seed", range(40))
def test_scan_valid_columns_agrees_with_check_header(seed: int) -> None:
    """Damage header fields (re-signing the CRC half the time, so the header checks are what fail),
    flip bytes or cut the tail; the lean recovery scan must stop exactly where check_header does."""
    rng, model = random.Random(seed), MemoryLog()
    for _ in range(rng.randint(1, 12)):
        model.append(random_batch(rng, max_records=rng.choice([1, 5, 40])))
    buf = bytearray(b"".join(model.batches) + bytes(rng.choice([0, 7, 100])))
    victim = rng.randrange(len(model.batches))
    at = sum(len(b) for b in model.batches[:victim])
    field, value = rng.choice(
        [
            (0, rng.choice([-1, 5, 10**6])),  # base_offset
            (8, rng.choice([-5, 0, 48, 49, 10**6])),  # batch_length
            (16, rng.choice([0, 1, 3])),  # magic
            (21, rng.choice([0, 1, 5, 7])),  # attributes (codec)
            (23, rng.choice([-1, 10**4])),  # last_offset_delta
            (57, rng.choice([-1, 0, 10**5])),  # records_count
        ]
    )
    fmt = {0: ">q", 8: ">i", 16: ">b", 21: ">h", 23: ">i", 57: ">i"}[field]
    damage = rng.choice(["field", "flip", "cut", "none"])
    if damage == "field":
        struct.pack_into(fmt, buf, at + field, value)
        if rng.random() < 0.5 and field >= records.CRC_START:
            end = at + len(model.batches[victim])
            struct.pack_into(
                ">I", buf, at + records.CRC_OFFSET, records.crc32c(buf[at + records.CRC_START : end])
            )
    elif damage == "flip":
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif damage == "cut":
        del buf[rng.randrange(len(buf)) :]
    data = bytes(buf)
    for expect_offset in (None, 0, 1):
        for max_batch_bytes in (2**31 - 1, 300):
            want = _reference_scan(data, max_batch_bytes=max_batch_bytes, expect_offset=expect_offset)
            got = records.scan_valid_columns(
                data, max_batch_bytes=max_batch_bytes, expect_offset=expect_offset
            )
            assert got == want, (damage, field, value, expect_offset, max_batch_bytes)
            end, found = records.scan_valid_prefix(
                data, max_batch_bytes=max_batch_bytes, expect_offset=expect_offset
            )
            assert (end, [p for p, _ in found]) == (want.end, want.positions)
