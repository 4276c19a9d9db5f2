"""AdminClient, shaped like confluent_kafka.admin.AdminClient: create, delete and list topics.

As in confluent-kafka, ``create_topics``/``delete_topics`` return ``{topic: Future}``; a future's
``result()`` is None on success and raises KafkaException otherwise. The requests are answered at
once by the broker, so the futures are already resolved when returned.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from shmbroker.client.config import AdminConfig
from shmbroker.client.connection import Connection
from shmbroker.client.types import KafkaError, KafkaException, NewTopic
from shmbroker.errors import BrokerError, error_for_code
from shmbroker.net.protocol import ApiKey, Message


@dataclass
class PartitionMetadata:
    id: int
    leader: int = 0
    replicas: list[int] = field(default_factory=lambda: [0])
    isrs: list[int] = field(default_factory=lambda: [0])
    error: KafkaError | None = None


@dataclass
class TopicMetadata:
    topic: str
    partitions: dict[int, PartitionMetadata]
    error: KafkaError | None = None


@dataclass
class BrokerMetadata:
    id: int
    host: str
    port: int


@dataclass
class ClusterMetadata:
    cluster_id: str
    controller_id: int
    orig_broker_id: int
    brokers: dict[int, BrokerMetadata]
    topics: dict[str, TopicMetadata]

    @classmethod
    def from_reply(cls, reply: Message) -> ClusterMetadata:
        topics = {}
        for entry in reply.body["topics"]:
            error = None
            if entry.get("error_code"):
                error = KafkaError(int(entry["error_code"]), f"unknown topic {entry['name']!r}")
            parts = {p: PartitionMetadata(p) for p in range(int(entry.get("partitions", 0)))}
            topics[entry["name"]] = TopicMetadata(entry["name"], parts, error)
        return cls(
            str(reply.body.get("host_id", "")), 0, 0, {0: BrokerMetadata(0, "127.0.0.1", 9093)}, topics
        )


def _resolved(error: KafkaError | None) -> Future[None]:
    future: Future[None] = Future()
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(KafkaException(error))
    return future


class AdminClient:
    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._config = AdminConfig.from_dict({**(config or {}), **kwargs})
        self._connection = Connection.for_config(self._config.common)

    def _call(self, api: ApiKey, body: dict[str, Any], timeout: float | None) -> Message:
        try:
            return self._connection.call(
                api, body, timeout_s=None if timeout is None or timeout < 0 else timeout
            )
        except BrokerError as exc:
            raise KafkaException(KafkaError.from_broker_error(exc)) from exc

    def create_topics(
        self,
        new_topics: list[NewTopic],
        operation_timeout: float = 0,
        request_timeout: float = -1,
        validate_only: bool = False,
    ) -> dict[str, Future[None]]:
        if validate_only:
            raise KafkaException(KafkaError(KafkaError._NOT_IMPLEMENTED, "validate_only is not supported"))
        body = {
            "topics": [
                {
                    "name": t.topic,
                    "num_partitions": None
                    if t.num_partitions == -1
                    else t.num_partitions,  # -1: the broker default
                    "config": t.config,
                }
                for t in new_topics
            ]
        }
        for entry in body["topics"]:
            if entry["num_partitions"] is None:
                del entry["num_partitions"]
        reply = self._call(ApiKey.CREATE_TOPICS, body, request_timeout)
        return {r["name"]: _resolved(_error(r)) for r in reply.body["topics"]}

    def delete_topics(
        self, topics: list[str], operation_timeout: float = 0, request_timeout: float = -1
    ) -> dict[str, Future[None]]:
        reply = self._call(ApiKey.DELETE_TOPICS, {"topics": list(topics)}, request_timeout)
        return {r["name"]: _resolved(_error(r)) for r in reply.body["topics"]}

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> ClusterMetadata:
        reply = self._call(ApiKey.METADATA, {"topics": None if topic is None else [topic]}, timeout)
        return ClusterMetadata.from_reply(reply)

    def describe_partitions(self, topic: str, timeout: float = -1) -> list[dict[str, Any]]:
        """shmbroker's own: offsets and state of each partition of ``topic`` (used by the CLI)."""
        meta = self.list_topics(topic, timeout).topics[topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        return [
            dict(self._call(ApiKey.LIST_OFFSETS, {"topic": topic, "partition": p}, timeout).body)
            for p in meta.partitions
        ]

    def status(self, timeout: float = -1) -> dict[str, Any]:
        """shmbroker's own: processes, partitions and counters, as `shmbroker status` shows them."""
        return dict(self._call(ApiKey.STATUS, {}, timeout).body)

    def promote(self, timeout: float = 30.0) -> int:
        """shmbroker's own: make this follower broker the leader; returns its new leader epoch.
        Raises KafkaException (NOT_LEADER_OR_FOLLOWER) if it already leads."""
        return int(self._call(ApiKey.PROMOTE, {}, timeout).body["leader_epoch"])

    def close(self) -> None:
        self._connection.close()


def _error(entry: dict[str, Any]) -> KafkaError | None:
    code = int(entry.get("error_code", 0))
    if not code:
        return None
    return KafkaError.from_broker_error(error_for_code(code, entry.get("error_message", "")))
