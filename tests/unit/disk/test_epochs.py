"""Leader-epoch cache and the follower's append: divergence by epochs, as KIP-101 describes it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shmbroker.disk import epochs
from shmbroker.disk.epochs import EpochCache, EpochEntry, agreed_end, end_offset_for, epoch_at
from shmbroker.disk.log import Log
from shmbroker.errors import CorruptRecordError
from shmbroker.records import iter_batches
from tests.unit.disk.conftest import make_batch, small_config

E = EpochEntry


def test_checkpoint_round_trip_and_kafka_text_format(tmp_path: Path) -> None:
    cache = EpochCache(tmp_path)
    assert cache.assign(0, 0) and cache.assign(3, 120) and not cache.assign(2, 130)
    assert (tmp_path / epochs.EPOCH_FILE).read_text() == "0\n2\n0 0\n3 120\n"
    assert EpochCache(tmp_path).entries == [E(0, 0), E(3, 120)]
    cache.truncate_from_end(120)
    assert EpochCache(tmp_path).entries == [E(0, 0)]


@pytest.mark.parametrize("text", ["", "0\n2\n0 0\n", "1\n0\n", "0\n2\n3 0\n1 5\n", "0\n1\nx y\n"])
def test_bad_checkpoint_is_a_typed_error(text: str) -> None:
    with pytest.raises(CorruptRecordError):
        epochs.parse(text)


def test_epoch_at_and_end_offset_for() -> None:
    cache = [E(0, 0), E(2, 100), E(5, 150)]
    assert [epoch_at(cache, o) for o in (0, 99, 100, 149, 150, 10**9)] == [0, 0, 2, 2, 5, 5]
    assert epoch_at([], 7) == epochs.NO_EPOCH
    assert end_offset_for(cache, 0, 200) == (0, 100)
    assert end_offset_for(cache, 3, 200) == (2, 150)  # largest epoch <= 3 is 2; it ends where 5 starts
    assert end_offset_for(cache, 9, 200) == (5, 200)


def test_agreed_end_is_the_first_offset_the_logs_may_differ() -> None:
    old_leader = [E(0, 0)]  # wrote 0..120 in epoch 0, died; follower had 0..100
    new_leader = [E(0, 0), E(1, 100)]  # promoted at 100 with epoch 1, wrote to 150
    assert agreed_end(new_leader, 150, old_leader, 120) == 100
    assert agreed_end(new_leader, 150, [E(0, 0)], 80) == 80  # a lagging follower: nothing to cut
    assert agreed_end(new_leader, 150, new_leader, 150) == 150
    # The follower led epoch 2 that the leader never saw: cut where epoch 2 starts.
    assert agreed_end([E(0, 0), E(3, 50)], 90, [E(0, 0), E(2, 40)], 60) == 40
    assert agreed_end([], 10, [], 20) == 10  # no epochs at all (epoch -1 on both): prefix agrees


def test_agreed_end_against_a_brute_force_model() -> None:
    """Random histories: the answer is exactly the first offset whose writer epoch differs."""
    rng = random.Random(7)
    for _ in range(500):
        shared = sorted(rng.sample(range(0, 60), rng.randint(0, 3)))
        base = [E(i, s) for i, s in enumerate(shared)]

        def extend(entries: list[EpochEntry], first_epoch: int) -> tuple[list[EpochEntry], int]:
            out = list(entries)
            start = out[-1].start_offset if out else 0
            for k in range(rng.randint(0, 2)):
                start += rng.randint(0, 20)
                out.append(E(first_epoch + k * 2, start))
            return out, start + rng.randint(0, 20)

        a, a_end = extend(base, len(base))
        b, b_end = extend(base, len(base) + 1)  # the two sides never share a new epoch
        expected = next(
            (o for o in range(min(a_end, b_end)) if epoch_at(a, o) != epoch_at(b, o)), min(a_end, b_end)
        )
        assert agreed_end(a, a_end, b, b_end) == expected


def _stamped(log: Log, values: list[bytes], epoch: int) -> bytearray:
    batch = make_batch(values)
    log.append(batch, leader_epoch=epoch, now_ms=0)
    return batch  # stamped in place with the leader's offset and epoch


def test_follower_appends_leader_batches_verbatim_and_learns_epochs(tmp_path: Path) -> None:
    leader = Log.open(tmp_path / "leader", small_config())
    follower = Log.open(tmp_path / "follower", small_config())
    sent = [_stamped(leader, [b"a", b"b"], 0), _stamped(leader, [b"c"], 0), _stamped(leader, [b"d"], 4)]
    follower.append_as_follower([memoryview(b) for b in sent], now_ms=0)
    assert follower.log_end_offset == leader.log_end_offset == 4
    assert follower.epochs.entries == leader.epochs.entries == [E(0, 0), E(4, 3)]
    leader.flush()
    follower.flush()
    for base, path in follower.segments:
        assert path.read_bytes().rstrip(b"\0") == dict(leader.segments)[base].read_bytes().rstrip(b"\0")
    leader.close()
    follower.close()


def test_follower_refuses_gaps_overlaps_and_bad_crcs_whole(tmp_path: Path) -> None:
    leader = Log.open(tmp_path / "leader", small_config())
    follower = Log.open(tmp_path / "follower", small_config())
    first, second = _stamped(leader, [b"a"], 0), _stamped(leader, [b"b"], 0)
    with pytest.raises(CorruptRecordError):
        follower.append_as_follower([memoryview(second)], now_ms=0)  # a gap: log ends at 0
    torn = bytearray(second)
    torn[-1] ^= 0xFF
    with pytest.raises(CorruptRecordError):
        follower.append_as_follower([memoryview(first), memoryview(torn)], now_ms=0)
    assert follower.log_end_offset == 0  # refused whole: nothing of the first batch either
    follower.append_as_follower([memoryview(first)], now_ms=0)
    with pytest.raises(CorruptRecordError):
        follower.append_as_follower([memoryview(first)], now_ms=0)  # an overlap
    assert follower.log_end_offset == 1
    follower.close()
    leader.close()


def test_truncate_and_restart_keep_the_epoch_cache_in_step(tmp_path: Path) -> None:
    log = Log.open(tmp_path, small_config())
    for epoch in (0, 0, 2, 2, 5):
        _stamped(log, [b"x", b"y"], epoch)
    assert log.epochs.entries == [E(0, 0), E(2, 4), E(5, 8)]
    log.truncate_to(5)
    assert log.log_end_offset == 4 and log.epochs.entries == [E(0, 0)]  # the straddling batch went whole
    log.close()
    reopened = Log.open(tmp_path, small_config())
    assert reopened.epochs.entries == [E(0, 0)]
    reopened.restart_at(40)
    assert (reopened.log_start_offset, reopened.log_end_offset, reopened.epochs.entries) == (40, 40, [])
    _stamped(reopened, [b"z"], 6)
    view = memoryview(reopened.segments[-1][1].read_bytes())
    assert [h.partition_leader_epoch for _p, h in iter_batches(view[: reopened.statistics().size_bytes])] == [
        6
    ]
    reopened.close()
