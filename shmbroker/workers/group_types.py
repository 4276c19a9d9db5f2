"""Value types of the group coordinator (``group_state.py``) and the checks every input passes first.

Everything here is immutable and cheap to log. The checks turn anything a client can send (wrong
types, empty ids, hostile names, negative or huge timeouts, oversized metadata) into a typed
BrokerError before the coordinator stores a byte: InvalidGroupIdError (24), InvalidRequestError
(42), InvalidSessionTimeoutError (26), InconsistentGroupProtocolError (23), InvalidTopicError (17),
UnknownTopicOrPartitionError (3), OffsetMetadataTooLargeError (12).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shmbroker.errors import BrokerError, InvalidRequestError, UnknownTopicOrPartitionError
from shmbroker.workers.assignors import STRATEGIES
from shmbroker.workers.group_errors import (
    InconsistentGroupProtocolError,
    InvalidGroupIdError,
    InvalidSessionTimeoutError,
    OffsetMetadataTooLargeError,
)
from shmbroker.workers.topics import TOPIC_NAME, check_topic_name

TopicPartition = tuple[str, int]
MAX_OFFSET = 2**63 - 1


class GroupState(StrEnum):
    """Kafka's group states (their names, as DescribeGroups shows them)."""

    EMPTY = "Empty"  # no members; may still hold committed offsets
    PREPARING_REBALANCE = "PreparingRebalance"  # waiting for members to (re)join
    COMPLETING_REBALANCE = "CompletingRebalance"  # never at rest here: assignments come at once
    STABLE = "Stable"
    DEAD = "Dead"  # no such group (describe of an unknown or deleted group)


@dataclass(frozen=True)
class CoordinatorConfig:
    """Limits, Kafka's names in comments; every table the coordinator keeps is bounded by these."""

    min_session_timeout_ms: int = 6_000  # group.min.session.timeout.ms
    max_session_timeout_ms: int = 1_800_000  # group.max.session.timeout.ms
    max_rebalance_timeout_ms: int = 2**31 - 1  # bound on a client's max.poll.interval.ms
    initial_rebalance_delay_ms: int = 3_000  # group.initial.rebalance.delay.ms
    max_members_per_group: int = 1_000  # group.max.size (pending member ids count too)
    max_groups: int = 10_000  # groups held at once, including ones with only offsets
    offset_metadata_max_bytes: int = 4_096  # offset.metadata.max.bytes (UTF-8)
    max_offsets_per_group: int = 100_000
    max_topics_per_member: int = 1_000
    max_protocols: int = 16
    max_id_chars: int = 255  # group id, client id, group.instance.id (Kafka: 249)


@dataclass(frozen=True)
class Protocol:
    """One assignor a member supports, with the topics it subscribes to (sorted, deduplicated)."""

    name: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class JoinResult:
    group_id: str
    member_id: str
    generation_id: int
    protocol_type: str
    protocol_name: str
    leader_id: str
    members: tuple[str, ...]  # the leader gets every member id (informational), others ()


@dataclass(frozen=True)
class Pending:
    """The join waits for the round to complete; answer it when ``tick`` yields its JoinCompleted."""

    group_id: str
    member_id: str


@dataclass(frozen=True)
class SyncResult:
    protocol_type: str
    protocol_name: str
    assignment: tuple[TopicPartition, ...]  # sorted; what the member owns in this generation


@dataclass(frozen=True)
class MemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    topics: tuple[str, ...]
    assignment: tuple[TopicPartition, ...]


@dataclass(frozen=True)
class GroupDescription:
    group_id: str
    state: GroupState
    protocol_type: str
    protocol_name: str
    generation_id: int
    leader_id: str | None
    members: tuple[MemberDescription, ...]


@dataclass(frozen=True)
class CoordinatorStatistics:
    groups: int
    members: int
    pending_member_ids: int
    offsets: int


@dataclass(frozen=True)
class GroupListing:
    group_id: str
    state: GroupState
    protocol_type: str


@dataclass(frozen=True)
class JoinCompleted:
    """Reply now to the JoinGroup of ``member_id`` that got ``Pending``."""

    group_id: str
    member_id: str
    result: JoinResult


@dataclass(frozen=True)
class JoinFailed:
    """Reply with ``error`` to the JoinGroup of ``member_id`` that got ``Pending``."""

    group_id: str
    member_id: str
    error: BrokerError


@dataclass(frozen=True)
class MemberRemoved:
    group_id: str
    member_id: str
    reason: str


@dataclass(frozen=True)
class RebalanceCompleted:
    group_id: str
    generation_id: int
    members: int


Event = JoinCompleted | JoinFailed | MemberRemoved | RebalanceCompleted


def check_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):  # True is an int in Python
        raise InvalidRequestError(f"{name} is {type(value).__name__}; expected int")
    return value


def _str(value: object, name: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} is {type(value).__name__}; expected str")
    if len(value) > max_chars:
        raise InvalidRequestError(f"{name} of {len(value)} characters; at most {max_chars}")
    return value


def _utf8(value: str) -> bool:
    try:
        value.encode()  # a lone surrogate (JSON allows "\ud800") cannot be stored
    except UnicodeEncodeError:
        return False
    return True


def check_group_id(group_id: object, max_chars: int = CoordinatorConfig.max_id_chars) -> str:
    if not isinstance(group_id, str) or not 0 < len(group_id) <= max_chars or not _utf8(group_id):
        raise InvalidGroupIdError(f"group id {repr(group_id)[:80]} is invalid: use 1-{max_chars} characters")
    return group_id


def check_member_id(member_id: object) -> str:
    # Ours are "<client id or instance id>-<32 hex>"; anything much longer is not one of ours.
    return _str(member_id, "member_id", 2 * CoordinatorConfig.max_id_chars + 64)


def check_instance_id(instance_id: object) -> str | None:
    if instance_id is None:
        return None
    if not isinstance(instance_id, str) or not TOPIC_NAME.fullmatch(instance_id):
        raise InvalidRequestError(
            f"group.instance.id {repr(instance_id)[:80]} is invalid: use 1-249 characters of [a-zA-Z0-9._-]"
        )
    return instance_id


def check_join(
    config: CoordinatorConfig,
    client_id: object,
    session_timeout_ms: object,
    rebalance_timeout_ms: object,
    protocol_type: object,
    protocols: object,
    now_ms: object,
) -> tuple[Protocol, ...]:
    """Check a JoinGroup's fields; return its known protocols in the member's preference order."""
    _str(client_id, "client_id", config.max_id_chars)
    check_int(now_ms, "now_ms")
    session = check_int(session_timeout_ms, "session_timeout_ms")
    if not config.min_session_timeout_ms <= session <= config.max_session_timeout_ms:
        raise InvalidSessionTimeoutError(
            f"session.timeout.ms={session}; the broker allows {config.min_session_timeout_ms}"
            f"-{config.max_session_timeout_ms}"
        )
    rebalance = check_int(rebalance_timeout_ms, "rebalance_timeout_ms")
    if not 0 < rebalance <= config.max_rebalance_timeout_ms:
        raise InvalidSessionTimeoutError(
            f"max.poll.interval.ms={rebalance}; the broker allows 1-{config.max_rebalance_timeout_ms}"
        )
    if protocol_type != "consumer":
        raise InconsistentGroupProtocolError(
            f"protocol type {repr(protocol_type)[:40]}; only 'consumer' is served"
        )
    if not isinstance(protocols, list | tuple) or not 0 < len(protocols) <= config.max_protocols:
        raise InconsistentGroupProtocolError(f"give 1-{config.max_protocols} protocols as a list")
    out: dict[str, Protocol] = {}
    for item in protocols:
        name, topics = _protocol_fields(item)
        if name in STRATEGIES and name not in out:  # unknown assignors: we could not run them
            out[name] = Protocol(name, _topics(config, topics))
    if not out:
        raise InconsistentGroupProtocolError(
            f"no protocol this broker knows; use one of {', '.join(STRATEGIES)}"
        )
    return tuple(out.values())


def _protocol_fields(item: object) -> tuple[str, object]:
    if isinstance(item, Protocol):
        return item.name, list(item.topics)
    if isinstance(item, Mapping):
        name, topics = item.get("name"), item.get("topics")
    elif isinstance(item, list | tuple) and len(item) == 2:
        name, topics = item
        topics = getattr(topics, "topics", topics)  # an assignors.MemberSubscription is fine too
    else:
        raise InvalidRequestError(f"protocol {repr(item)[:80]}: expected (name, topics)")
    return _str(name, "protocol name", 64), topics


def _topics(config: CoordinatorConfig, topics: object) -> tuple[str, ...]:
    if not isinstance(topics, list | tuple) or len(topics) > config.max_topics_per_member:
        raise InvalidRequestError(
            f"subscription must be a list of at most {config.max_topics_per_member} topics"
        )
    return tuple(sorted({check_topic_name(t) for t in topics}))


def check_partitions(partitions: Iterable[Any]) -> list[TopicPartition]:
    if not isinstance(partitions, list | tuple | set | frozenset):
        raise InvalidRequestError(f"partitions is {type(partitions).__name__}; expected a list")
    out = []
    for tp in partitions:
        if not isinstance(tp, list | tuple) or len(tp) != 2:
            raise InvalidRequestError(f"partition {repr(tp)[:80]}: expected (topic, partition)")
        partition = check_int(tp[1], "partition")
        if partition < 0:
            raise InvalidRequestError(f"partition {partition} is negative")
        out.append((check_topic_name(tp[0]), partition))
    return out


def check_offsets(
    config: CoordinatorConfig, offsets: object, topics: Mapping[str, int] | None
) -> dict[TopicPartition, tuple[int, str]]:
    """{(topic, partition): (offset, metadata)} checked: offset 0..2**63-1, metadata str/None, the
    partition exists (when ``topics`` is known). Values may also be a bare offset."""
    if not isinstance(offsets, Mapping):
        raise InvalidRequestError(f"offsets is {type(offsets).__name__}; expected a mapping")
    if len(offsets) > config.max_offsets_per_group:
        raise InvalidRequestError(
            f"{len(offsets)} offsets in one commit; at most {config.max_offsets_per_group}"
        )
    out: dict[TopicPartition, tuple[int, str]] = {}
    for tp, value in zip(check_partitions(list(offsets)), offsets.values(), strict=True):
        if topics is not None and not 0 <= tp[1] < topics.get(tp[0], 0):
            raise UnknownTopicOrPartitionError(f"no partition {tp[0]}-{tp[1]} on this broker")
        offset, metadata = value if isinstance(value, list | tuple) and len(value) == 2 else (value, "")
        offset = check_int(offset, "offset")
        if not 0 <= offset <= MAX_OFFSET:
            raise InvalidRequestError(f"offset {offset} of {tp[0]}-{tp[1]} outside 0..2**63-1")
        metadata = "" if metadata is None else metadata
        if not isinstance(metadata, str) or not _utf8(metadata):
            raise InvalidRequestError(f"metadata is {type(metadata).__name__}; expected UTF-8 str")
        if len(metadata) > config.offset_metadata_max_bytes or (
            len(metadata.encode()) > config.offset_metadata_max_bytes
        ):
            raise OffsetMetadataTooLargeError(
                f"metadata of {tp[0]}-{tp[1]} is longer than "
                f"offset.metadata.max.bytes={config.offset_metadata_max_bytes}"
            )
        out[tp] = (offset, metadata)
    return out
