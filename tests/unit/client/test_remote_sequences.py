"""The idempotent remote producer's bookkeeping, without a broker: which producer id and sequence
each batch carries, and that a timed-out request is resent as the same bytes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shmbroker import KafkaError, Producer, records
from shmbroker.client import transport as tx
from shmbroker.client.config import ProducerConfig
from shmbroker.net.protocol import ApiKey, Message


class FakeConnection:
    def __init__(self) -> None:
        self.sent: list[tuple[int, dict[str, Any], bytes]] = []  # (correlation id, body, batch)
        self.forgotten: list[int] = []

    def send(self, api: ApiKey, body: dict[str, Any], data: list[Any] | None = None) -> int:
        assert api == ApiKey.PRODUCE and data is not None and len(data) == 1
        self.sent.append((len(self.sent) + 1, body, bytes(data[0])))
        return len(self.sent)

    def forget(self, correlation_id: int) -> None:
        self.forgotten.append(correlation_id)


class FakeFactory:
    """What a Producer needs of TransportFactory, remote path, replies injected by the test."""

    max_message_bytes = 1048588

    def __init__(self, producer_id: int, request_timeout_s: float = 30.0) -> None:
        self.connection = FakeConnection()
        self.owners: dict[int, Any] = {}
        self.producer_id, self.request_timeout_s = producer_id, request_timeout_s

    def partition_count(self, topic: str, *, allow_auto_create: bool) -> int:
        return 2

    def open(self, topic: str, partition: int) -> tx.RemoteTransport:
        return tx.RemoteTransport(
            self,  # type: ignore[arg-type]
            topic,
            partition,
            producer_id=self.producer_id,
            request_timeout_s=self.request_timeout_s,
        )

    def pump(self, timeout_s: float) -> int:
        return 0

    def wait(self, timeout_s: float, *, spin: bool = False) -> None:
        pass

    def close(self) -> None:
        pass

    def reply(self, correlation_id: int, base_offset: int, error_code: int = 0) -> None:
        body = {"error_code": 0, "results": [{"base_offset": base_offset, "error_code": error_code}]}
        self.owners.pop(correlation_id).on_reply(Message(ApiKey.PRODUCE, correlation_id, body, is_reply=True))


def producer_with(factory: FakeFactory, **config: Any) -> Producer:
    producer = Producer(
        {"bootstrap.servers": "tcp://127.0.0.1:1", "linger.ms": 0, "retry.backoff.ms": 0, **config}
    )
    producer._transports.close()
    producer._transports = factory  # type: ignore[assignment]
    return producer


def stamps(batch: bytes) -> tuple[int, int, int]:
    header = records.parse_batch_header(memoryview(batch))
    return header.producer_id, header.base_sequence, header.records_count


def test_enable_idempotence_defaults_to_true() -> None:
    assert ProducerConfig.from_dict({}).enable_idempotence
    assert not ProducerConfig.from_dict({"enable.idempotence": False}).enable_idempotence
    assert not ProducerConfig.from_dict({"enable.idempotence": "false"}).enable_idempotence


def test_remote_transport_counts_batches_per_partition_from_zero() -> None:
    factory = FakeFactory(7)
    first, second = factory.open("t", 0), factory.open("t", 1)
    assert [first.reserve() for _ in range(3)] == [0, 1, 2]
    assert second.reserve() == 0


def test_batches_carry_the_producer_id_and_per_partition_batch_sequence() -> None:
    factory = FakeFactory(4242)
    producer = producer_with(factory)
    for partition, values in ((0, [b"a", b"b"]), (1, [b"c"]), (0, [b"d"])):
        for value in values:
            producer.produce("t", value, partition=partition)
        producer.flush(0)
    assert [stamps(batch) for _cid, _body, batch in factory.connection.sent] == [
        (4242, 0, 2),
        (4242, 0, 1),
        (4242, 1, 1),
    ]
    assert [body["partitions"] for _cid, body, _batch in factory.connection.sent] == [[0], [1], [0]]


def test_timed_out_request_is_resent_as_the_same_bytes() -> None:
    factory = FakeFactory(99, request_timeout_s=0.02)
    producer = producer_with(factory)
    delivered: list[tuple[KafkaError | None, int]] = []
    producer.produce("t", b"x", partition=0, on_delivery=lambda e, m: delivered.append((e, m.offset())))
    producer.flush(0)
    [(first_cid, _body, first_bytes)] = factory.connection.sent
    time.sleep(0.05)
    producer.poll(0)  # the request times out: REQUEST_TIMED_OUT, retriable
    producer.poll(0)  # ... and the batch goes out again
    assert factory.connection.forgotten == [first_cid]
    assert delivered == []
    retry_cid, _body, retry_bytes = factory.connection.sent[-1]
    assert retry_cid != first_cid and retry_bytes == first_bytes
    factory.reply(retry_cid, base_offset=41)
    producer.poll(0)
    assert delivered == [(None, 41)] and len(producer) == 0
    producer.produce("t", b"y", partition=0)
    producer.flush(0)
    assert stamps(factory.connection.sent[-1][2]) == (99, 1, 1)  # the retry took no new sequence


def test_retriable_error_reply_is_resent_as_the_same_bytes() -> None:
    factory = FakeFactory(5)
    producer = producer_with(factory)
    producer.produce("t", b"x", partition=0)
    producer.flush(0)
    cid, _body, batch = factory.connection.sent[-1]
    factory.reply(cid, base_offset=-1, error_code=KafkaError.NETWORK_EXCEPTION)
    producer.poll(0)
    producer.poll(0)
    assert factory.connection.sent[-1][0] != cid and factory.connection.sent[-1][2] == batch


@pytest.mark.parametrize(
    ("idempotent", "revision", "asked"), [(True, 2, True), (False, 2, False), (True, 1, False)]
)
def test_factory_asks_for_a_producer_id_only_when_idempotent(
    idempotent: bool, revision: int, asked: bool
) -> None:
    factory = tx.TransportFactory(tx.CommonConfig("tcp://127.0.0.1:1", "zmq", 1000), idempotent=idempotent)
    calls: list[ApiKey] = []

    def call(api: ApiKey, body: dict[str, Any], **_kw: Any) -> Message:
        calls.append(api)
        return Message(api, 1, {"producer_id": 1234, "producer_epoch": 0}, is_reply=True)

    factory.protocol_revision = revision
    factory.connection.call = call  # type: ignore[method-assign]
    try:
        assert factory.remote_producer_id() == (1234 if asked else -1)
        assert factory.remote_producer_id() == (1234 if asked else -1)  # asked once per producer
        assert calls == ([ApiKey.INIT_PRODUCER_ID] if asked else [])
    finally:
        factory.close()


def test_a_refused_batch_waits_retry_backoff_ms_before_it_is_resent() -> None:
    """No hot loop against a broker that refuses (NOT_ENOUGH_REPLICAS while a follower is away)."""
    import time

    factory = FakeFactory(5)
    producer = producer_with(factory, **{"retry.backoff.ms": 200})
    producer.produce("t", b"x", partition=0)
    producer.flush(0)
    cid, _body, batch = factory.connection.sent[-1]
    factory.reply(cid, base_offset=-1, error_code=KafkaError.NOT_ENOUGH_REPLICAS)
    sent_before = len(factory.connection.sent)
    producer.poll(0)
    producer.poll(0.05)
    assert len(factory.connection.sent) == sent_before  # not yet
    time.sleep(0.2)
    producer.poll(0)
    assert len(factory.connection.sent) == sent_before + 1 and factory.connection.sent[-1][2] == batch
