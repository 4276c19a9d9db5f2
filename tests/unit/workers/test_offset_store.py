"""Offset store: round trip, torn tails, garbage, compaction, and an acked commit surviving SIGKILL."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shmbroker.errors import ClosedError, CorruptRecordError, KafkaStorageError
from shmbroker.workers.offset_store import MAGIC, OffsetStore, StoredOffset

Model = dict[str, dict[tuple[str, int], tuple[int, str]]]


def plain(loaded: dict[str, dict[tuple[str, int], StoredOffset]]) -> Model:
    return {g: {tp: (v.offset, v.metadata) for tp, v in entries.items()} for g, entries in loaded.items()}


def write_commits(path: Path, count: int, seed: int = 0) -> tuple[list[int], list[Model]]:
    """``count`` commits; the file size after each, and the model after each (index 0 = empty)."""
    rng = random.Random(seed)
    store, sizes = OffsetStore(path), []
    model: Model = {}
    models: list[Model] = [{}]
    for i in range(count):
        group = f"g{rng.randrange(3)}"
        commit = {
            (f"t{rng.randrange(2)}", rng.randrange(4)): (rng.randrange(10**6), f"m{i}é" * rng.randrange(3))
        }
        store.commit(group, commit, commit_ms=i)
        model.setdefault(group, {}).update(commit)
        sizes.append(path.stat().st_size)
        models.append({g: dict(v) for g, v in model.items()})
    store.close()
    return sizes, models


def test_round_trip_with_group_deletion(tmp_path: Path) -> None:
    path = tmp_path / "offsets.log"
    store = OffsetStore(path)
    assert store.load() == {}
    store.commit("a", {("t", 0): (5, "x"), ("t", 1): (7, "")}, commit_ms=1000)
    store.commit("b", {("u", 3): (1, "meta")})
    store.commit("a", {("t", 0): (6, "y")})
    store.delete_group("b")
    store.close()
    again = OffsetStore(path)
    assert again.load() == {"a": {("t", 0): StoredOffset(6, "y", 0), ("t", 1): StoredOffset(7, "", 1000)}}
    assert again.bytes_cut == 0
    again.close()
    with pytest.raises(ClosedError):
        again.commit("a", {("t", 0): (1, "")})


def test_torn_tail_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    path = tmp_path / "offsets.log"
    sizes, models = write_commits(path, 4)
    whole = path.read_bytes()
    for cut in range(sizes[-2], sizes[-1]):
        path.write_bytes(whole[:cut])
        store = OffsetStore(path)
        assert plain(store.load()) == models[-2], cut
        assert path.stat().st_size == sizes[-2]
        assert store.bytes_cut == cut - sizes[-2]
        store.commit("z", {("t", 0): (1, "")})  # appends land after the cut, and survive
        store.close()
        assert plain(OffsetStore(path).load()) == {**models[-2], "z": {("t", 0): (1, "")}}


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_garbage_from_a_random_point_keeps_exactly_the_prefix(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "offsets.log"
    sizes, models = write_commits(path, 20, seed)
    rng = random.Random(seed)
    start = rng.randrange(len(MAGIC), sizes[-1])
    data = bytearray(path.read_bytes())
    data[start:] = rng.randbytes(len(data) - start + rng.randrange(50))
    path.write_bytes(bytes(data))
    survivors = sum(1 for size in sizes if size <= start)  # records wholly before the garbage
    store = OffsetStore(path)
    assert plain(store.load()) == models[survivors]
    assert path.stat().st_size == (sizes[survivors - 1] if survivors else len(MAGIC))


def test_a_torn_magic_is_an_empty_store_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "offsets.log"
    path.write_bytes(MAGIC[:3])
    assert OffsetStore(path).load() == {}
    assert path.read_bytes() == MAGIC
    path.write_bytes(b"not ours at all")
    with pytest.raises(CorruptRecordError):
        OffsetStore(path)


def test_compaction_on_open_keeps_the_latest_values(tmp_path: Path) -> None:
    path = tmp_path / "offsets.log"
    store = OffsetStore(path)
    for i in range(500):
        store.commit("g", {("t", i % 5): (i, f"v{i}")})
    store.commit("dead", {("t", 0): (1, "")})
    store.delete_group("dead")
    store.close()
    big = path.stat().st_size
    again = OffsetStore(path, compact_min_garbage=100)
    assert again.compacted
    assert plain(again.load()) == {"g": {("t", p): (495 + p, f"v{495 + p}") for p in range(5)}}
    assert path.stat().st_size < big // 50
    assert not path.with_name(path.name + ".tmp").exists()
    again.commit("g", {("t", 0): (1000, "")})
    again.close()
    assert plain(OffsetStore(path).load())["g"][("t", 0)] == (1000, "")


def test_compact_rewrites_to_the_given_table(tmp_path: Path) -> None:
    path = tmp_path / "offsets.log"
    store = OffsetStore(path)
    for i in range(50):
        store.commit("g", {("t", 0): (i, "")})
    store.compact({"g": {("t", 0): StoredOffset(49, "", 7)}})
    store.commit("h", {("t", 1): (3, "")})
    store.close()
    assert plain(OffsetStore(path).load()) == {"g": {("t", 0): (49, "")}, "h": {("t", 1): (3, "")}}


def test_a_failed_write_raises_storage_error_and_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OffsetStore(tmp_path / "offsets.log")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(KafkaStorageError, match="No space"):
        store.commit("g", {("t", 0): (1, "")})
    with pytest.raises(ClosedError):
        store.commit("g", {("t", 0): (1, "")})


CHILD = textwrap.dedent(
    """
    import sys
    from shmbroker.workers.offset_store import OffsetStore
    store = OffsetStore(sys.argv[1])
    i = 0
    while True:
        i += 1
        store.commit("g", {("t", 0): (i, "m"), ("t", 1): (2 * i, "")})
        print(i, flush=True)  # acknowledged: commit() returned
    """
)


def test_an_acknowledged_commit_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "offsets.log"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        acked = [int(child.stdout.readline()) for _ in range(20)]
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    loaded = OffsetStore(path).load()["g"]
    assert loaded[("t", 0)].offset >= acked[-1]
    assert loaded[("t", 1)].offset == 2 * loaded[("t", 0)].offset  # one commit, never half of one
