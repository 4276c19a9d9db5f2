"""A partition log: an ordered run of segments with dense offsets, owned by one partition worker.

    <dir>/00000000000000000000.log .index .timeindex   sealed segments, oldest first
    <dir>/00000000000000001234.log .index .timeindex   the active segment: appends go here
    <dir>/recovery-point                               offset below which everything was fsynced
    <dir>/.clean_shutdown                              only between a clean close and the next open

Invariants: offsets are dense and increasing across segments (segment i+1 starts where i ends);
``log_start_offset`` is the first segment's base; ``log_end_offset`` is the next offset to assign.
An append that returned is in the page cache (``pwritev``), so it survives a kill of this process;
``flush()`` makes it survive a power cut. Bad input raises a typed error with nothing written.
The active segment's file runs ahead of its data: up to ``segment.RESERVE_AHEAD_BYTES`` of
fallocated zeros (all of ``segment_bytes`` with ``log.preallocate``), given back at a roll or a
close and cut by recovery after a crash; reads stop at the data.
Not thread-safe: one worker calls everything here. Other processes read via ``reader.LogReader``.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from shmbroker import records
from shmbroker.config import LogConfig
from shmbroker.disk import recovery, retention
from shmbroker.disk.epochs import EpochCache
from shmbroker.disk.files import (
    CLEAN_SHUTDOWN_FILE,
    fsync_dir,
    list_segment_bases,
    remove_if_exists,
    remove_strays,
    write_atomic,
)
from shmbroker.disk.segment import Segment
from shmbroker.errors import BrokerError, ClosedError, CorruptRecordError, OffsetOutOfRangeError
from shmbroker.records import LOG_OVERHEAD, BatchHeader

_NEW = tuple.__new__  # a NamedTuple from its fields in order, without _make or _replace (hot path)

# Recovery must not cut batches that were legal when written: max.message.bytes may have been
# lowered since. Garbage lengths cannot hurt, since a batch must also fit in the file.
RECOVERY_MAX_BATCH_BYTES = 2**31 - 1
# Decoding a batch to find one record's timestamp (ListOffsets) is bounded by this much memory.
MAX_UNCOMPRESSED_BYTES = 64 << 20


class AppendInfo(NamedTuple):
    base_offset: int
    last_offset: int
    position: int  # byte position of the batch in its segment's .log
    log_append_time_ms: int  # -1 unless log.message.timestamp.type=LogAppendTime
    records_count: int


class FileSlice(NamedTuple):
    """Whole batches of one segment file, ready for ``os.sendfile(sock, fd, position, size)``.

    ``fd`` belongs to the log and stays valid until retention or close removes the segment."""

    fd: int
    position: int
    size: int
    path: Path
    base_offset: int  # of the segment
    first_offset: int  # base offset of the first batch in the slice


@dataclass(frozen=True)
class LogStatistics:
    segments: int
    size_bytes: int
    log_start_offset: int
    log_end_offset: int
    recovery_point: int
    unflushed_messages: int
    active_segment_bytes: int
    bytes_cut_at_open: int
    recovered_at_open: bool


class Log:
    def __init__(
        self,
        directory: Path,
        config: LogConfig,
        segments: list[Segment],
        *,
        recovery_point: int,
        now_ms: int,
        bytes_cut: int,
        recovered: bool,
    ) -> None:
        self.directory, self.config = directory, config
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self.recovery_point = min(recovery_point, self.log_end_offset)
        self.bytes_cut_at_open, self.recovered_at_open = bytes_cut, recovered
        self._unflushed_messages = 0
        self._last_flush_ms = now_ms
        self._unflushed_segments: list[Segment] = []  # sealed since the last flush
        active = segments[-1]
        self._active_since_ms = active.first_timestamp_ms if not active.is_empty else None
        self._log_append_time = config.message_timestamp_type == "LogAppendTime"
        self.epochs = EpochCache(directory)
        self.epochs.truncate_from_end(self.log_end_offset + 1)  # recovery may have cut the tail
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def open(
        cls, directory: Path, config: LogConfig, *, now_ms: int | None = None, force_recovery: bool = False
    ) -> Log:
        """Open (creating if missing) and, unless the last close was clean, recover the log.

        ``force_recovery`` scans every segment from the first (``shmbroker recover-log``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        now_ms = _wall_ms() if now_ms is None else now_ms
        clean = remove_if_exists(directory / CLEAN_SHUTDOWN_FILE) and not force_recovery
        if clean:
            fsync_dir(directory)  # the marker is gone before anything else happens
        remove_strays(directory)
        segments = [cls._new_segment(directory, config, base) for base in list_segment_bases(directory)]
        recovery_point = 0 if force_recovery else recovery.read_recovery_point(directory)
        bytes_cut = 0
        if segments:
            bytes_cut = recovery.recover_segments(
                directory,
                segments,
                recovery_point=recovery_point,
                max_batch_bytes=RECOVERY_MAX_BATCH_BYTES,
                clean=clean,
            )
        else:
            segments.append(cls._new_segment(directory, config, 0))
            fsync_dir(directory)
        log = cls(
            directory,
            config,
            segments,
            recovery_point=recovery_point,
            now_ms=now_ms,
            bytes_cut=bytes_cut,
            recovered=not clean,
        )
        if config.preallocate:
            segments[-1].preallocate(config.segment_bytes)
        return log

    @staticmethod
    def _new_segment(directory: Path, config: LogConfig, base_offset: int) -> Segment:
        return Segment(
            directory,
            base_offset,
            index_interval_bytes=config.index_interval_bytes,
            index_max_entries=max(1, config.segment_index_bytes // 8),
            reserve_limit_bytes=config.segment_bytes,
        )

    def close(self, clean: bool = True) -> None:
        """Flush and close; with ``clean`` leave the marker that lets the next open skip recovery."""
        if self._closed:
            return
        if clean:
            self._segments[-1].seal()  # trims a preallocated tail, so a clean open trusts sizes
            self.flush()
        elif not self.config.preallocate:
            self._give_back_reserve()
        for segment in self._segments:
            segment.close()
        self._closed = True
        if clean:
            write_atomic(self.directory / CLEAN_SHUTDOWN_FILE, b"")

    def _give_back_reserve(self) -> None:
        """Cut the active segment's append reserve (segment.RESERVE_AHEAD_BYTES) at an unclean
        close too: it is this process's write-speed detail, not data, and no one else should see it.
        (log.preallocate's full length stays until a seal, as in Kafka; recovery cuts either.)"""
        try:
            self._segments[-1].trim()
        except OSError:
            pass  # closing after an I/O error: recovery cuts the zero tail at the next open

    # ---- offsets -------------------------------------------------------------------------------
    @property
    def log_start_offset(self) -> int:
        return self._segments[0].base_offset

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset

    @property
    def segments(self) -> list[tuple[int, Path]]:
        return [(s.base_offset, s.path) for s in self._segments]

    # ---- appending -----------------------------------------------------------------------------
    def append(self, batch: bytearray | memoryview, *, leader_epoch: int = -1, now_ms: int) -> AppendInfo:
        """Check, stamp (in place) and append one batch; see ``append_many``."""
        return self.append_many([batch], leader_epoch=leader_epoch, now_ms=now_ms)[0]

    def append_many(
        self, batches: Sequence[bytearray | memoryview], *, leader_epoch: int = -1, now_ms: int
    ) -> list[AppendInfo]:
        """Append whole batches with one ``pwritev`` per segment touched (the worker's fast path).

        Every batch is checked first (length, magic, size <= max.message.bytes, CRC): if any is
        bad, its typed error is raised and nothing is stamped or written; the caller can then
        append one by one to refuse only the bad batch. Batches must be writable: base offset,
        leader epoch (and LogAppendTime) are stamped into the caller's buffers.
        """
        if self._closed:
            raise ClosedError(f"log {self.directory} is closed")
        views = [memoryview(b) for b in batches]
        max_bytes = self.config.max_message_bytes
        headers = []
        for i, view in enumerate(views):
            if view.readonly:
                raise TypeError(f"batch {i} is read-only; the log stamps offsets in place")
            headers.append(records.check_batch(view, max_batch_bytes=max_bytes))
        if leader_epoch > self.epochs.latest_epoch:
            self.epochs.assign(leader_epoch, self.log_end_offset)
        return self._append_checked(views, headers, leader_epoch=leader_epoch, now_ms=now_ms, stamp=True)[0]

    def append_shared(
        self,
        batches: Sequence[memoryview],
        headers: Sequence[BatchHeader],
        *,
        leader_epoch: int = -1,
        now_ms: int,
    ) -> tuple[list[AppendInfo], BrokerError | None]:
        """Append batches straight from memory another process may still write to (a producer's lane),
        without a private copy: ``headers[i]`` is ``batches[i]``'s header as the caller parsed and
        checked it (producer id, sequence).

        Each header is checked (length, magic, size) before anything is written; the bytes go to the
        file from the views, stamped there, and are then read back (``Segment.append_verified``): a
        stored batch that differs from its checked header or fails its CRC is cut. So what a consumer
        or a recovery sees is exactly what passed the checks, whatever the writer did meanwhile.
        Returns the infos of the batches appended, always a prefix of ``batches``, and the error of the
        first one not appended (None when all were); the batches after it are not appended either.
        With LogAppendTime the CRC is recomputed over the batch, so there each is copied and checked
        whole first (``append_many``'s path).
        """
        if self._closed:
            raise ClosedError(f"log {self.directory} is closed")
        max_bytes = self.config.max_message_bytes
        views: list[memoryview] = []
        checked: list[BatchHeader] = []
        error: BrokerError | None = None
        for i, (batch, header) in enumerate(zip(batches, headers, strict=True)):
            if batch.readonly:
                raise TypeError(f"batch {i} is read-only; the log stamps offsets in place")
            try:
                view = batch
                if self._log_append_time:  # set_log_append_time re-CRCs: it must see settled bytes
                    view = memoryview(bytearray(batch))
                    found = records.check_batch(view, max_batch_bytes=max_bytes)
                    if found != header:
                        raise CorruptRecordError(f"batch changed after its checks: {found}, checked {header}")
                records.check_header(header, max_batch_bytes=max_bytes)
                if header.size_bytes != len(view):
                    raise CorruptRecordError(
                        f"batch_length says {header.size_bytes} bytes, buffer holds {len(view)}"
                    )
            except BrokerError as exc:
                error = exc
                break
            views.append(view)
            checked.append(header)
        if not views:
            return [], error
        if leader_epoch > self.epochs.latest_epoch:
            self.epochs.assign(leader_epoch, self.log_end_offset)
        verify = not self._log_append_time
        done = self._append_in_active(views, checked, leader_epoch, now_ms) if verify else None
        infos, stored_error = done or self._append_checked(
            views, checked, leader_epoch=leader_epoch, now_ms=now_ms, stamp=True, verify=verify
        )
        return infos, stored_error or error

    def _append_in_active(
        self, views: list[memoryview], headers: list[BatchHeader], leader_epoch: int, now_ms: int
    ) -> tuple[list[AppendInfo], CorruptRecordError | None] | None:
        """``append_shared``'s usual case in one pass: every batch fits the active segment, which is not
        due to roll, so the outcome is ``_append_checked``'s (verify=True) without its per-batch roll
        decisions. None, having done nothing, when a roll might be due: then that path decides.
        With ``Segment._commit``'s one-loop indexing, a one-batch append (a latency run's turn) went
        from ~10.4 to ~9.2 us (in-process, p10)."""
        active = self._segments[-1]
        since_ms = self._active_since_ms
        if since_ms is not None and now_ms - since_ms >= self.config.roll_ms and not active.is_empty:
            return None
        offset = active.next_offset
        total_bytes = 0
        last_offset = offset - 1
        for header in headers:
            total_bytes += header[1]  # batch_length
            last_offset += header[6] + 1  # last_offset_delta
        total_bytes += LOG_OVERHEAD * len(headers)
        if not active.can_take(total_bytes, last_offset, self.config.segment_bytes, alone=False):
            return None
        stamped: list[BatchHeader] = []
        for view, header in zip(views, headers, strict=True):
            records.stamp(view, base_offset=offset, leader_epoch=leader_epoch)
            stamped.append(_NEW(BatchHeader, (offset, header[1], leader_epoch, *header[3:])))
            offset += header[6] + 1
        positions, error = active.append_verified(views, stamped, total_bytes)
        if since_ms is None and positions:
            self._active_since_ms = now_ms
        infos = [
            _NEW(AppendInfo, (h[0], h[0] + h[6], p, -1, h[12]))  # base, last, position, time, count
            for p, h in zip(positions, stamped, strict=False)
        ]
        return self._appended(infos, error, now_ms)

    def append_as_follower(self, batches: Sequence[memoryview], *, now_ms: int) -> list[BatchHeader]:
        """Append a leader's batches as they are: its offsets and epochs, nothing stamped.

        Every batch is checked (length, magic, CRC) and must start exactly at the log end, so a
        gap, an overlap or a torn batch from the link is refused whole (CorruptRecordError) before
        any byte is written. Returns the batches' headers.
        """
        if self._closed:
            raise ClosedError(f"log {self.directory} is closed")
        max_bytes = self.config.max_message_bytes
        headers = []
        expected = self.log_end_offset
        for view in batches:
            header = records.check_batch(view, max_batch_bytes=max_bytes)
            if header.base_offset != expected:
                raise CorruptRecordError(
                    f"replicated batch starts at offset {header.base_offset}; the log ends at {expected}"
                )
            headers.append(header)
            expected = header.next_offset
        for header in headers:
            if header.partition_leader_epoch > self.epochs.latest_epoch:
                self.epochs.assign(header.partition_leader_epoch, header.base_offset)
        self._append_checked(list(batches), headers, leader_epoch=-1, now_ms=now_ms, stamp=False)
        return headers

    def _append_checked(
        self,
        views: list[memoryview],
        headers: list[BatchHeader],
        *,
        leader_epoch: int,
        now_ms: int,
        stamp: bool,
        verify: bool = False,
    ) -> tuple[list[AppendInfo], CorruptRecordError | None]:
        """Stamp (if asked) and write checked batches, a pwritev per segment; with ``verify``, read each
        segment's share back (Segment.append_verified) and stop at the first bad stored batch: the
        infos are then a prefix, and the error says why the next batch was cut."""
        segment_bytes = self.config.segment_bytes
        infos: list[AppendInfo] = []
        group_views: list[memoryview] = []
        group_headers: list[BatchHeader] = []
        append_time = now_ms if self._log_append_time and stamp else -1
        offset = self.log_end_offset
        group_bytes = 0
        for view, header in zip(views, headers, strict=True):
            if stamp:
                records.stamp(view, base_offset=offset, leader_epoch=leader_epoch)
                # header._replace(base_offset=offset, partition_leader_epoch=leader_epoch), built directly
                header = _NEW(BatchHeader, (offset, header[1], leader_epoch, *header[3:]))
                if self._log_append_time:
                    records.set_log_append_time(view, now_ms)
                    header = header._replace(max_timestamp_ms=now_ms)
            active = self._segments[-1]
            size_bytes = header.size_bytes
            pending = group_bytes + size_bytes
            if group_headers and not active.can_take(pending, header.last_offset, segment_bytes, alone=False):
                written, error = self._write(group_views, group_headers, append_time, now_ms, verify)
                infos.extend(written)
                if error is not None:
                    return self._appended(infos, error, now_ms)
                group_views, group_headers, group_bytes = [], [], 0
                self.roll(now_ms)
            elif not group_headers and self._should_roll(header, now_ms):
                self.roll(now_ms)
            group_views.append(view)
            group_headers.append(header)
            group_bytes += size_bytes
            offset = header.next_offset
        written, error = self._write(group_views, group_headers, append_time, now_ms, verify)
        infos.extend(written)
        return self._appended(infos, error, now_ms)

    def _appended(
        self, infos: list[AppendInfo], error: CorruptRecordError | None, now_ms: int
    ) -> tuple[list[AppendInfo], CorruptRecordError | None]:
        for info in infos:
            self._unflushed_messages += info.records_count
        self.maybe_flush(now_ms)
        return infos, error

    def _should_roll(self, header: BatchHeader, now_ms: int) -> bool:
        """Before the first batch of a write: is the active segment old, full or out of offsets?"""
        active = self._segments[-1]
        if active.is_empty:
            return False
        if self._active_since_ms is not None and now_ms - self._active_since_ms >= self.config.roll_ms:
            return True
        segment_bytes = self.config.segment_bytes
        return not active.can_take(header.size_bytes, header.last_offset, segment_bytes, alone=True)

    def _write(
        self, views: list[memoryview], headers: list[BatchHeader], append_time: int, now_ms: int, verify: bool
    ) -> tuple[list[AppendInfo], CorruptRecordError | None]:
        active = self._segments[-1]
        error = None
        if verify:
            positions, error = active.append_verified(views, headers)
        else:
            positions = active.append(views, headers)
        if self._active_since_ms is None and positions:
            self._active_since_ms = now_ms
        return [
            _NEW(AppendInfo, (h[0], h[0] + h[6], p, append_time, h[12]))  # base, last, position, time, count
            for p, h in zip(positions, headers, strict=False)
        ], error

    def roll(self, now_ms: int) -> None:
        """Seal the active segment and start a new one at log_end_offset (no-op if it is empty)."""
        old = self._segments[-1]
        if old.is_empty:
            return
        old.seal()
        self._unflushed_segments.append(old)
        new = self._new_segment(self.directory, self.config, old.next_offset)
        if self.config.preallocate:
            new.preallocate(self.config.segment_bytes)
        self._segments.append(new)
        self._bases.append(new.base_offset)
        self._active_since_ms = None
        fsync_dir(self.directory)  # KAFKA-3968: the new segment's name must survive a power cut

    # ---- flushing ------------------------------------------------------------------------------
    def flush(self) -> None:
        """fsync everything appended so far and move the recovery point to log_end_offset."""
        for segment in [*self._unflushed_segments, self._segments[-1]]:
            if segment.fd >= 0:
                segment.flush()
        self._unflushed_segments.clear()
        self._unflushed_messages = 0
        if self.recovery_point != self.log_end_offset:
            self.recovery_point = self.log_end_offset
            recovery.write_recovery_point(self.directory, self.recovery_point)

    def maybe_flush(self, now_ms: int) -> bool:
        """Flush if log.flush.interval.messages or .ms says so; say whether it did."""
        due = self._unflushed_messages >= self.config.flush_interval_messages or (
            self._unflushed_messages > 0 and now_ms - self._last_flush_ms >= self.config.flush_interval_ms
        )
        if due:
            self.flush()
            self._last_flush_ms = now_ms
        return due

    # ---- reading -------------------------------------------------------------------------------
    def _check_offset(self, offset: int) -> None:
        if not self.log_start_offset <= offset <= self.log_end_offset:
            bounds = f"{self.log_start_offset}..{self.log_end_offset}"
            raise OffsetOutOfRangeError(f"offset {offset} is outside {bounds} of {self.directory}")

    def read(self, offset: int, max_bytes: int, *, upto_offset: int | None = None) -> FileSlice | None:
        """Whole batches from the one holding ``offset``: at least one, else up to ``max_bytes``;
        none starting at or above ``upto_offset`` (the high watermark). None at the end."""
        self._check_offset(offset)
        upto = self.log_end_offset if upto_offset is None else min(upto_offset, self.log_end_offset)
        if offset >= upto:
            return None
        for segment in self._segments[bisect.bisect_right(self._bases, offset) - 1 :]:
            found = segment.read(offset, max_bytes, upto)
            if found is not None:
                position, size = found
                first = records.parse_batch_header(segment.read_bytes(position, records.HEADER_BYTES))
                return FileSlice(
                    segment.fd, position, size, segment.path, segment.base_offset, first.base_offset
                )
        return None

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """The first offset whose record timestamp is >= ``timestamp_ms`` (Kafka's ListOffsets); None
        if every record is older. Finds the batch through the time index, then decodes that one."""
        for segment in self._segments:
            if segment.max_timestamp_ms < timestamp_ms:
                continue
            _, position = segment.index.lookup(segment.timeindex.lookup_before(timestamp_ms))
            for batch_position, header in segment.walk(position):
                if header.max_timestamp_ms >= timestamp_ms:
                    return self._first_offset_at(segment, batch_position, header, timestamp_ms)
        return None

    @staticmethod
    def _first_offset_at(segment: Segment, position: int, header: BatchHeader, timestamp_ms: int) -> int:
        if header.attributes & records.TIMESTAMP_TYPE_BIT or header.records_count <= 1:
            return header.base_offset  # every record carries max_timestamp, or there is one record
        batch = segment.read_bytes(position, header.size_bytes)
        columns = records.decode_columnar(batch, max_uncompressed_bytes=MAX_UNCOMPRESSED_BYTES)
        later = np.flatnonzero(columns.timestamps_ms >= timestamp_ms)
        return int(columns.offsets[later[0]]) if len(later) else header.base_offset

    # ---- retention and truncation ---------------------------------------------------------------
    def apply_retention(self, now_ms: int, *, high_watermark: int | None = None) -> int:
        """Delete whole old segments per retention.ms / retention.bytes; return how many."""
        facts = [
            retention.SegmentFacts(s.base_offset, s.next_offset, s.size_bytes, s.max_timestamp_ms)
            for s in self._segments
        ]
        count = retention.deletable_prefix(
            facts,
            now_ms=now_ms,
            retention_ms=self.config.retention_ms,
            retention_bytes=self.config.retention_bytes,
            high_watermark=high_watermark,
        )
        if count:
            self._delete_segments(self._segments[:count])
        return count

    def _delete_segments(self, doomed: list[Segment]) -> None:
        for segment in doomed:
            segment.delete()
            if segment in self._unflushed_segments:
                self._unflushed_segments.remove(segment)
        ids = {id(s) for s in doomed}
        self._segments = [s for s in self._segments if id(s) not in ids]
        self._bases = [s.base_offset for s in self._segments]
        fsync_dir(self.directory)

    def truncate_to(self, offset: int) -> None:
        """Drop every batch holding offsets >= ``offset`` (a batch straddling it goes whole, so the
        log end may land below ``offset``). At or below log_start_offset the log restarts there.

        Local readers must not hold views above the new end: the file shrinks under their mmap."""
        if offset >= self.log_end_offset:
            return
        if offset <= self.log_start_offset:
            self._delete_segments(list(self._segments))  # first: the new one may reuse a name
            self._segments = [self._new_segment(self.directory, self.config, offset)]
            self._bases = [offset]
        else:
            keep = bisect.bisect_right(self._bases, offset) - 1
            self._delete_segments(self._segments[keep + 1 :])
            active = self._segments[-1]
            found = active.find(offset)
            if found is not None:
                position, header = found
                active.truncate_at(position, header.base_offset)
        self._active_since_ms = self._segments[-1].first_timestamp_ms
        if self.config.preallocate:
            self._segments[-1].preallocate(self.config.segment_bytes)
        if self.recovery_point > self.log_end_offset:
            self.recovery_point = self.log_end_offset
            recovery.write_recovery_point(self.directory, self.recovery_point)
        self.epochs.truncate_from_end(self.log_end_offset)
        fsync_dir(self.directory)

    def restart_at(self, offset: int) -> None:
        """Drop every segment and continue empty from ``offset`` (a follower whose whole log lies
        below the leader's log start: retention there deleted what it would need next)."""
        self._delete_segments(list(self._segments))
        self._segments = [self._new_segment(self.directory, self.config, offset)]
        self._bases = [offset]
        self._active_since_ms = None
        self.epochs.clear()
        self.recovery_point = offset
        recovery.write_recovery_point(self.directory, offset)
        fsync_dir(self.directory)

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            segments=len(self._segments),
            size_bytes=sum(s.size_bytes for s in self._segments),
            log_start_offset=self.log_start_offset,
            log_end_offset=self.log_end_offset,
            recovery_point=self.recovery_point,
            unflushed_messages=self._unflushed_messages,
            active_segment_bytes=self._segments[-1].size_bytes,
            bytes_cut_at_open=self.bytes_cut_at_open,
            recovered_at_open=self.recovered_at_open,
        )


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000
