"""Compression of a RecordBatch's records block (attribute bits 0-2), bounded on the way in.

    id  codec   written as                                   read as
     0  none    -                                            -
     1  gzip    one gzip member (zlib, level 6 = Kafka's)    gzip members (or a zlib stream)
     2  snappy  xerial framing, 32 KiB blocks (Java/Python)  xerial framing or raw snappy (librdkafka)
     3  lz4     standard LZ4 frame, independent blocks       LZ4 frame
     4  zstd    one zstd frame, level 3 (Kafka's default)    zstd frames

Every decompressor stops once it has produced ``max_uncompressed_bytes + 1`` bytes, so a small
compression bomb costs at most that much memory and time: too large -> RecordTooLargeError, garbage or
a truncated stream -> CorruptRecordError, ids 5-7 -> UnsupportedCompressionTypeError. Codec ids are
plain ints here (``records.Codec`` is an IntEnum over them) so this module imports only ``errors``.
Pure functions; safe from any thread or process.
"""

from __future__ import annotations

import struct
import zlib

import lz4.frame
import snappy
import zstandard

from shmbroker.errors import CorruptRecordError, RecordTooLargeError, UnsupportedCompressionTypeError

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODEC_NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}

# xerial snappy framing: magic, then version and min-compatible version (both 1), then blocks of
# [int32 BE compressed length][raw snappy]. The Java client and kafka-python both write this.
XERIAL_MAGIC = b"\x82SNAPPY\x00"
XERIAL_HEADER = struct.Struct(">8sii")
XERIAL_BLOCK_LENGTH = struct.Struct(">i")
XERIAL_BLOCK_BYTES = 32 * 1024  # xerial's default block, as kafka-python writes it
GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer
GZIP_OR_ZLIB_WBITS = 32 + zlib.MAX_WBITS  # read either header
GZIP_LEVEL = 6  # Kafka's compression.gzip.level default (-1 = zlib's 6)
ZSTD_LEVEL = 3  # Kafka's compression.zstd.level default
# zstd's decoder allocates the frame's declared window: cap it. 8 MiB covers level <= 19 without
# long mode; a batch allowed to be larger than that may use a window up to its own size.
ZSTD_MIN_WINDOW_BYTES = 1 << 23
ZSTD_MAX_WINDOW_BYTES = 1 << 27

Buffer = bytes | bytearray | memoryview


def compress(codec: int, data: Buffer, *, level: int | None = None) -> bytes:
    """The records block ``data`` compressed with ``codec`` as Kafka clients write it."""
    if codec == GZIP:
        compressor = zlib.compressobj(GZIP_LEVEL if level is None else level, zlib.DEFLATED, GZIP_WBITS)
        return compressor.compress(data) + compressor.flush()
    if codec == SNAPPY:
        return _xerial_compress(data)
    if codec == LZ4:
        # block_linked=False as kafka-python writes it (Java's KafkaLZ4BlockOutputStream: independent blocks)
        return bytes(lz4.frame.compress(data, compression_level=level or 0, block_linked=False))
    if codec == ZSTD:
        return bytes(zstandard.ZstdCompressor(level=ZSTD_LEVEL if level is None else level).compress(data))
    if codec == NONE:
        return bytes(data)
    raise UnsupportedCompressionTypeError(f"compression codec {codec} is not one of {sorted(CODEC_NAMES)}")


def decompress(codec: int, data: Buffer, *, max_uncompressed_bytes: int) -> bytes:
    """``data`` decompressed, refusing to produce more than ``max_uncompressed_bytes``."""
    if max_uncompressed_bytes < 0:
        raise ValueError(f"max_uncompressed_bytes {max_uncompressed_bytes} is negative")
    try:
        if codec == GZIP:
            return _gzip_decompress(data, max_uncompressed_bytes)
        if codec == SNAPPY:
            return _snappy_decompress(data, max_uncompressed_bytes)
        if codec == LZ4:
            return _lz4_decompress(data, max_uncompressed_bytes)
        if codec == ZSTD:
            return _zstd_decompress(data, max_uncompressed_bytes)
    except (zlib.error, RuntimeError, zstandard.ZstdError, snappy.UncompressError, ValueError) as exc:
        # lz4.frame raises RuntimeError on a bad frame; python-snappy raises UncompressError
        raise CorruptRecordError(f"{CODEC_NAMES[codec]} records block does not decompress: {exc}") from exc
    if codec == NONE:
        _check_size(len(data), max_uncompressed_bytes, "none")
        return bytes(data)
    raise UnsupportedCompressionTypeError(f"compression codec {codec} is not one of {sorted(CODEC_NAMES)}")


def _too_large(max_uncompressed_bytes: int, codec_name: str) -> RecordTooLargeError:
    return RecordTooLargeError(
        f"{codec_name} records block inflates beyond {max_uncompressed_bytes} bytes; raise max.message.bytes"
    )


def _check_size(size_bytes: int, max_uncompressed_bytes: int, codec_name: str) -> None:
    if size_bytes > max_uncompressed_bytes:
        raise _too_large(max_uncompressed_bytes, codec_name)


def _gzip_decompress(data: Buffer, limit: int) -> bytes:
    """Decompress gzip members one after another (gzip allows concatenation), never past ``limit``."""
    out = bytearray()
    pending = bytes(data)
    while True:
        decompressor = zlib.decompressobj(GZIP_OR_ZLIB_WBITS)
        chunk = decompressor.decompress(pending, limit + 1 - len(out))
        out += chunk
        while not decompressor.eof and decompressor.unconsumed_tail and len(out) <= limit:
            out += decompressor.decompress(decompressor.unconsumed_tail, limit + 1 - len(out))
        _check_size(len(out), limit, "gzip")
        if not decompressor.eof:
            raise CorruptRecordError("gzip records block is truncated")
        pending = decompressor.unused_data
        if not pending:
            return bytes(out)


def _raw_snappy_length(block: Buffer) -> int:
    """The uncompressed length a raw snappy block declares: an unsigned little-endian varint (<= 5 bytes)."""
    result = shift = 0
    for index in range(min(5, len(block))):
        byte = block[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result
        shift += 7
    raise CorruptRecordError("raw snappy block has a bad length preamble")


def _snappy_decompress(data: Buffer, limit: int) -> bytes:
    """xerial-framed or raw snappy; each block's declared length is checked before it is inflated."""
    view = memoryview(data)
    if bytes(view[: len(XERIAL_MAGIC)]) != XERIAL_MAGIC:
        _check_size(_raw_snappy_length(view), limit, "snappy")
        return bytes(snappy.decompress(bytes(view)))
    if len(view) < XERIAL_HEADER.size:
        raise CorruptRecordError(f"xerial snappy header needs {XERIAL_HEADER.size} bytes, got {len(view)}")
    out = bytearray()
    position = XERIAL_HEADER.size
    while position < len(view):
        if len(view) - position < XERIAL_BLOCK_LENGTH.size:
            raise CorruptRecordError(f"xerial snappy block length cut at byte {position}")
        (block_bytes,) = XERIAL_BLOCK_LENGTH.unpack_from(view, position)
        position += XERIAL_BLOCK_LENGTH.size
        if block_bytes < 0 or block_bytes > len(view) - position:
            raise CorruptRecordError(
                f"xerial snappy block of {block_bytes} bytes at byte {position}; "
                f"{len(view) - position} remain"
            )
        block = view[position : position + block_bytes]
        _check_size(len(out) + _raw_snappy_length(block), limit, "snappy")
        out += snappy.decompress(bytes(block))
        position += block_bytes
    return bytes(out)


def _xerial_compress(data: Buffer) -> bytes:
    view = memoryview(data)
    parts = [XERIAL_HEADER.pack(XERIAL_MAGIC, 1, 1)]
    for start in range(0, len(view), XERIAL_BLOCK_BYTES):
        block = snappy.compress(bytes(view[start : start + XERIAL_BLOCK_BYTES]))
        parts += (XERIAL_BLOCK_LENGTH.pack(len(block)), block)
    return b"".join(parts)


def _lz4_decompress(data: Buffer, limit: int) -> bytes:
    decompressor = lz4.frame.LZ4FrameDecompressor()
    out = bytearray(decompressor.decompress(bytes(data), max_length=limit + 1))
    # With max_length the decompressor keeps what it has not consumed; drain it, still bounded.
    while not decompressor.eof and not decompressor.needs_input and len(out) <= limit:
        out += decompressor.decompress(b"", max_length=limit + 1 - len(out))
    _check_size(len(out), limit, "lz4")
    if not decompressor.eof:
        raise CorruptRecordError("lz4 records block is truncated")
    if decompressor.unused_data:
        raise CorruptRecordError(f"{len(decompressor.unused_data)} bytes after the lz4 frame")
    return bytes(out)


def _zstd_decompress(data: Buffer, limit: int) -> bytes:
    window_bytes = min(ZSTD_MAX_WINDOW_BYTES, max(ZSTD_MIN_WINDOW_BYTES, 1 << max(0, limit - 1).bit_length()))
    decompressor = zstandard.ZstdDecompressor(max_window_size=window_bytes)
    payload = bytes(data)
    out = bytearray()
    # read_to_iter streams output in bounded chunks and never trusts the declared content size (unlike
    # ZstdDecompressor.decompress, which allocates it up front).
    for chunk in decompressor.read_to_iter(payload, write_size=min(1 << 17, limit + 1)):
        out += chunk
        _check_size(len(out), limit, "zstd")
    # read_to_iter ends quietly at a truncated frame. When the frame declares its size, compare;
    # otherwise decode once more with a decompressobj, which reports eof (bounded: at most ``limit``).
    declared_bytes = zstandard.frame_content_size(payload)
    if declared_bytes >= 0:
        if declared_bytes != len(out):
            raise CorruptRecordError(f"zstd frame declares {declared_bytes} bytes, holds {len(out)}")
    else:
        checker = decompressor.decompressobj()
        checker.decompress(payload)
        if not checker.eof:
            raise CorruptRecordError("zstd records block is truncated")
    return bytes(out)
