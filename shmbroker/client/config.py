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
STRATEGIES = ("range", "roundrobin", "cooperative-sticky")
# Consumer-group keys: they mean something to a Consumer; a Producer or AdminClient ignores them.
GROUP_KEYS = (
    "group.id",
    "group.instance.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "on_commit",
)
# Accepted for compatibility; they change nothing on a single-host broker.
IGNORED = {
    "client.id",
    "security.protocol",
    "api.version.request",
    "broker.version.fallback",
    "socket.keepalive.enable",
    "retries",
    "retry.backoff.ms",  # a Producer reads it (ProducerConfig); other clients ignore it
    "enable.idempotence",  # a Producer reads it (ProducerConfig); other clients ignore it
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
    "check.crcs",  # always on here: a consumer checks every batch's CRC-32C before decoding it
    "enable.partition.eof",
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
    curve_server_key_file: str = ""  # shmbroker.curve.server.key.file: the broker's public .key
    curve_client_key_file: str = ""  # shmbroker.curve.client.key.file: this client's .key_secret

    @classmethod
    def pop_from(cls, conf: dict[str, Any]) -> CommonConfig:
        transport = str(conf.pop("shmbroker.transport", "auto"))
        if transport not in TRANSPORTS:
            raise _fail(f"shmbroker.transport={transport!r}: one of {', '.join(TRANSPORTS)}")
        servers = str(conf.pop("bootstrap.servers", "tcp://127.0.0.1:9093"))
        timeout = _int(conf, "request.timeout.ms", 30000, 1, 900000)
        conf.pop("socket.connection.setup.timeout.ms", None)
        server_key = str(conf.pop("shmbroker.curve.server.key.file", ""))
        client_key = str(conf.pop("shmbroker.curve.client.key.file", ""))
        if bool(server_key) != bool(client_key):
            raise _fail(
                "CURVE needs both shmbroker.curve.server.key.file and shmbroker.curve.client.key.file"
            )
        return cls(servers, transport, timeout, server_key, client_key)


def _reject_unknown(conf: dict[str, Any], *, also_ignore: tuple[str, ...] = ()) -> None:
    for key in list(conf):
        if key in IGNORED or key in also_ignore:
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
    max_queued_bytes: int
    message_max_bytes: int
    message_timeout_ms: int
    allow_auto_create: bool
    retry_backoff_ms: int
    on_delivery: Callable[..., None] | None
    # enable.idempotence: remote batches carry a broker-issued producer id and per-partition batch
    # sequence, so a retry is appended once (net/protocol.py, revision 2). Lanes always deduplicate.
    enable_idempotence: bool = True
    # shmbroker.poll.spin.us (ours): while a delivery callback waits, poll(timeout) and flush() on a
    # local lane look for reports this long, yielding the core, before they sleep on the lane's
    # doorbell: an ack then costs no wake-up (30-80 us on a VM). 0 = sleep at once.
    poll_spin_us: int = 100

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
        idempotence = str(conf.pop("enable.idempotence", "true")).lower()
        if idempotence not in ("true", "false"):
            raise _fail(f'Invalid value {idempotence!r} for configuration property "enable.idempotence"')
        result = cls(
            common=common,
            acks=acks,
            linger_ms=linger_ms,
            batch_size=_int(conf, "batch.size", 1000000, 1, 2147483647),
            batch_num_messages=_int(conf, "batch.num.messages", 10000, 1, 1000000),
            codec=CODECS[codec_name],
            max_queued_messages=_int(conf, "queue.buffering.max.messages", 100000, 1, 2147483647),
            max_queued_bytes=1024 * _int(conf, "queue.buffering.max.kbytes", 1048576, 1, 2147483647),
            message_max_bytes=_int(conf, "message.max.bytes", 1000000, 1000, 1000000000),
            message_timeout_ms=_int(
                conf,
                "message.timeout.ms",
                _int(conf, "delivery.timeout.ms", 300000, 0, 2147483647),
                0,
                2147483647,
            ),
            allow_auto_create=str(conf.pop("allow.auto.create.topics", "true")).lower() == "true",
            retry_backoff_ms=_int(conf, "retry.backoff.ms", 100, 0, 300000),
            on_delivery=on_delivery,
            enable_idempotence=idempotence == "true",
            poll_spin_us=_int(conf, "shmbroker.poll.spin.us", 100, 0, 1_000_000),
        )
        _reject_unknown(conf, also_ignore=GROUP_KEYS)
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
    fetch_error_backoff_ms: int = 500  # a partition whose FETCH failed is not asked again before this
    # consumer groups (librdkafka's defaults)
    group_instance_id: str | None = None
    client_id: str = "rdkafka"
    session_timeout_ms: int = 45000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300000
    assignment_strategies: tuple[str, ...] = ("range", "roundrobin")
    auto_commit_interval_ms: int = 5000
    enable_auto_offset_store: bool = True
    on_commit: Callable[..., None] | None = None

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
            enable_auto_commit=_bool(conf, "enable.auto.commit", True),
            fetch_max_bytes=_int(conf, "fetch.max.bytes", 52428800, 1, 2147483135),
            max_partition_fetch_bytes=_int(conf, "max.partition.fetch.bytes", 1048576, 1, 1000000000),
            fetch_min_bytes=_int(conf, "fetch.min.bytes", 1, 1, 100000000),
            fetch_max_wait_ms=_int(conf, "fetch.max.wait.ms", 500, 0, 300000),
            on_error=conf.pop("error_cb", None),
            fetch_error_backoff_ms=_int(conf, "fetch.error.backoff.ms", 500, 0, 300000),
            **_group_fields(conf),
        )
        _reject_unknown(conf)
        return result


def _bool(conf: dict[str, Any], key: str, default: bool) -> bool:
    return str(conf.pop(key, default)).lower() in ("true", "1")


def _group_fields(conf: dict[str, Any]) -> dict[str, Any]:
    """The consumer-group keys, checked as librdkafka checks them."""
    instance = conf.pop("group.instance.id", None)
    session = _int(conf, "session.timeout.ms", 45000, 1, 3600000)
    heartbeat = _int(conf, "heartbeat.interval.ms", 3000, 1, 3600000)
    max_poll = _int(conf, "max.poll.interval.ms", 300000, 1, 86400000)
    if max_poll < session:
        raise _fail(f"`max.poll.interval.ms`={max_poll} must be >= `session.timeout.ms`={session}")
    raw = str(conf.pop("partition.assignment.strategy", "range,roundrobin"))
    strategies = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise _fail(
            f'Invalid value {raw!r} for "partition.assignment.strategy": a list of {", ".join(STRATEGIES)}'
        )
    if "cooperative-sticky" in strategies and len(strategies) > 1:
        raise _fail("partition.assignment.strategy: cooperative and eager assignors cannot be mixed")
    return {
        "group_instance_id": None if instance in (None, "") else str(instance),
        "client_id": str(conf.pop("client.id", "rdkafka")),
        "session_timeout_ms": session,
        "heartbeat_interval_ms": heartbeat,
        "max_poll_interval_ms": max_poll,
        "assignment_strategies": strategies,
        "auto_commit_interval_ms": _int(conf, "auto.commit.interval.ms", 5000, 0, 86400000),
        "enable_auto_offset_store": _bool(conf, "enable.auto.offset.store", True),
        "on_commit": conf.pop("on_commit", None),
    }


@dataclass(frozen=True)
class AdminConfig:
    common: CommonConfig

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AdminConfig:
        conf = dict(raw)
        common = CommonConfig.pop_from(conf)
        _reject_unknown(conf, also_ignore=GROUP_KEYS)
        return cls(common)
