"""Committed consumer-group offsets on disk: one append-only file, one record per commit. Little-endian.

    file    | magic b"SHMBOFF1" | record | record | ...
    record  offset size field
                 0    4 body_bytes
                 4    4 crc: CRC-32C of the body
                 8      body: | kind u8 (1 commit, 2 group tombstone) | group_bytes u16 | group UTF-8 |
                              | entries u32 | entry ... |
    entry   | topic_bytes u16 | topic UTF-8 | partition i32 | offset i64 | commit_ms i64 |
            | metadata_bytes u32 | metadata UTF-8 |

A whole commit (every partition of one OffsetCommit) is one record, written with one ``write`` and
made durable with one ``fdatasync`` before ``commit`` returns: an acknowledged commit survives
SIGKILL and power loss, and a torn commit is lost whole, never half applied. Opening the store scans
the file, keeps the last value per (group, topic, partition), and cuts the file at the first record
whose length or CRC is bad (a torn tail; everything after it is dropped, as the partition log does).
When the file holds far more entries than live keys it is compacted: rewritten to a temp file,
fsync'd, renamed over, and the directory fsync'd, so a crash leaves the old or the new file whole.

Owned by the group coordinator process; one instance per file; not thread-safe.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import crc32c

from shmbroker.disk.files import fsync_dir
from shmbroker.errors import ClosedError, CorruptRecordError, KafkaStorageError

MAGIC = b"SHMBOFF1"
RECORD_HEADER = struct.Struct("<II")  # body_bytes, crc
BODY_HEAD = struct.Struct("<BH")  # kind, group_bytes
COUNT = struct.Struct("<I")
TOPIC_LEN = struct.Struct("<H")
ENTRY = struct.Struct("<iqqI")  # partition, offset, commit_ms, metadata_bytes
KIND_COMMIT, KIND_TOMBSTONE = 1, 2
MAX_RECORD_BYTES = 64 << 20  # a longer length field is corruption, not a record

TopicPartition = tuple[str, int]


class StoredOffset(NamedTuple):
    offset: int
    metadata: str
    commit_ms: int


Offsets = dict[str, dict[TopicPartition, StoredOffset]]


def encode_record(kind: int, group: str, entries: dict[TopicPartition, StoredOffset]) -> bytes:
    """One record, header included. ValueError if a field does not fit its width."""
    group_raw = group.encode()
    if len(group_raw) > 0xFFFF:
        raise ValueError(f"group id of {len(group_raw)} bytes; at most {0xFFFF}")
    parts = [BODY_HEAD.pack(kind, len(group_raw)), group_raw, COUNT.pack(len(entries))]
    for (topic, partition), value in sorted(entries.items()):
        topic_raw, meta_raw = topic.encode(), value.metadata.encode()
        if len(topic_raw) > 0xFFFF:
            raise ValueError(f"topic of {len(topic_raw)} bytes; at most {0xFFFF}")
        parts += [TOPIC_LEN.pack(len(topic_raw)), topic_raw]
        parts += [ENTRY.pack(partition, value.offset, value.commit_ms, len(meta_raw)), meta_raw]
    body = b"".join(parts)
    if len(body) > MAX_RECORD_BYTES:
        raise ValueError(f"commit record of {len(body)} bytes; at most {MAX_RECORD_BYTES}")
    return RECORD_HEADER.pack(len(body), crc32c.crc32c(body)) + body


def decode_body(body: bytes) -> tuple[int, str, dict[TopicPartition, StoredOffset]]:
    """(kind, group, entries); CorruptRecordError if the body (whose CRC matched) does not parse."""
    try:
        kind, group_len = BODY_HEAD.unpack_from(body, 0)
        pos = BODY_HEAD.size
        group = body[pos : pos + group_len].decode()
        pos += group_len
        (count,) = COUNT.unpack_from(body, pos)
        pos += COUNT.size
        entries: dict[TopicPartition, StoredOffset] = {}
        for _ in range(count):
            (topic_len,) = TOPIC_LEN.unpack_from(body, pos)
            topic = body[pos + TOPIC_LEN.size : pos + TOPIC_LEN.size + topic_len].decode()
            pos += TOPIC_LEN.size + topic_len
            partition, offset, commit_ms, meta_len = ENTRY.unpack_from(body, pos)
            pos += ENTRY.size
            metadata = body[pos : pos + meta_len].decode()
            pos += meta_len
            entries[(topic, partition)] = StoredOffset(offset, metadata, commit_ms)
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptRecordError(f"offset record does not parse: {exc}") from exc
    if pos != len(body) or kind not in (KIND_COMMIT, KIND_TOMBSTONE):
        raise CorruptRecordError(f"offset record of kind {kind} ends at {pos} of {len(body)} bytes")
    return kind, group, entries


def scan(data: bytes) -> tuple[Offsets, int, int]:
    """(live offsets, valid prefix length in bytes, entries seen). Stops at the first bad record."""
    offsets: Offsets = {}
    position, entries_seen = len(MAGIC), 0
    while position + RECORD_HEADER.size <= len(data):
        body_bytes, crc = RECORD_HEADER.unpack_from(data, position)
        end = position + RECORD_HEADER.size + body_bytes
        if body_bytes > MAX_RECORD_BYTES or end > len(data):
            break
        body = data[position + RECORD_HEADER.size : end]
        if crc32c.crc32c(body) != crc:
            break
        try:
            kind, group, entries = decode_body(body)
        except CorruptRecordError:
            break
        if kind == KIND_TOMBSTONE:
            offsets.pop(group, None)
        else:
            offsets.setdefault(group, {}).update(entries)
        entries_seen += max(1, len(entries))
        position = end
    return offsets, position, entries_seen


def _stored(value: tuple[Any, ...], commit_ms: int) -> StoredOffset:
    if len(value) == 3:
        return StoredOffset(int(value[0]), str(value[1]), int(value[2]))
    return StoredOffset(int(value[0]), str(value[1]), commit_ms)


class OffsetStore:
    """The committed offsets of every group, durable once ``commit`` returns.

    ``compact_min_garbage`` is how many dead entries (overwritten or deleted) the file must hold,
    and at least as many as live ones, before opening rewrites it.
    """

    def __init__(self, path: str | os.PathLike[str], *, compact_min_garbage: int = 10_000) -> None:
        self.path = Path(path)
        self.records_appended = 0
        self.bytes_cut = 0  # torn or corrupt tail cut at open
        self.compacted = False
        existed = self.path.exists()
        data = self.path.read_bytes() if existed else b""
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise CorruptRecordError(f"{self.path} is not an offset store (magic {data[:8]!r})")
        self._offsets, valid_bytes, entries_seen = scan(data) if len(data) >= len(MAGIC) else ({}, 0, 0)
        live = sum(len(v) for v in self._offsets.values())
        garbage = entries_seen - live
        if valid_bytes == 0 or (garbage >= compact_min_garbage and garbage >= live):
            self._rewrite(self._offsets)  # also creates a missing or torn-in-the-magic file
            self.compacted = valid_bytes > 0
            self.bytes_cut = max(0, len(data) - valid_bytes) if valid_bytes else 0
        elif valid_bytes < len(data):
            self.bytes_cut = len(data) - valid_bytes
            with open(self.path, "r+b") as f:
                f.truncate(valid_bytes)
                os.fsync(f.fileno())
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def load(self) -> Offsets:
        """Every group's live offsets as found at open: group -> {(topic, partition): StoredOffset}."""
        return {group: dict(entries) for group, entries in self._offsets.items()}

    def commit(
        self, group: str, offsets: dict[TopicPartition, tuple[int, str]], *, commit_ms: int = 0
    ) -> None:
        """Append one record for the whole commit and fdatasync it. KafkaStorageError if the disk fails."""
        entries = {
            (str(t), int(p)): StoredOffset(int(o), str(m), commit_ms) for (t, p), (o, m) in offsets.items()
        }
        self._append(encode_record(KIND_COMMIT, group, entries))

    def delete_group(self, group: str) -> None:
        """Append a tombstone: the group's offsets are gone once this returns."""
        self._append(encode_record(KIND_TOMBSTONE, group, {}))

    def compact(
        self, live: Mapping[str, Mapping[TopicPartition, tuple[Any, ...]]], *, commit_ms: int = 0
    ) -> None:
        """Rewrite the file to hold exactly ``live``, crash-safely. ``live`` is the coordinator's
        table (``GroupCoordinatorState.all_offsets()``: (offset, metadata) values, stamped with
        ``commit_ms``) or a ``load()`` result."""
        self._check_open()
        table = {group: {tp: _stored(v, commit_ms) for tp, v in e.items()} for group, e in live.items()}
        self.close()
        self._rewrite(table)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _check_open(self) -> int:
        if self._fd is None:
            raise ClosedError(f"offset store {self.path} is closed")
        return self._fd

    def _append(self, record: bytes) -> None:
        fd = self._check_open()
        try:
            view = memoryview(record)
            while view:  # a short write is legal for regular files on a full disk; keep going
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        except OSError as exc:
            # The file may now end in a partial record; refuse further appends so no acked commit
            # lands after it (reopening cuts the partial record and continues).
            self.close()
            raise KafkaStorageError(f"offset store {self.path}: {exc}") from exc
        self.records_appended += 1

    def _rewrite(self, live: Offsets) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            for group in sorted(live):
                if live[group]:
                    f.write(encode_record(KIND_COMMIT, group, dict(live[group])))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
