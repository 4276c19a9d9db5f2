"""Kafka's partition assignors as pure functions: ``range``, ``roundrobin`` and ``cooperative-sticky``.

``assign(strategy, members, partitions_per_topic)`` returns, for every member id, the sorted list of
``(topic, partition)`` it should own. Invariants every strategy keeps (property-tested):

- every partition of every topic someone subscribes to goes to exactly one member subscribed to it;
- nothing goes to a member that does not subscribe to its topic; topics absent from
  ``partitions_per_topic`` (unknown or deleted) are skipped, as Kafka does;
- the result depends only on the input (no randomness, no dict-order dependence).

Members are ordered as Kafka's ``MemberInfo``: static members (with a ``group.instance.id``) first,
by instance id, then dynamic members by member id. ``range`` and ``roundrobin`` give the same
assignment as Kafka's Java assignors for the same input (without rack awareness). For
``cooperative-sticky`` we keep Kafka's contract rather than its exact tie-breaks: the result is
balanced (max - min <= 1 when all members subscribe to the same topics; otherwise no single move of
a partition to an eligible member with two fewer would help), and keeps as many owned partitions as
that allows. A partition claimed by two members goes to the claim with the higher generation; a tie
is an invalid claim and neither keeps it (Kafka does the same since 2.8).

Cooperative rebalancing never hands a partition to a new owner while the old owner still holds it:
``cooperative_step(owned, target)`` is the assignment to give now (the target minus partitions still
held by someone else); the withheld ones are revoked by their holders and assigned in a follow-up
rebalance. Pure; no I/O; safe to call from any thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]

RANGE, ROUNDROBIN, COOPERATIVE_STICKY = "range", "roundrobin", "cooperative-sticky"
STRATEGIES = (RANGE, ROUNDROBIN, COOPERATIVE_STICKY)
COOPERATIVE_STRATEGIES = frozenset({COOPERATIVE_STICKY})


@dataclass(frozen=True)
class MemberSubscription:
    """What one member asks for: its topics, what it owns now, and the generation it owned it in."""

    topics: tuple[str, ...] | list[str]
    owned: tuple[TopicPartition, ...] | list[TopicPartition] = field(default_factory=tuple)
    generation: int = -1
    group_instance_id: str | None = None


def member_order(member_id: str, subscription: MemberSubscription) -> tuple[int, str]:
    """Kafka's MemberInfo order: static members by instance id first, then member id."""
    if subscription.group_instance_id is not None:
        return (0, subscription.group_instance_id)
    return (1, member_id)


def assign(
    strategy: str, members: Mapping[str, MemberSubscription], partitions_per_topic: Mapping[str, int]
) -> dict[str, list[TopicPartition]]:
    """The target assignment: member id -> sorted partitions. ValueError for an unknown strategy."""
    if strategy == RANGE:
        out = _range(members, partitions_per_topic)
    elif strategy == ROUNDROBIN:
        out = _roundrobin(members, partitions_per_topic)
    elif strategy == COOPERATIVE_STICKY:
        out = _sticky(members, partitions_per_topic)
    else:
        raise ValueError(f"unknown assignor {strategy!r}; use one of {', '.join(STRATEGIES)}")
    return {member: sorted(tps) for member, tps in out.items()}


def cooperative_step(
    owned: Mapping[str, Iterable[TopicPartition]], target: Mapping[str, Iterable[TopicPartition]]
) -> dict[str, list[TopicPartition]]:
    """The assignment to give now: each member's target minus what any *other* member still owns.

    A member keeps what it owns and is still its target, gains what nobody owns, and loses (revokes)
    what it owns outside its target. Partitions withheld here go out after a follow-up rebalance.
    """
    holders: dict[TopicPartition, set[str]] = {}
    for member, tps in owned.items():
        for tp in tps:
            holders.setdefault(tp, set()).add(member)
    return {
        member: sorted(tp for tp in tps if holders.get(tp, {member}) <= {member})
        for member, tps in target.items()
    }


def _sorted_members(members: Mapping[str, MemberSubscription]) -> list[str]:
    return sorted(members, key=lambda m: member_order(m, members[m]))


def _range(
    members: Mapping[str, MemberSubscription], partitions_per_topic: Mapping[str, int]
) -> dict[str, list[TopicPartition]]:
    out: dict[str, list[TopicPartition]] = {m: [] for m in members}
    ordered = _sorted_members(members)
    for topic in sorted({t for s in members.values() for t in s.topics}):
        count = partitions_per_topic.get(topic, 0)
        consumers = [m for m in ordered if topic in members[m].topics]
        if count <= 0 or not consumers:
            continue
        # Kafka: the first n % m consumers get one partition more, in contiguous ranges.
        per_member, extra = divmod(count, len(consumers))
        for i, member in enumerate(consumers):
            start = per_member * i + min(i, extra)
            length = per_member + (1 if i < extra else 0)
            out[member].extend((topic, p) for p in range(start, start + length))
    return out


def _roundrobin(
    members: Mapping[str, MemberSubscription], partitions_per_topic: Mapping[str, int]
) -> dict[str, list[TopicPartition]]:
    out: dict[str, list[TopicPartition]] = {m: [] for m in members}
    ordered = _sorted_members(members)
    if not ordered:
        return out
    subscribed = {m: set(members[m].topics) for m in ordered}
    topics = sorted({t for s in subscribed.values() for t in s})
    cursor = 0  # Kafka's CircularIterator over the sorted members, shared across all topics
    for topic in topics:
        for partition in range(partitions_per_topic.get(topic, 0)):
            while topic not in subscribed[ordered[cursor]]:
                cursor = (cursor + 1) % len(ordered)
            out[ordered[cursor]].append((topic, partition))
            cursor = (cursor + 1) % len(ordered)
    return out


def _valid_owned(
    members: Mapping[str, MemberSubscription], partitions: set[TopicPartition]
) -> dict[str, list[TopicPartition]]:
    """Owned claims that still count: partition exists, owner subscribes, highest generation wins."""
    best: dict[TopicPartition, tuple[int, list[str]]] = {}
    for member, sub in members.items():
        for topic, partition in set(sub.owned):
            tp_ = (str(topic), int(partition))
            if tp_ not in partitions or tp_[0] not in sub.topics:
                continue
            generation, claimants = best.get(tp_, (-(2**63), []))
            if sub.generation > generation:
                best[tp_] = (sub.generation, [member])
            elif sub.generation == generation:
                claimants.append(member)
    kept: dict[str, list[TopicPartition]] = {m: [] for m in members}
    for tp, (_, claimants) in best.items():
        if len(claimants) == 1:  # two claims in one generation: neither can be trusted
            kept[claimants[0]].append(tp)
    return {m: sorted(tps) for m, tps in kept.items()}


def _sticky(
    members: Mapping[str, MemberSubscription], partitions_per_topic: Mapping[str, int]
) -> dict[str, list[TopicPartition]]:
    ordered = _sorted_members(members)
    eligible_topics = {
        m: {t for t in members[m].topics if partitions_per_topic.get(t, 0) > 0} for m in ordered
    }
    subscribed = set().union(*eligible_topics.values())
    partitions = {(t, p) for t in subscribed for p in range(partitions_per_topic[t])}
    kept = _valid_owned(members, partitions)
    if not ordered:
        return {}
    if all(eligible_topics[m] == eligible_topics[ordered[0]] for m in ordered):
        return _sticky_same_topics(ordered, kept, sorted(partitions))
    return _sticky_general(ordered, eligible_topics, kept, sorted(partitions))


def _sticky_same_topics(
    ordered: list[str], kept: dict[str, list[TopicPartition]], partitions: list[TopicPartition]
) -> dict[str, list[TopicPartition]]:
    """Everyone may own everything: quotas are exact (Kafka's constrainedAssign)."""
    min_quota, over = divmod(len(partitions), len(ordered))  # `over` members get min_quota + 1
    out: dict[str, list[TopicPartition]] = {}
    for member in ordered:
        owned = kept[member]
        if len(owned) > min_quota and over > 0:
            out[member], over = owned[: min_quota + 1], over - 1
        else:
            out[member] = owned[:min_quota]
    taken = {tp for tps in out.values() for tp in tps}
    free = iter([tp for tp in partitions if tp not in taken])
    for member in ordered:  # fill everyone up to the minimum first...
        out[member].extend(next(free) for _ in range(min_quota - len(out[member])))
    for member in ordered:  # ...then hand out the remainder, one each, to members at the minimum
        if len(out[member]) == min_quota and over > 0:
            out[member].append(next(free))
            over -= 1
    assert next(free, None) is None, "quota arithmetic left partitions unassigned"
    return out


def _sticky_general(
    ordered: list[str],
    eligible_topics: dict[str, set[str]],
    kept: dict[str, list[TopicPartition]],
    partitions: list[TopicPartition],
) -> dict[str, list[TopicPartition]]:
    """Subscriptions differ: greedy fill by fewest candidates, then move until no move helps."""
    rank = {m: i for i, m in enumerate(ordered)}
    candidates = {t: [m for m in ordered if t in eligible_topics[m]] for t in {tp[0] for tp in partitions}}
    owner: dict[TopicPartition, str] = {tp: m for m, tps in kept.items() for tp in tps}
    count = {m: len(kept[m]) for m in ordered}
    free = sorted((tp for tp in partitions if tp not in owner), key=lambda tp: (len(candidates[tp[0]]), tp))
    for tp in free:
        member = min(candidates[tp[0]], key=lambda m: (count[m], rank[m]))
        owner[tp], count[member] = member, count[member] + 1
    # Each move lowers sum(count**2) by at least 2, so this loop ends. Newly given partitions move
    # first, so owned ones stay put whenever balance allows.
    order = free + sorted(tp for tps in kept.values() for tp in tps)
    moved = True
    while moved:
        moved = False
        for tp in order:
            holder = owner[tp]
            best = min(candidates[tp[0]], key=lambda m: (count[m], rank[m]))
            if count[holder] - count[best] >= 2:
                owner[tp] = best
                count[holder], count[best] = count[holder] - 1, count[best] + 1
                moved = True
    out: dict[str, list[TopicPartition]] = {m: [] for m in ordered}
    for tp, member in owner.items():
        out[member].append(tp)
    return out
