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
  members, as in Kafka. As in Kafka, a member of the current generation may commit while the group
  is PreparingRebalance (eager commit-on-revoke); Kafka's REBALANCE_IN_PROGRESS for commits belongs
  to CompletingRebalance, which never lasts here.
- A join answered ``Pending`` gets exactly one JoinCompleted or JoinFailed event later. A client that
  retries its join while waiting gets ``Pending`` again and the same single event: answer every
  request still parked for that member with it. Events queue until ``tick`` takes them.

Every input is checked before anything is stored, and every table is bounded (``CoordinatorConfig``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shmbroker.errors import BrokerError, InvalidRequestError
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
from shmbroker.workers.group_model import Group, Member, Offsets, Outbox
from shmbroker.workers.group_types import (
    CoordinatorConfig,
    CoordinatorStatistics,
    Event,
    GroupDescription,
    GroupListing,
    GroupState,
    JoinResult,
    MemberDescription,
    Pending,
    Protocol,
    SyncResult,
    TopicPartition,
    check_group_id,
    check_instance_id,
    check_int,
    check_join,
    check_member_id,
    check_offsets,
    check_partitions,
)


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
        self._groups: dict[str, Group] = {}
        self._out = Outbox(self.config, dict(partitions_per_topic or {}))
        self._topics_known = partitions_per_topic is not None  # else commits skip the existence check
        self._suffix = new_member_suffix
        for group_id, entries in (offsets or {}).items():
            group = self._groups.setdefault(group_id, Group(group_id, self._out))
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
        group: Group,
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
                member = group.replace_static(group.members[current], f"{instance_id}-{self._suffix()}")
                if group.state is GroupState.STABLE and member.protocols == wanted:
                    group.touch(member, now_ms)
                    return group.join_result(member.member_id)
                member_id = member.member_id
        elif instance_id is None and not member_id:
            self._check_room(group)
            new_id = f"{client_id}-{self._suffix()}"
            group.pending_ids[new_id] = now_ms + session_timeout_ms
            self._out.note(now_ms + session_timeout_ms)
            raise MemberIdRequiredError(f"rejoin group {group_id!r} with member id {new_id!r}", new_id)
        elif member_id not in group.members:
            if member_id and member_id not in group.pending_ids:
                raise UnknownMemberIdError(
                    f"member {member_id!r} is not in group {group_id!r}; rejoin with ''"
                )
            self._check_room(group, pending=member_id in group.pending_ids)
            group.pending_ids.pop(member_id, None)
            member_id = member_id or f"{instance_id}-{self._suffix()}"
            group.members[member_id] = Member(member_id, instance_id, client_id, 0, 0, wanted)
            if instance_id is not None:
                group.instances[instance_id] = member_id
        member = group.members[member_id]
        if member.instance_id != instance_id:
            raise FencedInstanceIdError(f"member {member_id!r} joined as instance {member.instance_id!r}")
        changed = member.protocols != wanted or not member.session_timeout_ms
        member.client_id, member.protocols = client_id, wanted
        member.session_timeout_ms, member.rebalance_timeout_ms = session_timeout_ms, rebalance_timeout_ms
        group.touch(member, now_ms)
        if group.state is GroupState.STABLE and not changed:
            return group.join_result(member_id)  # a retried join: nothing to rebalance
        if group.state is not GroupState.PREPARING_REBALANCE:
            group.start_rebalance(now_ms)
        elif changed:
            group.delay_for_newcomer(now_ms)
        group.protocol_type = protocol_type
        member.awaiting_join = True
        group.maybe_complete(now_ms, caller=member_id)
        if not member.awaiting_join and group.state is GroupState.STABLE:
            return group.join_result(member_id)
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
        group.check_generation(generation_id)
        if group.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(f"group {group_id!r} is rebalancing; rejoin")
        member.revoked = member.held - set(member.assignment)
        member.held, member.held_generation = frozenset(member.assignment), group.generation
        group.touch(member, now_ms)
        group.unsynced.discard(member_id)
        if group.follow_up and not group.unsynced:  # every holder has revoked: hand out the rest
            group.start_rebalance(now_ms)
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
        group.check_generation(generation_id)
        group.touch(member, now_ms)
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
        group.remove(member, "left the group")
        group.after_removal(now_ms)
        self._gc(group)

    # -- time --------------------------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[Event]:
        """Expire sessions and pending member ids, finish rounds due; return every queued event."""
        if now_ms >= self._out.next_deadline_ms:
            self._out.next_deadline_ms = math.inf
            for group in list(self._groups.values()):
                group.expire(now_ms)
                self._gc(group)
        events, self._out.events = self._out.events, []
        return events

    def set_topics(self, partitions_per_topic: Mapping[str, int], now_ms: int) -> None:
        """The broker's topics changed: Stable groups whose subscribed topics changed rebalance."""
        self._out.topics, self._topics_known = dict(partitions_per_topic), True
        for group in self._groups.values():
            if group.state is GroupState.STABLE and group.topic_snapshot != group.snapshot():
                group.start_rebalance(now_ms)

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
        normal = check_offsets(self.config, offsets, self._out.topics if self._topics_known else None)
        check_int(generation_id, "generation_id")
        group = self._groups.get(group_id)
        if generation_id < 0 and member_id == "" and group_instance_id is None:
            if group is not None and group.members:
                raise UnknownMemberIdError(f"group {group_id!r} has members; a simple commit needs none")
        elif group is None:
            raise IllegalGenerationError(f"group {group_id!r} has no generation {generation_id}")
        else:
            group, member = self._member(group_id, member_id, group_instance_id)
            group.check_generation(generation_id)
            allowed = set(member.assignment) | member.revoked
            stray = sorted(tp for tp in normal if tp not in allowed)
            if stray:
                raise PartitionNotAssignedError(
                    f"member {member_id!r} does not own {stray[:5]} in generation {group.generation}; rejoin"
                )
            group.touch(member, now_ms)
        return self._store(group or self._new_group(group_id), normal)

    def reset_offsets(self, group_id: str, offsets: Mapping[Any, Any]) -> Offsets:
        """Set offsets of a group with no members (as ``kafka-consumer-groups --reset-offsets``)."""
        check_group_id(group_id)
        normal = check_offsets(self.config, offsets, self._out.topics if self._topics_known else None)
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

    def all_offsets(self) -> dict[str, Offsets]:
        """Every group's committed offsets (a copy): what ``OffsetStore.compact`` should keep."""
        return {g.group_id: dict(g.offsets) for g in self._groups.values() if g.offsets}

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

    def statistics(self) -> CoordinatorStatistics:
        """Counts over every group: O(groups), cheap enough to log every few seconds."""
        return CoordinatorStatistics(
            groups=len(self._groups),
            members=sum(len(g.members) for g in self._groups.values()),
            pending_member_ids=sum(len(g.pending_ids) for g in self._groups.values()),
            offsets=sum(len(g.offsets) for g in self._groups.values()),
        )

    # -- internals ---------------------------------------------------------------------------------
    def _new_group(self, group_id: str) -> Group:
        if len(self._groups) >= self.config.max_groups:
            raise TooManyGroupsError(f"{len(self._groups)} groups already; raise max_groups")
        group = self._groups[group_id] = Group(group_id, self._out)
        return group

    def _check_room(self, group: Group, *, pending: bool = False) -> None:
        used = len(group.members) + len(group.pending_ids) - (1 if pending else 0)
        if used >= self.config.max_members_per_group:
            raise GroupMaxSizeReachedError(
                f"group {group.group_id!r} has {used} members (pending ids included); "
                f"group.max.size is {self.config.max_members_per_group}"
            )

    def _check_protocols(
        self,
        group: Group,
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

    def _member(self, group_id: str, member_id: str, instance_id: str | None) -> tuple[Group, Member]:
        check_group_id(group_id)
        check_member_id(member_id)
        instance_id = check_instance_id(instance_id)
        group = self._groups.get(group_id)
        member = group.members.get(member_id) if group is not None else None
        if instance_id is not None and group is not None:
            current = group.instances.get(instance_id)
            if current is not None and current != member_id:
                raise FencedInstanceIdError(f"instance {instance_id!r} is now member {current!r}")
        if group is None or member is None:
            raise UnknownMemberIdError(f"member {member_id!r} is not in group {group_id!r}; rejoin")
        return group, member

    def _store(self, group: Group, offsets: Offsets) -> Offsets:
        if len(group.offsets.keys() | offsets.keys()) > self.config.max_offsets_per_group:
            self._gc(group)
            raise InvalidRequestError(
                f"group {group.group_id!r} would hold more than {self.config.max_offsets_per_group} offsets"
            )
        group.offsets.update(offsets)
        self._gc(group)  # an empty commit must not leave an empty group behind
        return offsets

    def _gc(self, group: Group) -> None:
        if group.idle:
            self._groups.pop(group.group_id, None)
