"""Consumer groups, sans-I/O: every group decision of the coordinator, driven by calls with ``now_ms``.

No sockets, no clock, no threads, no disk: the coordinator process decodes a request, calls one
method, replies with what it returns (or the typed error it raises), persists accepted offset
commits before replying, and calls ``tick(now_ms)`` after every request and at least every ~100 ms,
delivering the events it returns (replies to joins that were waiting, and log lines).

Kafka's group protocol on one broker, with these choices:

- A first JoinGroup with an empty member id and no ``group.instance.id`` fails with
  MEMBER_ID_REQUIRED carrying a fresh member id (Kafka >= 2.2, KIP-394), so a retried join never
  leaves a ghost member. Such ids are pending until used or ``session.timeout.ms`` passes; they
  count toward ``max_members_per_group``.
- JoinGroup waits (``Pending``) until every known member has rejoined, or the largest
  ``max.poll.interval.ms`` of the group passes (then the missing members are dropped). A group that
  leaves Empty also waits ``initial_rebalance_delay_ms`` (``group.initial.rebalance.delay.ms``),
  extended by each new member, so a fleet starting together forms one generation.
- The coordinator computes assignments itself with ``assignors.py`` the moment a round completes
  (one broker knows all metadata; no leader has to), so SyncGroup never waits: it returns the
  member's assignment. CompletingRebalance therefore lasts zero time here, and the leader's
  ``members`` list is informational.
- Ownership for ``cooperative-sticky`` is the coordinator's own record: what each member was given
  at its last SyncGroup (conservative; the subscription's ``owned`` field is not needed). A
  partition moving between members is withheld in the first generation; once every member has
  synced it, the group rebalances again (heartbeats answer REBALANCE_IN_PROGRESS) and hands it out.
- Static members (``group.instance.id``) rejoining with an empty member id replace their old
  member id (which is then fenced: FENCED_INSTANCE_ID) and keep their assignment with no rebalance
  when the group is Stable and their subscription is unchanged.
- Offset commits are all-or-nothing per request, and stricter than Kafka: a member may commit only
  partitions it owns in the current generation, or ones it revoked at its last sync (the
  commit-on-revoke pattern); anything else raises PartitionNotAssignedError (ILLEGAL_GENERATION on
  the wire, so a client rejoins). Simple commits (generation -1, member "") only reach groups with no
  members, as in Kafka.

Every input is checked before anything is stored, and every table is bounded (``CoordinatorConfig``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shmbroker.errors import BrokerError, InvalidRequestError
from shmbroker.workers import assignors
from shmbroker.workers.group_errors import (
    FencedInstanceIdError,
    GroupIdNotFoundError,
    GroupMaxSizeReachedError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    MemberIdRequiredError,
    NonEmptyGroupError,
    PartitionNotAssignedError,
    RebalanceInProgressError,
    TooManyGroupsError,
    UnknownMemberIdError,
)
from shmbroker.workers.group_types import (
    CoordinatorConfig,
    Event,
    GroupDescription,
    GroupListing,
    GroupState,
    JoinCompleted,
    JoinFailed,
    JoinResult,
    MemberDescription,
    MemberRemoved,
    Pending,
    Protocol,
    RebalanceCompleted,
    SyncResult,
    TopicPartition,
    check_group_id,
    check_instance_id,
    check_join,
    check_member_id,
    check_offsets,
    check_partitions,
)

Offsets = dict[TopicPartition, tuple[int, str]]


@dataclass
class _Member:
    member_id: str
    instance_id: str | None
    client_id: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: tuple[Protocol, ...]
    session_deadline_ms: int
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
class _Group:
    group_id: str
    state: GroupState = GroupState.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    members: dict[str, _Member] = field(default_factory=dict)  # in join order
    pending_ids: dict[str, int] = field(default_factory=dict)  # MEMBER_ID_REQUIRED id -> expiry ms
    instances: dict[str, str] = field(default_factory=dict)  # group.instance.id -> member id
    offsets: Offsets = field(default_factory=dict)
    rebalance_deadline_ms: int = 0
    not_before_ms: int = 0  # initial rebalance delay: the round may not complete earlier
    initial_cap_ms: int = 0
    unsynced: set[str] = field(default_factory=set)  # members yet to SyncGroup this generation
    follow_up: bool = False  # cooperative: partitions withheld; rebalance again once all synced
    topic_snapshot: dict[str, int] = field(default_factory=dict)  # partition counts it was assigned on


class GroupCoordinatorState:
    """All consumer groups of one broker. Single-threaded; every method is O(members of one group)
    except ``tick``, which scans every group only when some deadline has passed."""

    def __init__(
        self,
        config: CoordinatorConfig | None = None,
        *,
        offsets: Mapping[str, Mapping[TopicPartition, tuple[Any, ...]]] | None = None,
        partitions_per_topic: Mapping[str, int] | None = None,
        new_member_suffix: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        """``offsets`` is what ``OffsetStore.load()`` returned; ``partitions_per_topic`` the topics now."""
        self.config = config or CoordinatorConfig()
        self._groups: dict[str, _Group] = {}
        self._events: list[Event] = []
        self._next_deadline_ms = math.inf
        self._topics: dict[str, int] | None = dict(partitions_per_topic) if partitions_per_topic else None
        self._suffix = new_member_suffix
        for group_id, entries in (offsets or {}).items():
            group = self._groups.setdefault(group_id, _Group(group_id))
            group.offsets = {(t, p): (int(v[0]), str(v[1])) for (t, p), v in entries.items()}

    # -- membership -------------------------------------------------------------------------------
    def join(
        self,
        group_id: str,
        member_id: str,
        group_instance_id: str | None,
        client_id: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: Iterable[Any],
        now_ms: int,
    ) -> JoinResult | Pending:
        """JoinGroup. ``JoinResult`` now, or ``Pending`` (its ``JoinCompleted`` comes from ``tick``).

        ``protocols``: ``Protocol``s, ``(name, topics)`` pairs or ``{"name", "topics"}`` dicts, in
        preference order. Raises MemberIdRequiredError (with ``.member_id``), InvalidGroupIdError,
        InvalidSessionTimeoutError, InconsistentGroupProtocolError, UnknownMemberIdError,
        FencedInstanceIdError, GroupMaxSizeReachedError, TooManyGroupsError, InvalidRequestError.
        """
        check_group_id(group_id)
        member_id = check_member_id(member_id)
        instance_id = check_instance_id(group_instance_id)
        wanted = check_join(
            self.config, client_id, session_timeout_ms, rebalance_timeout_ms, protocol_type, protocols, now_ms
        )
        timeouts_ms = (session_timeout_ms, rebalance_timeout_ms)
        group = self._groups.get(group_id)
        if group is None:
            if member_id:
                raise UnknownMemberIdError(f"group {group_id!r} does not exist; join with member id ''")
            group = self._new_group(group_id)
        try:
            return self._join(group, member_id, instance_id, client_id, wanted, now_ms, timeouts_ms)
        except BrokerError:
            self._gc(group)  # a group this join created must not outlive a refused join
            raise

    def _join(
        self,
        group: _Group,
        member_id: str,
        instance_id: str | None,
        client_id: str,
        wanted: tuple[Protocol, ...],
        now_ms: int,
        timeouts_ms: tuple[int, int],
    ) -> JoinResult | Pending:
        session_timeout_ms, rebalance_timeout_ms = timeouts_ms
        group_id, protocol_type = group.group_id, "consumer"
        self._check_protocols(group, member_id, instance_id, protocol_type, wanted)
        if instance_id is not None and instance_id in group.instances:
            current = group.instances[instance_id]
            if member_id and member_id != current:
                raise FencedInstanceIdError(f"instance {instance_id!r} is now member {current!r}")
            if not member_id:
                member = self._replace_static(group, group.members[current], now_ms)
                if group.state is GroupState.STABLE and member.protocols == wanted:
                    self._touch(member, now_ms)
                    return self._join_result(group, member.member_id)
                member_id = member.member_id
        elif instance_id is None and not member_id:
            self._check_room(group)
            new_id = f"{client_id}-{self._suffix()}"
            group.pending_ids[new_id] = now_ms + session_timeout_ms
            self._note(now_ms + session_timeout_ms)
            raise MemberIdRequiredError(f"rejoin group {group_id!r} with member id {new_id!r}", new_id)
        elif member_id not in group.members:
            if member_id and member_id not in group.pending_ids:
                raise UnknownMemberIdError(
                    f"member {member_id!r} is not in group {group_id!r}; rejoin with ''"
                )
            self._check_room(group, pending=member_id in group.pending_ids)
            group.pending_ids.pop(member_id, None)
            member_id = member_id or f"{instance_id}-{self._suffix()}"
            group.members[member_id] = _Member(member_id, instance_id, client_id, 0, 0, wanted, 0)
            if instance_id is not None:
                group.instances[instance_id] = member_id
        member = group.members[member_id]
        if member.instance_id != instance_id:
            raise FencedInstanceIdError(f"member {member_id!r} joined as instance {member.instance_id!r}")
        changed = member.protocols != wanted or not member.session_timeout_ms
        member.client_id, member.protocols = client_id, wanted
        member.session_timeout_ms, member.rebalance_timeout_ms = session_timeout_ms, rebalance_timeout_ms
        self._touch(member, now_ms)
        if group.state is GroupState.STABLE and not changed:
            return self._join_result(group, member_id)  # a retried join: nothing to rebalance
        if group.state is not GroupState.PREPARING_REBALANCE:
            self._start_rebalance(group, now_ms)
        elif group.not_before_ms and changed:  # a new member during the initial delay: wait a bit more
            group.not_before_ms = min(now_ms + self.config.initial_rebalance_delay_ms, group.initial_cap_ms)
            self._note(group.not_before_ms)
        group.protocol_type = protocol_type
        member.awaiting_join = True
        self._maybe_complete(group, now_ms, caller=member_id)
        if not member.awaiting_join and group.state is GroupState.STABLE:
            return self._join_result(group, member_id)
        return Pending(group_id, member_id)

    def sync(
        self,
        group_id: str,
        member_id: str,
        generation_id: int,
        now_ms: int,
        *,
        group_instance_id: str | None = None,
    ) -> SyncResult:
        """SyncGroup: the member's assignment for ``generation_id``; the coordinator computed it.

        Raises UnknownMemberIdError, FencedInstanceIdError, IllegalGenerationError,
        RebalanceInProgressError (rejoin).
        """
        group, member = self._member(group_id, member_id, group_instance_id)
        self._check_generation(group, generation_id)
        if group.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(f"group {group_id!r} is rebalancing; rejoin")
        member.revoked = member.held - set(member.assignment)
        member.held, member.held_generation = frozenset(member.assignment), group.generation
        self._touch(member, now_ms)
        group.unsynced.discard(member_id)
        if group.follow_up and not group.unsynced:  # every holder has revoked: hand out the rest
            self._start_rebalance(group, now_ms)
        return SyncResult(group.protocol_type or "", group.protocol_name or "", member.assignment)

    def heartbeat(
        self,
        group_id: str,
        member_id: str,
        generation_id: int,
        now_ms: int,
        *,
        group_instance_id: str | None = None,
    ) -> None:
        """Heartbeat: None when all is well. Raises UnknownMemberIdError, FencedInstanceIdError,
        IllegalGenerationError, RebalanceInProgressError (the member must rejoin)."""
        group, member = self._member(group_id, member_id, group_instance_id)
        self._check_generation(group, generation_id)
        self._touch(member, now_ms)
        if group.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(f"group {group_id!r} is rebalancing; rejoin")

    def leave(
        self, group_id: str, member_id: str, now_ms: int, *, group_instance_id: str | None = None
    ) -> None:
        """LeaveGroup by member id, or by instance id (``member_id`` may then be ""); rebalances.

        Raises UnknownMemberIdError, FencedInstanceIdError (the instance has a newer member id)."""
        check_group_id(group_id)
        check_member_id(member_id)
        group = self._groups.get(group_id)
        if group is None:
            raise UnknownMemberIdError(f"group {group_id!r} does not exist")
        if group_instance_id is not None:
            current = group.instances.get(check_instance_id(group_instance_id) or "")
            if current is None:
                raise UnknownMemberIdError(f"instance {group_instance_id!r} is not in group {group_id!r}")
            if member_id and member_id != current:
                raise FencedInstanceIdError(f"instance {group_instance_id!r} is now member {current!r}")
            member_id = current
        elif member_id in group.pending_ids:  # it never joined: nothing to rebalance
            del group.pending_ids[member_id]
            self._gc(group)
            return
        member = group.members.get(member_id)
        if member is None:
            raise UnknownMemberIdError(f"member {member_id!r} is not in group {group_id!r}")
        self._remove(group, member, "left the group")
        self._after_removal(group, now_ms)

    # -- time --------------------------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[Event]:
        """Expire sessions and pending member ids, finish rounds due; return every queued event."""
        if now_ms >= self._next_deadline_ms:
            self._next_deadline_ms = math.inf
            for group in list(self._groups.values()):
                self._expire(group, now_ms)
        events, self._events = self._events, []
        return events

    def _expire(self, group: _Group, now_ms: int) -> None:
        for pending_id, expiry_ms in list(group.pending_ids.items()):
            if expiry_ms <= now_ms:
                del group.pending_ids[pending_id]
        dead = [m for m in group.members.values() if not m.awaiting_join and m.session_deadline_ms <= now_ms]
        for member in dead:
            self._remove(group, member, "session timed out")
        if dead:
            self._after_removal(group, now_ms)
        self._maybe_complete(group, now_ms)
        self._gc(group)
        for member in group.members.values():
            if not member.awaiting_join:
                self._note(member.session_deadline_ms)
        for expiry_ms in group.pending_ids.values():
            self._note(expiry_ms)
        if group.state is GroupState.PREPARING_REBALANCE:
            self._note(group.rebalance_deadline_ms)
            self._note(group.not_before_ms)

    def set_topics(self, partitions_per_topic: Mapping[str, int], now_ms: int) -> None:
        """The broker's topics changed: Stable groups whose subscribed topics changed rebalance."""
        self._topics = dict(partitions_per_topic)
        for group in self._groups.values():
            if group.state is GroupState.STABLE and group.topic_snapshot != self._snapshot(group):
                self._start_rebalance(group, now_ms)

    # -- offsets -----------------------------------------------------------------------------------
    def commit_offsets(
        self,
        group_id: str,
        member_id: str,
        generation_id: int,
        offsets: Mapping[Any, Any],
        now_ms: int,
        *,
        group_instance_id: str | None = None,
    ) -> Offsets:
        """OffsetCommit, all or nothing: the normalised offsets now in the table. Persist them
        (``OffsetStore.commit``) before replying. Raises InvalidGroupIdError, InvalidRequestError,
        OffsetMetadataTooLargeError, UnknownTopicOrPartitionError, UnknownMemberIdError,
        FencedInstanceIdError, IllegalGenerationError, PartitionNotAssignedError."""
        check_group_id(group_id)
        normal = check_offsets(self.config, offsets, self._topics)
        group = self._groups.get(group_id)
        if generation_id < 0 and member_id == "" and group_instance_id is None:
            if group is not None and group.members:
                raise UnknownMemberIdError(f"group {group_id!r} has members; a simple commit needs none")
        elif group is None:
            raise IllegalGenerationError(f"group {group_id!r} has no generation {generation_id}")
        else:
            group, member = self._member(group_id, member_id, group_instance_id)
            self._check_generation(group, generation_id)
            allowed = set(member.assignment) | member.revoked
            stray = sorted(tp for tp in normal if tp not in allowed)
            if stray:
                raise PartitionNotAssignedError(
                    f"member {member_id!r} does not own {stray[:5]} in generation {group.generation}; rejoin"
                )
            self._touch(member, now_ms)
        return self._store(group or self._new_group(group_id), normal)

    def reset_offsets(self, group_id: str, offsets: Mapping[Any, Any]) -> Offsets:
        """Set offsets of a group with no members (as ``kafka-consumer-groups --reset-offsets``)."""
        check_group_id(group_id)
        normal = check_offsets(self.config, offsets, self._topics)
        group = self._groups.get(group_id)
        if group is not None and group.members:
            raise NonEmptyGroupError(f"group {group_id!r} has {len(group.members)} members; stop them first")
        return self._store(group or self._new_group(group_id), normal)

    def fetch_offsets(self, group_id: str, partitions: Iterable[Any] | None = None) -> Offsets:
        """OffsetFetch: all committed offsets, or the requested ones with (-1, "") where none is."""
        check_group_id(group_id)
        group = self._groups.get(group_id)
        table = group.offsets if group is not None else {}
        if partitions is None:
            return dict(table)
        return {tp: table.get(tp, (-1, "")) for tp in check_partitions(partitions)}

    def delete_group(self, group_id: str) -> None:
        """DeleteGroups: the group and its offsets go (write a tombstone). Needs no members."""
        check_group_id(group_id)
        group = self._groups.get(group_id)
        if group is None:
            raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
        if group.members:
            raise NonEmptyGroupError(f"group {group_id!r} has {len(group.members)} members")
        del self._groups[group_id]

    # -- views -------------------------------------------------------------------------------------
    def describe(self, group_id: str) -> GroupDescription:
        """DescribeGroups; an unknown group is described as Dead with no members, as Kafka does."""
        check_group_id(group_id)
        group = self._groups.get(group_id)
        if group is None:
            return GroupDescription(group_id, GroupState.DEAD, "", "", -1, None, ())
        members = tuple(
            MemberDescription(
                m.member_id, m.instance_id, m.client_id, m.topics(group.protocol_name), m.assignment
            )
            for m in group.members.values()
        )
        return GroupDescription(
            group_id,
            group.state,
            group.protocol_type or "",
            group.protocol_name or "",
            group.generation,
            group.leader_id,
            members,
        )

    def list_groups(self) -> list[GroupListing]:
        return [
            GroupListing(g.group_id, g.state, g.protocol_type or "") for _, g in sorted(self._groups.items())
        ]

    def statistics(self) -> dict[str, int]:
        return {
            "groups": len(self._groups),
            "members": sum(len(g.members) for g in self._groups.values()),
            "pending_member_ids": sum(len(g.pending_ids) for g in self._groups.values()),
            "offsets": sum(len(g.offsets) for g in self._groups.values()),
        }

    # -- internals ---------------------------------------------------------------------------------
    def _new_group(self, group_id: str) -> _Group:
        if len(self._groups) >= self.config.max_groups:
            raise TooManyGroupsError(f"{len(self._groups)} groups already; raise max_groups")
        group = self._groups[group_id] = _Group(group_id)
        return group

    def _check_room(self, group: _Group, *, pending: bool = False) -> None:
        used = len(group.members) + len(group.pending_ids) - (1 if pending else 0)
        if used >= self.config.max_members_per_group:
            raise GroupMaxSizeReachedError(
                f"group {group.group_id!r} has {used} members (pending ids included); "
                f"group.max.size is {self.config.max_members_per_group}"
            )

    def _check_protocols(
        self,
        group: _Group,
        member_id: str,
        instance_id: str | None,
        protocol_type: str,
        wanted: tuple[Protocol, ...],
    ) -> None:
        me = group.instances.get(instance_id or "", member_id)
        others = [m for m in group.members.values() if m.member_id != me]
        if others and protocol_type != group.protocol_type:
            raise InconsistentGroupProtocolError(f"group {group.group_id!r} uses {group.protocol_type!r}")
        common = {p.name for p in wanted}
        for other in others:
            common &= {p.name for p in other.protocols}
        if not common:
            raise InconsistentGroupProtocolError(
                f"no assignor in common with group {group.group_id!r}; asked {[p.name for p in wanted]}"
            )

    def _member(self, group_id: str, member_id: str, instance_id: str | None) -> tuple[_Group, _Member]:
        check_group_id(group_id)
        check_member_id(member_id)
        group = self._groups.get(group_id)
        member = group.members.get(member_id) if group is not None else None
        if instance_id is not None and group is not None:
            current = group.instances.get(instance_id)
            if current is not None and current != member_id:
                raise FencedInstanceIdError(f"instance {instance_id!r} is now member {current!r}")
        if group is None or member is None:
            raise UnknownMemberIdError(f"member {member_id!r} is not in group {group_id!r}; rejoin")
        return group, member

    @staticmethod
    def _check_generation(group: _Group, generation_id: int) -> None:
        if generation_id != group.generation:
            raise IllegalGenerationError(
                f"generation {generation_id} of group {group.group_id!r} is over; it is {group.generation}"
            )

    def _touch(self, member: _Member, now_ms: int) -> None:
        member.session_deadline_ms = now_ms + member.session_timeout_ms
        self._note(member.session_deadline_ms)

    def _note(self, deadline_ms: int) -> None:
        if deadline_ms:
            self._next_deadline_ms = min(self._next_deadline_ms, deadline_ms)

    def _replace_static(self, group: _Group, old: _Member, now_ms: int) -> _Member:
        """A static member restarted: same instance, new member id; the old id is fenced."""
        new = replace(old, member_id=f"{old.instance_id}-{self._suffix()}")
        del group.members[old.member_id]
        group.members[new.member_id] = new
        group.instances[old.instance_id or ""] = new.member_id
        if group.leader_id == old.member_id:
            group.leader_id = new.member_id
        if old.member_id in group.unsynced:
            group.unsynced.discard(old.member_id)
            group.unsynced.add(new.member_id)
        if old.awaiting_join:
            self._events.append(
                JoinFailed(group.group_id, old.member_id, FencedInstanceIdError("replaced by a newer member"))
            )
        self._events.append(
            MemberRemoved(group.group_id, old.member_id, "replaced (static member restarted)")
        )
        return new

    def _remove(self, group: _Group, member: _Member, reason: str) -> None:
        del group.members[member.member_id]
        if member.instance_id is not None:
            group.instances.pop(member.instance_id, None)
        group.unsynced.discard(member.member_id)
        if member.awaiting_join:
            self._events.append(JoinFailed(group.group_id, member.member_id, UnknownMemberIdError(reason)))
        self._events.append(MemberRemoved(group.group_id, member.member_id, reason))

    def _after_removal(self, group: _Group, now_ms: int) -> None:
        if group.state is GroupState.STABLE:
            self._start_rebalance(group, now_ms)
        self._maybe_complete(group, now_ms)
        self._gc(group)

    def _start_rebalance(self, group: _Group, now_ms: int) -> None:
        was_empty = group.state is GroupState.EMPTY
        group.state, group.follow_up = GroupState.PREPARING_REBALANCE, False
        timeout_ms = max((m.rebalance_timeout_ms for m in group.members.values()), default=0)
        group.rebalance_deadline_ms = now_ms + timeout_ms
        group.initial_cap_ms = group.rebalance_deadline_ms
        delay_ms = self.config.initial_rebalance_delay_ms if was_empty else 0
        group.not_before_ms = min(now_ms + delay_ms, group.rebalance_deadline_ms) if delay_ms else 0
        self._note(group.rebalance_deadline_ms)
        self._note(group.not_before_ms)

    def _maybe_complete(self, group: _Group, now_ms: int, caller: str = "") -> None:
        if group.state is not GroupState.PREPARING_REBALANCE:
            return
        if all(m.awaiting_join for m in group.members.values()) and now_ms >= group.not_before_ms:
            self._complete(group, now_ms, caller)
        elif now_ms >= group.rebalance_deadline_ms:
            for member in [m for m in group.members.values() if not m.awaiting_join]:
                self._remove(group, member, "did not rejoin within max.poll.interval.ms")
            self._complete(group, now_ms, caller)

    def _complete(self, group: _Group, now_ms: int, caller: str) -> None:
        """Close the join round: new generation, protocol, leader and assignments; all reply now."""
        group.generation += 1
        group.not_before_ms = 0
        if not group.members:
            group.state, group.protocol_name, group.leader_id = GroupState.EMPTY, None, None
            group.protocol_type, group.unsynced, group.topic_snapshot = None, set(), {}
            self._events.append(RebalanceCompleted(group.group_id, group.generation, 0))
            return
        group.protocol_name = self._select_protocol(group)
        if group.leader_id not in group.members:
            group.leader_id = next(iter(group.members))
        group.topic_snapshot = self._snapshot(group)
        cooperative = group.protocol_name in assignors.COOPERATIVE_STRATEGIES
        if not cooperative:  # eager members revoke everything before they rejoin
            for m in group.members.values():
                m.held = frozenset()
        subscriptions = {
            m.member_id: assignors.MemberSubscription(
                m.topics(group.protocol_name), tuple(m.held), m.held_generation, m.instance_id
            )
            for m in group.members.values()
        }
        target = assignors.assign(group.protocol_name, subscriptions, group.topic_snapshot)
        given = target
        if cooperative:
            given = assignors.cooperative_step({m.member_id: m.held for m in group.members.values()}, target)
        group.follow_up = given != target
        group.state, group.unsynced = GroupState.STABLE, set(group.members)
        for member in group.members.values():
            member.assignment, member.awaiting_join = tuple(given[member.member_id]), False
            self._touch(member, now_ms)
            if member.member_id != caller:
                result = self._join_result(group, member.member_id)
                self._events.append(JoinCompleted(group.group_id, member.member_id, result))
        self._events.append(RebalanceCompleted(group.group_id, group.generation, len(group.members)))

    def _select_protocol(self, group: _Group) -> str:
        """Kafka's vote: each member votes its first choice among protocols all members support."""
        members = list(group.members.values())
        common = {p.name for p in members[0].protocols}
        for m in members[1:]:
            common &= {p.name for p in m.protocols}
        votes = dict.fromkeys(sorted(common), 0)
        for m in members:
            votes[next(p.name for p in m.protocols if p.name in common)] += 1
        return min(votes, key=lambda name: -votes[name])  # ties: the first name in sorted order

    def _snapshot(self, group: _Group) -> dict[str, int]:
        topics = {t for m in group.members.values() for t in m.topics(group.protocol_name)}
        known = self._topics or {}
        return {t: known[t] for t in sorted(topics) if t in known}

    def _join_result(self, group: _Group, member_id: str) -> JoinResult:
        leader = member_id == group.leader_id
        return JoinResult(
            group.group_id,
            member_id,
            group.generation,
            group.protocol_type or "",
            group.protocol_name or "",
            group.leader_id or "",
            tuple(group.members) if leader else (),
        )

    def _store(self, group: _Group, offsets: Offsets) -> Offsets:
        if len(group.offsets.keys() | offsets.keys()) > self.config.max_offsets_per_group:
            self._gc(group)
            raise InvalidRequestError(
                f"group {group.group_id!r} would hold more than {self.config.max_offsets_per_group} offsets"
            )
        group.offsets.update(offsets)
        self._gc(group)  # an empty commit must not leave an empty group behind
        return offsets

    def _gc(self, group: _Group) -> None:
        """Forget a group with nothing left in it (Kafka's Dead): no members, ids or offsets."""
        if group.state is GroupState.EMPTY and not (group.members or group.pending_ids or group.offsets):
            self._groups.pop(group.group_id, None)
