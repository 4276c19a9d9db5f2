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


class RecordTooLargeError(BrokerError):
    """A record or batch is larger than ``max.message.bytes`` (or a decompressed batch would be)."""

    kafka_code, kafka_name = 10, "MESSAGE_TOO_LARGE"


class NetworkError(BrokerError):
    kafka_code, kafka_name, retriable = 13, "NETWORK_EXCEPTION", True


class InvalidTopicError(BrokerError):
    """A topic name that is empty, too long, or has characters outside ``[a-zA-Z0-9._-]``."""

    kafka_code, kafka_name = 17, "INVALID_TOPIC_EXCEPTION"


class RecordListTooLargeError(BrokerError):
    kafka_code, kafka_name = 18, "RECORD_LIST_TOO_LARGE"


class NotEnoughReplicasError(BrokerError):
    kafka_code, kafka_name, retriable = 19, "NOT_ENOUGH_REPLICAS", True


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
