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
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum
from typing import NamedTuple

import crc32c as _crc32c

from shmbroker.errors import CorruptRecordError, RecordTooLargeError


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
        return Codec(self.attributes & CODEC_MASK)


BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")  # one code per BatchHeader field, in order
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
    return BatchHeader._make(BATCH_HEADER.unpack_from(buf, position))


def check_header(header: BatchHeader, *, max_batch_bytes: int) -> None:
    """Check what the CRC does not cover and what must hold before any allocation: magic, lengths."""
    if header.magic != MAGIC:
        raise CorruptRecordError(f"batch magic {header.magic}; only magic {MAGIC} (RecordBatch v2) is served")
    if header.batch_length < MIN_BATCH_LENGTH:
        raise CorruptRecordError(f"batch_length {header.batch_length} is below the minimum {MIN_BATCH_LENGTH}")
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
    if header.codec == Codec.NONE and header.records_count > (header.batch_length - MIN_BATCH_LENGTH):
        raise CorruptRecordError(
            f"records_count {header.records_count} cannot fit in {header.batch_length - MIN_BATCH_LENGTH} bytes"
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
    at the first batch whose header or CRC is bad. Recovery uses ``scan_valid_prefix`` instead.
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


def scan_valid_prefix(
    buf: bytes | bytearray | memoryview,
    *,
    position: int = 0,
    max_batch_bytes: int = 2**31 - 1,
    expect_offset: int | None = None,
) -> tuple[int, list[tuple[int, BatchHeader]]]:
    """Scan batches checking length, magic, CRC (and offset order); stop at the first bad or short one.

    Returns (end of the valid prefix, [(position, header), ...]). This is recovery's core: everything
    from the returned position on is to be cut.
    """
    view = memoryview(buf)
    end = len(view)
    found: list[tuple[int, BatchHeader]] = []
    while end - position >= HEADER_BYTES:
        header = BatchHeader._make(BATCH_HEADER.unpack_from(view, position))
        try:
            check_header(header, max_batch_bytes=max_batch_bytes)
        except (CorruptRecordError, RecordTooLargeError):
            break
        batch_end = position + header.size_bytes
        if batch_end > end or crc32c(view[position + CRC_START : batch_end]) != header.crc:
            break
        if expect_offset is not None:
            if header.base_offset != expect_offset:  # offsets are dense: a gap is damage
                break
            expect_offset = header.next_offset
        found.append((position, header))
        position = batch_end
    return position, found
