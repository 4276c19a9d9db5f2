"""pwritev_all: every byte lands where it belongs, in calls of at most WRITE_CALL_BYTES that end on
multiples of it, across short writes and more buffers than IOV_MAX."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from shmbroker.disk import segment
from shmbroker.disk.segment import WRITE_CALL_BYTES, pwritev_all


def _views(rng: random.Random, count: int, largest: int) -> list[memoryview]:
    return [memoryview(rng.randbytes(rng.choice([0, 1, 100, largest // 3, largest]))) for _ in range(count)]


@pytest.mark.parametrize("short_bytes", [None, 10_000, 4095])  # the kernel may write less than asked
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_byte_lands_in_calls_bounded_by_the_boundaries(
    tmp_path: Path, seed: int, short_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    calls: list[tuple[int, int]] = []  # (position, bytes asked) of each pwritev the kernel saw
    real_pwritev = os.pwritev

    def recording_pwritev(fd: int, buffers: list[memoryview], position: int) -> int:
        asked = sum(len(b) for b in buffers)
        calls.append((position, asked))
        if short_bytes is not None and asked > short_bytes:  # a short write: the first bytes only
            written = 0
            kept = []
            for b in buffers:
                kept.append(b[: short_bytes - written])
                written += len(kept[-1])
                if written == short_bytes:
                    break
            return real_pwritev(fd, kept, position)
        return real_pwritev(fd, buffers, position)

    monkeypatch.setattr(segment.os, "pwritev", recording_pwritev)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        expected = bytearray()
        position = rng.randint(0, 3 * WRITE_CALL_BYTES)
        os.pwrite(fd, b"\xee" * position, 0)
        expected += b"\xee" * position
        for largest in (300, 200_000, 700_000):
            views = _views(rng, 40, largest)
            calls.clear()
            pwritev_all(fd, views, position)
            data = b"".join(bytes(v) for v in views)
            expected += data
            position += len(data)
            assert sum(asked for _p, asked in calls) >= len(data)
            if len(data) > WRITE_CALL_BYTES:  # split: no call crosses a multiple of WRITE_CALL_BYTES
                for start, asked in calls:
                    assert asked <= WRITE_CALL_BYTES
                    assert start // WRITE_CALL_BYTES == (start + asked - 1) // WRITE_CALL_BYTES
        assert path.read_bytes() == bytes(expected)
    finally:
        os.close(fd)


def test_more_buffers_than_iov_max_in_one_call_are_all_written(tmp_path: Path) -> None:
    views = [memoryview(bytes([i % 251])) for i in range(segment.IOV_MAX * 2 + 7)]  # 1 byte each
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwritev_all(fd, views, 0)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(bytes(v) for v in views)
