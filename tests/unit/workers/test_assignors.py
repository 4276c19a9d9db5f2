"""Assignors: Kafka's documented examples, balance, stickiness, and properties over random input."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmbroker.workers.assignors import (
    COOPERATIVE_STICKY,
    RANGE,
    ROUNDROBIN,
    STRATEGIES,
    MemberSubscription,
    TopicPartition,
    assign,
    cooperative_step,
)


def subs(*topics_per_member: tuple[str, ...], **kw: object) -> dict[str, MemberSubscription]:
    return {f"c{i}": MemberSubscription(list(topics)) for i, topics in enumerate(topics_per_member)}


def tps(topic: str, *partitions: int) -> list[TopicPartition]:
    return [(topic, p) for p in partitions]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_three_members_six_partitions_get_two_each(strategy: str) -> None:
    out = assign(strategy, subs(("t",), ("t",), ("t",)), {"t": 6})
    assert sorted(len(v) for v in out.values()) == [2, 2, 2]
    assert sorted(tp for v in out.values() for tp in v) == tps("t", *range(6))


def test_range_matches_kafkas_documented_example() -> None:
    # RangeAssignor javadoc: C0, C1 on t0, t1 with 3 partitions each.
    out = assign(RANGE, subs(("t0", "t1"), ("t0", "t1")), {"t0": 3, "t1": 3})
    assert out == {"c0": tps("t0", 0, 1) + tps("t1", 0, 1), "c1": tps("t0", 2) + tps("t1", 2)}


def test_range_gives_the_extra_partitions_to_the_first_members_in_contiguous_ranges() -> None:
    out = assign(RANGE, subs(("t",), ("t",), ("t",)), {"t": 8})
    assert out == {"c0": tps("t", 0, 1, 2), "c1": tps("t", 3, 4, 5), "c2": tps("t", 6, 7)}


def test_roundrobin_matches_kafkas_documented_examples() -> None:
    out = assign(ROUNDROBIN, subs(("t0", "t1"), ("t0", "t1")), {"t0": 3, "t1": 3})
    assert out == {"c0": tps("t0", 0, 2) + tps("t1", 1), "c1": tps("t0", 1) + tps("t1", 0, 2)}
    # RoundRobinAssignor javadoc, unequal subscriptions.
    out = assign(ROUNDROBIN, subs(("t0",), ("t0", "t1"), ("t0", "t1", "t2")), {"t0": 1, "t1": 2, "t2": 3})
    assert out == {"c0": tps("t0", 0), "c1": tps("t1", 0), "c2": tps("t1", 1) + tps("t2", 0, 1, 2)}


def test_static_members_sort_first_by_instance_id() -> None:
    members = {
        "a-dynamic": MemberSubscription(["t"]),
        "z-static": MemberSubscription(["t"], group_instance_id="i1"),
    }
    assert assign(RANGE, members, {"t": 3}) == {"z-static": tps("t", 0, 1), "a-dynamic": tps("t", 2)}


def test_unknown_topics_and_strategies() -> None:
    assert assign(RANGE, subs(("gone",)), {"t": 2}) == {"c0": []}
    with pytest.raises(ValueError, match="unknown assignor"):
        assign("sticky-ish", subs(("t",)), {"t": 1})


def test_sticky_keeps_owned_partitions_when_a_member_leaves() -> None:
    first = assign(COOPERATIVE_STICKY, subs(("t",), ("t",), ("t",)), {"t": 6})
    survivors = {m: MemberSubscription(["t"], first[m], 1) for m in ("c0", "c1")}
    second = assign(COOPERATIVE_STICKY, survivors, {"t": 6})
    for m in survivors:
        assert set(first[m]) <= set(second[m])
        assert len(second[m]) == 3


def test_sticky_moves_only_what_balance_needs_when_a_member_joins() -> None:
    owned = {f"c{i}": MemberSubscription(["t"], tps("t", *range(3 * i, 3 * i + 3)), 4) for i in range(2)}
    owned["c2"] = MemberSubscription(["t"])
    out = assign(COOPERATIVE_STICKY, owned, {"t": 6})
    assert sorted(len(v) for v in out.values()) == [2, 2, 2]
    moved = sum(1 for m in ("c0", "c1") for tp in owned[m].owned if tp not in out[m])
    assert moved == 2


def test_sticky_resolves_conflicting_claims_by_generation() -> None:
    members = {
        "old": MemberSubscription(["t"], tps("t", 0, 1), generation=3),
        "new": MemberSubscription(["t"], tps("t", 1), generation=4),
    }
    out = assign(COOPERATIVE_STICKY, members, {"t": 2})
    assert out == {"old": tps("t", 0), "new": tps("t", 1)}


def test_sticky_balances_unequal_subscriptions() -> None:
    members = subs(("a",), ("a", "b"), ("a", "b"))
    out = assign(COOPERATIVE_STICKY, members, {"a": 3, "b": 6})
    assert sorted(len(v) for v in out.values()) == [3, 3, 3]
    assert all(tp[0] == "a" for tp in out["c0"])


def test_cooperative_step_withholds_partitions_still_owned_elsewhere() -> None:
    owned = {"a": tps("t", 0, 1, 2, 3), "b": []}
    target = {"a": tps("t", 0, 1), "b": tps("t", 2, 3)}
    assert cooperative_step(owned, target) == {"a": tps("t", 0, 1), "b": []}
    assert cooperative_step({"a": tps("t", 0, 1), "b": []}, target) == target


# -- properties ---------------------------------------------------------------------------------------
TOPICS = ["t0", "t1", "t2", "t3"]


@st.composite
def groups(draw: st.DrawFn) -> tuple[dict[str, MemberSubscription], dict[str, int]]:
    counts = {t: draw(st.integers(0, 7)) for t in TOPICS}
    everything = [(t, p) for t in TOPICS for p in range(counts[t] + 1)]  # some claims are stale
    members: dict[str, MemberSubscription] = {}
    for i in range(draw(st.integers(1, 7))):
        topics = draw(st.lists(st.sampled_from(TOPICS), min_size=1, max_size=4, unique=True))
        owned = draw(st.lists(st.sampled_from(everything), max_size=6, unique=True))
        static = draw(st.none() | st.sampled_from(["i0", "i1", "i2"]))
        if static in {s.group_instance_id for s in members.values()}:
            static = None
        members[f"m{i:02d}"] = MemberSubscription(topics, owned, draw(st.integers(-1, 3)), static)
    return members, counts


@settings(max_examples=150, deadline=None)
@given(groups(), st.sampled_from(STRATEGIES))
def test_every_partition_goes_to_exactly_one_subscribed_member(
    group: tuple[dict[str, MemberSubscription], dict[str, int]], strategy: str
) -> None:
    members, counts = group
    out = assign(strategy, members, counts)
    assert set(out) == set(members)
    given_out = [tp for v in out.values() for tp in v]
    wanted = {(t, p) for s in members.values() for t in s.topics for p in range(counts[t])}
    assert sorted(given_out) == sorted(wanted)  # each exactly once
    for member, partitions in out.items():
        assert all(t in members[member].topics for t, _ in partitions)
    reordered = dict(reversed(list(members.items())))
    assert assign(strategy, reordered, counts) == out  # deterministic, whatever the dict order


@settings(max_examples=150, deadline=None)
@given(groups())
def test_sticky_is_balanced_and_stable(group: tuple[dict[str, MemberSubscription], dict[str, int]]) -> None:
    members, counts = group
    out = assign(COOPERATIVE_STICKY, members, counts)
    sizes = [len(v) for v in out.values()]
    first_topics = {t for t in members[next(iter(members))].topics if counts[t]}
    if all({t for t in s.topics if counts[t]} == first_topics for s in members.values()):
        assert max(sizes) - min(sizes) <= 1
    for member, partitions in out.items():  # no single move to an eligible, emptier member helps
        for topic, _ in partitions:
            for other, sub in members.items():
                if topic in sub.topics:
                    assert len(out[other]) >= len(partitions) - 1, (member, other)
    owned_now = {m: MemberSubscription(s.topics, out[m], 9, s.group_instance_id) for m, s in members.items()}
    assert assign(COOPERATIVE_STICKY, owned_now, counts) == out  # a balanced assignment stays put


# -- kafka-python's ports of the Java assignors as an oracle ----------------------------------------
class _Cluster:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.counts[topic])) if self.counts.get(topic) else None


def _kafka_python(strategy: str, members: dict[str, MemberSubscription], counts: dict[str, int]) -> object:
    from types import SimpleNamespace

    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    assignor = RangePartitionAssignor if strategy == RANGE else RoundRobinPartitionAssignor
    rows = [
        SimpleNamespace(member_id=m, group_instance_id=None, metadata=SimpleNamespace(topics=list(s.topics)))
        for m, s in members.items()
    ]
    out = assignor.assign(_Cluster(counts), rows)
    return {m: sorted((t, p) for t, ps in a.assignment for p in ps) for m, a in out.items()}


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_range_and_roundrobin_agree_with_kafka_python(data: st.DataObject) -> None:
    pytest.importorskip("kafka")
    counts = {t: data.draw(st.integers(0, 9)) for t in TOPICS}
    strategy = data.draw(st.sampled_from([RANGE, ROUNDROBIN]))
    shared = data.draw(st.lists(st.sampled_from(TOPICS), min_size=1, max_size=4, unique=True))
    members = {}
    for i in range(data.draw(st.integers(1, 6))):
        # kafka-python's roundrobin breaks on unequal subscriptions (a bug of the port), so share them
        topics = (
            shared if strategy == ROUNDROBIN else data.draw(st.lists(st.sampled_from(TOPICS), min_size=1))
        )
        members[f"m-{data.draw(st.uuids()).hex[:6]}-{i}"] = MemberSubscription(sorted(set(topics)))
    assert assign(strategy, members, counts) == _kafka_python(strategy, members, counts)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_thousand_members_on_ten_thousand_partitions_is_quick(strategy: str) -> None:
    topics = [f"t{i}" for i in range(5)]
    members = {f"m{i:04d}": MemberSubscription(topics) for i in range(1_000)}
    started = time.perf_counter()
    out = assign(strategy, members, dict.fromkeys(topics, 2_000))
    assert time.perf_counter() - started < 1.0
    assert {len(v) for v in out.values()} == {10}
