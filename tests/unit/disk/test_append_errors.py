"""Bad input is refused with a typed error and nothing is written (invariant 5)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from shmbroker.disk.log import Log
from shmbroker.errors import CorruptRecordError, RecordTooLargeError
from tests.unit.disk.conftest import make_batch, small_config


def flip_crc_byte(b: bytearray) -> bytearray:
    b[-1] ^= 1
    return b


def wrong_magic(b: bytearray) -> bytearray:
    b[16] = 1
    return b


def truncated(b: bytearray) -> bytearray:
    return b[:-3]


def trailing_bytes(b: bytearray) -> bytearray:
    return b + b"\0\0"


def short_header(b: bytearray) -> bytearray:
    return b[:40]


def length_too_small(b: bytearray) -> bytearray:
    struct.pack_into(">i", b, 8, 10)
    return b


BAD: dict[str, tuple[Callable[[bytearray], bytearray], type[Exception]]] = {
    "bad_crc": (flip_crc_byte, CorruptRecordError),
    "wrong_magic": (wrong_magic, CorruptRecordError),
    "truncated": (truncated, CorruptRecordError),
    "trailing_bytes": (trailing_bytes, CorruptRecordError),
    "short_header": (short_header, CorruptRecordError),
    "length_too_small": (length_too_small, CorruptRecordError),
}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("case", sorted(BAD), ids=str)
@pytest.mark.parametrize("many", [False, True], ids=["one", "good_then_bad"])
def test_append_refuses_bad_batch_and_writes_nothing(log_dir: Path, case: str, many: bool) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    log.append(make_batch([b"ok"]), now_ms=0)
    before, end_before = snapshot(log_dir), log.log_end_offset
    mutate, error = BAD[case]
    good = make_batch([b"fine"])
    bad = mutate(make_batch([b"a" * 50, b"b"]))
    batches = [good, bad] if many else [bad]
    with pytest.raises(error):
        log.append_many(batches, now_ms=0)
    assert snapshot(log_dir) == before
    assert log.log_end_offset == end_before
    assert good[:8] == bytes(8)  # not even stamped
    log.close()


def test_append_refuses_oversized_batch(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(max_message_bytes=1000), now_ms=0)
    before = snapshot(log_dir)
    with pytest.raises(RecordTooLargeError, match=r"max\.message\.bytes"):
        log.append(make_batch([b"x" * 2000]), now_ms=0)
    assert snapshot(log_dir) == before
    assert log.log_end_offset == 0
    log.close()


def test_append_refuses_read_only_buffer(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    with pytest.raises(TypeError, match="read-only"):
        log.append(memoryview(bytes(make_batch([b"x"]))), now_ms=0)
    log.close()


def test_append_overwrites_producer_offsets(log_dir: Path) -> None:
    """A producer's own base offset (here 500, out of order) is replaced, never trusted."""
    log = Log.open(log_dir, small_config(), now_ms=0)
    batch = make_batch([b"x"])
    struct.pack_into(">q", batch, 0, 500)
    assert log.append(batch, now_ms=0).base_offset == 0
    log.close()
