"""Kafka's consumer-group errors; they live in ``shmbroker.errors`` (so ``error_for_code`` knows them)
and are re-exported here for the group modules."""

from __future__ import annotations

from shmbroker.errors import (
    BrokerError,
    CoordinatorNotAvailableError,
    FencedInstanceIdError,
    GroupIdNotFoundError,
    GroupMaxSizeReachedError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    InvalidGroupIdError,
    InvalidSessionTimeoutError,
    MemberIdRequiredError,
    NonEmptyGroupError,
    OffsetMetadataTooLargeError,
    PartitionNotAssignedError,
    RebalanceInProgressError,
    TooManyGroupsError,
    UnknownMemberIdError,
    error_for_code,
)

__all__ = [
    "CoordinatorNotAvailableError",
    "FencedInstanceIdError",
    "GroupIdNotFoundError",
    "GroupMaxSizeReachedError",
    "IllegalGenerationError",
    "InconsistentGroupProtocolError",
    "InvalidGroupIdError",
    "InvalidSessionTimeoutError",
    "MemberIdRequiredError",
    "NonEmptyGroupError",
    "OffsetMetadataTooLargeError",
    "PartitionNotAssignedError",
    "RebalanceInProgressError",
    "TooManyGroupsError",
    "UnknownMemberIdError",
]


def group_error_for_code(code: int, message: str = "") -> BrokerError | None:
    """The group error a code stands for, or None when the code is not a group error."""
    error = error_for_code(code, message)
    return error if type(error).__name__ in __all__ else None
