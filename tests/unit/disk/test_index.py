"""Index file layouts are pinned; lookups, persistence, torn entries and truncation."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from shmbroker.disk.index import INDEX_ENTRY, OffsetIndex
from shmbroker.disk.timeindex import TIMEINDEX_ENTRY, TimeIndex


def test_layouts_are_kafkas() -> None:
    assert INDEX_ENTRY.itemsize == struct.calcsize(">II") == 8
    assert TIMEINDEX_ENTRY.itemsize == struct.calcsize(">qI") == 12


def test_offset_index_lookup_persist_reload(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / "a.index", max_entries=100)
    for i in range(1, 11):
        index.append(i * 10, i * 1000)
    assert index.lookup(0) == (0, 0)
    assert index.lookup(55) == (50, 5000)
    assert index.lookup(60) == (60, 6000)
    assert index.lookup_position(6999) == (60, 6000)
    index.close()
    raw = (tmp_path / "a.index").read_bytes()
    assert raw[:8] == struct.pack(">II", 10, 1000)
    with (tmp_path / "a.index").open("ab") as f:
        f.write(b"\x00\x00\x00")  # a torn entry
    index = OffsetIndex(tmp_path / "a.index", max_entries=100)
    assert index.count == 10
    assert (tmp_path / "a.index").stat().st_size == 80
    index.truncate_to_offset(45)
    assert index.count == 4
    assert (tmp_path / "a.index").stat().st_size == 32
    assert index.is_sane(4001)
    assert not index.is_sane(4000)
    with pytest.raises(ValueError, match="after"):
        index.append(40, 9999)
    index.close()


def test_index_grows_past_initial_capacity(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / "b.index", max_entries=10_000)
    for i in range(1, 5000):
        index.append(i, i * 2)
    assert index.lookup(4321) == (4321, 8642)
    index.close()
    assert OffsetIndex(tmp_path / "b.index", max_entries=10).count == 4999


def test_time_index_appends_only_growing_timestamps(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / "a.timeindex", max_entries=100)
    assert index.maybe_append(100, 0)
    assert not index.maybe_append(100, 5)
    assert index.maybe_append(200, 10)
    assert index.maybe_append(250, 10)  # same batch, re-indexed at seal: raised in place
    assert index.count == 2
    assert index.last_timestamp_ms == 250
    assert index.lookup_before(100) == 0
    assert index.lookup_before(101) == 0
    assert index.lookup_before(251) == 10
    index.close()
    assert (tmp_path / "a.timeindex").read_bytes()[12:] == struct.pack(">qI", 250, 10)


@pytest.mark.parametrize("per_persist", [1, 3, 4, 5, 64])
def test_persist_writes_kafkas_bytes_whether_few_or_many_entries_wait(
    tmp_path: Path, per_persist: int
) -> None:
    """A few new entries are packed with struct, many with numpy: the file is the same either way."""
    import numpy as np

    index = OffsetIndex(tmp_path / "a.index", max_entries=10_000)
    times = TimeIndex(tmp_path / "a.timeindex", max_entries=10_000)
    rel = [3 * i + 1 for i in range(200)]
    pos = [4096 * i + 7 for i in range(200)]
    stamps = [1_700_000_000_000 + 5 * i for i in range(200)]
    for i in range(200):
        index.append(rel[i], pos[i])
        times.maybe_append(stamps[i], rel[i])
        if (i + 1) % per_persist == 0:
            index.persist()
            times.persist()
    index.close()
    times.close()
    want = np.empty(200, dtype=INDEX_ENTRY)
    want["relative_offset"], want["position"] = rel, pos
    assert (tmp_path / "a.index").read_bytes() == want.tobytes()
    want_t = np.empty(200, dtype=TIMEINDEX_ENTRY)
    want_t["timestamp_ms"], want_t["relative_offset"] = stamps, rel
    assert (tmp_path / "a.timeindex").read_bytes() == want_t.tobytes()
    assert (tmp_path / "a.index").read_bytes()[:8] == struct.pack(">II", 1, 7)
