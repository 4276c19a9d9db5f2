"""Value types of the group member (``group.py``): settings, the events it hands the consumer, Kafka's
group error codes the client acts on, and the connection interface it needs. Immutable, cheap to log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from shmbroker.client.types import KafkaError
from shmbroker.net.protocol import ApiKey, Message

TP = tuple[str, int]
MAX_POLL_EXCEEDED = -147  # librdkafka's RD_KAFKA_RESP_ERR__MAX_POLL_EXCEEDED
COORDINATOR_NOT_AVAILABLE, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID = 15, 22, 25
REBALANCE_IN_PROGRESS, MEMBER_ID_REQUIRED, FENCED_INSTANCE_ID = 27, 79, 82
REQUEST_TIMED_OUT = 7
COOPERATIVE = "cooperative-sticky"


class GroupConnection(Protocol):
    """What the member needs of ``client.connection.Connection`` (a fake in unit tests)."""

    def send(self, api: ApiKey, body: dict[str, Any], data: list[Any] | None = None) -> int: ...
    def receive(self, timeout_s: float = 0.0) -> Message | None: ...
    def forget(self, correlation_id: int) -> None: ...


class MemberState(StrEnum):
    UNJOINED = "unjoined"
    REVOKING = "revoking"  # eager: waiting for the consumer to revoke before rejoining
    JOINING = "joining"
    SYNCING = "syncing"
    STABLE = "stable"
    FAILED = "failed"  # fenced: fatal, as in librdkafka


@dataclass(frozen=True)
class GroupSettings:
    group_id: str
    instance_id: str | None = None
    client_id: str = "rdkafka"
    session_timeout_ms: int = 45_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    strategies: tuple[str, ...] = ("range", "roundrobin")
    request_timeout_ms: int = 30_000
    retry_backoff_ms: int = 100
    retry_backoff_max_ms: int = 1_000


@dataclass(frozen=True)
class Assigned:
    partitions: tuple[TP, ...]
    incremental: bool


@dataclass(frozen=True)
class Revoked:
    partitions: tuple[TP, ...]
    incremental: bool


@dataclass(frozen=True)
class Lost:
    partitions: tuple[TP, ...]
    incremental: bool


@dataclass(frozen=True)
class CommitDone:
    error: KafkaError | None
    offsets: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class GroupError:
    error: KafkaError


GroupEvent = Assigned | Revoked | Lost | CommitDone | GroupError
