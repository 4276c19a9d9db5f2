"""Big records end to end: batches the producer builds straight into its lane frame (records.
encode_values_into), the worker's checks of what it stored, at 64 KiB and around the lane's limits."""

from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path

import pytest

from shmbroker import AdminClient, Consumer, KafkaError, NewTopic, Producer, TopicPartition, records
from shmbroker.client.producer import IN_PLACE_MIN_VALUE_BYTES
from tests.integration.broker_fixture import BrokerProcess

with warnings.catch_warnings():  # kafka-python's protocol package uses deprecated importlib.resources calls
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatch

pytestmark = pytest.mark.integration

SMALL_LANE_BYTES = 256 << 10  # frames of at most 128 KiB - 16: the producer's batch limit is the lane's


def create(broker: BrokerProcess, topic: str, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.address})
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, config=config)])[topic].result()
    finally:
        admin.close()


def read_values(
    broker: BrokerProcess, topic: str, expect: int, timeout_s: float = 30.0
) -> list[bytes | None]:
    consumer = Consumer({"bootstrap.servers": broker.address, "max.partition.fetch.bytes": 4 << 20})
    consumer.assign([TopicPartition(topic, 0, -2)])
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            out.extend(consumer.consume(1000, timeout=0.5))
        out.extend(consumer.consume(1000, timeout=0.2))  # nothing more may arrive than was produced
    finally:
        consumer.close()
    assert [m.offset() for m in out] == list(range(len(out)))
    assert all(m.error() is None for m in out)
    return [m.value() for m in out]


def stored_values_by_kafka_python(data_dir: Path, topic: str) -> list[bytes]:
    """Every value in the partition's segment files (up to the zero tail a live broker reserves),
    decoded by kafka-python's record codec."""
    values: list[bytes] = []
    for path in sorted((data_dir / f"{topic}-0").glob("*.log")):
        data = path.read_bytes()
        position = 0
        while position + records.HEADER_BYTES <= len(data):
            header = records.parse_batch_header(data, position)
            if header.magic == 0 and header.batch_length == 0:
                break  # the reserved tail
            batch = DefaultRecordBatch(data[position : position + header.size_bytes])
            assert batch.validate_crc()
            values += [record.value for record in batch]
            position += header.size_bytes
    return values


def produce_all(broker: BrokerProcess, topic: str, values: list[bytes], **conf: object) -> list:
    delivered: list = []
    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 1, **conf})
    for value in values:
        while True:
            try:
                producer.produce(topic, value, partition=0, on_delivery=lambda e, m: delivered.append((e, m)))
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(30) == 0
    producer.close()
    return delivered


@pytest.mark.parametrize(
    "size_bytes",
    [IN_PLACE_MIN_VALUE_BYTES - 1, IN_PLACE_MIN_VALUE_BYTES, 65536, 500_000, 999_000],
    ids=["below-in-place", "in-place", "64k", "500k", "near-message.max.bytes"],
)
def test_big_keyless_records_round_trip(broker: BrokerProcess, size_bytes: int) -> None:
    create(broker, "big")
    n = max(4, (16 << 20) // size_bytes)
    values = [os.urandom(size_bytes) for _ in range(n)]
    delivered = produce_all(broker, "big", values)
    assert [e for e, _m in delivered if e is not None] == []
    assert sorted(m.offset() for _e, m in delivered) == list(range(n))
    assert read_values(broker, "big", n) == values
    assert stored_values_by_kafka_python(broker.data_dir, "big") == values


def test_batch_api_lists_of_big_values_round_trip(broker: BrokerProcess) -> None:
    create(broker, "bigbatch")
    values = [os.urandom(65536) for _ in range(200)]
    producer = Producer({"bootstrap.servers": broker.address})
    outcomes: list = []
    for start in range(0, len(values), 64):
        producer.produce_batch(
            "bigbatch", values[start : start + 64], partition=0, on_delivery=lambda *a: outcomes.append(a)
        )
    assert producer.flush(30) == 0
    producer.close()
    assert all(err is None for err, *_rest in outcomes) and sum(o[4] for o in outcomes) == 200
    assert read_values(broker, "bigbatch", 200) == values


@pytest.fixture
def small_lane_broker(tmp_path: Path, free_port: int):  # type: ignore[no-untyped-def]
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker]\n"shm.lane.bytes" = {SMALL_LANE_BYTES}\n')
    process = BrokerProcess(tmp_path / "data", free_port, config=config).start()
    try:
        yield process
    finally:
        process.stop()


def test_records_around_the_lane_frame_limit_round_trip(small_lane_broker: BrokerProcess) -> None:
    """A 256 KiB lane takes frames up to 128 KiB - 16: values up to what fits, one or two a batch."""
    broker = small_lane_broker
    create(broker, "edge")
    frame_limit = SMALL_LANE_BYTES // 2 - 16
    single_max = frame_limit - 128 - 64 - 16  # what the producer still seals as one batch
    sizes = [65536, 65536 - 200, 60_000, single_max - 1, single_max, 4096, 65536]
    values = [os.urandom(size) for size in sizes * 6]
    delivered = produce_all(broker, "edge", values)
    assert [e for e, _m in delivered if e is not None] == []
    assert read_values(broker, "edge", len(values)) == values
    assert stored_values_by_kafka_python(broker.data_dir, "edge") == values


def test_refused_in_place_batches_are_rebuilt_for_each_retry_and_never_stored(broker: BrokerProcess) -> None:
    """acks=all below min.insync.replicas: the worker refuses (retriable) until message.timeout.ms;
    each retry builds the batch into a new frame from the values, and nothing is appended."""
    create(broker, "isr", **{"min.insync.replicas": "2"})
    values = [os.urandom(65536) for _ in range(10)]  # one batch: flush() seals it
    delivered: list = []
    producer = Producer(
        {
            "bootstrap.servers": broker.address,
            "acks": "all",
            "linger.ms": 10_000,
            "message.timeout.ms": 1500,
            "retry.backoff.ms": 50,
        }
    )
    for value in values:
        producer.produce("isr", value, partition=0, on_delivery=lambda e, m: delivered.append((e, m)))
    assert producer.flush(20) == 0
    producer.close()
    assert len(delivered) == 10
    codes = {e.code() for e, _m in delivered}
    assert codes <= {KafkaError.NOT_ENOUGH_REPLICAS, KafkaError._MSG_TIMED_OUT}, codes
    admin = AdminClient({"bootstrap.servers": broker.address})
    [row] = [r for r in admin.status()["partitions"] if r["topic"] == "isr"]
    admin.close()
    assert row["log_end_offset"] == 0 and row["errors"] >= 2  # the one batch, refused again after a retry
    after = produce_all(broker, "isr", values[:3], acks=1)  # the lane still works
    assert [e for e, _m in after] == [None] * 3
    assert read_values(broker, "isr", 3) == values[:3]


def test_frames_changed_after_commit_are_refused_or_stored_whole(broker: BrokerProcess) -> None:
    """A hostile producer keeps writing into frames it committed (the worker writes the log straight
    from the lane): every stored batch is whole and CRC-sound, every acked one is stored as acked,
    every refused one is absent, and the broker keeps serving."""
    from shmbroker.client.config import CommonConfig
    from shmbroker.client.transport import TransportFactory

    create(broker, "hostile")
    factory = TransportFactory(CommonConfig(broker.address, "shm", 5000))
    transport = factory.open("hostile", 0)
    lane = transport._lane  # this test is the producer, and a hostile one: it needs the frame itself
    rng = random.Random(3)
    outcomes: dict[int, tuple[int, int]] = {}  # sequence -> (base_offset, error_code)
    n_batches = 300
    deadline = time.monotonic() + 60
    for sequence in range(n_batches):
        values = [rng.randbytes(16384) for _ in range(4)]
        size = records.plain_batch_bytes(values)
        while (frame := lane.try_claim(size, acks=1)) is None:
            assert time.monotonic() < deadline
            outcomes.update((c.sequence, (c.base_offset, c.error_code)) for c in lane.wait_completions(0.01))
        records.encode_values_into(
            frame, values, timestamp_ms=1, producer_id=transport.producer_id, base_sequence=sequence
        )
        kept = frame[:]  # a second view of the frame, alive after the commit releases the first
        if sequence % 5 == 1:
            kept[-1] ^= 0xFF  # corrupt before the commit: always refused
        lane.commit(sequence=sequence, acks=1)
        mode = sequence % 5
        if mode == 2:
            kept[rng.randrange(records.CRC_START, size)] ^= 0xFF  # changed right after the commit
        elif mode == 3:
            for _ in range(2000):  # changes racing the worker's write (and its read-back)
                kept[size // 2] ^= 0xFF
        elif mode == 4:
            kept[57:61] = (999).to_bytes(4, "big")  # records_count, an uncovered-looking header field
        kept.release()
    while len(outcomes) < n_batches:
        assert time.monotonic() < deadline, f"{n_batches - len(outcomes)} batches unanswered"
        outcomes.update((c.sequence, (c.base_offset, c.error_code)) for c in lane.wait_completions(0.1))
    factory.close()
    acked = {s: offset for s, (offset, code) in outcomes.items() if code == 0}
    refused = {s for s, (_offset, code) in outcomes.items() if code != 0}
    assert {code for _o, code in outcomes.values()} <= {0, KafkaError.CORRUPT_MESSAGE}
    assert {s for s in range(n_batches) if s % 5 == 1} <= refused
    assert {s for s in range(n_batches) if s % 5 == 0} <= set(acked)
    stored: dict[int, int] = {}  # base_sequence -> base_offset, every batch a recovery scan keeps
    next_offset = 0
    for path in sorted((broker.data_dir / "hostile-0").glob("*.log")):
        data = path.read_bytes()
        end, valid = records.scan_valid_prefix(data)
        assert data[end:].count(0) == len(data) - end, "bytes past the sound prefix that are not zero"
        for _position, header in valid:
            assert header.base_offset == next_offset and header.producer_id == transport.producer_id
            stored[header.base_sequence] = header.base_offset
            next_offset = header.next_offset
    assert stored == acked
    delivered = produce_all(broker, "hostile", [b"after"])  # still serving
    assert [e for e, _m in delivered] == [None]
    assert read_values(broker, "hostile", next_offset + 1)[-1] == b"after"
