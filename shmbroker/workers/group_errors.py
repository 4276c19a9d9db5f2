"""Kafka's consumer-group errors, shaped exactly like ``shmbroker.errors`` (to move there later).

Each class carries Kafka's code and name, so a reply carries one small integer. Note that
``errors.error_for_code`` builds its table when ``errors`` is imported, so it will only know these
codes once they move into ``errors.py``; until then ``group_error_for_code`` below maps them.
"""

from __future__ import annotations

from shmbroker.errors import BrokerError


class OffsetMetadataTooLargeError(BrokerError):
    """Commit metadata longer than ``offset.metadata.max.bytes`` (UTF-8 bytes)."""

    kafka_code, kafka_name = 12, "OFFSET_METADATA_TOO_LARGE"


class CoordinatorNotAvailableError(BrokerError):
    """The group is being deleted (Dead) or the coordinator is not running."""

    kafka_code, kafka_name, retriable = 15, "COORDINATOR_NOT_AVAILABLE", True


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

    def __init__(self, message: str, member_id: str) -> None:
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


def group_error_for_code(code: int, message: str = "") -> BrokerError | None:
    """The group error a code stands for (None if it is not one); MEMBER_ID_REQUIRED needs its id."""
    cls = GROUP_ERRORS.get(code)
    return cls(message or cls.kafka_name) if cls is not None else None
