"""LogReader (another process's read-only view) serves what the Log serves, below the watermark."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shmbroker import records
from shmbroker.disk.log import Log
from shmbroker.disk.reader import LogReader
from shmbroker.errors import CorruptRecordError, OffsetOutOfRangeError
from tests.unit.disk.conftest import make_batch, random_batch, read_bytes, small_config


@pytest.mark.parametrize("preallocate", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_reader_matches_log_at_every_offset_while_it_grows(
    log_dir: Path, seed: int, preallocate: bool
) -> None:
    rng = random.Random(seed)
    log = Log.open(log_dir, small_config(preallocate=preallocate), now_ms=0)
    reader = LogReader(log_dir)
    for _ in range(5):
        for _ in range(rng.randint(1, 30)):
            log.append(random_batch(rng), now_ms=0)
        hwm = rng.randint(log.log_end_offset // 2, log.log_end_offset)
        for offset in range(log.log_start_offset, hwm + 1):
            max_bytes = rng.choice([1, 300, 2000, 10_000])
            got = reader.read(offset, max_bytes, upto_offset=hwm)
            expected = read_bytes(log, offset, max_bytes, hwm)
            assert (bytes(got) if got is not None else None) == expected, offset
    log.close()
    reader.close()


def test_reader_after_retention_raises_out_of_range(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(retention_bytes=5000, retention_ms=-1), now_ms=0)
    for _ in range(60):
        log.append(make_batch([b"v" * 200]), now_ms=0)
    reader = LogReader(log_dir)
    held = reader.read(0, 100, upto_offset=log.log_end_offset)
    assert held is not None
    copy = bytes(held)
    assert log.apply_retention(0) > 0
    with pytest.raises(OffsetOutOfRangeError):
        reader.read(0, 100, upto_offset=log.log_end_offset)
    assert bytes(held) == copy  # a view handed out earlier stays readable: the inode lives on
    start = log.log_start_offset
    got = reader.read(start, 100, upto_offset=log.log_end_offset)
    assert got is not None
    assert bytes(got[:8]) == start.to_bytes(8, "big")
    log.close()


def test_tail_reads_do_not_list_the_directory_until_a_roll(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing cost a tail reader ~half of each read; a roll or a deletion still gets seen."""
    from shmbroker.disk import reader as reader_module

    listings: list[Path] = []
    real = reader_module.list_segment_bases
    monkeypatch.setattr(reader_module, "list_segment_bases", lambda d: listings.append(d) or real(d))
    log = Log.open(log_dir, small_config(), now_ms=0)  # 4096-byte segments
    log.append(make_batch([b"v" * 100]), now_ms=0)
    reader = LogReader(log_dir)
    listed = len(listings)
    for _ in range(50):  # the tail of the one segment there is, again and again
        end = log.log_end_offset
        got = reader.read(end - 1, 1 << 20, upto_offset=end)
        assert got is not None
        log.append(make_batch([b"v" * 100]), now_ms=0)
    assert len(log.segments) > 1  # it rolled meanwhile ...
    assert len(listings) - listed < 5  # ... and was listed only when a read ran past what it knew
    end = log.log_end_offset
    for offset in range(end):  # every offset still reads what the log holds
        got = reader.read(offset, 1, upto_offset=end)
        assert got is not None and bytes(got) == read_bytes(log, offset, 1, end), offset
    log.close()


def test_reader_holds_only_the_active_index_open_and_follows_its_growth(log_dir: Path) -> None:
    import os

    def open_fds() -> int:
        """Index files open read-only in this process: the reader's (the log opens its own O_RDWR)."""
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
                info = Path(f"/proc/self/fdinfo/{fd}").read_text()
                flags = int(info.split("flags:")[1].split()[0], 8)
            except (OSError, IndexError):
                continue
            count += target.endswith(".index") and flags & os.O_ACCMODE == os.O_RDONLY
        return count

    log = Log.open(log_dir, small_config(), now_ms=0)  # 4096-byte segments, an entry per 512 bytes
    before = open_fds()
    reader = LogReader(log_dir)
    for _ in range(200):  # a tail reader following appends across many rolls
        log.append(make_batch([b"v" * 300]), now_ms=0)
        end = log.log_end_offset
        got = reader.read(end - 1, 1 << 20, upto_offset=end)
        assert got is not None and bytes(got) == read_bytes(log, end - 1, 1 << 20, end)
    assert len(log.segments) > 10
    assert open_fds() - before <= 1  # the active segment's index only (sealed ones: read once, closed)
    for offset in range(0, log.log_end_offset, 7):  # every index entry picked up: reads from anywhere
        got = reader.read(offset, 1, upto_offset=log.log_end_offset)
        assert got is not None and bytes(got) == read_bytes(log, offset, 1, log.log_end_offset)
    reader.close()
    assert open_fds() == before
    log.close()


def test_a_segment_rolled_and_deleted_behind_a_lagging_reader_is_out_of_range(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(retention_bytes=5000, retention_ms=-1), now_ms=0)
    log.append(make_batch([b"v" * 200]), now_ms=0)
    reader = LogReader(log_dir)
    assert reader.read(0, 100, upto_offset=1) is not None  # it knows one segment, mapped
    for _ in range(60):
        log.append(make_batch([b"v" * 200]), now_ms=0)
    assert log.apply_retention(0) > 0  # that segment rolled, then went
    with pytest.raises(OffsetOutOfRangeError):  # not its bytes from the mapping it still holds
        reader.read(0, 100, upto_offset=log.log_end_offset)
    log.close()


def test_reader_never_returns_a_batch_at_or_above_upto(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    for _ in range(10):
        log.append(make_batch([b"a", b"b"]), now_ms=0)
    reader = LogReader(log_dir)
    assert reader.read(4, 1 << 20, upto_offset=4) is None
    got = reader.read(0, 1 << 20, upto_offset=5)  # batches 0-1, 2-3, 4-5: the last holds offset 4
    assert got is not None
    assert len(got) == 3 * len(make_batch([b"a", b"b"]))
    log.close()


def test_a_damaged_batch_header_ends_a_read_and_the_next_read_raises(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)
    one = len(make_batch([b"a", b"b"]))
    for _ in range(3):
        log.append(make_batch([b"a", b"b"]), now_ms=0)
    path = log.segments[-1][1]
    log.close()
    with path.open("r+b") as f:  # the third batch's magic: 2 -> 0, so where it ends is unknown
        f.seek(2 * one + 16)
        f.write(b"\0")
    reader = LogReader(log_dir)
    got = reader.read(0, 1 << 20, upto_offset=6)
    assert got is not None
    assert len(got) == 2 * one  # the batches before it, not an error for the whole read
    with pytest.raises(CorruptRecordError):
        reader.read(4, 1 << 20, upto_offset=6)
    reader.close()


def test_reader_of_an_empty_or_missing_log(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    reader = LogReader(tmp_path / "p")
    assert reader.read(0, 100, upto_offset=0) is None
    with pytest.raises(OffsetOutOfRangeError):
        reader.read(0, 100, upto_offset=1)
    log = Log.open(tmp_path / "p", small_config(), now_ms=0)
    assert reader.read(0, 100, upto_offset=0) is None
    log.append(make_batch([b"x"]), now_ms=0)
    got = reader.read(0, 100, upto_offset=1)
    assert got is not None
    assert len(got) == len(make_batch([b"x"]))
    log.close()


def test_reader_stops_at_the_data_not_at_the_reserved_zeros(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)
    rng = random.Random(9)
    for _ in range(25):
        log.append(random_batch(rng), now_ms=0)
    end = log.log_end_offset
    path = log.segments[-1][1]
    assert path.stat().st_size > log.statistics().size_bytes  # zeros reserved past the data
    reader = LogReader(log_dir)
    for offset in range(end):
        got = reader.read(offset, 1 << 30, upto_offset=end)
        assert got is not None
        assert bytes(got) == read_bytes(log, offset, 1 << 30)
    assert reader.read(end, 1 << 30, upto_offset=end) is None
    assert log.read(end, 1 << 30) is None
    whole = reader.read(0, 1 << 30, upto_offset=end)
    assert whole is not None
    assert len(whole) == log.statistics().size_bytes
    log.close()
    reader.close()


def test_reader_picks_up_new_index_entries_and_skips_the_read_when_there_are_none(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20), now_ms=0)
    reader = LogReader(log_dir)
    log.append(make_batch([b"x" * 100] * 3), now_ms=0)
    assert reader.read(0, 1 << 20, upto_offset=log.log_end_offset) is not None
    (segment,) = reader._segments.values()
    before = segment.offsets
    assert reader.read(0, 1 << 20, upto_offset=log.log_end_offset) is not None
    assert segment.offsets is before  # the index did not grow: not re-read
    while log.log_end_offset < 200:  # well past index_interval_bytes (512)
        log.append(make_batch([b"x" * 100] * 3), now_ms=0)
    hwm = log.log_end_offset
    got = reader.read(hwm - 1, 1 << 20, upto_offset=hwm)
    assert got is not None and bytes(got) == read_bytes(log, hwm - 1, 1 << 20, hwm)
    assert len(segment.offsets) > len(before)  # the new entries were read
    log.close()
    reader.close()


def test_reads_of_big_values_across_segment_rolls_return_the_stored_bytes(log_dir: Path) -> None:
    """Values of many sizes (0 B to well above 64 KiB) in segments that roll every few batches: every
    read is the log's bytes, and reading from the start decodes to exactly the values appended."""
    rng = random.Random(5)
    log = Log.open(log_dir, small_config(segment_bytes=400_000), now_ms=0)
    sizes = [0, 1, 4095, 4097, 65_535, 65_536, 65_537, 100_000, 300_000]
    values: list[bytes] = []
    for _ in range(30):
        batch = [rng.randbytes(rng.choice(sizes)) for _ in range(rng.randint(1, 3))]
        log.append(make_batch(batch), now_ms=0)
        values.extend(batch)
    assert len(log.segments) > 3
    end = log.log_end_offset
    reader = LogReader(log_dir)
    for offset in range(end):
        for max_bytes in (1, 70_000, 1 << 20):
            got = reader.read(offset, max_bytes, upto_offset=end)
            assert got is not None
            assert bytes(got) == read_bytes(log, offset, max_bytes, end), (offset, max_bytes)
    seen: list[bytes] = []
    position = 0
    while position < end:
        got = reader.read(position, 1 << 20, upto_offset=end)
        assert got is not None
        for start, header in records.iter_batches(got):
            _h, rows = records.decode_rows(
                got[start : start + header.size_bytes], max_uncompressed_bytes=1 << 30
            )
            seen.extend(value or b"" for _o, _t, _k, value, _hs in rows)
            position = header.next_offset
    assert seen == values
    log.close()
    reader.close()
