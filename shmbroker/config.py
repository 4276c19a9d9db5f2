"""Broker and topic configuration under Kafka's names (``log.segment.bytes``, ``min.insync.replicas``...).

Users write Kafka's dotted keys (in the TOML file under ``[broker]`` or per topic); the code reads
typed dataclass fields named with units. ``LOG_KEYS`` maps one to the other, so the mapping is
defined once. Unknown keys are refused with InvalidConfigError, naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmbroker.errors import InvalidConfigError

DEFAULT_LISTENER = "tcp://127.0.0.1:9093"
DEFAULT_DATA_DIR = "shmbroker-data"


@dataclass(frozen=True)
class LogConfig:
    """How one partition log rolls, retains, flushes and checks what it is given."""

    segment_bytes: int = 1 << 30  # log.segment.bytes
    roll_ms: int = 7 * 24 * 3600 * 1000  # log.roll.ms
    retention_ms: int = 7 * 24 * 3600 * 1000  # log.retention.ms; -1 = keep forever
    retention_bytes: int = -1  # log.retention.bytes; -1 = no size limit
    flush_interval_messages: int = 2**63 - 1  # log.flush.interval.messages (Kafka: never, rely on the OS)
    flush_interval_ms: int = 2**63 - 1  # log.flush.interval.ms
    index_interval_bytes: int = 4096  # log.index.interval.bytes
    segment_index_bytes: int = 10 * 1024 * 1024  # log.index.size.max.bytes
    max_message_bytes: int = 1048588  # max.message.bytes: the largest batch accepted (Kafka's default)
    preallocate: bool = False  # log.preallocate
    message_timestamp_type: str = "CreateTime"  # log.message.timestamp.type: CreateTime | LogAppendTime
    min_insync_replicas: int = 1  # min.insync.replicas: acks=all fails below this many in-sync copies


# Kafka key -> (LogConfig field, type). Topic-level keys drop the "log." prefix in Kafka
# (segment.bytes, retention.ms...); both spellings are accepted.
LOG_KEYS: dict[str, tuple[str, type]] = {
    "log.segment.bytes": ("segment_bytes", int),
    "log.roll.ms": ("roll_ms", int),
    "log.retention.ms": ("retention_ms", int),
    "log.retention.bytes": ("retention_bytes", int),
    "log.flush.interval.messages": ("flush_interval_messages", int),
    "log.flush.interval.ms": ("flush_interval_ms", int),
    "log.index.interval.bytes": ("index_interval_bytes", int),
    "log.index.size.max.bytes": ("segment_index_bytes", int),
    "max.message.bytes": ("max_message_bytes", int),
    "log.preallocate": ("preallocate", bool),
    "log.message.timestamp.type": ("message_timestamp_type", str),
    "min.insync.replicas": ("min_insync_replicas", int),
}
TOPIC_KEYS: dict[str, tuple[str, type]] = {
    **LOG_KEYS,
    **{k.removeprefix("log."): v for k, v in LOG_KEYS.items() if k.startswith("log.")},
    "message.timestamp.type": ("message_timestamp_type", str),
}


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is tuple:  # a list of strings: a TOML array or one comma-separated string
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise InvalidConfigError(f"{key}={value!r}: expected a list of strings")
        return tuple(i.strip() for i in items if i.strip())
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                return value.lower() == "true"
            return bool(value)
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise InvalidConfigError(f"{key}={value!r}: expected {kind.__name__}") from exc


def log_config_from(settings: Mapping[str, Any], base: LogConfig | None = None) -> LogConfig:
    """A LogConfig from Kafka-named keys on top of ``base``; unknown keys raise InvalidConfigError."""
    changes: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in TOPIC_KEYS:
            raise InvalidConfigError(f"unknown topic/log config key {key!r}")
        name, kind = TOPIC_KEYS[key]
        changes[name] = _coerce(key, value, kind)
    config = dataclasses.replace(base or LogConfig(), **changes)
    if config.segment_bytes < 1024:
        raise InvalidConfigError(f"log.segment.bytes={config.segment_bytes} is below 1024")
    if config.message_timestamp_type not in ("CreateTime", "LogAppendTime"):
        raise InvalidConfigError(
            f"log.message.timestamp.type={config.message_timestamp_type!r}: CreateTime or LogAppendTime"
        )
    if config.min_insync_replicas < 1:
        raise InvalidConfigError(f"min.insync.replicas={config.min_insync_replicas} is below 1")
    return config


@dataclass(frozen=True)
class BrokerConfig:
    """What ``shmbroker serve`` runs with. Built from defaults, then the TOML file, then CLI flags."""

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    listeners: str = DEFAULT_LISTENER  # listeners
    num_partitions: int = 1  # num.partitions: for topics created without a count
    auto_create_topics: bool = True  # auto.create.topics.enable
    lane_bytes: int = 8 << 20  # shm lane data bytes per producer and partition
    request_max_bytes: int = 104857600  # socket.request.max.bytes: ZMQ_MAXMSGSIZE of the listener
    curve_secret_key_file: str = ""  # listener.curve.secret.key.file: the broker's .key_secret
    curve_allowed_keys_dir: str = ""  # listener.curve.allowed.keys.dir: client public keys (*.key)
    cpu_affinity: bool = False  # pin partition workers round-robin over the cores
    # shm.worker.spin.us: how long a partition worker keeps looking (yielding the core to anyone
    # runnable) after its last batch before it sleeps on its doorbell; 0 = sleep at once.
    worker_spin_us: int = 200
    restart_backoff_ms: int = 200  # first restart delay; doubles per crash up to 5 s
    max_restarts: int = 5  # crashes within restart_window_ms before the supervisor gives up on a child
    restart_window_ms: int = 60_000
    # Replication (workers/replicator.py). Peers and listener are HOST:PORT of replication listeners.
    replication_role: str = "leader"  # replication.role: the role of a new data dir
    replication_listener: str = ""  # replication.listener: where followers and probers connect
    replication_peers: tuple[str, ...] = ()  # replication.peers: the other brokers' listeners
    replica_lag_time_max_ms: int = 30_000  # replica.lag.time.max.ms
    replica_socket_timeout_ms: int = 30_000  # replica.socket.timeout.ms
    replication_secret_key_file: str = ""  # replication.secret.key.file: this broker's own key
    replication_allowed_keys_dir: str = ""  # replication.allowed.keys.dir: followers' keys
    max_connections: int = 1000  # max.connections: distinct clients (ZeroMQ routing ids) served at once
    connections_max_idle_ms: int = 600_000  # connections.max.idle.ms: a silent client's slot is freed
    log: LogConfig = field(default_factory=LogConfig)


BROKER_KEYS: dict[str, tuple[str, type]] = {
    "listeners": ("listeners", str),
    "num.partitions": ("num_partitions", int),
    "auto.create.topics.enable": ("auto_create_topics", bool),
    "shm.lane.bytes": ("lane_bytes", int),
    "socket.request.max.bytes": ("request_max_bytes", int),
    "listener.curve.secret.key.file": ("curve_secret_key_file", str),
    "listener.curve.allowed.keys.dir": ("curve_allowed_keys_dir", str),
    "cpu.affinity": ("cpu_affinity", bool),
    "shm.worker.spin.us": ("worker_spin_us", int),
    "restart.backoff.ms": ("restart_backoff_ms", int),
    "max.restarts": ("max_restarts", int),
    "replication.role": ("replication_role", str),
    "replication.listener": ("replication_listener", str),
    "replication.peers": ("replication_peers", tuple),
    "replica.lag.time.max.ms": ("replica_lag_time_max_ms", int),
    "replica.socket.timeout.ms": ("replica_socket_timeout_ms", int),
    "replication.secret.key.file": ("replication_secret_key_file", str),
    "replication.allowed.keys.dir": ("replication_allowed_keys_dir", str),
    "max.connections": ("max_connections", int),
    "connections.max.idle.ms": ("connections_max_idle_ms", int),
}


def load_broker_config(
    path: Path | None = None, *, data_dir: Path | None = None, listeners: str | None = None
) -> BrokerConfig:
    """Defaults, then ``[broker]`` of the TOML file (Kafka's keys), then the CLI's flags."""
    settings: dict[str, Any] = {}
    if path is not None:
        import tomllib  # only with a config file: ~10 ms of import otherwise paid by every broker process

        try:
            settings = dict(tomllib.loads(Path(path).read_text()).get("broker", {}))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidConfigError(f"cannot read config {path}: {exc}") from exc
    changes: dict[str, Any] = {}
    log_settings: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "log.dirs" or key == "log.dir":
            changes["data_dir"] = Path(str(value))
        elif key in BROKER_KEYS:
            name, kind = BROKER_KEYS[key]
            changes[name] = _coerce(key, value, kind)
        elif key in LOG_KEYS:
            log_settings[key] = value
        else:
            raise InvalidConfigError(f"unknown broker config key {key!r} in {path}")
    if data_dir is not None:
        changes["data_dir"] = Path(data_dir)
    if listeners is not None:
        changes["listeners"] = listeners
    changes["log"] = log_config_from(log_settings)
    config = dataclasses.replace(BrokerConfig(), **changes)
    if config.replication_role not in ("leader", "follower"):
        raise InvalidConfigError(f"replication.role={config.replication_role!r}: leader or follower")
    if config.replication_role == "follower" and not config.replication_peers:
        raise InvalidConfigError("replication.role=follower needs replication.peers (the leader's listener)")
    if config.max_connections < 1 or config.connections_max_idle_ms < 1:
        raise InvalidConfigError(
            f"max.connections={config.max_connections} and connections.max.idle.ms="
            f"{config.connections_max_idle_ms} must both be at least 1"
        )
    if not 0 <= config.worker_spin_us <= 1_000_000:
        raise InvalidConfigError(f"shm.worker.spin.us={config.worker_spin_us}: 0 to 1000000 (one second)")
    return config
