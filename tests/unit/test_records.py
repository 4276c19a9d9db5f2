"""Record encode/decode of RecordBatch v2 (shmbroker/records.py, shmbroker/codecs.py).

Round trips (hypothesis and seeded random), the fast paths against the general one, every parser fed
whole, truncated at every byte and with trailing bytes, hostile records blocks (each must raise a
typed error before any large allocation), and compression bombs.
"""

from __future__ import annotations

import gzip
import random
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable

import lz4.frame
import numpy as np
import pytest
import snappy
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmbroker import codecs, records
from shmbroker.errors import (
    BrokerError,
    CorruptRecordError,
    RecordTooLargeError,
    UnsupportedCompressionTypeError,
)
from shmbroker.records import BatchBuilder, Codec, Record

MB = 1 << 20
LIMIT = 16 * MB
CODECS = list(Codec)


def make_batch(
    block: bytes, count: int, *, codec: int = 0, base_timestamp_ms: int = 1000, attributes: int | None = None
) -> bytes:
    """A batch around a hand-made records block, with a correct header and CRC: tests the record layer."""
    out = bytearray(records.HEADER_BYTES) + block
    records.BATCH_HEADER.pack_into(
        out,
        0,
        0,
        len(out) - records.LOG_OVERHEAD,
        -1,
        records.MAGIC,
        0,
        codec if attributes is None else attributes,
        max(count - 1, 0),
        base_timestamp_ms,
        base_timestamp_ms,
        -1,
        -1,
        -1,
        count,
    )
    struct.pack_into(">I", out, records.CRC_OFFSET, records.crc32c(memoryview(out)[records.CRC_START :]))
    return bytes(out)


def varint(value: int) -> bytes:
    return records.zigzag_varint(value)


def raw_record(
    *,
    timestamp_delta: bytes = b"\x00",
    offset_delta: bytes = b"\x00",
    key: bytes = b"\x01",
    value: bytes = b"\x06abc",
    headers: bytes = b"\x00",
    length: int | None = None,
) -> bytes:
    """One record from raw field bytes (varints given encoded), length computed unless forced."""
    body = b"\x00" + timestamp_delta + offset_delta + key + value + headers
    return varint(len(body) if length is None else length) + body


def decode_both(batch: bytes | bytearray) -> list[Record]:
    """decode_batch, checked against decode_columnar and the exact (byte-by-byte) parser."""
    decoded = records.decode_batch(batch, max_uncompressed_bytes=LIMIT)
    columns = records.decode_columnar(batch, max_uncompressed_bytes=LIMIT)
    assert columns.records() == decoded
    assert columns.values() == [r.value for r in decoded]
    assert columns.keys() == [r.key for r in decoded]
    header = records.parse_batch_header(batch)
    block = codecs.decompress(
        header.codec, memoryview(batch)[records.HEADER_BYTES :], max_uncompressed_bytes=LIMIT
    )
    exact = records._parse_exact(block, header.records_count)
    assert exact.value_lengths.tolist() == columns.value_lengths.tolist()
    assert exact.offset_deltas.tolist() == (columns.offsets - header.base_offset).tolist()
    assert_parsers_agree(block, header.records_count)
    return decoded


def assert_parsers_agree(block: bytes, count: int) -> None:
    """The fast parsers (uniform runs; numpy from 16 records on) accept only what the exact one
    accepts, with the same result; None from them means "ask the next parser"."""
    try:
        exact: records._Columns | None = records._parse_exact(block, count)
    except CorruptRecordError:
        exact = None
    if count > len(block) // records.MIN_RECORD_BYTES or count == 0:
        return  # decode refuses these counts before either parser runs
    for fast in (records._parse_uniform(block, count), records._parse_vectorised(block, count)):
        if fast is None:
            continue
        assert exact is not None, "a fast parser accepted a block the exact parser refuses"
        for name in records._Columns._fields[:-1]:
            assert getattr(fast, name).tolist() == getattr(exact, name).tolist(), name
        assert fast.headers == exact.headers


# ---------------------------------------------------------------------------------------------- varints


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (-1, b"\x01"),
        (1, b"\x02"),
        (63, b"\x7e"),
        (-64, b"\x7f"),
        (64, b"\x80\x01"),
        (100, b"\xc8\x01"),
        (2**31 - 1, b"\xfe\xff\xff\xff\x0f"),
        (-(2**31), b"\xff\xff\xff\xff\x0f"),
        (2**63 - 1, b"\xfe" + b"\xff" * 8 + b"\x01"),
        (-(2**63), b"\xff" * 9 + b"\x01"),
    ],
    ids=lambda v: repr(v)[:24],
)
def test_zigzag_varint_matches_kafka(value: int, encoded: bytes) -> None:
    assert records.zigzag_varint(value) == encoded


@pytest.mark.parametrize("tail", [b"", b"\x05\x80"], ids=["alone", "with-trailing-bytes"])
def test_read_varint_decodes_every_one_to_three_byte_value_and_refuses_cut_ones(tail: bytes) -> None:
    """The one- and two-byte fast paths and the loop agree with the encoder, at any end."""
    for value in range(-(2**20), 2**20, 37):
        encoded = records.zigzag_varint(value)
        buf = b"\x00" + encoded + tail
        assert records._read_varint(buf, 1, len(buf), records.MAX_VARINT_BYTES, "t") == (
            value,
            1 + len(encoded),
        )
        with pytest.raises(CorruptRecordError):
            records._read_varint(buf, 1, len(encoded), records.MAX_VARINT_BYTES, "t")  # cut before its end


# ------------------------------------------------------------------------------------------ round trips


record_strategy = st.tuples(
    st.one_of(st.none(), st.binary(max_size=300)),  # value
    st.one_of(st.none(), st.binary(max_size=40)),  # key
    st.one_of(st.none(), st.integers(0, 2**42)),  # timestamp_ms
    st.one_of(
        st.none(),
        st.lists(st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=20))), max_size=3),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(record_strategy, min_size=1, max_size=80), codec=st.sampled_from(CODECS))
def test_builder_round_trips_any_records(
    items: list[tuple[bytes | None, bytes | None, int | None, list[tuple[str, bytes | None]] | None]],
    codec: Codec,
) -> None:
    builder = BatchBuilder()
    for index, (value, key, timestamp_ms, headers) in enumerate(items):
        assert builder.append(value, key=key, timestamp_ms=timestamp_ms, headers=headers) == index
    assert len(builder) == len(items)
    batch = builder.build(codec=codec, base_offset=500)
    records.check_batch(batch, max_batch_bytes=LIMIT)
    decoded = decode_both(batch)
    assert [r.offset for r in decoded] == list(range(500, 500 + len(items)))
    assert [(r.value, r.key, r.headers) for r in decoded] == [
        (value, key, tuple(headers or ())) for value, key, _, headers in items
    ]
    for record, (_, _, timestamp_ms, _) in zip(decoded, items, strict=True):
        if timestamp_ms is not None:
            assert record.timestamp_ms == timestamp_ms
    header = records.parse_batch_header(batch)
    assert header.max_timestamp_ms == max(r.timestamp_ms for r in decoded)
    assert header.codec == codec


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.binary(max_size=200), min_size=1, max_size=200),
    timestamp_ms=st.integers(-(2**40), 2**42),
)
def test_encode_values_round_trips(values: list[bytes], timestamp_ms: int) -> None:
    batch = records.encode_values(values, timestamp_ms=timestamp_ms)
    decoded = decode_both(batch)
    assert [r.value for r in decoded] == values
    assert {r.timestamp_ms for r in decoded} == {timestamp_ms}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seeded_random_batches_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        count = rng.choice([1, 2, 63, 64, 65, 300])
        builder = BatchBuilder()
        expected = []
        for _ in range(count):
            value = None if rng.random() < 0.05 else rng.randbytes(rng.choice([0, 1, 100, 200, 5000]))
            key = None if rng.random() < 0.5 else rng.randbytes(rng.randrange(20))
            headers = [("k", rng.randbytes(3))] if rng.random() < 0.1 else None
            builder.append(
                value, key=key, timestamp_ms=1_700_000_000_000 + rng.randrange(-5000, 5000), headers=headers
            )
            expected.append((key, value, tuple(headers or ())))
        codec = rng.choice(CODECS)
        decoded = decode_both(builder.build(codec=codec))
        assert [(r.key, r.value, r.headers) for r in decoded] == expected, f"seed {seed}"


@pytest.mark.parametrize(
    ("count", "value_bytes"),
    [(c, v) for c in (1, 63, 64, 65) for v in (0, 63, 64, 100)]
    + [(c, v) for c in (8191, 8192, 8193) for v in (0, 100)]
    + [(records._PrefixTable.max_records + 3, 5)],  # past the cached prefixes
)
def test_fast_paths_agree_across_varint_widths(count: int, value_bytes: int) -> None:
    """Record counts and sizes where varints widen; list, ndarray and builder paths give equal bytes."""
    rows = np.random.default_rng(count).integers(0, 256, size=(count, value_bytes), dtype=np.uint8)
    values = [row.tobytes() for row in rows]
    from_list = records.encode_values(values, timestamp_ms=7)
    assert records.encode_values(rows, timestamp_ms=7) == from_list
    builder = BatchBuilder()
    for value in values:
        builder.append(value, timestamp_ms=7)  # the general path, one record at a time
    assert builder.build() == from_list
    columns = records.decode_columnar(from_list, max_uncompressed_bytes=LIMIT)
    assert columns.values() == values
    assert columns.offsets.tolist() == list(range(count))
    rows_back = columns.value_rows()
    assert rows_back is not None
    assert np.array_equal(rows_back, rows)


@pytest.mark.parametrize("seed", range(8))
def test_value_slices_follow_any_strides(seed: int) -> None:
    """Equal-length values whose records change stride anywhere (keys and headers of other sizes), with
    and without nulls: the strided fast path gives what slicing each value gives."""
    rng = random.Random(seed)
    for _ in range(200):
        count, length = rng.randint(1, 200), rng.choice([1, 5, 100])
        strides = [length + rng.choice([3, 3, 3, 9]) for _ in range(count)]
        starts = [rng.randint(0, 4)]
        for stride in strides[:-1]:
            starts.append(starts[-1] + stride)
        data = rng.randbytes(starts[-1] + length)
        lengths = np.full(count, length, np.int64)
        if rng.random() < 0.3:
            lengths[rng.randrange(count)] = -1
        want = [None if n < 0 else data[s : s + n] for s, n in zip(starts, lengths.tolist(), strict=True)]
        got = records._slices(data, np.array(starts, np.int64), lengths)
        assert got == want, f"seed {seed}"
        assert {type(v) for v in got} <= {bytes, type(None)}


def test_many_value_sizes_in_turn_keep_prefix_tables_right() -> None:
    for value_bytes in [*range(3 * records._PrefixTable.max_lengths), 5, 0]:
        values = [bytes([value_bytes % 256]) * value_bytes] * 70
        assert (
            records.decode_columnar(
                records.encode_values(values, timestamp_ms=1), max_uncompressed_bytes=LIMIT
            ).values()
            == values
        )


@pytest.mark.parametrize(("timestamp_delta_ms", "uniform"), [(0, True), (1, False), (-(2**40), False)])
def test_uniform_parser_takes_keyed_batches_with_one_timestamp(
    timestamp_delta_ms: int, uniform: bool
) -> None:
    """Fixed-size keys and values at one timestamp take the uniform path; other timestamps do not."""
    builder = BatchBuilder()
    keys = [b"k-%d" % (index % 10) for index in range(200)]
    for index, key in enumerate(keys):
        builder.append(b"value", key=key, timestamp_ms=2**41 + (timestamp_delta_ms if index % 2 else 0))
    batch = builder.build()
    block = bytes(batch[records.HEADER_BYTES :])
    assert (records._parse_uniform(block, 200) is not None) == uniform
    assert [(r.key, r.value) for r in decode_both(batch)] == [(key, b"value") for key in keys]


def test_encode_values_with_keys_and_mixed_sizes() -> None:
    values = [b"a" * n for n in (0, 5, 200, 70_000)]
    keys = [None, b"k", b"", b"key" * 30]
    decoded = decode_both(records.encode_values(values, keys=keys, timestamp_ms=5, codec=Codec.LZ4))
    assert [(r.key, r.value) for r in decoded] == list(zip(keys, values, strict=True))
    rows = np.zeros((3, 4), np.uint8)
    decoded = decode_both(records.encode_values(rows, keys=[b"a", None, b"c"], timestamp_ms=5))
    assert [r.key for r in decoded] == [b"a", None, b"c"]


def test_builder_without_timestamps_uses_first_append_time() -> None:
    before_ms = time.time_ns() // 1_000_000
    builder = BatchBuilder()
    builder.append(b"x")
    builder.append(b"y", headers=[("h", None)])
    after_ms = time.time_ns() // 1_000_000
    decoded = decode_both(builder.build())
    assert decoded[0].timestamp_ms == decoded[1].timestamp_ms
    assert before_ms <= decoded[0].timestamp_ms <= after_ms


def test_builder_size_estimate_covers_the_batch() -> None:
    builder = BatchBuilder()
    for index in range(1000):
        builder.append(bytes(100))
        if index % 7 == 0:
            builder.append(b"v", key=b"key", headers=[("trace", b"1234")])
    actual = len(builder.build())
    assert actual <= builder.size_bytes_estimate <= actual * 1.1
    plain = BatchBuilder()
    for index in range(3000):
        plain.append(None if index % 100 == 1 else bytes(index % 300))
        if index % 500 == 0:  # asked now and then: the lazy count must stay right
            assert len(plain.build()) <= plain.size_bytes_estimate <= len(plain.build()) * 1.1
    assert len(plain.build()) <= plain.size_bytes_estimate <= len(plain.build()) * 1.1


def test_builder_and_encode_values_refuse_empty_batches() -> None:
    with pytest.raises(ValueError, match="at least one"):
        BatchBuilder().build()
    with pytest.raises(ValueError, match="at least one"):
        records.encode_values([], timestamp_ms=0)
    with pytest.raises(ValueError, match="2-D uint8"):
        records.encode_values(np.zeros(4, np.uint8), timestamp_ms=0)


def test_builder_header_fields() -> None:
    builder = BatchBuilder()
    builder.append(b"v", timestamp_ms=10)
    builder.append(b"w", timestamp_ms=5)
    batch = builder.build(
        producer_id=77,
        producer_epoch=3,
        base_sequence=9,
        base_offset=42,
        partition_leader_epoch=4,
        transactional=True,
    )
    header = records.check_batch(batch, max_batch_bytes=LIMIT)
    assert header._replace(crc=0, batch_length=0) == records.BatchHeader(
        42, 0, 4, 2, 0, records.TRANSACTIONAL_BIT, 1, 10, 10, 77, 3, 9, 2
    )
    assert [r.timestamp_ms for r in decode_both(batch)] == [10, 5]


def test_empty_batch_decodes_to_no_records() -> None:
    batch = make_batch(b"", 0)
    assert records.decode_batch(batch, max_uncompressed_bytes=LIMIT) == []
    assert len(records.decode_columnar(batch, max_uncompressed_bytes=LIMIT)) == 0


# ------------------------------------------------------------------------------ LogAppendTime, streams


def test_log_append_time_rewrites_timestamps_and_crc() -> None:
    builder = BatchBuilder()
    for index in range(5):
        builder.append(b"v%d" % index, timestamp_ms=100 + index)
    batch = builder.build(codec=Codec.ZSTD)
    records.set_log_append_time(batch, 9_999)
    header = records.check_batch(batch, max_batch_bytes=LIMIT)  # the CRC is right again
    assert header.attributes & records.TIMESTAMP_TYPE_BIT
    assert header.max_timestamp_ms == 9_999
    assert header.base_timestamp_ms == 100
    assert [r.timestamp_ms for r in decode_both(batch)] == [9_999] * 5
    with pytest.raises(CorruptRecordError, match="batch_length"):
        records.set_log_append_time(batch + b"x", 1)


def test_decode_batches_walks_a_stream_and_skips_a_short_tail() -> None:
    batches = []
    for index, codec in enumerate(CODECS):
        builder = BatchBuilder()
        for n in range(3):
            builder.append(b"%d-%d" % (index, n), timestamp_ms=1)
        batches.append(builder.build(codec=codec, base_offset=3 * index))
    stream = b"".join(batches)
    expected = [b"%d-%d" % (i, n) for i in range(len(CODECS)) for n in range(3)]
    for tail in (b"", stream[:7], batches[0][:-1]):
        decoded = records.decode_batches(stream + tail, max_uncompressed_bytes=LIMIT)
        assert [r.value for r in decoded] == expected
        assert [r.offset for r in decoded] == list(range(len(expected)))
    assert [len(c) for c in records.iter_columnar(stream, max_uncompressed_bytes=LIMIT)] == [3] * len(CODECS)
    assert [r.value for r in records.iter_records(stream, max_uncompressed_bytes=LIMIT)] == expected


# --------------------------------------------------------------------------- truncation, trailing bytes


def small_batches() -> list[bytes]:
    builder = BatchBuilder()
    builder.append(b"value", key=b"key", timestamp_ms=5, headers=[("h", b"x"), ("n", None)])
    builder.append(None, timestamp_ms=6)
    out = [bytes(builder.build(codec=codec)) for codec in CODECS]
    return [*out, bytes(records.encode_values([b"abc"] * 70, timestamp_ms=1))]


@pytest.mark.parametrize("batch", small_batches(), ids=[c.name for c in CODECS] + ["70-records"])
def test_every_truncation_and_trailing_bytes_are_refused(batch: bytes) -> None:
    for end in range(len(batch)):
        with pytest.raises(CorruptRecordError):
            records.decode_batch(batch[:end], max_uncompressed_bytes=LIMIT)
        # A stream reader treats a cut batch as a tail that is not there yet.
        assert records.decode_batches(batch[:end], max_uncompressed_bytes=LIMIT) == []
    with pytest.raises(CorruptRecordError):
        records.decode_batch(batch + b"\x00", max_uncompressed_bytes=LIMIT)
    assert len(records.decode_batches(batch + b"\x00", max_uncompressed_bytes=LIMIT)) in (2, 70)


@pytest.mark.parametrize("batch", small_batches()[:1] + small_batches()[-1:], ids=["headers", "70-records"])
def test_records_block_cut_at_every_byte_with_fixed_crc(batch: bytes) -> None:
    """Cutting inside the records block (header and CRC made consistent) must raise, never misparse."""
    header = records.parse_batch_header(batch)
    block = batch[records.HEADER_BYTES :]
    for end in range(len(block)):
        with pytest.raises(CorruptRecordError):
            records.decode_batch(make_batch(block[:end], header.records_count), max_uncompressed_bytes=LIMIT)
    for extra in (b"\x00", b"\x0e" + bytes(7)):  # a zero byte; a whole extra record
        with pytest.raises(CorruptRecordError, match="bytes after"):
            records.decode_batch(
                make_batch(block + extra, header.records_count), max_uncompressed_bytes=LIMIT
            )


# -------------------------------------------------------------------------------------- hostile input


def hostile_blocks() -> dict[str, tuple[bytes, int]]:
    """name -> (records block, records_count claimed): each must be refused with CorruptRecordError."""
    good = raw_record()
    return {
        "count-2**31-1": (good, 2**31 - 1),
        "count-too-high": (good * 3, 4),
        "count-too-low-trailing-record": (good * 3, 2),
        "trailing-garbage": (good + b"\xff\xff", 1),
        "length-varint-6-bytes": (b"\x80\x80\x80\x80\x80\x01" + good, 1),
        "length-varint-past-end": (b"\x80\x80", 1),
        "length-overflows-32-bits": (b"\xff\xff\xff\xff\x7f" + good, 1),
        "length-negative": (varint(-3) + good, 1),
        "length-too-short": (raw_record(length=3), 1),
        "length-beyond-block": (raw_record(length=200), 1),
        "timestamp-varlong-11-bytes": (raw_record(timestamp_delta=b"\x80" * 10 + b"\x01"), 1),
        "timestamp-overflows-64-bits": (raw_record(timestamp_delta=b"\xff" * 9 + b"\x7f"), 1),
        "offset-varint-6-bytes": (raw_record(offset_delta=b"\x80" * 5 + b"\x01"), 1),
        "key-length-beyond-record": (raw_record(key=varint(50) + b"k"), 1),
        "key-length-minus-2": (raw_record(key=varint(-2)), 1),
        "value-length-beyond-record": (raw_record(value=varint(10**6) + b"abc"), 1),
        "value-length-minus-5": (raw_record(value=varint(-5)), 1),
        "value-length-2**31-1": (raw_record(value=varint(2**31 - 1)), 1),
        "header-count-beyond-bytes": (raw_record(headers=varint(1000)), 1),
        "header-count-2**31-1": (raw_record(headers=varint(2**31 - 1)), 1),
        "header-count-negative": (raw_record(headers=varint(-1)), 1),
        "header-key-null": (raw_record(headers=varint(1) + varint(-1) + varint(-1)), 1),
        "header-key-not-utf8": (raw_record(headers=varint(1) + varint(2) + b"\xff\xfe" + varint(-1)), 1),
        "header-value-beyond-record": (raw_record(headers=varint(1) + varint(1) + b"k" + varint(99)), 1),
        "bytes-after-headers": (raw_record(headers=b"\x00\x00"), 1),
        "varint-runs-to-block-end": (raw_record() + b"\x88", 2),
    }


@pytest.mark.parametrize(("block", "count"), hostile_blocks().values(), ids=hostile_blocks().keys())
@pytest.mark.parametrize("codec", [Codec.NONE, Codec.ZSTD], ids=["none", "zstd"])
def test_hostile_records_blocks_raise_corrupt(block: bytes, count: int, codec: Codec) -> None:
    assert_parsers_agree(block, count)
    payload = codecs.compress(codec, block)
    batch = make_batch(payload, count, codec=codec)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptRecordError):
            records.decode_batch(batch, max_uncompressed_bytes=LIMIT)
        with pytest.raises(CorruptRecordError):
            records.decode_columnar(batch, max_uncompressed_bytes=LIMIT)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1 * MB, "refused only after a large allocation"


def test_the_header_checks_and_codec_ids() -> None:
    good = make_batch(raw_record(), 1)
    bad_crc = bytearray(good)
    bad_crc[-2] ^= 1  # the value's last byte: "c" -> "b"
    with pytest.raises(CorruptRecordError, match="CRC"):
        records.decode_batch(bad_crc, max_uncompressed_bytes=LIMIT)
    assert records.decode_batch(bad_crc, max_uncompressed_bytes=LIMIT, verify_crc=False)[0].value == b"abb"
    bad_magic = bytearray(good)
    bad_magic[records.MAGIC_OFFSET] = 1
    with pytest.raises(CorruptRecordError, match="magic"):
        records.decode_batch(bad_magic, max_uncompressed_bytes=LIMIT)
    for codec_id in (5, 6, 7):
        with pytest.raises(UnsupportedCompressionTypeError):
            records.decode_batch(make_batch(raw_record(), 1, codec=codec_id), max_uncompressed_bytes=LIMIT)
        with pytest.raises(UnsupportedCompressionTypeError):
            codecs.compress(codec_id, b"x")
    with pytest.raises(RecordTooLargeError):
        records.decode_batch(good, max_uncompressed_bytes=5)


@pytest.mark.parametrize("codec", CODECS[1:], ids=[c.name for c in CODECS[1:]])
def test_garbage_and_truncated_compressed_blocks_raise_corrupt(codec: Codec) -> None:
    block = raw_record() * 50
    compressed = codecs.compress(codec, block)
    assert records.decode_batch(make_batch(compressed, 50, codec=codec), max_uncompressed_bytes=LIMIT)
    rng = random.Random(int(codec))
    candidates = [b"", b"\x00", rng.randbytes(64), compressed[: len(compressed) // 2], compressed[:-1]]
    for payload in candidates:
        with pytest.raises(CorruptRecordError):
            records.decode_batch(make_batch(payload, 50, codec=codec), max_uncompressed_bytes=LIMIT)
    huge_count = make_batch(compressed, 2**31 - 1, codec=codec)
    with pytest.raises(CorruptRecordError, match="records_count"):
        records.decode_batch(huge_count, max_uncompressed_bytes=LIMIT)


@pytest.mark.parametrize(("seed", "which"), [(11, 0), (12, 0), (13, -1), (14, -1)])
def test_random_damage_raises_only_typed_errors(seed: int, which: int) -> None:
    """Flip bytes inside the records block (CRC fixed up): decode succeeds identically on both parsers
    or raises a BrokerError; never IndexError, OverflowError or a numpy error."""
    rng = random.Random(seed)
    base = small_batches()[which]  # headers and nulls; or 70 same-size records (the vectorised path)
    header = records.parse_batch_header(base)
    block = bytearray(base[records.HEADER_BYTES :])
    for _ in range(300):
        damaged = bytearray(block)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        assert_parsers_agree(bytes(damaged), header.records_count)
        batch = make_batch(bytes(damaged), header.records_count)
        try:
            decoded = records.decode_batch(batch, max_uncompressed_bytes=LIMIT)
        except BrokerError:
            with pytest.raises(BrokerError):
                records._parse_exact(bytes(damaged), header.records_count)
            continue
        assert len(decoded) == header.records_count
        exact = records._parse_exact(bytes(damaged), header.records_count)
        assert exact.value_lengths.tolist() == [-1 if r.value is None else len(r.value) for r in decoded]


def test_raw_snappy_is_read_as_librdkafka_writes_it() -> None:
    block = raw_record() * 20
    batch = make_batch(snappy.compress(block), 20, codec=Codec.SNAPPY)
    assert [r.value for r in records.decode_batch(batch, max_uncompressed_bytes=LIMIT)] == [b"abc"] * 20
    assert codecs.compress(Codec.SNAPPY, block).startswith(codecs.XERIAL_MAGIC)


def test_gzip_reads_concatenated_members_and_zlib() -> None:
    block = raw_record() * 4
    two_members = gzip.compress(block[:20], mtime=0) + gzip.compress(block[20:], mtime=0)
    assert codecs.decompress(Codec.GZIP, two_members, max_uncompressed_bytes=LIMIT) == block
    assert codecs.decompress(Codec.GZIP, zlib.compress(block), max_uncompressed_bytes=LIMIT) == block
    with pytest.raises(CorruptRecordError):
        codecs.decompress(Codec.GZIP, two_members + b"junk", max_uncompressed_bytes=LIMIT)


# ----------------------------------------------------------------------------------------------- bombs


BOMB_BYTES = 100 * MB
BOMB_CHUNK = bytes(MB)


def _gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(compressor.compress(BOMB_CHUNK) for _ in range(BOMB_BYTES // MB)) + compressor.flush()


def _lz4_bomb() -> bytes:
    compressor = lz4.frame.LZ4FrameCompressor()
    parts = [compressor.begin()] + [compressor.compress(BOMB_CHUNK) for _ in range(BOMB_BYTES // MB)]
    return b"".join([*parts, compressor.flush()])


def _zstd_bomb() -> bytes:
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    return b"".join(compressor.compress(BOMB_CHUNK) for _ in range(BOMB_BYTES // MB)) + compressor.flush()


def _xerial_bomb() -> bytes:
    block = bytes(snappy.compress(bytes(codecs.XERIAL_BLOCK_BYTES)))
    framed = codecs.XERIAL_BLOCK_LENGTH.pack(len(block)) + block
    return codecs.XERIAL_HEADER.pack(codecs.XERIAL_MAGIC, 1, 1) + framed * (
        BOMB_BYTES // codecs.XERIAL_BLOCK_BYTES
    )


def _raw_snappy_bomb() -> bytes:
    # A raw block that declares 100 MB: refused from its length preamble, before snappy allocates.
    return struct.pack("<B", 0x80 | 0x7F) + b"\xff\xff\x2f" + bytes(20)


BOMBS: dict[str, tuple[Codec, Callable[[], bytes]]] = {
    "gzip": (Codec.GZIP, _gzip_bomb),
    "snappy-xerial": (Codec.SNAPPY, _xerial_bomb),
    "snappy-raw": (Codec.SNAPPY, _raw_snappy_bomb),
    "lz4": (Codec.LZ4, _lz4_bomb),
    "zstd": (Codec.ZSTD, _zstd_bomb),
}


@pytest.mark.parametrize(("codec", "make"), BOMBS.values(), ids=BOMBS.keys())
def test_compression_bombs_stop_at_the_limit(codec: Codec, make: Callable[[], bytes]) -> None:
    batch = make_batch(make(), 2**20, codec=codec)
    assert len(batch) < 6 * MB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(RecordTooLargeError, match=r"raise max\.message\.bytes"):
            records.decode_batch(batch, max_uncompressed_bytes=MB)
        elapsed_s = time.perf_counter() - started
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed_s < 1.0
    # The bytes copied out of the batch plus at most limit + one decompressor chunk.
    assert peak_bytes < len(batch) + 4 * MB


@settings(max_examples=60, deadline=None)
@given(
    values=st.one_of(
        st.lists(st.binary(max_size=300), min_size=1, max_size=80),  # mixed sizes
        st.integers(0, 70_000).flatmap(lambda n: st.lists(st.just(b"v" * n), min_size=1, max_size=20)),
    ),
    timestamp_ms=st.integers(-(2**40), 2**42),
    producer=st.tuples(st.integers(-1, 2**40), st.integers(-1, 2**15 - 1), st.integers(-1, 2**31 - 1)),
)
def test_encode_values_into_writes_the_bytes_encode_values_builds(
    values: list[bytes], timestamp_ms: int, producer: tuple[int, int, int]
) -> None:
    producer_id, producer_epoch, base_sequence = producer
    stamps = {"producer_id": producer_id, "producer_epoch": producer_epoch, "base_sequence": base_sequence}
    expected = records.encode_values(values, timestamp_ms=timestamp_ms, **stamps)
    assert records.plain_batch_bytes(values) == len(expected)
    out = bytearray(b"\xee" * len(expected))  # garbage first: every byte must be written
    records.encode_values_into(memoryview(out), values, timestamp_ms=timestamp_ms, **stamps)
    assert out == expected
    assert [r.value for r in decode_both(out)] == values


@pytest.mark.parametrize("count", [1, 63, 64, 65, 8192, 8193, 20_000])
def test_encode_values_into_at_varint_width_edges(count: int) -> None:
    values = [b"%08d" % index for index in range(count)]  # same size: the prefix table path
    expected = records.encode_values(values, timestamp_ms=5)
    out = bytearray(records.plain_batch_bytes(values))
    records.encode_values_into(memoryview(out), values, timestamp_ms=5)
    assert out == expected


def test_encode_values_into_refuses_a_wrong_size_buffer_and_empty_batches() -> None:
    values = [b"a" * 10, b"b" * 20]
    size = records.plain_batch_bytes(values)
    for wrong in (size - 1, size + 1):
        out = bytearray(b"\xee" * wrong)
        with pytest.raises(ValueError, match=f"takes {size} bytes"):
            records.encode_values_into(memoryview(out), values, timestamp_ms=0)
        assert out == b"\xee" * wrong  # refused before writing
    with pytest.raises(ValueError, match="at least one record"):
        records.encode_values_into(memoryview(bytearray(100)), [], timestamp_ms=0)
    with pytest.raises(ValueError, match="at least one record"):
        records.plain_batch_bytes([])
