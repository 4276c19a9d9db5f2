"""The errors shmbroker raises on purpose: one small hierarchy, each class carrying Kafka's error code.

A bad argument is a plain ``ValueError``/``TypeError`` as in the stdlib; these classes are for broken
invariants and for errors a peer (client, worker, follower) must be told about. ``kafka_code`` is the
code of Kafka's protocol (``UNKNOWN_SERVER_ERROR`` = -1 unless a subclass knows better) and
``kafka_name`` the name confluent-kafka shows, so an error crosses the wire as one small integer and
comes back out as the same class (``error_for_code``).
"""

from __future__ import annotations

from typing import ClassVar


class BrokerError(Exception):
    """Base of every error shmbroker raises on purpose."""

    kafka_code: ClassVar[int] = -1
    kafka_name: ClassVar[str] = "UNKNOWN_SERVER_ERROR"
    retriable: ClassVar[bool] = False


class CorruptRecordError(BrokerError):
    """A CRC, length, magic or varint check failed (disk, lane or wire)."""

    kafka_code, kafka_name, retriable = 2, "CORRUPT_MESSAGE", True


class OffsetOutOfRangeError(BrokerError):
    """The requested offset is not in this log."""

    kafka_code, kafka_name = 1, "OFFSET_OUT_OF_RANGE"


class UnknownTopicOrPartitionError(BrokerError):
    kafka_code, kafka_name, retriable = 3, "UNKNOWN_TOPIC_OR_PARTITION", True


class RequestTimedOutError(BrokerError):
    kafka_code, kafka_name, retriable = 7, "REQUEST_TIMED_OUT", True


class CoordinatorNotAvailableError(BrokerError):
    kafka_code, kafka_name, retriable = 15, "COORDINATOR_NOT_AVAILABLE", True


class RecordTooLargeError(BrokerError):
    """A record or batch is larger than ``max.message.bytes`` (or a decompressed batch would be)."""

    kafka_code, kafka_name = 10, "MESSAGE_TOO_LARGE"


class NetworkError(BrokerError):
    kafka_code, kafka_name, retriable = 13, "NETWORK_EXCEPTION", True


class TooManyConnectionsError(NetworkError):
    """The listener already serves ``max.connections`` clients; this one is new and is refused.

    Kafka closes such a connection, which its clients see as NETWORK_EXCEPTION (retriable: a slot
    frees when another client goes idle), so it crosses the wire as 13 and comes back a NetworkError.
    """


class InvalidTopicError(BrokerError):
    """A topic name that is empty, too long, or has characters outside ``[a-zA-Z0-9._-]``."""

    kafka_code, kafka_name = 17, "INVALID_TOPIC_EXCEPTION"


class RecordListTooLargeError(BrokerError):
    kafka_code, kafka_name = 18, "RECORD_LIST_TOO_LARGE"


class NotEnoughReplicasError(BrokerError):
    kafka_code, kafka_name, retriable = 19, "NOT_ENOUGH_REPLICAS", True


class NotEnoughReplicasAfterAppendError(BrokerError):
    """Appended, but the in-sync set fell below ``min.insync.replicas`` before it was replicated."""

    kafka_code, kafka_name, retriable = 20, "NOT_ENOUGH_REPLICAS_AFTER_APPEND", True


class NotLeaderOrFollowerError(BrokerError):
    """This broker is a follower (or not yet a leader): produce and fetch go to the leader."""

    kafka_code, kafka_name, retriable = 6, "NOT_LEADER_OR_FOLLOWER", True


class FencedLeaderEpochError(BrokerError):
    """A peer's leader epoch is older than one this broker has seen: it is stale and is refused."""

    kafka_code, kafka_name, retriable = 74, "FENCED_LEADER_EPOCH", False


class UnknownLeaderEpochError(BrokerError):
    """A peer claims a leader epoch newer than this broker's: this broker is the stale one."""

    kafka_code, kafka_name, retriable = 75, "UNKNOWN_LEADER_EPOCH", True


class ClusterAuthorizationError(BrokerError):
    """A replication peer that did not prove it holds an allowed key."""

    kafka_code, kafka_name = 31, "CLUSTER_AUTHORIZATION_FAILED"


class InvalidRequiredAcksError(BrokerError):
    kafka_code, kafka_name = 21, "INVALID_REQUIRED_ACKS"


class InvalidTimestampError(BrokerError):
    kafka_code, kafka_name = 32, "INVALID_TIMESTAMP"


class UnsupportedVersionError(BrokerError):
    kafka_code, kafka_name = 35, "UNSUPPORTED_VERSION"


class TopicAlreadyExistsError(BrokerError):
    kafka_code, kafka_name = 36, "TOPIC_ALREADY_EXISTS"


class InvalidPartitionsError(BrokerError):
    kafka_code, kafka_name = 37, "INVALID_PARTITIONS"


class InvalidConfigError(BrokerError):
    kafka_code, kafka_name = 40, "INVALID_CONFIG"


class InvalidRequestError(BrokerError):
    """A request that does not parse or breaks the protocol (a malformed frame, an unknown command)."""

    kafka_code, kafka_name = 42, "INVALID_REQUEST"


class KafkaStorageError(BrokerError):
    """The disk failed under us (ENOSPC, EIO); the partition stops taking writes."""

    kafka_code, kafka_name, retriable = 56, "KAFKA_STORAGE_ERROR", True


class UnsupportedCompressionTypeError(BrokerError):
    kafka_code, kafka_name = 76, "UNSUPPORTED_COMPRESSION_TYPE"


class InvalidRecordError(BrokerError):
    kafka_code, kafka_name = 87, "INVALID_RECORD"


class InvalidOffsetError(BrokerError):
    """An append would break offset order: a bug upstream, never the user's input."""


class ClosedError(BrokerError):
    """*We* closed it (ring, segment, log, connection)."""


class BrokenError(BrokerError):
    """Something outside broke it (peer died, shared memory vanished)."""

    retriable = True


class LockedError(BrokerError):
    """Another broker already holds this data directory."""


class ProtocolError(BrokerError):
    """Abstract; raise LocalProtocolError or RemoteProtocolError."""

    kafka_code, kafka_name = 42, "INVALID_REQUEST"


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


# -- consumer groups ---------------------------------------------------------------------------
class OffsetMetadataTooLargeError(BrokerError):
    """Commit metadata longer than ``offset.metadata.max.bytes`` (UTF-8 bytes)."""

    kafka_code, kafka_name = 12, "OFFSET_METADATA_TOO_LARGE"


class IllegalGenerationError(BrokerError):
    """The member's generation is not the group's current one: it must rejoin."""

    kafka_code, kafka_name = 22, "ILLEGAL_GENERATION"


class PartitionNotAssignedError(IllegalGenerationError):
    """A commit for a partition the member does not own in this generation (stricter than Kafka).

    Crosses the wire as ILLEGAL_GENERATION, so a Kafka-style client does what it should: rejoin.
    """


class InconsistentGroupProtocolError(BrokerError):
    """Wrong protocol type, no protocols, or none in common with the group's members."""

    kafka_code, kafka_name = 23, "INCONSISTENT_GROUP_PROTOCOL"


class InvalidGroupIdError(BrokerError):
    kafka_code, kafka_name = 24, "INVALID_GROUP_ID"


class UnknownMemberIdError(BrokerError):
    """The member id is not (or no longer) in the group: it must rejoin with an empty member id."""

    kafka_code, kafka_name = 25, "UNKNOWN_MEMBER_ID"


class InvalidSessionTimeoutError(BrokerError):
    """``session.timeout.ms`` (or ``max.poll.interval.ms``) outside the broker's allowed range."""

    kafka_code, kafka_name = 26, "INVALID_SESSION_TIMEOUT"


class RebalanceInProgressError(BrokerError):
    """The group is rebalancing: the member must rejoin (JoinGroup) to get its new assignment."""

    kafka_code, kafka_name = 27, "REBALANCE_IN_PROGRESS"


class NonEmptyGroupError(BrokerError):
    """The operation (delete, offset reset) needs a group with no active members."""

    kafka_code, kafka_name = 68, "NON_EMPTY_GROUP"


class GroupIdNotFoundError(BrokerError):
    kafka_code, kafka_name = 69, "GROUP_ID_NOT_FOUND"


class MemberIdRequiredError(BrokerError):
    """First JoinGroup with an empty member id: rejoin with ``member_id`` (Kafka >= 2.2, KIP-394)."""

    kafka_code, kafka_name = 79, "MEMBER_ID_REQUIRED"

    def __init__(self, message: str, member_id: str = "") -> None:
        super().__init__(message)
        self.member_id = member_id


class GroupMaxSizeReachedError(BrokerError):
    """The group already has ``group.max.size`` members (pending member ids count too)."""

    kafka_code, kafka_name = 81, "GROUP_MAX_SIZE_REACHED"


class TooManyGroupsError(GroupMaxSizeReachedError):
    """The coordinator already holds ``max_groups`` groups; Kafka has no code, so it reuses 81."""


class FencedInstanceIdError(BrokerError):
    """Another member id now holds this ``group.instance.id``: this (older) process is fenced."""

    kafka_code, kafka_name = 82, "FENCED_INSTANCE_ID"


GROUP_ERRORS: dict[int, type[BrokerError]] = {
    cls.kafka_code: cls
    for cls in (
        OffsetMetadataTooLargeError,
        CoordinatorNotAvailableError,
        IllegalGenerationError,
        InconsistentGroupProtocolError,
        InvalidGroupIdError,
        UnknownMemberIdError,
        InvalidSessionTimeoutError,
        RebalanceInProgressError,
        NonEmptyGroupError,
        GroupIdNotFoundError,
        GroupMaxSizeReachedError,
        FencedInstanceIdError,
    )
}


def _all_subclasses(cls: type[BrokerError]) -> list[type[BrokerError]]:
    out: list[type[BrokerError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[int, type[BrokerError]] = {}
for _cls in _all_subclasses(BrokerError):
    # The first class declared for a code wins, so ProtocolError never shadows InvalidRequestError.
    if _cls.kafka_code != -1:
        _BY_CODE.setdefault(_cls.kafka_code, _cls)


def error_for_code(code: int, message: str = "") -> BrokerError:
    """The error a Kafka error code stands for, as an instance ready to raise."""
    cls = _BY_CODE.get(code, BrokerError)
    return cls(message or cls.kafka_name)
