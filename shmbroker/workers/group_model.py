"""One consumer group's membership and its rebalance state machine (used by ``group_state.py``).

    Empty --join--> PreparingRebalance --all members rejoined (or max.poll.interval.ms passed)-->
    Stable --member joins/leaves/expires, subscription or topic change, cooperative follow-up-->
    PreparingRebalance ... --last member gone--> Empty

A round completes in one step: new generation, protocol, leader and every assignment at once
(CompletingRebalance lasts zero time). Invariants, checked by tests: within one generation no
partition is given to two members; with ``cooperative-sticky`` no partition is given to a member
while another member may still hold it (``held``: what it got at its last SyncGroup); every
member not waiting in JoinGroup has a session deadline. Not thread-safe; no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from shmbroker.workers import assignors
from shmbroker.workers.group_errors import FencedInstanceIdError, IllegalGenerationError, UnknownMemberIdError
from shmbroker.workers.group_types import (
    CoordinatorConfig,
    Event,
    GroupState,
    JoinCompleted,
    JoinFailed,
    JoinResult,
    MemberRemoved,
    Protocol,
    RebalanceCompleted,
    TopicPartition,
    check_int,
)

Offsets = dict[TopicPartition, tuple[int, str]]


@dataclass
class Outbox:
    """Shared by every group of one coordinator: the events to deliver, and the earliest deadline."""

    config: CoordinatorConfig
    topics: dict[str, int] = field(default_factory=dict)  # partitions per topic, as the broker has them
    events: list[Event] = field(default_factory=list)
    next_deadline_ms: float = float("inf")

    def note(self, deadline_ms: int) -> None:
        if deadline_ms:
            self.next_deadline_ms = min(self.next_deadline_ms, deadline_ms)


@dataclass
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: tuple[Protocol, ...]
    session_deadline_ms: int = 0
    awaiting_join: bool = False
    assignment: tuple[TopicPartition, ...] = ()  # given in the current generation
    held: frozenset[TopicPartition] = frozenset()  # may still hold: what it got at its last sync
    held_generation: int = -1  # the generation of that sync
    revoked: frozenset[TopicPartition] = frozenset()  # gave up at its last sync; still committable

    def topics(self, protocol_name: str | None) -> tuple[str, ...]:
        for p in self.protocols:
            if p.name == protocol_name:
                return p.topics
        return self.protocols[0].topics


@dataclass
class Group:
    group_id: str
    out: Outbox
    state: GroupState = GroupState.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    members: dict[str, Member] = field(default_factory=dict)  # in join order
    pending_ids: dict[str, int] = field(default_factory=dict)  # MEMBER_ID_REQUIRED id -> expiry ms
    instances: dict[str, str] = field(default_factory=dict)  # group.instance.id -> member id
    offsets: Offsets = field(default_factory=dict)
    rebalance_deadline_ms: int = 0
    not_before_ms: int = 0  # initial rebalance delay: the round may not complete earlier
    unsynced: set[str] = field(default_factory=set)  # members yet to SyncGroup this generation
    follow_up: bool = False  # cooperative: partitions withheld; rebalance again once all synced
    topic_snapshot: dict[str, int] = field(default_factory=dict)  # partition counts it was assigned on

    @property
    def idle(self) -> bool:
        """Nothing left to keep (Kafka's Dead): the coordinator may forget this group."""
        return self.state is GroupState.EMPTY and not (self.members or self.pending_ids or self.offsets)

    def check_generation(self, generation_id: int) -> None:
        if check_int(generation_id, "generation_id") != self.generation:
            raise IllegalGenerationError(
                f"generation {generation_id} of group {self.group_id!r} is over; it is {self.generation}"
            )

    def touch(self, member: Member, now_ms: int) -> None:
        member.session_deadline_ms = now_ms + member.session_timeout_ms
        self.out.note(member.session_deadline_ms)

    def replace_static(self, old: Member, new_member_id: str) -> Member:
        """A static member restarted: same instance, new member id; the old id is fenced."""
        new = replace(old, member_id=new_member_id)
        del self.members[old.member_id]
        self.members[new.member_id] = new
        self.instances[old.instance_id or ""] = new.member_id
        if self.leader_id == old.member_id:
            self.leader_id = new.member_id
        if old.member_id in self.unsynced:
            self.unsynced.discard(old.member_id)
            self.unsynced.add(new.member_id)
        if old.awaiting_join:
            fenced = FencedInstanceIdError("replaced by a newer member with the same group.instance.id")
            self.out.events.append(JoinFailed(self.group_id, old.member_id, fenced))
        self.out.events.append(
            MemberRemoved(self.group_id, old.member_id, "replaced (static member restarted)")
        )
        return new

    def remove(self, member: Member, reason: str) -> None:
        del self.members[member.member_id]
        if member.instance_id is not None:
            self.instances.pop(member.instance_id, None)
        self.unsynced.discard(member.member_id)
        if member.awaiting_join:
            self.out.events.append(JoinFailed(self.group_id, member.member_id, UnknownMemberIdError(reason)))
        self.out.events.append(MemberRemoved(self.group_id, member.member_id, reason))

    def after_removal(self, now_ms: int) -> None:
        if self.state is GroupState.STABLE:
            self.start_rebalance(now_ms)
        self.maybe_complete(now_ms)

    def expire(self, now_ms: int) -> None:
        """Drop expired pending ids and silent members, finish a round that is due, note deadlines."""
        for pending_id, expiry_ms in list(self.pending_ids.items()):
            if expiry_ms <= now_ms:
                del self.pending_ids[pending_id]
        dead = [m for m in self.members.values() if not m.awaiting_join and m.session_deadline_ms <= now_ms]
        for member in dead:
            self.remove(member, "session timed out")
        if dead:
            self.after_removal(now_ms)
        self.maybe_complete(now_ms)
        for member in self.members.values():
            if not member.awaiting_join:
                self.out.note(member.session_deadline_ms)
        for expiry_ms in self.pending_ids.values():
            self.out.note(expiry_ms)
        if self.state is GroupState.PREPARING_REBALANCE:
            self.out.note(self.rebalance_deadline_ms)
            self.out.note(self.not_before_ms)

    def start_rebalance(self, now_ms: int) -> None:
        was_empty = self.state is GroupState.EMPTY
        self.state, self.follow_up = GroupState.PREPARING_REBALANCE, False
        timeout_ms = max((m.rebalance_timeout_ms for m in self.members.values()), default=0)
        self.rebalance_deadline_ms = now_ms + timeout_ms
        delay_ms = self.out.config.initial_rebalance_delay_ms if was_empty else 0
        self.not_before_ms = min(now_ms + delay_ms, self.rebalance_deadline_ms) if delay_ms else 0
        self.out.note(self.rebalance_deadline_ms)
        self.out.note(self.not_before_ms)

    def delay_for_newcomer(self, now_ms: int) -> None:
        """A new member during the initial delay: wait a little more, never past the deadline."""
        if self.not_before_ms:
            delay_ms = self.out.config.initial_rebalance_delay_ms
            self.not_before_ms = min(now_ms + delay_ms, self.rebalance_deadline_ms)
            self.out.note(self.not_before_ms)

    def maybe_complete(self, now_ms: int, caller: str = "") -> None:
        if self.state is not GroupState.PREPARING_REBALANCE:
            return
        if all(m.awaiting_join for m in self.members.values()) and now_ms >= self.not_before_ms:
            self._complete(now_ms, caller)
        elif now_ms >= self.rebalance_deadline_ms:
            for member in [m for m in self.members.values() if not m.awaiting_join]:
                self.remove(member, "did not rejoin within max.poll.interval.ms")
            self._complete(now_ms, caller)

    def _complete(self, now_ms: int, caller: str) -> None:
        """Close the round: new generation, protocol, leader and assignments; every waiter hears."""
        self.generation += 1
        self.not_before_ms = 0
        if not self.members:
            self.state, self.protocol_name, self.leader_id = GroupState.EMPTY, None, None
            self.protocol_type, self.unsynced, self.topic_snapshot = None, set(), {}
            self.out.events.append(RebalanceCompleted(self.group_id, self.generation, 0))
            return
        self.protocol_name = self._select_protocol()
        if self.leader_id not in self.members:
            self.leader_id = next(iter(self.members))
        self.topic_snapshot = self.snapshot()
        cooperative = self.protocol_name in assignors.COOPERATIVE_STRATEGIES
        if not cooperative:  # eager members revoke everything before they rejoin
            for m in self.members.values():
                m.held = frozenset()
        subscriptions = {
            m.member_id: assignors.MemberSubscription(
                m.topics(self.protocol_name), tuple(m.held), m.held_generation, m.instance_id
            )
            for m in self.members.values()
        }
        target = assignors.assign(self.protocol_name, subscriptions, self.topic_snapshot)
        given = target
        if cooperative:
            given = assignors.cooperative_step({m.member_id: m.held for m in self.members.values()}, target)
        self.follow_up = given != target
        self.state, self.unsynced = GroupState.STABLE, set(self.members)
        for member in self.members.values():
            member.assignment, member.awaiting_join = tuple(given[member.member_id]), False
            self.touch(member, now_ms)
            if member.member_id != caller:
                result = self.join_result(member.member_id)
                self.out.events.append(JoinCompleted(self.group_id, member.member_id, result))
        self.out.events.append(RebalanceCompleted(self.group_id, self.generation, len(self.members)))

    def _select_protocol(self) -> str:
        """Kafka's vote: each member votes its first choice among protocols all members support."""
        members = list(self.members.values())
        common = {p.name for p in members[0].protocols}
        for m in members[1:]:
            common &= {p.name for p in m.protocols}
        votes = dict.fromkeys(sorted(common), 0)
        for m in members:
            votes[next(p.name for p in m.protocols if p.name in common)] += 1
        return min(votes, key=lambda name: -votes[name])  # ties: the first name in sorted order

    def snapshot(self) -> dict[str, int]:
        """Partition counts of the topics the members subscribe to (unknown topics left out)."""
        topics = {t for m in self.members.values() for t in m.topics(self.protocol_name)}
        return {t: self.out.topics[t] for t in sorted(topics) if t in self.out.topics}

    def join_result(self, member_id: str) -> JoinResult:
        leader = member_id == self.leader_id
        return JoinResult(
            self.group_id,
            member_id,
            self.generation,
            self.protocol_type or "",
            self.protocol_name or "",
            self.leader_id or "",
            tuple(self.members) if leader else (),
        )
