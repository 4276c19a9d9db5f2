"""A batch damaged on disk after it was stored (bit rot, a stray write): consumers report it as
librdkafka does (one _BAD_MSG Message at its base offset, then the records after it) and never
raise, loop or hand out its bytes; the broker keeps serving."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from shmbroker import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from tests.integration.broker_fixture import BrokerProcess, produce_one
from tests.integration.test_broker import TRANSPORTS, create

pytestmark = pytest.mark.integration

BATCHES, PER_BATCH = 3, 5
MAGIC_AT = 16  # batch header: base_offset i64, batch_length i32, epoch i32, magic i8
RECORDS_AT = 61  # the first record, past the 61-byte batch header


def _fill(broker: BrokerProcess, topic: str) -> None:
    """BATCHES batches of PER_BATCH records each (one flush per batch: one batch each)."""
    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 0})
    try:
        for b in range(BATCHES):
            for r in range(PER_BATCH):
                producer.produce(topic, f"v-{b}-{r}".encode(), partition=0)
            assert producer.flush(10) == 0
    finally:
        producer.close()


def _batch_positions(segment: Path) -> list[int]:
    data, out, position = segment.read_bytes(), [], 0
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">i", data, position + 8)
        if length <= 0:
            break
        out.append(position)
        position += 12 + length
    return out


def _damage(broker: BrokerProcess, topic: str, batch: int, at: int) -> None:
    """Flip one byte ``at`` bytes into batch ``batch`` of the partition's segment file."""
    segment = sorted((broker.data_dir / f"{topic}-0").glob("*.log"))[0]
    positions = _batch_positions(segment)
    assert len(positions) == BATCHES, positions
    with segment.open("r+b") as f:
        f.seek(positions[batch] + at)
        byte = f.read(1)
        f.seek(positions[batch] + at)
        f.write(bytes([byte[0] ^ 0x01]))


def _poll_all(consumer: Consumer, expect: int, timeout_s: float = 20.0) -> list[tuple[int, object, object]]:
    out: list[tuple[int, object, object]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None:
            error = message.error()
            out.append((message.offset(), None if error is None else error.code(), message.value()))
    return out


def _consumer(broker: BrokerProcess, transport: str, topic: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": broker.address, "shmbroker.transport": transport})
    consumer.assign([TopicPartition(topic, 0, 0)])
    return consumer


def _router_corrupt_errors(broker: BrokerProcess) -> int:
    return int(broker.status()["router"].get("counters", {}).get("errors.CORRUPT_MESSAGE", 0))


def _good(batch: int) -> list[tuple[int, object, object]]:
    return [(batch * PER_BATCH + r, None, f"v-{batch}-{r}".encode()) for r in range(PER_BATCH)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_batch_failing_its_crc_is_reported_once_and_skipped(broker: BrokerProcess, transport: str) -> None:
    create(broker, "rot")
    _fill(broker, "rot")
    _damage(broker, "rot", 1, RECORDS_AT + 3)
    consumer = _consumer(broker, transport, "rot")
    try:
        got = _poll_all(consumer, 2 * PER_BATCH + 1)
        assert got[:PER_BATCH] == _good(0)
        offset, code, value = got[PER_BATCH]
        assert (offset, code, value) == (PER_BATCH, KafkaError._BAD_MSG, None)
        assert got[PER_BATCH + 1 :] == _good(2)
        assert consumer.poll(0.3) is None  # reported once, then nothing more: no loop over it
        assert consumer.position([TopicPartition("rot", 0)])[0].offset == BATCHES * PER_BATCH
    finally:
        consumer.close()
    # The broker keeps serving the partition: new records go after the damaged batch.
    produce_one(broker, "rot", b"after")
    consumer = _consumer(broker, transport, "rot")
    try:
        consumer.seek(TopicPartition("rot", 0, BATCHES * PER_BATCH))
        assert _poll_all(consumer, 1) == [(BATCHES * PER_BATCH, None, b"after")]
    finally:
        consumer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_consume_columnar_returns_the_batches_before_a_bad_one_then_raises_then_goes_on(
    broker: BrokerProcess, transport: str
) -> None:
    create(broker, "rotcol")
    _fill(broker, "rotcol")
    _damage(broker, "rotcol", 1, RECORDS_AT + 3)
    consumer = _consumer(broker, transport, "rotcol")
    try:
        offsets: list[int] = []
        raised: list[KafkaError] = []
        deadline = time.monotonic() + 20
        while len(offsets) < 2 * PER_BATCH and time.monotonic() < deadline:
            try:
                for _topic, _partition, batch in consumer.consume_columnar(timeout=0.2):
                    offsets += batch.offsets.tolist()
            except KafkaException as exc:
                raised.append(exc.args[0])
        assert offsets == list(range(PER_BATCH)) + list(range(2 * PER_BATCH, 3 * PER_BATCH))
        assert [e.code() for e in raised] == [KafkaError._BAD_MSG]
        assert f"offset {PER_BATCH}" in raised[0].str()
    finally:
        consumer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unreadable_batch_header_is_reported_at_the_position_on_every_read(
    broker: BrokerProcess, transport: str
) -> None:
    create(broker, "rothdr")
    _fill(broker, "rothdr")
    _damage(broker, "rothdr", 1, MAGIC_AT)  # magic 2 -> 3: where the batch ends cannot be trusted
    consumer = _consumer(broker, transport, "rothdr")
    try:
        got = _poll_all(consumer, PER_BATCH + 3)
        assert got[:PER_BATCH] == _good(0)
        # Reported where the position stays, on each read: nothing after it is guessed at or handed out
        # (Kafka's Java consumer likewise raises until the application seeks elsewhere).
        assert got[PER_BATCH:] == [(PER_BATCH, KafkaError._BAD_MSG, None)] * 3
        assert consumer.position([TopicPartition("rothdr", 0)])[0].offset == PER_BATCH
    finally:
        consumer.close()
    if transport == "zmq":  # the router read it and answered CORRUPT_MESSAGE: counted (status, 1-s cadence)
        deadline = time.monotonic() + 10
        while _router_corrupt_errors(broker) < 3 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _router_corrupt_errors(broker) >= 3
    # The broker keeps serving: the partition still takes records, and its other readers still read.
    produce_one(broker, "rothdr", b"after")
    consumer = _consumer(broker, transport, "rothdr")
    try:
        assert _poll_all(consumer, PER_BATCH) == _good(0)
    finally:
        consumer.close()
