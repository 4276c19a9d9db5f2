"""Client configuration under confluent-kafka's (librdkafka's) keys.

Keys a Kafka user already writes are accepted with their meaning; keys that only matter to a
Kafka cluster (security.protocol=PLAINTEXT, client.id, ...) are accepted and ignored; anything
else is refused with KafkaException(_INVALID_ARG), as confluent-kafka refuses an unknown property.
``shmbroker.transport`` (auto | shm | zmq) is ours: it forces one data path so both can be measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shmbroker.client.types import KafkaError, KafkaException
from shmbroker.records import Codec

CODECS = {
    "none": Codec.NONE,
    "gzip": Codec.GZIP,
    "snappy": Codec.SNAPPY,
    "lz4": Codec.LZ4,
    "zstd": Codec.ZSTD,
}
TRANSPORTS = ("auto", "shm", "zmq")
# Accepted for compatibility; they change nothing on a single-host broker.
IGNORED = {
    "client.id",
    "security.protocol",
    "api.version.request",
    "broker.version.fallback",
    "socket.keepalive.enable",
    "retries",
    "retry.backoff.ms",
    "enable.idempotence",
    "max.in.flight.requests.per.connection",
    "statistics.interval.ms",
    "log_level",
    "debug",
    "partitioner",
    "socket.timeout.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "fetch.wait.max.ms",
    "queued.min.messages",
    "check.crcs",
    "enable.partition.eof",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "group.instance.id",
    "auto.commit.interval.ms",
    "isolation.level",
}


def _fail(message: str) -> KafkaException:
    return KafkaException(KafkaError(KafkaError._INVALID_ARG, message))


def _int(conf: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    raw = conf.pop(key, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise _fail(f'Invalid value {raw!r} for configuration property "{key}"') from None
    if not low <= value <= high:
        raise _fail(f'Configuration property "{key}" value {value} is outside allowed range {low}..{high}')
    return value


@dataclass(frozen=True)
class CommonConfig:
    bootstrap_servers: str
    transport: str
    request_timeout_ms: int

    @classmethod
    def pop_from(cls, conf: dict[str, Any]) -> CommonConfig:
        transport = str(conf.pop("shmbroker.transport", "auto"))
        if transport not in TRANSPORTS:
            raise _fail(f"shmbroker.transport={transport!r}: one of {', '.join(TRANSPORTS)}")
        servers = str(conf.pop("bootstrap.servers", "tcp://127.0.0.1:9093"))
        timeout = _int(conf, "request.timeout.ms", 30000, 1, 900000)
        conf.pop("socket.connection.setup.timeout.ms", None)
        return cls(servers, transport, timeout)


def _reject_unknown(conf: dict[str, Any]) -> None:
    for key in list(conf):
        if key in IGNORED:
            conf.pop(key)
    if conf:
        key = sorted(conf)[0]
        raise _fail(f'No such configuration property: "{key}"')


@dataclass(frozen=True)
class ProducerConfig:
    common: CommonConfig
    acks: int
    linger_ms: int
    batch_size: int
    batch_num_messages: int
    codec: Codec
    max_queued_messages: int
    message_max_bytes: int
    message_timeout_ms: int
    allow_auto_create: bool
    on_delivery: Callable[..., None] | None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ProducerConfig:
        conf = dict(raw)
        common = CommonConfig.pop_from(conf)
        acks_raw = str(conf.pop("acks", conf.pop("request.required.acks", "all"))).lower()
        acks = {"all": -1, "-1": -1, "0": 0, "1": 1}.get(acks_raw)
        if acks is None:
            raise _fail(f'Invalid value {acks_raw!r} for configuration property "acks": 0, 1, all or -1')
        codec_name = str(conf.pop("compression.type", conf.pop("compression.codec", "none"))).lower()
        if codec_name not in CODECS:
            raise _fail(f'Invalid value {codec_name!r} for "compression.type": {", ".join(CODECS)}')
        linger = conf.pop("queue.buffering.max.ms", None)
        linger_ms = _int(conf, "linger.ms", 5 if linger is None else int(linger), 0, 900000)
        on_delivery = conf.pop("on_delivery", None) or conf.pop("delivery.report.cb", None)
        conf.pop("error_cb", None)
        result = cls(
            common=common,
            acks=acks,
            linger_ms=linger_ms,
            batch_size=_int(conf, "batch.size", 1000000, 1, 2147483647),
            batch_num_messages=_int(conf, "batch.num.messages", 10000, 1, 1000000),
            codec=CODECS[codec_name],
            max_queued_messages=_int(conf, "queue.buffering.max.messages", 100000, 1, 2147483647),
            message_max_bytes=_int(conf, "message.max.bytes", 1000000, 1000, 1000000000),
            message_timeout_ms=_int(
                conf,
                "message.timeout.ms",
                _int(conf, "delivery.timeout.ms", 300000, 0, 2147483647),
                0,
                2147483647,
            ),
            allow_auto_create=str(conf.pop("allow.auto.create.topics", "true")).lower() == "true",
            on_delivery=on_delivery,
        )
        conf.pop("queue.buffering.max.kbytes", None)
        _reject_unknown(conf)
        return result


@dataclass(frozen=True)
class ConsumerConfig:
    common: CommonConfig
    group_id: str | None
    auto_offset_reset: str
    enable_auto_commit: bool
    fetch_max_bytes: int
    max_partition_fetch_bytes: int
    fetch_min_bytes: int
    fetch_max_wait_ms: int
    on_error: Callable[..., None] | None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ConsumerConfig:
        conf = dict(raw)
        common = CommonConfig.pop_from(conf)
        reset = str(conf.pop("auto.offset.reset", "latest")).lower()
        reset = {"smallest": "earliest", "beginning": "earliest", "largest": "latest", "end": "latest"}.get(
            reset, reset
        )
        if reset not in ("earliest", "latest", "error"):
            raise _fail(f'Invalid value {reset!r} for "auto.offset.reset": earliest, latest or error')
        group_id = conf.pop("group.id", None)
        result = cls(
            common=common,
            group_id=None if group_id is None else str(group_id),
            auto_offset_reset=reset,
            enable_auto_commit=str(conf.pop("enable.auto.commit", "true")).lower() == "true",
            fetch_max_bytes=_int(conf, "fetch.max.bytes", 52428800, 1, 2147483135),
            max_partition_fetch_bytes=_int(conf, "max.partition.fetch.bytes", 1048576, 1, 1000000000),
            fetch_min_bytes=_int(conf, "fetch.min.bytes", 1, 1, 100000000),
            fetch_max_wait_ms=_int(conf, "fetch.max.wait.ms", 500, 0, 300000),
            on_error=conf.pop("error_cb", None),
        )
        _reject_unknown(conf)
        return result


@dataclass(frozen=True)
class AdminConfig:
    common: CommonConfig

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AdminConfig:
        conf = dict(raw)
        common = CommonConfig.pop_from(conf)
        _reject_unknown(conf)
        return cls(common)
