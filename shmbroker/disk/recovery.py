"""Crash recovery for a partition log, as Kafka does it (invariant 3 of DESIGN.md).

From the segment holding the recovery point (the log end offset at the last fsync, kept in
``recovery-point``) to the end, every batch's length, magic, CRC-32C and offset continuity is
checked with ``records.scan_valid_columns``. The first bad or short batch and everything after it is
cut, later segments are deleted, the indexes of every scanned segment are rebuilt, and the
directory is fsynced. Segments below the recovery point were fsynced, so they only get the
cheap sanity check of a clean open (and a full scan if that fails).

A preallocated segment ends in zeros up to ``segment_bytes``; those are cut too but are not
counted as data lost: ``bytes cut`` counts bytes up to the last non-zero one.
The clean-shutdown marker is removed before any of this runs, so a crash during recovery
just means recovery runs again.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from shmbroker import records
from shmbroker.disk.files import RECOVERY_POINT_FILE, fsync_dir, write_atomic
from shmbroker.disk.segment import Segment

__all__ = [
    "fsync_dir",
    "nonzero_extent",
    "read_recovery_point",
    "recover_segment",
    "recover_segments",
    "write_recovery_point",
]

_ZERO_PROBE_BYTES = 1 << 20


def read_recovery_point(directory: Path) -> int:
    """The checkpointed offset, or 0 (scan everything) if the file is missing or unreadable."""
    try:
        return max(0, int((directory / RECOVERY_POINT_FILE).read_text().strip()))
    except (FileNotFoundError, ValueError):
        return 0


def write_recovery_point(directory: Path, offset: int) -> None:
    write_atomic(directory / RECOVERY_POINT_FILE, f"{offset}\n".encode())


def data_regions(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) minus the file's holes (SEEK_DATA/SEEK_HOLE): a preallocated tail is a hole."""
    regions, position = [], start
    while position < end:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:  # ENXIO: nothing but hole up to the end of the file
            break
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        regions.append((data, hole))
        position = hole
    return regions


def nonzero_extent(buf: mmap.mmap, start: int, end: int, *, fd: int | None = None) -> int:
    """Bytes from ``start`` up to and including the last non-zero byte before ``end``.

    With ``fd``, holes are skipped without reading them (faulting in a 1 GiB preallocated tail of
    zero pages cost more than the scan of the data before it)."""
    regions = data_regions(fd, start, end) if fd is not None else [(start, end)]
    for region_start, region_end in reversed(regions):
        pos = region_end
        while pos > region_start:
            lo = max(region_start, pos - _ZERO_PROBE_BYTES)
            chunk = np.frombuffer(buf, dtype=np.uint8, count=pos - lo, offset=lo)
            nonzero = np.flatnonzero(chunk)
            del chunk  # release the export before the caller closes the mmap
            if len(nonzero):
                return lo + int(nonzero[-1]) + 1 - start
            pos = lo
    return 0


def recover_segment(segment: Segment, *, max_batch_bytes: int) -> int:
    """Scan the whole ``.log``, keep the valid prefix, rebuild both indexes. Return bytes cut."""
    file_bytes = os.fstat(segment.fd).st_size
    if file_bytes == 0:
        segment.rebuild_indexes(records.ValidPrefix(0, [], [], [], None))
        return 0
    with mmap.mmap(segment.fd, file_bytes, prot=mmap.PROT_READ) as mapped:
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        with memoryview(mapped) as view:  # released before the mmap closes
            scanned = records.scan_valid_columns(
                view, max_batch_bytes=max_batch_bytes, expect_offset=segment.base_offset
            )
        valid_end = scanned.end
        cut = nonzero_extent(mapped, valid_end, file_bytes, fd=segment.fd)
    segment.rebuild_indexes(scanned)
    if file_bytes != valid_end:
        segment.truncate_at(valid_end, segment.next_offset)
    return cut


def recover_segments(
    directory: Path,
    segments: list[Segment],
    *,
    recovery_point: int,
    max_batch_bytes: int,
    clean: bool = False,
) -> int:
    """Recover ``segments`` (ascending, opened) in place; delete what follows damage. Return bytes cut.

    Segments wholly below ``recovery_point`` (all of them after a clean shutdown, ``clean``) get
    ``load_clean()`` and a full scan only if that fails. A segment whose end does not meet the
    next one's base offset ends the log there: later segments are deleted, so offsets stay dense.
    """
    cut_total = 0
    for i, segment in enumerate(segments):
        next_base = segments[i + 1].base_offset if i + 1 < len(segments) else None
        trusted = clean or (next_base is not None and next_base <= recovery_point)
        if not (trusted and segment.load_clean()):
            cut_total += recover_segment(segment, max_batch_bytes=max_batch_bytes)
            if next_base is not None:
                segment.seal()  # the final timeindex entry holds its max timestamp, as at a roll
        if next_base is not None and segment.next_offset != next_base:
            for later in segments[i + 1 :]:
                cut_total += _size_of_data(later)
                later.delete()
            del segments[i + 1 :]
            break
    fsync_dir(directory)
    return cut_total


def _size_of_data(segment: Segment) -> int:
    size = os.fstat(segment.fd).st_size
    if size == 0:
        return 0
    with mmap.mmap(segment.fd, size, prot=mmap.PROT_READ) as view:
        return nonzero_extent(view, 0, size, fd=segment.fd)
