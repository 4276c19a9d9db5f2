"""Record batch format (Kafka magic v2), shared by ring, disk and net. Big-endian.

    offset size field                              offset size field
         0    8 base_offset                            23    4 last_offset_delta
         8    4 batch_length (bytes after it)          27    8 base_timestamp_ms
        12    4 partition_leader_epoch (not in CRC)    35    8 max_timestamp_ms
        16    1 magic (= 2)                            43    8 producer_id
        17    4 crc: CRC-32C of bytes [21, end)        51    2 producer_epoch
        21    2 attributes: bits 0-2 codec, 3 ts       53    4 base_sequence
                type, 4 transactional, 5 control       57    4 records_count
                                                       61      records...

The CRC covers ``attributes`` to the end, so the broker stamps ``base_offset`` and
``partition_leader_epoch`` in place without recomputing it. Only this module reads inside a batch;
rings, segments and sockets move batches as opaque bytes and read the fixed header through here.

Inside a batch (after decompression, see ``codecs.py``) each record is a run of zigzag varints:

    length | attributes | timestamp_delta | offset_delta | key_length key | value_length value
    | headers_count (header_key_length key | header_value_length value)...        (-1 length = null)

Writing: ``BatchBuilder`` (the producer's accumulator: ``append`` only stores, ``build`` encodes in
bulk) and ``encode_values`` (columnar: a list of bytes or a 2-D uint8 array, one timestamp).
Reading: ``decode_batch`` -> list[Record], ``decode_columnar`` -> ColumnarRecords (numpy columns
over the records block, no object per record until asked), ``decode_batches`` / ``iter_records`` /
``iter_columnar`` over a stream of batches. Every decoder takes ``max_uncompressed_bytes`` and raises
CorruptRecordError, RecordTooLargeError or UnsupportedCompressionTypeError, checking counts and
lengths before allocating for them. The broker marks LogAppendTime with ``set_log_append_time``.
Pure functions and per-call objects; the module's caches are safe to share between threads.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from enum import IntEnum
from typing import NamedTuple, cast

import crc32c as _crc32c
import numpy as np
import numpy.typing as npt

from shmbroker.errors import CorruptRecordError, RecordTooLargeError, UnsupportedCompressionTypeError


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp_ms: int
    max_timestamp_ms: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def size_bytes(self) -> int:
        """The whole batch on disk: the 12-byte log overhead plus batch_length."""
        return LOG_OVERHEAD + self.batch_length

    @property
    def codec(self) -> Codec:
        """The compression codec; UnsupportedCompressionTypeError for ids 5-7 (a BrokerError, so it
        reaches the client as Kafka's UNSUPPORTED_COMPRESSION_TYPE rather than as a crash)."""
        codec_id = self.attributes & CODEC_MASK
        if codec_id > Codec.ZSTD:
            raise UnsupportedCompressionTypeError(f"batch compression codec {codec_id} is not one of 0-4")
        return Codec(codec_id)


BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")  # one code per BatchHeader field, in order
# A NamedTuple from a tuple of its fields in order, without _make's length check and call layers (the
# worker builds a few per batch; each _make or _replace cost ~0.5-2 us there).
_NEW = tuple.__new__
HEADER_BYTES = BATCH_HEADER.size  # 61
LOG_OVERHEAD = struct.calcsize(">qi")  # 12: base_offset + batch_length, what batch_length excludes
CRC_START = struct.calcsize(">qiibI")  # 21
CRC_OFFSET = struct.calcsize(">qiib")  # 17
EPOCH_OFFSET = struct.calcsize(">qi")  # 12
MAGIC_OFFSET = struct.calcsize(">qii")  # 16
BASE_OFFSET = struct.Struct(">q")
LENGTH_PREFIX = struct.Struct(">qi")  # what a scanner needs to step from batch to batch
EPOCH = struct.Struct(">i")
MAGIC = 2
# The smallest legal batch_length: the header after the log overhead (an empty batch is legal in Kafka).
MIN_BATCH_LENGTH = HEADER_BYTES - LOG_OVERHEAD

CODEC_MASK = 0x07
TIMESTAMP_TYPE_BIT = 0x08  # 1 = LogAppendTime: the broker rewrites max_timestamp and the CRC
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20


class Codec(IntEnum):
    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli), the checksum of RecordBatch v2; not zlib's CRC-32."""
    return _crc32c.crc32c(data)


def parse_batch_header(buf: bytes | bytearray | memoryview, position: int = 0) -> BatchHeader:
    """The fixed 61-byte header at ``position``; checks nothing but that the bytes are there."""
    if len(buf) - position < HEADER_BYTES:
        raise CorruptRecordError(
            f"batch header needs {HEADER_BYTES} bytes, got {max(0, len(buf) - position)}"
        )
    return _NEW(BatchHeader, BATCH_HEADER.unpack_from(buf, position))


def check_header(header: BatchHeader, *, max_batch_bytes: int) -> None:
    """Check what the CRC does not cover and what must hold before any allocation: magic, lengths."""
    if header.magic != MAGIC:
        raise CorruptRecordError(f"batch magic {header.magic}; only magic {MAGIC} (RecordBatch v2) is served")
    if header.batch_length < MIN_BATCH_LENGTH:
        raise CorruptRecordError(
            f"batch_length {header.batch_length} is below the minimum {MIN_BATCH_LENGTH}"
        )
    if header.size_bytes > max_batch_bytes:
        raise RecordTooLargeError(
            f"batch of {header.size_bytes} bytes exceeds {max_batch_bytes}; raise max.message.bytes"
        )
    if header.records_count < 0 or header.last_offset_delta < 0:
        raise CorruptRecordError(
            f"records_count {header.records_count}, last_offset_delta {header.last_offset_delta}: negative"
        )
    # Every record takes at least 7 bytes (length, attributes, 3 varints, key and value length -1...),
    # so a count beyond that is a lie we refuse before anyone allocates for it. Compressed batches
    # can hold more records than bytes, so the count is checked again after decompression there.
    # (attributes & CODEC_MASK, not header.codec: codec ids 5-7 must not crash a check or a recovery scan)
    uncompressed = header.attributes & CODEC_MASK == Codec.NONE
    if uncompressed and header.records_count > (header.batch_length - MIN_BATCH_LENGTH):
        raise CorruptRecordError(
            f"records_count {header.records_count} cannot fit in "
            f"{header.batch_length - MIN_BATCH_LENGTH} bytes"
        )


def check_batch(buf: bytes | bytearray | memoryview, *, max_batch_bytes: int) -> BatchHeader:
    """Check one whole batch (exactly ``buf``): header, length matches, CRC. Return its header."""
    header = parse_batch_header(buf)
    check_header(header, max_batch_bytes=max_batch_bytes)
    if header.size_bytes != len(buf):
        raise CorruptRecordError(f"batch_length says {header.size_bytes} bytes, buffer holds {len(buf)}")
    actual = crc32c(memoryview(buf)[CRC_START:])
    if actual != header.crc:
        raise CorruptRecordError(f"batch CRC-32C is {actual:#010x}, header says {header.crc:#010x}")
    return header


def stamp(buf: bytearray | memoryview, *, base_offset: int, leader_epoch: int | None = None) -> None:
    """Write base_offset (and the leader epoch) in place; both lie outside the CRC."""
    BASE_OFFSET.pack_into(buf, 0, base_offset)
    if leader_epoch is not None:
        EPOCH.pack_into(buf, EPOCH_OFFSET, leader_epoch)


def iter_batches(
    buf: bytes | bytearray | memoryview,
    *,
    position: int = 0,
    end: int | None = None,
    verify_crc: bool = False,
    max_batch_bytes: int = 2**31 - 1,
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield (position, header) of each whole batch in ``buf[position:end]``.

    Stops silently at a short tail (a reader racing a writer sees that), raises CorruptRecordError
    at the first batch whose header or CRC is bad. Recovery uses ``scan_valid_columns`` instead.
    """
    view = memoryview(buf)
    end = len(view) if end is None else end
    while end - position >= HEADER_BYTES:
        header = BatchHeader._make(BATCH_HEADER.unpack_from(view, position))
        check_header(header, max_batch_bytes=max_batch_bytes)
        batch_end = position + header.size_bytes
        if batch_end > end:
            return
        if verify_crc:
            actual = crc32c(view[position + CRC_START : batch_end])
            if actual != header.crc:
                raise CorruptRecordError(
                    f"batch at position {position}: CRC-32C {actual:#010x}, header says {header.crc:#010x}"
                )
        yield position, header
        position = batch_end


class ValidPrefix(NamedTuple):
    """What ``scan_valid_columns`` found: the valid batches as columns, one entry per batch, in order.

    Batches are contiguous, so batch k spans ``positions[k]`` to ``positions[k + 1]`` (``end`` for the
    last). Plain lists of ints, no view of the buffer: the caller may close an mmap right after."""

    end: int  # end of the valid prefix: everything from here on is to be cut
    positions: list[int]
    base_offsets: list[int]
    max_timestamps_ms: list[int]
    next_offset: int | None  # of the last valid batch; None if there is none


# The header fields recovery checks or indexes, skipping the rest (pad bytes ``x``): base_offset,
# batch_length, magic, crc, attributes, last_offset_delta, max_timestamp_ms, records_count.
_SCAN_FIELDS = struct.Struct(">qi4xbIhi8xq14xi")
assert _SCAN_FIELDS.size == HEADER_BYTES


def scan_valid_columns(
    buf: bytes | bytearray | memoryview,
    *,
    position: int = 0,
    max_batch_bytes: int = 2**31 - 1,
    expect_offset: int | None = None,
) -> ValidPrefix:
    """Scan batches checking length, magic, CRC (and offset order); stop at the first bad or short one.

    Recovery's core, and its hot loop: the checks of ``check_header`` are inlined and no BatchHeader
    is built, which took small-batch recovery from ~3.5 us to ~1 us of Python per batch
    (perf/bench_disk.py). ``scan_valid_prefix`` is the same scan with headers.
    """
    view = memoryview(buf)
    end = len(view)
    unpack, crc = _SCAN_FIELDS.unpack_from, _crc32c.crc32c
    positions: list[int] = []
    bases: list[int] = []
    stamps: list[int] = []
    add_position, add_base, add_stamp = positions.append, bases.append, stamps.append
    max_length = max_batch_bytes - LOG_OVERHEAD  # batch_length excludes the 12-byte log overhead
    last_header_at = end - HEADER_BYTES
    check_offsets = expect_offset is not None
    expect = expect_offset if expect_offset is not None else 0
    next_offset = None
    while position <= last_header_at:
        base, length, magic, checksum, attributes, delta, max_timestamp, count = unpack(view, position)
        batch_end = position + LOG_OVERHEAD + length
        if (
            magic != MAGIC
            or length < MIN_BATCH_LENGTH
            or length > max_length
            or count < 0
            or delta < 0
            or (count > length - MIN_BATCH_LENGTH and not attributes & CODEC_MASK)  # see check_header
            or batch_end > end
            or (check_offsets and base != expect)  # offsets are dense: a gap is damage
            or crc(view[position + CRC_START : batch_end]) != checksum
        ):
            break
        add_position(position)
        add_base(base)
        add_stamp(max_timestamp)
        expect = next_offset = base + delta + 1
        position = batch_end
    return ValidPrefix(position, positions, bases, stamps, next_offset)


def scan_valid_prefix(
    buf: bytes | bytearray | memoryview,
    *,
    position: int = 0,
    max_batch_bytes: int = 2**31 - 1,
    expect_offset: int | None = None,
) -> tuple[int, list[tuple[int, BatchHeader]]]:
    """Scan batches checking length, magic, CRC (and offset order); stop at the first bad or short one.

    Returns (end of the valid prefix, [(position, header), ...]): ``scan_valid_columns`` plus a
    BatchHeader per valid batch. Everything from the returned position on is to be cut.
    """
    prefix = scan_valid_columns(
        buf, position=position, max_batch_bytes=max_batch_bytes, expect_offset=expect_offset
    )
    view = memoryview(buf)
    return prefix.end, [(p, BatchHeader._make(BATCH_HEADER.unpack_from(view, p))) for p in prefix.positions]


# ---------------------------------------------------------------------------------------------------
# Records inside a batch. Every integer is a zigzag varint (varlong for the timestamp):
#
#     length | attributes int8 | timestamp_delta | offset_delta | key_length key | value_length value
#     | headers_count (header_key_length utf-8 key | header_value_length value)...
#
# A length of -1 is null (key, value, header value). ``length`` counts the bytes after itself.
# ---------------------------------------------------------------------------------------------------

MIN_RECORD_BYTES = 7  # length, attributes, timestamp, offset, key -1, value -1, 0 headers: a byte each
MAX_VARINT_BYTES = 5  # 32-bit zigzag
MAX_VARLONG_BYTES = 10  # 64-bit zigzag
_NULL = b"\x01"  # zigzag(-1): a null key or value
_NO_HEADERS = b"\x00"
_VARINT_CACHE_LIMIT = 1 << 17


def zigzag_varint(value: int) -> bytes:
    """``value`` as a zigzag varint (Kafka's signed varint/varlong); ``value`` must fit in int64."""
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while encoded >= 0x80:
        out.append((encoded & 0x7F) | 0x80)
        encoded >>= 7
    out.append(encoded)
    return bytes(out)


class _VarintTable(dict[int, bytes]):
    """int -> zigzag varint bytes; ``table[n]`` is a C-level dict hit once seen, so ``map`` over it is fast.

    Bounded: past ``_VARINT_CACHE_LIMIT`` entries new values are encoded but not kept.
    """

    def __missing__(self, value: int) -> bytes:
        if not self:  # the first lookup
            self._prefill()
            if value in self:
                return self[value]
        encoded = zigzag_varint(value)
        if len(self) < _VARINT_CACHE_LIMIT:
            self[value] = encoded
        return encoded

    def _prefill(self) -> None:
        """Lengths and offset deltas of ordinary batches, at the first encode rather than at import
        (~20 ms that every broker process paid, and none of them encodes records)."""
        self.update((n, zigzag_varint(n)) for n in range(-1, 1 << 14))


_VARINT = _VarintTable()


class _PrefixTable:
    """Per value length L: record i's bytes before its value, led by the previous record's header count.

    ``prefixes[i] = b"\\0" + length + attributes + timestamp_delta 0 + offset_delta i + key -1 + L``.
    A batch of n same-size, keyless, same-timestamp records is then one ``join`` of prefixes and values:
    the encoder does no per-record Python work at all. Memory stays small: ``max_lengths`` value
    lengths (all dropped when full) of at most ``max_records`` prefixes each, ~6 MB at worst;
    records past ``max_records`` get prefixes made for that one call.
    """

    max_lengths = 8
    max_records = 1 << 14

    def __init__(self) -> None:
        self._by_length: dict[int, list[bytes]] = {}

    def get(self, value_bytes: int, count: int) -> list[bytes]:
        """At least ``count`` prefixes for values of ``value_bytes``; never mutate the list returned.

        Thread-safe under the GIL without a lock: a table is never extended in place but replaced by
        a longer copy, so a concurrent caller keeps a consistent list (at worst both compute it).
        """
        by_length = self._by_length
        table = by_length.get(value_bytes)
        if table is None:
            table = []
            if len(by_length) >= self.max_lengths:
                by_length.clear()  # rare (many sizes in turn); clear() is atomic, unlike picking a victim
        cached_count = min(count, self.max_records)
        if len(table) < cached_count:
            table = table + self._make(value_bytes, len(table), cached_count)
            by_length[value_bytes] = table
        if count > len(table):
            return table + self._make(value_bytes, len(table), count)
        return table

    @staticmethod
    def _make(value_bytes: int, first: int, end: int) -> list[bytes]:
        value_length = _VARINT[value_bytes]
        out = []
        for offset_delta in range(first, end):
            middle = b"\x00\x00" + _VARINT[offset_delta] + _NULL + value_length
            body_bytes = len(middle) + value_bytes + 1  # + 1: the headers count
            out.append(_NO_HEADERS + _VARINT[body_bytes] + middle)
        return out


_PREFIXES = _PrefixTable()


RecordHeaders = Sequence[tuple[str, bytes | None]]  # (utf-8 key, value or None), as appended


def _encode_headers(headers: RecordHeaders) -> bytes:
    parts = [_VARINT[len(headers)]]
    for header_key, header_value in headers:
        key_bytes = header_key.encode("utf-8")
        parts += (_VARINT[len(key_bytes)], key_bytes)
        if header_value is None:
            parts.append(_NULL)
        else:
            parts += (_VARINT[len(header_value)], header_value)
    return b"".join(parts)


def _encode_record(
    offset_delta: int,
    timestamp_delta_ms: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
) -> bytes:
    """One whole record, length included: the general (slow) path, ~1 us."""
    body = b"".join(
        (
            b"\x00",
            _VARINT[timestamp_delta_ms],
            _VARINT[offset_delta],
            _NULL if key is None else _VARINT[len(key)] + key,
            _NULL if value is None else _VARINT[len(value)] + value,
            _encode_headers(headers) if headers else _NO_HEADERS,
        )
    )
    return _VARINT[len(body)] + body


def _check_varint_range(count: int) -> None:
    if count > 2**31 - 1:
        raise ValueError(f"{count} records do not fit in one batch (records_count is an int32)")


def _finish_batch(
    out: bytearray,
    *,
    count: int,
    codec: Codec,
    base_timestamp_ms: int,
    max_timestamp_ms: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    base_offset: int,
    partition_leader_epoch: int,
    transactional: bool,
    compression_level: int | None,
) -> bytearray:
    """Compress ``out[61:]`` if asked, write the header over ``out[:61]`` and the CRC; return the batch."""
    if codec != Codec.NONE:
        from shmbroker import codecs as _codecs  # at first use: lz4, snappy, zstd stay off start-up

        compressed = _codecs.compress(codec, memoryview(out)[HEADER_BYTES:], level=compression_level)
        del out[HEADER_BYTES:]
        out += compressed
    _write_header(
        out,
        count=count,
        codec=codec,
        base_timestamp_ms=base_timestamp_ms,
        max_timestamp_ms=max_timestamp_ms,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        base_offset=base_offset,
        partition_leader_epoch=partition_leader_epoch,
        transactional=transactional,
    )
    return out


def _write_header(
    out: bytearray | memoryview,
    *,
    count: int,
    codec: Codec,
    base_timestamp_ms: int,
    max_timestamp_ms: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    base_offset: int,
    partition_leader_epoch: int,
    transactional: bool,
) -> None:
    """The 61-byte header over ``out[:61]`` for the records in ``out[61:]``, then the CRC."""
    attributes = int(codec) | (TRANSACTIONAL_BIT if transactional else 0)
    BATCH_HEADER.pack_into(
        out,
        0,
        base_offset,
        len(out) - LOG_OVERHEAD,
        partition_leader_epoch,
        MAGIC,
        0,
        attributes,
        count - 1,
        base_timestamp_ms,
        max_timestamp_ms,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
    )
    with memoryview(out) as view:
        _CRC.pack_into(out, CRC_OFFSET, crc32c(view[CRC_START:]))


_CRC = struct.Struct(">I")
_HEADER_PLACEHOLDER = bytes(HEADER_BYTES)
_TAIL = _NO_HEADERS  # the last record's header count, which no following prefix carries


def _records_same_size(values: Sequence[bytes], value_bytes: int) -> list[bytes | bytearray]:
    """Header placeholder + records of same-size values, no keys, timestamp delta 0, as join pieces."""
    count = len(values)
    prefixes = _PREFIXES.get(value_bytes, count)
    pieces: list[bytes | bytearray] = [_TAIL] * (2 * count + 2)
    pieces[0] = _HEADER_PLACEHOLDER
    pieces[1 : 2 * count : 2] = prefixes[:count]
    pieces[1] = prefixes[0][1:]  # the first record has no previous header count to carry
    pieces[2 : 2 * count + 1 : 2] = values
    return pieces


def _records_general(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None,
    timestamp_deltas_ms: Sequence[int] | None,
    headers: Sequence[Sequence[tuple[str, bytes | None]] | None] | None,
) -> list[bytes | bytearray]:
    pieces: list[bytes | bytearray] = [_HEADER_PLACEHOLDER]
    pieces += map(
        _encode_record,
        range(len(values)),
        timestamp_deltas_ms if timestamp_deltas_ms is not None else itertools.repeat(0),
        keys if keys is not None else itertools.repeat(None),
        values,
        headers if headers is not None else itertools.repeat(None),
    )
    return pieces


def _rows_to_records(rows: npt.NDArray[np.uint8]) -> bytearray:
    """Header placeholder + records of fixed-size rows (no keys, timestamp delta 0), numpy-vectorised.

    Records cut into runs where the offset-delta varint has one width (i < 64: 1 byte, < 8192: 2, ...);
    inside a run every record has the same size, so the run is one 2-D block filled column-wise.
    """
    count, value_bytes = rows.shape
    value_length = np.frombuffer(_VARINT[value_bytes], np.uint8)
    runs: list[tuple[int, int, int]] = []  # (first index, end index, offset varint width)
    total_bytes = HEADER_BYTES
    start, width = 0, 1
    while start < count:
        end = min(count, 1 << (7 * width - 1))  # zigzag: i < 2**(7w-1) fits in w bytes
        record_bytes = len(_VARINT[3 + width + len(value_length) + value_bytes + 1]) + 3 + width
        record_bytes += len(value_length) + value_bytes + 1
        runs.append((start, end, width))
        total_bytes += (end - start) * record_bytes
        start, width = end, width + 1
    out = bytearray(total_bytes)
    flat = np.frombuffer(out, np.uint8)
    position = HEADER_BYTES
    for start, end, width in runs:
        body_bytes = 3 + width + len(value_length) + value_bytes + 1
        length = np.frombuffer(_VARINT[body_bytes], np.uint8)
        record_bytes = len(length) + body_bytes
        block = flat[position : position + (end - start) * record_bytes].reshape(end - start, record_bytes)
        column = len(length)
        block[:, :column] = length
        block[:, column : column + 2] = 0  # attributes, timestamp delta 0
        column += 2
        zigzag = np.arange(start, end, dtype=np.int64) << 1
        for byte_index in range(width):
            byte = (zigzag >> (7 * byte_index)) & 0x7F
            if byte_index < width - 1:
                byte |= 0x80
            block[:, column + byte_index] = byte
        column += width
        block[:, column] = 1  # key -1
        column += 1
        block[:, column : column + len(value_length)] = value_length
        column += len(value_length)
        block[:, column : column + value_bytes] = rows[start:end]
        block[:, column + value_bytes] = 0  # no headers
        position += (end - start) * record_bytes
    del flat, block  # release the buffer export so the caller may resize ``out``
    return out


def encode_values(
    values: Sequence[bytes] | npt.NDArray[np.uint8],
    *,
    keys: Sequence[bytes | None] | None = None,
    timestamp_ms: int,
    codec: Codec = Codec.NONE,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    base_offset: int = 0,
    partition_leader_epoch: int = -1,
    transactional: bool = False,
    compression_level: int | None = None,
) -> bytearray:
    """One batch of ``values`` (all stamped ``timestamp_ms``): the columnar fast path.

    ``values`` is a sequence of bytes, or a 2-D uint8 array whose rows are fixed-size values. Keyless
    same-size values cost no Python work per record (a prefix table and one ``join``, or numpy); keys
    or mixed sizes take the general path.
    """
    count = len(values)
    if count == 0:
        raise ValueError("a batch needs at least one record")
    _check_varint_range(count)
    if keys is not None and len(keys) != count:
        raise ValueError(f"{len(keys)} keys for {count} values")
    if isinstance(values, np.ndarray):
        if values.ndim != 2 or values.dtype != np.uint8:
            raise ValueError(f"values array must be 2-D uint8, got {values.ndim}-D {values.dtype}")
        if keys is None:
            out = _rows_to_records(values)
        else:
            rows = [row.tobytes() for row in values]
            out = bytearray().join(_records_general(rows, keys, None, None))
    else:
        out = _join_records(values, keys)
    return _finish_batch(
        out,
        count=count,
        codec=codec,
        base_timestamp_ms=timestamp_ms,
        max_timestamp_ms=timestamp_ms,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        base_offset=base_offset,
        partition_leader_epoch=partition_leader_epoch,
        transactional=transactional,
        compression_level=compression_level,
    )


def _join_records(values: Sequence[bytes | None], keys: Sequence[bytes | None] | None) -> bytearray:
    """Header placeholder + records (timestamp delta 0), picking the fastest path the input allows."""
    if keys is None and None not in values:
        present = cast("Sequence[bytes]", values)
        lengths = set(map(len, present))  # one C-level pass; the profile showed all(genexpr) dominating
        if len(lengths) == 1 and (first_bytes := lengths.pop()) < (1 << 20):
            return bytearray().join(_records_same_size(present, first_bytes))
    return bytearray().join(_records_general(values, keys, None, None))


def _plain_framing(values: Sequence[bytes]) -> list[bytes]:
    """Per record, the bytes before its value, led by the previous record's headers count (none for
    the first), as ``_records_same_size`` joins them; any value sizes, no keys, timestamp delta 0."""
    count = len(values)
    lengths = set(map(len, values))
    if len(lengths) == 1 and (value_bytes := lengths.pop()) < (1 << 20):
        prefixes = _PREFIXES.get(value_bytes, count)[:count]
    else:
        prefixes = []
        for offset_delta, value in enumerate(values):
            middle = b"\x00\x00" + _VARINT[offset_delta] + _NULL + _VARINT[len(value)]
            prefixes.append(_NO_HEADERS + _VARINT[len(middle) + len(value) + 1] + middle)
    prefixes[0] = prefixes[0][1:]
    return prefixes


def plain_batch_bytes(values: Sequence[bytes]) -> int:
    """The exact size of ``encode_values(values, ...)`` without keys or codec (what
    ``encode_values_into`` needs); values are bytes, none of them None."""
    if not values:
        raise ValueError("a batch needs at least one record")
    return _plain_size(_plain_framing(values), values)


def _plain_size(framing: Sequence[bytes], values: Sequence[bytes]) -> int:
    return HEADER_BYTES + sum(map(len, framing)) + sum(map(len, values)) + len(_TAIL)


def encode_values_into(
    out: memoryview,
    values: Sequence[bytes],
    *,
    timestamp_ms: int,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    base_offset: int = 0,
    partition_leader_epoch: int = -1,
    transactional: bool = False,
) -> None:
    """Encode the batch ``encode_values`` would build (no keys, no codec) straight into ``out``,
    which must be exactly ``plain_batch_bytes(values)`` long, e.g. a frame claimed in a shm lane.

    One copy per value and no allocation the size of the batch: for big records, joining into a
    fresh bytearray and copying that into the lane cost more than everything else the producer does.
    Costs ~0.3 us of Python per record, so small records are cheaper through ``encode_values``.
    """
    count = len(values)
    if count == 0:
        raise ValueError("a batch needs at least one record")
    _check_varint_range(count)
    framing = _plain_framing(values)
    size = _plain_size(framing, values)
    if len(out) != size:
        raise ValueError(f"a batch of these {count} values takes {size} bytes; the buffer has {len(out)}")
    position = HEADER_BYTES
    for prefix, value in zip(framing, values, strict=True):
        end = position + len(prefix)
        out[position:end] = prefix
        position = end + len(value)
        out[end:position] = value
    out[position:size] = _TAIL
    _write_header(
        out,
        count=count,
        codec=Codec.NONE,
        base_timestamp_ms=timestamp_ms,
        max_timestamp_ms=timestamp_ms,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        base_offset=base_offset,
        partition_leader_epoch=partition_leader_epoch,
        transactional=transactional,
    )


class BatchBuilder:
    """Collects one batch's records for ``build``; the producer's accumulator. Not thread-safe.

    ``append`` only stores (one list append, a dict entry if the record has a key, timestamp or
    headers), so ``Producer.produce()`` stays cheap; ``build`` encodes them all at once. A record
    appended without ``timestamp_ms`` gets the wall-clock time of the batch's first append: a batch
    lives at most ``linger.ms``, and one clock read per batch instead of per record saves ~100 ns each.
    """

    __slots__ = ("_counted", "_extra_bytes", "_extras", "_first_append_ms", "_value_bytes", "_values")

    # Bytes a plain record (no key, no headers) adds besides its value, at most, for values under
    # 8 KiB in batches under 2**20 records: length 2, attributes 1, timestamp delta 1, offset delta 3,
    # key -1 1, value length 2, headers count 1.
    PLAIN_RECORD_OVERHEAD_BYTES = 11
    # The same for any record besides key, value and headers: length 5, attributes 1, timestamp delta
    # 10, offset delta 5, key and value lengths 5 each, headers count 5.
    RECORD_OVERHEAD_MAX_BYTES = 36

    def __init__(self) -> None:
        self._values: list[bytes | None] = []
        self._extras: dict[int, tuple[bytes | None, int | None, RecordHeaders | None]] = {}
        self._first_append_ms = 0
        self._counted = 0  # values[:_counted] are in _value_bytes (size_bytes_estimate counts lazily)
        self._value_bytes = 0
        self._extra_bytes = 0  # keys, headers and worst-case framing of records with extras

    def append(
        self,
        value: bytes | None,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
        headers: RecordHeaders | None = None,
    ) -> int:
        """Store one record; return its offset delta (its index in the batch)."""
        # The hot path is one list append: no size accounting (size_bytes_estimate sums lazily, in C),
        # no clock read (the first append, on the other path, reads it once for the batch).
        values = self._values
        if values and key is None and timestamp_ms is None and headers is None:
            values.append(value)
            return len(values) - 1
        return self._append_rich(value, key, timestamp_ms, headers)

    def _append_rich(
        self, value: bytes | None, key: bytes | None, timestamp_ms: int | None, headers: RecordHeaders | None
    ) -> int:
        values = self._values
        offset_delta = len(values)
        if not offset_delta:
            self._first_append_ms = time.time_ns() // 1_000_000
        values.append(value)
        if key is not None or timestamp_ms is not None or headers is not None:
            self._extras[offset_delta] = (key, timestamp_ms, headers)
            self._extra_bytes += self.RECORD_OVERHEAD_MAX_BYTES + (0 if key is None else len(key))
            if headers:
                self._extra_bytes += sum(len(k) * 3 + (0 if v is None else len(v)) + 10 for k, v in headers)
        return offset_delta

    def __len__(self) -> int:
        return len(self._values)

    @property
    def first_append_ms(self) -> int:
        """The timestamp ``build`` gives records appended without one (0 before the first append)."""
        return self._first_append_ms

    @property
    def size_bytes_estimate(self) -> int:
        """The uncompressed batch size so far, rounded up a little; amortised O(1) per appended record."""
        values = self._values
        if self._counted < len(values):
            self._value_bytes += sum(map(len, filter(None, values[self._counted :])))
            self._counted = len(values)
        return (
            HEADER_BYTES
            + self.PLAIN_RECORD_OVERHEAD_BYTES * len(values)
            + self._value_bytes
            + self._extra_bytes
        )

    def build(
        self,
        *,
        codec: Codec = Codec.NONE,
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
        base_offset: int = 0,
        partition_leader_epoch: int = -1,
        transactional: bool = False,
        compression_level: int | None = None,
    ) -> bytearray:
        """The batch of every record appended so far (the builder keeps them; make a new one to restart)."""
        values = self._values
        count = len(values)
        if count == 0:
            raise ValueError("a batch needs at least one record")
        _check_varint_range(count)
        base_timestamp_ms = max_timestamp_ms = self._first_append_ms
        if not self._extras:
            out = _join_records(values, None)
        else:
            keys: list[bytes | None] = [None] * count
            timestamps_ms: list[int] = [self._first_append_ms] * count
            headers: list[RecordHeaders | None] = [None] * count
            for index, (key, timestamp_ms, record_headers) in self._extras.items():
                keys[index] = key
                headers[index] = record_headers
                if timestamp_ms is not None:
                    timestamps_ms[index] = timestamp_ms
            # Kafka's base timestamp is the first record's; deltas may be negative.
            base_timestamp_ms, max_timestamp_ms = timestamps_ms[0], max(timestamps_ms)
            deltas_ms = [t - base_timestamp_ms for t in timestamps_ms]
            out = bytearray().join(_records_general(values, keys, deltas_ms, headers))
        return _finish_batch(
            out,
            count=count,
            codec=codec,
            base_timestamp_ms=base_timestamp_ms,
            max_timestamp_ms=max_timestamp_ms,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            base_sequence=base_sequence,
            base_offset=base_offset,
            partition_leader_epoch=partition_leader_epoch,
            transactional=transactional,
            compression_level=compression_level,
        )


def set_log_append_time(buf: bytearray | memoryview, timestamp_ms: int) -> None:
    """Mark one whole batch LogAppendTime at ``timestamp_ms``: attribute bit 3, max_timestamp, new CRC.

    The broker calls this on append when the topic's ``message.timestamp.type`` is LogAppendTime;
    readers then report ``max_timestamp`` for every record. The CRC covers both fields, so it is
    recomputed (the one header rewrite that costs a pass over the batch).
    """
    header = parse_batch_header(buf)
    if header.size_bytes != len(buf):
        raise CorruptRecordError(f"batch_length says {header.size_bytes} bytes, buffer holds {len(buf)}")
    _ATTRIBUTES.pack_into(buf, CRC_START, header.attributes | TIMESTAMP_TYPE_BIT)
    _TIMESTAMP.pack_into(buf, _MAX_TIMESTAMP_OFFSET, timestamp_ms)
    _CRC.pack_into(buf, CRC_OFFSET, crc32c(memoryview(buf)[CRC_START:]))


_ATTRIBUTES = struct.Struct(">h")
_TIMESTAMP = struct.Struct(">q")
_MAX_TIMESTAMP_OFFSET = struct.calcsize(">qiibIhiq")  # 35


# ---------------------------------------------------------------------------------------------------
# Decoding. One parser fills columns (numpy arrays of offsets, timestamps, key and value positions);
# ``decode_batch`` turns them into Record tuples, ``decode_columnar`` hands them out as they are.
# ---------------------------------------------------------------------------------------------------


class Record(NamedTuple):
    """One decoded record. ``headers`` is a tuple of (utf-8 key, value or None); () when none."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


Headers = tuple[tuple[str, bytes | None], ...]
Int64Array = npt.NDArray[np.int64]
_NO_RECORD_HEADERS: Headers = ()
_new_record = functools.partial(tuple.__new__, Record)  # C-level Record construction, no __new__ frame


class _Columns(NamedTuple):
    offset_deltas: Int64Array
    timestamp_deltas_ms: Int64Array
    key_starts: Int64Array
    key_lengths: Int64Array  # -1: null
    value_starts: Int64Array
    value_lengths: Int64Array  # -1: null
    headers: list[Headers] | None  # None: no record has headers


def _slices(data: bytes, starts: Int64Array, lengths: Int64Array) -> list[bytes | None]:
    """``data[start:start+length]`` for each record, None where length is -1; slicing done in C."""
    count = len(lengths)
    if count and lengths[0] > 0 and (lengths == lengths[0]).all():
        return _equal_slices(data, starts, int(lengths[0]))
    null = lengths < 0
    ends = starts + np.where(null, 0, lengths)
    # A comprehension beats map(data.__getitem__, map(slice, ...)): 3.11 specialises the slice ops.
    out: list[bytes | None] = [
        data[start:stop] for start, stop in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
    if null.any():
        for index in np.flatnonzero(null).tolist():
            out[index] = None
    return out


def _equal_slices(data: bytes, starts: Int64Array, length: int) -> list[bytes | None]:
    """The same for the usual batch, where every value has one length: each run of records with one
    stride (record sizes change only where the offset-delta varint widens) is a strided numpy view of
    ``length``-byte void items, and ``tolist()`` makes their bytes objects in C: ~20 ns a value
    against ~125 ns for a slice per value (100-byte values, measured)."""
    if len(starts) == 1:
        return [bytes(data[int(starts[0]) : int(starts[0]) + length])]
    strides = np.diff(starts)
    # A run ends where the stride changes; run i covers records cuts[i] .. cuts[i + 1] - 1.
    cuts = [0, *(np.flatnonzero(strides[1:] != strides[:-1]) + 2).tolist(), len(starts)]
    out: list[bytes | None] = []
    item = np.dtype(f"V{length}")
    for first, stop in itertools.pairwise(cuts):
        stride = int(strides[first]) if stop - first > 1 else length
        run = np.ndarray((stop - first,), item, buffer=data, offset=int(starts[first]), strides=(stride,))
        out += run.tolist()
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class ColumnarRecords:
    """The records of one batch as columns: no Python object per field until asked.

    ``data`` holds the (uncompressed) records block; record i's value is
    ``data[value_starts[i] : value_starts[i] + value_lengths[i]]`` (length -1: null), keys likewise.
    """

    header: BatchHeader
    offsets: Int64Array
    timestamps_ms: Int64Array
    data: bytes
    key_starts: Int64Array
    key_lengths: Int64Array
    value_starts: Int64Array
    value_lengths: Int64Array
    headers: list[Headers] | None  # None when no record has headers

    def __len__(self) -> int:
        return len(self.offsets)

    def values(self) -> list[bytes | None]:
        return _slices(self.data, self.value_starts, self.value_lengths)

    def keys(self) -> list[bytes | None]:
        if (self.key_lengths < 0).all():
            return [None] * len(self.key_lengths)
        return _slices(self.data, self.key_starts, self.key_lengths)

    def value_rows(self) -> npt.NDArray[np.uint8] | None:
        """Values as a 2-D uint8 array (a copy) when all are present and one size; else None."""
        lengths = self.value_lengths
        if not len(lengths) or lengths[0] < 0 or (lengths != lengths[0]).any():
            return None
        flat = np.frombuffer(self.data, np.uint8)
        return flat[self.value_starts[:, None] + np.arange(lengths[0])]

    def records(self) -> list[Record]:
        """One Record per record. Columns that are the same for every record (no keys, no headers, one
        timestamp: the usual batch) are repeated rather than materialised per record."""
        count = len(self.offsets)
        headers: Iterable[Headers] = (
            self.headers if self.headers is not None else itertools.repeat(_NO_RECORD_HEADERS, count)
        )
        timestamps_ms = self.timestamps_ms
        same_timestamp = count and (timestamps_ms == timestamps_ms[0]).all()
        timestamps: Iterable[int] = (
            itertools.repeat(int(timestamps_ms[0]), count) if same_timestamp else timestamps_ms.tolist()
        )
        keys: Iterable[bytes | None] = (
            itertools.repeat(None, count) if (self.key_lengths < 0).all() else self.keys()
        )
        # tuple.__new__ through a partial builds each Record in C; Record(...) would run a Python __new__.
        columns = zip(self.offsets.tolist(), timestamps, keys, self.values(), headers, strict=True)
        return list(map(_new_record, columns))


def _read_varint(
    data: bytes | memoryview, position: int, end: int, max_bytes: int, what: str
) -> tuple[int, int]:
    """Decode the zigzag varint at ``position``; return (value, next position). Exact: raises on damage."""
    if position + 1 < end:  # most fields of most records fit one or two bytes: no loop for them
        byte = data[position]
        if byte < 0x80:
            return (byte >> 1) ^ -(byte & 1), position + 1
        second = data[position + 1]
        if second < 0x80:  # 14 bits: no overflow check needed
            raw = (byte & 0x7F) | second << 7
            return (raw >> 1) ^ -(raw & 1), position + 2
    raw = shift = 0
    for index in range(position, min(end, position + max_bytes)):
        byte = data[index]
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            bits = 32 if max_bytes <= MAX_VARINT_BYTES else 64  # 5 bytes carry 35 bits, 10 carry 70
            if raw >> bits:
                raise CorruptRecordError(f"{what} varint at byte {position} overflows {bits} bits")
            return (raw >> 1) ^ -(raw & 1), index + 1
        shift += 7
    if end - position < max_bytes:
        raise CorruptRecordError(f"{what} varint at byte {position} runs past the end at {end}")
    raise CorruptRecordError(f"{what} varint at byte {position} is longer than {max_bytes} bytes")


RecordFields = tuple[int, int, int, int, int, int, int, "Headers"]


def _parse_record(data: bytes | memoryview, position: int, end: int, index: int) -> RecordFields:
    """One record at ``position``, byte by byte, every length checked: (next position, timestamp
    delta, offset delta, key start, key length, value start, value length, headers)."""
    record_bytes, position = _read_varint(data, position, end, MAX_VARINT_BYTES, "record length")
    if record_bytes < MIN_RECORD_BYTES - 1 or record_bytes > end - position:
        raise CorruptRecordError(
            f"record {index} at byte {position} claims {record_bytes} bytes; {end - position} remain"
        )
    record_end = position + record_bytes
    position += 1  # attributes: unused in v2
    timestamp_delta, position = _read_varint(data, position, record_end, MAX_VARLONG_BYTES, "timestamp delta")
    offset_delta, position = _read_varint(data, position, record_end, MAX_VARINT_BYTES, "offset delta")
    key_length, position = _read_varint(data, position, record_end, MAX_VARINT_BYTES, "key length")
    if key_length < -1 or key_length > record_end - position:
        raise CorruptRecordError(f"record {index}: key length {key_length} at byte {position}")
    key_start = position
    position += max(key_length, 0)
    value_length, position = _read_varint(data, position, record_end, MAX_VARINT_BYTES, "value length")
    if value_length < -1 or value_length > record_end - position:
        raise CorruptRecordError(f"record {index}: value length {value_length} at byte {position}")
    value_start = position
    position += max(value_length, 0)
    if position + 1 == record_end and data[position] == 0:  # no headers, the usual record
        fields = (timestamp_delta, offset_delta, key_start, key_length, value_start, value_length)
        return (record_end, *fields, ())
    header_count, position = _read_varint(data, position, record_end, MAX_VARINT_BYTES, "headers count")
    if header_count < 0 or header_count * 2 > record_end - position:
        raise CorruptRecordError(f"record {index}: {header_count} headers in {record_end - position} bytes")
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(header_count):
        length, position = _read_varint(data, position, record_end, MAX_VARINT_BYTES, "header key length")
        if length < 0 or length > record_end - position:
            raise CorruptRecordError(f"record {index}: header key length {length} at byte {position}")
        try:
            header_key = str(data[position : position + length], "utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptRecordError(f"record {index}: header key is not utf-8") from exc
        position += length
        length, position = _read_varint(data, position, record_end, MAX_VARINT_BYTES, "header value length")
        if length < -1 or length > record_end - position:
            raise CorruptRecordError(f"record {index}: header value length {length} at byte {position}")
        headers.append((header_key, None if length < 0 else bytes(data[position : position + length])))
        position += max(length, 0)
    if position != record_end:
        raise CorruptRecordError(f"record {index} has {record_end - position} bytes after its headers")
    return (
        position,
        timestamp_delta,
        offset_delta,
        key_start,
        key_length,
        value_start,
        value_length,
        tuple(headers),
    )


def _parse_exact(data: bytes, count: int) -> _Columns:
    """Parse ``count`` records filling ``data`` exactly, byte by byte; the reference and the error path."""
    end = len(data)
    columns: list[list[int]] = [[] for _ in range(6)]
    offset_deltas, timestamp_deltas, key_starts, key_lengths, value_starts, value_lengths = columns
    all_headers: list[Headers] = []
    position = 0
    for index in range(count):
        if position >= end:
            raise CorruptRecordError(f"records_count says {count}, records block ends after {index}")
        position, ts_delta, off_delta, key_start, key_length, value_start, value_length, headers = (
            _parse_record(data, position, end, index)
        )
        timestamp_deltas.append(ts_delta)
        offset_deltas.append(off_delta)
        key_starts.append(key_start)
        key_lengths.append(key_length)
        value_starts.append(value_start)
        value_lengths.append(value_length)
        all_headers.append(headers)
    if position != end:
        raise CorruptRecordError(f"{end - position} bytes after the {count} records the header counts")
    as_arrays = [np.array(column, dtype=np.int64) for column in columns]
    return _Columns(
        offset_deltas=as_arrays[0],
        timestamp_deltas_ms=as_arrays[1],
        key_starts=as_arrays[2],
        key_lengths=as_arrays[3],
        value_starts=as_arrays[4],
        value_lengths=as_arrays[5],
        headers=all_headers if any(all_headers) else None,
    )


SMALL_BATCH_RECORDS = 16  # below this, decode_rows' plain loop beats the columnar decoders' numpy setup


def decode_rows(
    buf: bytes | bytearray | memoryview, *, max_uncompressed_bytes: int, verify_crc: bool = True
) -> tuple[BatchHeader, list[tuple[int, int, bytes | None, bytes | None, Headers]]]:
    """One whole batch as (offset, timestamp_ms, key, value, headers) rows, in plain Python.

    For small batches (a latency-bound consumer sees one or two records per batch), where the
    columnar decoders' fixed numpy cost (~50 us a batch) dominates; same checks as decode_columnar.
    """
    header = check_batch(buf, max_batch_bytes=2**31 - 1) if verify_crc else _check_whole(buf)
    data: bytes | memoryview
    if header.attributes & CODEC_MASK == Codec.NONE:
        # Slice keys and values straight out of the caller's buffer (often a read-only mmap of a
        # segment): one copy per value instead of two (64-KiB records: 0.7 -> 1.1+ GB/s).
        data = memoryview(buf)[HEADER_BYTES : header.size_bytes]
        if header.records_count > len(data) // MIN_RECORD_BYTES:
            raise CorruptRecordError(f"records_count {header.records_count} cannot fit in {len(data)} bytes")
    else:
        data = _records_block(buf, header, max_uncompressed_bytes=max_uncompressed_bytes)
    end, position = len(data), 0
    base_offset, base_ts = header.base_offset, header.base_timestamp_ms
    log_append = header.attributes & TIMESTAMP_TYPE_BIT
    rows = []
    for index in range(header.records_count):
        if position >= end:
            raise CorruptRecordError(f"records_count says {header.records_count}, block ends after {index}")
        position, ts_delta, off_delta, key_start, key_length, value_start, value_length, headers = (
            _parse_record(data, position, end, index)
        )
        rows.append((
            base_offset + off_delta,
            header.max_timestamp_ms if log_append else base_ts + ts_delta,
            None if key_length < 0 else bytes(data[key_start : key_start + key_length]),
            None if value_length < 0 else bytes(data[value_start : value_start + value_length]),
            headers,
        ))  # fmt: skip
    if position != end:
        raise CorruptRecordError(f"{end - position} bytes after the {header.records_count} records")
    return header, rows


_VECTORISE_FROM_RECORDS = 16
_BAD_VARINT = -(2**40)  # what a lenient varint decode reports for bytes that are no varint
_VARINT_PAD_BYTES = 32  # gathers past a record's end land here, never outside the array


def _varints_at(
    flat: npt.NDArray[np.uint8], positions: Int64Array, max_bytes: int, *, lenient: bool = False
) -> tuple[Int64Array, Int64Array] | None:
    """Zigzag-decode the varints at ``positions`` at once: (values, widths), or None if one is too long.

    ``lenient``: a too-long varint gets value _BAD_VARINT instead (the caller is guessing positions, and a
    wrong guess may land on any bytes).
    """
    # Fast paths first: in ordinary batches every varint here is one or two bytes wide.
    gathered = flat[positions]
    first = gathered.astype(np.int64)
    if gathered.max(initial=0) < 0x80:
        return (first >> 1) ^ -(first & 1), _ones(len(positions))
    long_first = first >= 0x80
    second = flat[positions + 1].astype(np.int64)
    if not (long_first & (second >= 0x80)).any():
        raw2 = np.where(long_first, (first & 0x7F) | (second << 7), first)
        return (raw2 >> 1) ^ -(raw2 & 1), long_first.astype(np.int64) + 1
    byte = first.astype(np.uint8)
    raw = (byte & 0x7F).astype(np.uint64)
    widths = np.ones(len(positions), np.int64)
    going = np.flatnonzero(byte & 0x80)
    shift = 7
    while going.size:
        if shift >= 7 * max_bytes:
            if not lenient:
                return None
            values = _zigzag(raw)
            values[going] = _BAD_VARINT
            return values, widths
        byte = flat[positions[going] + shift // 7]
        raw[going] |= (byte & 0x7F).astype(np.uint64) << np.uint64(shift)
        widths[going] += 1
        going = going[(byte & 0x80) != 0]
        shift += 7
    values = _zigzag(raw)
    if max_bytes <= MAX_VARINT_BYTES:
        overflow = (raw >> np.uint64(32)) != 0  # a 5-byte varint carrying more than 32 bits
        if overflow.any():
            if not lenient:
                return None
            values[overflow] = _BAD_VARINT
    return values, widths


def _ones(count: int) -> Int64Array:
    """A read-only array of ``count`` ones, shared: widths of one-byte varints, added, never written."""
    global _ONES
    if len(_ONES) < count:
        _ONES = np.ones(max(count, 2 * len(_ONES)), np.int64)
        _ONES.flags.writeable = False
    return _ONES[:count]


_ONES: Int64Array = np.ones(0, np.int64)


def _zigzag(raw: npt.NDArray[np.uint64]) -> Int64Array:
    return cast("Int64Array", (raw >> np.uint64(1)).astype(np.int64) ^ -(raw & np.uint64(1)).astype(np.int64))


def _record_starts(
    data: bytes, flat: npt.NDArray[np.uint8], count: int
) -> tuple[Int64Array, Int64Array] | None:
    """(start, body start) of each record, if the records chain exactly through ``data``; else None.

    Guess-and-verify: guess that records keep the size of the first one, decode every length at the
    guessed starts at once, and keep the prefix where each record ends where the next was guessed to
    begin (by induction those starts are right). Re-guess from the first miss. Same-size values change
    record size only where the offset-delta varint widens, so a few rounds cover any batch of them.
    """
    end = len(data)
    starts = np.empty(count, np.int64)
    body_starts = np.empty(count, np.int64)
    done, position = 0, 0
    for _round in range(6):
        try:
            record_bytes, body_start = _read_varint(data, position, end, MAX_VARINT_BYTES, "record length")
        except CorruptRecordError:
            return None
        record_bytes += body_start - position
        if record_bytes < MIN_RECORD_BYTES:
            return None
        guess = np.arange(position, position + (count - done) * record_bytes, record_bytes, dtype=np.int64)
        np.minimum(guess, end, out=guess)
        decoded = _varints_at(flat, guess, MAX_VARINT_BYTES, lenient=True)
        assert decoded is not None  # lenient never gives up
        body = guess + decoded[1]
        following = body + decoded[0]
        misses = np.flatnonzero(following[:-1] != guess[1:])
        good = int(misses[0]) + 1 if misses.size else count - done
        starts[done : done + good] = guess[:good]
        body_starts[done : done + good] = body[:good]
        done, position = done + good, int(following[good - 1])
        if done == count:
            return (starts, body_starts) if position == end else None
        if position >= end:
            return None
    return None


def _parse_vectorised(data: bytes, count: int) -> _Columns | None:
    """Parse with numpy, all records per step; None (not an error) whenever anything is unusual.

    Every check the exact parser makes is made here too, as whole-array comparisons; on any miss
    the caller reruns ``_parse_exact``, which either succeeds or names the damage.
    """
    end = len(data)
    flat = np.zeros(end + _VARINT_PAD_BYTES, np.uint8)
    flat[:end] = np.frombuffer(data, np.uint8)
    chain = _record_starts(data, flat, count)
    if chain is None:
        return None
    starts, body_starts = chain
    record_ends = np.empty(count, np.int64)
    record_ends[:-1] = starts[1:]
    record_ends[-1] = end
    position = body_starts + 1  # + 1: attributes, unused in v2
    # Varints advance at most 9 + 5 + 5 bytes past a record's end before the first check: the
    # zero pad after the block absorbs those gathers. Key and value lengths can jump anywhere,
    # so positions are checked after each.
    decoded = _varints_at(flat, position, MAX_VARLONG_BYTES - 1)  # a 10th byte needs exact care
    if decoded is None:
        return None
    timestamp_deltas, position = decoded[0], position + decoded[1]
    decoded = _varints_at(flat, position, MAX_VARINT_BYTES)
    if decoded is None:
        return None
    offset_deltas, position = decoded[0], position + decoded[1]
    lengths_starts: list[Int64Array] = []
    for _field in ("key", "value"):
        decoded = _varints_at(flat, position, MAX_VARINT_BYTES)
        if decoded is None or decoded[0].min() < -1:
            return None
        position = position + decoded[1]
        lengths_starts += (decoded[0], position)
        position = position + np.maximum(decoded[0], 0)
        if (position > record_ends).any():
            return None
    key_lengths, key_starts, value_lengths, value_starts = lengths_starts
    decoded = _varints_at(flat, position, MAX_VARINT_BYTES)
    if decoded is None:
        return None
    header_counts, position = decoded[0], position + decoded[1]
    headers: list[Headers] | None = None
    if header_counts.any():
        if header_counts.min() < 0:
            return None
        headers = [_NO_RECORD_HEADERS] * count
        for index in np.flatnonzero(header_counts).tolist():
            parsed = _parse_headers(
                data, int(position[index]), int(record_ends[index]), int(header_counts[index])
            )
            if parsed is None:
                return None
            headers[index] = parsed
        position = np.where(header_counts != 0, record_ends, position)
    if not np.array_equal(position, record_ends):
        return None
    return _Columns(
        offset_deltas, timestamp_deltas, key_starts, key_lengths, value_starts, value_lengths, headers
    )


def _offset_column(first: int, end: int, width: int, byte_index: int) -> bytes:
    """Byte ``byte_index`` of the ``width``-byte varints of offset deltas first..end-1, one per record."""
    key = (first, end, width, byte_index)
    column = _OFFSET_COLUMNS.get(key)
    if column is None:
        byte = ((np.arange(first, end, dtype=np.int64) << 1) >> (7 * byte_index)) & 0x7F
        if byte_index < width - 1:
            byte |= 0x80
        column = byte.astype(np.uint8).tobytes()
        if len(_OFFSET_COLUMNS) >= 256:
            _OFFSET_COLUMNS.clear()  # bounded; atomic
        _OFFSET_COLUMNS[key] = column
    return column


_OFFSET_COLUMNS: dict[tuple[int, int, int, int], bytes] = {}


def _parse_uniform(data: bytes, count: int) -> _Columns | None:
    """Parse a batch whose records all share record 0's layout, checking whole byte columns at once.

    The usual batch (same-size values, same key length, one timestamp, no headers, offset deltas
    0..n-1, as ``encode_values`` and most producers write it) is a few runs of equal-size records: the
    size changes only where the offset-delta varint widens (at 64, 8192, 2**20, ...). Within a run,
    byte c of every record is ``data[start + c :: record_bytes]``, one C-level slice, compared with
    what it must be: record 0's byte for every field but the offset delta, the expected varint byte
    for that, nothing for key and value bytes. If every column matches, each record parses exactly as
    record 0 does, so the result equals ``_parse_exact``'s. None at the first difference.
    """
    end = len(data)
    try:  # record 0, exactly
        body_bytes, position = _read_varint(data, 0, end, MAX_VARINT_BYTES, "record length")
        attributes_at = position
        timestamp_delta, position = _read_varint(data, position + 1, end, MAX_VARLONG_BYTES, "timestamp")
        timestamp_bytes = data[attributes_at + 1 : position]
        if data[position] != 0:  # offset delta 0, one byte
            return None
        tail_at = position + 1
        key_length, position = _read_varint(data, tail_at, end, MAX_VARINT_BYTES, "key length")
        key_length_bytes = data[tail_at:position]
        value_length_at = position + max(key_length, 0)
        value_length, position = _read_varint(data, value_length_at, end, MAX_VARINT_BYTES, "value length")
        value_length_bytes = data[value_length_at:position]
    except (CorruptRecordError, IndexError):
        return None
    if (
        key_length < -1
        or value_length < -1
        or attributes_at + body_bytes != position + max(value_length, 0) + 1
    ):
        return None
    # Record layout relative to its offset-delta varint (width w): [offset w][key length][key]
    # [value length][value][headers count 0]; before it: [length][attributes][timestamp delta].
    key_at = len(key_length_bytes)
    value_length_rel = key_at + max(key_length, 0)
    value_at = value_length_rel + len(value_length_bytes)
    constant_after: list[tuple[int, int]] = [(i, b) for i, b in enumerate(key_length_bytes)]
    constant_after += [(value_length_rel + i, b) for i, b in enumerate(value_length_bytes)]
    constant_after.append((value_at + max(value_length, 0), 0))  # headers count
    attributes = data[attributes_at]
    run_starts, run_counts, run_bytes, run_value_at, run_key_at = [], [], [], [], []
    first, position, width = 0, 0, 1
    while first < count:
        run_end = min(count, 1 << (7 * width - 1))  # zigzag(i) fits in `width` bytes below this
        run_count = run_end - first
        length_bytes = zigzag_varint(body_bytes + width - 1)
        offset_at = len(length_bytes) + 1 + len(timestamp_bytes)
        record_bytes = offset_at + width + value_at + max(value_length, 0) + 1
        stop = position + run_count * record_bytes
        if stop > end:
            return None
        constant = [(i, b) for i, b in enumerate(length_bytes)] + [(len(length_bytes), attributes)]
        constant += [(len(length_bytes) + 1 + i, b) for i, b in enumerate(timestamp_bytes)]
        constant += [(offset_at + width + rel, b) for rel, b in constant_after]
        for column, byte in constant:
            if data[position + column : stop : record_bytes] != _REPEATED[byte] * run_count:
                return None
        for byte_index in range(width):
            column_at = position + offset_at + byte_index
            if data[column_at:stop:record_bytes] != _offset_column(first, run_end, width, byte_index):
                return None
        run_starts.append(position)
        run_counts.append(run_count)
        run_bytes.append(record_bytes)
        run_key_at.append(offset_at + width + key_at)
        run_value_at.append(offset_at + width + value_at)
        first, position, width = run_end, stop, width + 1
    if position != end:
        return None
    record_starts = np.concatenate(
        [
            np.arange(s, s + n * r, r, dtype=np.int64)
            for s, n, r in zip(run_starts, run_counts, run_bytes, strict=True)
        ]
    )
    key_shift = np.repeat(np.array(run_key_at, np.int64), run_counts)
    value_shift = np.repeat(np.array(run_value_at, np.int64), run_counts)
    return _Columns(
        offset_deltas=np.arange(count, dtype=np.int64),
        timestamp_deltas_ms=np.full(count, timestamp_delta, np.int64),
        key_starts=record_starts + key_shift,
        key_lengths=np.full(count, key_length, np.int64),
        value_starts=record_starts + value_shift,
        value_lengths=np.full(count, value_length, np.int64),
        headers=None,
    )


_REPEATED = [bytes([byte]) for byte in range(256)]


def _parse_headers(data: bytes, position: int, end: int, header_count: int) -> Headers | None:
    """One record's headers filling ``data[position:end]`` exactly, or None (the exact parser explains)."""
    try:
        headers = []
        for _ in range(header_count):
            length, position = _read_varint(data, position, end, MAX_VARINT_BYTES, "header key length")
            if length < 0 or length > end - position:
                return None
            header_key = data[position : position + length].decode("utf-8")
            position += length
            length, position = _read_varint(data, position, end, MAX_VARINT_BYTES, "header value length")
            if length < -1 or length > end - position:
                return None
            headers.append((header_key, None if length < 0 else data[position : position + length]))
            position += max(length, 0)
    except (CorruptRecordError, UnicodeDecodeError):
        return None
    return tuple(headers) if position == end else None


def _records_block(
    buf: bytes | bytearray | memoryview, header: BatchHeader, *, max_uncompressed_bytes: int
) -> bytes:
    """The batch's records block, uncompressed and bounded, with its count checked against its size."""
    block = memoryview(buf)[HEADER_BYTES : header.size_bytes]
    from shmbroker import codecs as _codecs  # at first use, as in _finish_batch

    data = _codecs.decompress(header.codec, block, max_uncompressed_bytes=max_uncompressed_bytes)
    if header.records_count > len(data) // MIN_RECORD_BYTES:
        raise CorruptRecordError(
            f"records_count {header.records_count} cannot fit in {len(data)} bytes of records"
        )
    return data


def decode_columnar(
    buf: bytes | bytearray | memoryview, *, max_uncompressed_bytes: int, verify_crc: bool = True
) -> ColumnarRecords:
    """Decode one whole batch (exactly ``buf``) into columns; see ``ColumnarRecords``.

    Raises CorruptRecordError (bad CRC, length, varint, count), RecordTooLargeError (the records
    would exceed ``max_uncompressed_bytes``), UnsupportedCompressionTypeError (codec 5-7). All size
    checks come before any allocation proportional to what the batch claims.
    """
    header = check_batch(buf, max_batch_bytes=2**31 - 1) if verify_crc else _check_whole(buf)
    data = _records_block(buf, header, max_uncompressed_bytes=max_uncompressed_bytes)
    count = header.records_count
    # Cheapest first: uniform runs (a few C-level slices), then numpy over all records (its fixed
    # cost per call beats a Python loop from ~16 records on), then byte by byte (which names damage).
    columns = _parse_uniform(data, count) if count else None
    if columns is None and count >= _VECTORISE_FROM_RECORDS:
        columns = _parse_vectorised(data, count)
    if columns is None:
        columns = _parse_exact(data, count)
    if header.attributes & TIMESTAMP_TYPE_BIT:
        timestamps_ms = np.full(count, header.max_timestamp_ms, np.int64)
    else:
        timestamps_ms = columns.timestamp_deltas_ms + header.base_timestamp_ms
    return ColumnarRecords(
        header=header,
        offsets=columns.offset_deltas + header.base_offset,
        timestamps_ms=timestamps_ms,
        data=data,
        key_starts=columns.key_starts,
        key_lengths=columns.key_lengths,
        value_starts=columns.value_starts,
        value_lengths=columns.value_lengths,
        headers=columns.headers,
    )


def _check_whole(buf: bytes | bytearray | memoryview) -> BatchHeader:
    header = parse_batch_header(buf)
    check_header(header, max_batch_bytes=2**31 - 1)
    if header.size_bytes != len(buf):
        raise CorruptRecordError(f"batch_length says {header.size_bytes} bytes, buffer holds {len(buf)}")
    return header


def decode_batch(
    buf: bytes | bytearray | memoryview, *, max_uncompressed_bytes: int, verify_crc: bool = True
) -> list[Record]:
    """Decode one whole batch (exactly ``buf``) into Records; errors as ``decode_columnar``."""
    columns = decode_columnar(buf, max_uncompressed_bytes=max_uncompressed_bytes, verify_crc=verify_crc)
    return columns.records()


def iter_columnar(
    buf: bytes | bytearray | memoryview,
    *,
    max_uncompressed_bytes: int,
    verify_crc: bool = True,
    max_batch_bytes: int = 2**31 - 1,
) -> Iterator[ColumnarRecords]:
    """Each whole batch of a stream (a log read, a fetch reply) as columns; a short tail is skipped."""
    view = memoryview(buf)
    for position, header in iter_batches(view, verify_crc=verify_crc, max_batch_bytes=max_batch_bytes):
        yield decode_columnar(
            view[position : position + header.size_bytes],
            max_uncompressed_bytes=max_uncompressed_bytes,
            verify_crc=False,  # iter_batches checked it when asked
        )


def iter_records(
    buf: bytes | bytearray | memoryview,
    *,
    max_uncompressed_bytes: int,
    verify_crc: bool = True,
    max_batch_bytes: int = 2**31 - 1,
) -> Iterator[Record]:
    """Every record of every whole batch in a stream, in order; a short tail is skipped."""
    batches = iter_columnar(
        buf,
        max_uncompressed_bytes=max_uncompressed_bytes,
        verify_crc=verify_crc,
        max_batch_bytes=max_batch_bytes,
    )
    for columns in batches:
        yield from columns.records()


def decode_batches(
    buf: bytes | bytearray | memoryview,
    *,
    max_uncompressed_bytes: int,
    verify_crc: bool = True,
    max_batch_bytes: int = 2**31 - 1,
) -> list[Record]:
    """Every record of every whole batch in a stream (concatenated batches, maybe a short tail)."""
    return list(
        iter_records(
            buf,
            max_uncompressed_bytes=max_uncompressed_bytes,
            verify_crc=verify_crc,
            max_batch_bytes=max_batch_bytes,
        )
    )
