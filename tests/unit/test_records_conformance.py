"""RecordBatch v2 conformance with kafka-python (a test-only dependency) and golden bytes.

kafka-python's framing choices, which ours match on write and accept on read:
  - snappy: xerial framing (b"\\x82SNAPPY\\x00", version 1, compat 1, 32 KiB blocks), as the Java client;
    librdkafka writes raw snappy instead, which we also read (see test_records.py).
  - lz4: the standard LZ4 frame format (``lz4.frame``), independent blocks (block_linked=False).
  - gzip: one gzip member; zstd: one frame (with content size).
  - kafka-python writes a batch *uncompressed* (codec bits 0) when compressing would not make it
    smaller; we always compress as asked, so compressed output is compared by content, not bytes.
  - kafka-python writes base_offset 0 and partition_leader_epoch 0; we default the epoch to -1
    (Java's NO_PARTITION_LEADER_EPOCH), so byte comparisons pass partition_leader_epoch=0.
Uncompressed batches are deterministic, so those are compared byte for byte.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():  # kafka-python's protocol package uses deprecated importlib.resources calls
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from shmbroker import records
from shmbroker.records import BatchBuilder, Codec

LIMIT = 64 << 20
GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "data" / "records_v2_golden.json").read_text())

Item = tuple[
    int, bytes | None, bytes | None, list[tuple[str, bytes | None]]
]  # timestamp, key, value, headers


def items_for(count: int) -> list[Item]:
    """Keys, null keys, null values, empty values, headers (with a null value), varying timestamps."""
    out: list[Item] = []
    for index in range(count):
        key = None if index % 3 == 0 else b"key-%d" % (index % 7)
        value = (
            None if index % 11 == 5 else b"" if index % 13 == 6 else b"value %d " % index * (1 + index % 5)
        )
        headers = [("trace-id", b"%08d" % index), ("empty", None)] if index % 4 == 0 else []
        out.append((1_700_000_000_000 + (index * 37) % 1000 - 500, key, value, headers))
    return out


def ours(items: list[Item], **build: Any) -> bytearray:
    builder = BatchBuilder()
    for timestamp_ms, key, value, headers in items:
        builder.append(value, key=key, timestamp_ms=timestamp_ms, headers=headers or None)
    return builder.build(**build)


def theirs(items: list[Item], codec: int = 0, producer: tuple[int, int, int] = (-1, -1, -1)) -> bytes:
    builder = DefaultRecordBatchBuilder(2, codec, False, *producer, batch_size=1 << 30)
    for offset, (timestamp_ms, key, value, headers) in enumerate(items):
        builder.append(offset, timestamp_ms, key, value, headers)
    return bytes(builder.build())


def read_theirs(
    batch: bytes | bytearray,
) -> list[tuple[int, int, bytes | None, bytes | None, tuple[Any, ...]]]:
    reader = DefaultRecordBatch(bytes(batch))
    assert reader.validate_crc()
    return [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in reader]


def as_tuples(
    decoded: list[records.Record],
) -> list[tuple[int, int, bytes | None, bytes | None, tuple[Any, ...]]]:
    return [(r.offset, r.timestamp_ms, r.key, r.value, r.headers) for r in decoded]


@pytest.mark.parametrize("codec", list(Codec), ids=[c.name for c in Codec])
def test_kafka_python_reads_our_batches(codec: Codec) -> None:
    items = items_for(500)
    batch = ours(items, codec=codec, base_offset=1000, producer_id=9, producer_epoch=1, base_sequence=40)
    reader = DefaultRecordBatch(bytes(batch))
    assert (reader.compression_type, reader.producer_id, reader.producer_epoch, reader.base_sequence) == (
        codec,
        9,
        1,
        40,
    )
    assert read_theirs(batch) == [
        (1000 + offset, timestamp_ms, key, value, tuple(headers))
        for offset, (timestamp_ms, key, value, headers) in enumerate(items)
    ]


@pytest.mark.parametrize("codec", list(Codec), ids=[c.name for c in Codec])
def test_kafka_python_reads_encode_values(codec: Codec) -> None:
    values = [b"%0100d" % index for index in range(2000)]
    batch = records.encode_values(values, timestamp_ms=1_700_000_000_000, codec=codec)
    assert [value for _, _, _, value, _ in read_theirs(batch)] == values


@pytest.mark.parametrize("codec", list(Codec), ids=[c.name for c in Codec])
def test_we_read_kafka_python_batches(codec: Codec) -> None:
    items = items_for(300)
    batch = theirs(items, codec=codec, producer=(5, 2, 100))
    assert records.parse_batch_header(batch).codec == codec  # these items compress, so it did
    decoded = records.decode_batch(batch, max_uncompressed_bytes=LIMIT)
    assert as_tuples(decoded) == read_theirs(batch)
    columns = records.decode_columnar(batch, max_uncompressed_bytes=LIMIT)
    assert columns.values() == [value for _, _, value, _ in items]


@pytest.mark.parametrize("count", [1, 64, 65, 4000])
def test_uncompressed_bytes_equal_kafka_python(count: int) -> None:
    items = items_for(count)
    expected = theirs(items, producer=(1234, 7, 99))
    batch = ours(items, producer_id=1234, producer_epoch=7, base_sequence=99, partition_leader_epoch=0)
    assert bytes(batch) == expected


@pytest.mark.parametrize("count", [1, 63, 64, 8192, 8193])
def test_encode_values_bytes_equal_kafka_python(count: int) -> None:
    values = [b"v" * 100] * count
    expected = theirs([(1_700_000_000_000, None, value, []) for value in values])
    assert (
        bytes(records.encode_values(values, timestamp_ms=1_700_000_000_000, partition_leader_epoch=0))
        == expected
    )


record_strategy = st.tuples(
    st.integers(0, 2**41),
    st.one_of(st.none(), st.binary(max_size=30)),
    st.one_of(st.none(), st.binary(max_size=200)),
    st.lists(st.tuples(st.text(max_size=6), st.one_of(st.none(), st.binary(max_size=10))), max_size=2),
)


@settings(max_examples=50, deadline=None)
@given(items=st.lists(record_strategy, min_size=1, max_size=40))
def test_any_uncompressed_batch_equals_kafka_python(items: list[Item]) -> None:
    expected = theirs(items)
    assert bytes(ours(items, partition_leader_epoch=0)) == expected
    assert as_tuples(records.decode_batch(expected, max_uncompressed_bytes=LIMIT)) == read_theirs(expected)


def test_kafka_python_reads_log_append_time() -> None:
    batch = ours(items_for(10), codec=Codec.LZ4)
    records.set_log_append_time(batch, 1_800_000_000_000)
    reader = DefaultRecordBatch(bytes(batch))
    assert reader.validate_crc()
    assert reader.timestamp_type == 1
    assert {r.timestamp for r in reader} == {1_800_000_000_000}


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[case["name"] for case in GOLDEN["cases"]])
def test_golden_batches(case: dict[str, Any]) -> None:
    """Golden bytes written by kafka-python (tests/data/records_v2_golden.json, see its "generator")."""
    golden = bytes.fromhex(case["batch_hex"])

    def unhex(text: str | None) -> bytes | None:
        return None if text is None else bytes.fromhex(text)

    items: list[Item] = [
        (
            record["timestamp_ms"],
            unhex(record["key"]),
            unhex(record["value"]),
            [(key, unhex(value)) for key, value in record["headers"]],
        )
        for record in case["records"]
    ]
    decoded = records.decode_batch(golden, max_uncompressed_bytes=LIMIT)
    assert as_tuples(decoded) == [
        (offset, timestamp_ms, key, value, tuple(headers))
        for offset, (timestamp_ms, key, value, headers) in enumerate(items)
    ]
    header = records.check_batch(golden, max_batch_bytes=LIMIT)
    assert header.codec == case["codec"]
    if case["codec"] == Codec.NONE:
        producer = {k: case[k] for k in ("producer_id", "producer_epoch", "base_sequence")}
        assert bytes(ours(items, partition_leader_epoch=0, **producer)) == golden


@pytest.mark.parametrize("value_bytes", [0, 1, 4096, 65536, 200_000])
def test_kafka_python_reads_batches_built_in_place(value_bytes: int) -> None:
    """What the producer builds straight into a lane frame (records.encode_values_into)."""
    values = [bytes([index]) * value_bytes for index in range(5)] + [b"short"]
    out = bytearray(records.plain_batch_bytes(values))
    records.encode_values_into(
        memoryview(out), values, timestamp_ms=1_700_000_000_000, producer_id=3, base_sequence=11
    )
    reader = DefaultRecordBatch(bytes(out))
    assert (reader.producer_id, reader.base_sequence) == (3, 11)
    assert [value for _, _, _, value, _ in read_theirs(out)] == values
    same = [b"x" * value_bytes] * 4
    expected = theirs([(7, None, value, []) for value in same])
    out = bytearray(records.plain_batch_bytes(same))
    records.encode_values_into(memoryview(out), same, timestamp_ms=7, partition_leader_epoch=0)
    assert bytes(out) == expected
