"""The leader-epoch cache of one partition: which leader epoch wrote which offsets (KIP-101).

Each entry ``(epoch, start_offset)`` says: batches from ``start_offset`` up to the next entry's
start (or the log end) were written by the leader of ``epoch``. Only one broker leads an epoch,
so two logs that hold the same epoch at the same offset hold the same batch there; the first
offset where they differ is where a returning old leader must cut its log before following.
That is what ``agreed_end`` computes, from the two caches alone, without comparing bytes.

Kept in ``leader-epoch-checkpoint`` beside the segments, in Kafka's text format::

    0            <- version
    2            <- entry count
    0 0          <- epoch start_offset
    3 1200

rewritten whole (temp file, fsync, rename) on every change: a change is rare (a new leader, a
truncation), and a crash leaves the old or the new file.
"""

from __future__ import annotations

import bisect
import itertools
from pathlib import Path
from typing import NamedTuple

from shmbroker.disk.files import write_atomic
from shmbroker.errors import CorruptRecordError

EPOCH_FILE = "leader-epoch-checkpoint"
FORMAT_VERSION = 0
NO_EPOCH = -1  # batches written before any leader epoch was assigned (partitionLeaderEpoch -1)


class EpochEntry(NamedTuple):
    epoch: int
    start_offset: int


def parse(text: str) -> list[EpochEntry]:
    """Entries of a checkpoint file; CorruptRecordError if it is not one."""
    lines = text.split("\n")
    try:
        version, count = int(lines[0]), int(lines[1])
        entries = [EpochEntry(*map(int, line.split())) for line in lines[2 : 2 + count]]
    except (ValueError, IndexError, TypeError) as exc:
        raise CorruptRecordError(f"bad {EPOCH_FILE}: {exc}") from exc
    if version != FORMAT_VERSION or len(entries) != count:
        raise CorruptRecordError(f"bad {EPOCH_FILE}: version {version}, {len(entries)}/{count} entries")
    check_entries(entries)
    return entries


def render(entries: list[EpochEntry]) -> str:
    return "\n".join([str(FORMAT_VERSION), str(len(entries)), *(f"{e} {s}" for e, s in entries)]) + "\n"


def check_entries(entries: list[EpochEntry]) -> None:
    """Epochs strictly increase and start offsets never decrease (equal: an epoch with no batch)."""
    for a, b in itertools.pairwise(entries):
        if not (b.epoch > a.epoch and b.start_offset >= a.start_offset):
            raise CorruptRecordError(f"leader epochs out of order: {a} then {b}")


def epoch_at(entries: list[EpochEntry], offset: int) -> int:
    """The epoch that wrote ``offset``: the last entry starting at or below it (NO_EPOCH if none)."""
    i = bisect.bisect_right([s for _e, s in entries], offset) - 1
    while i >= 0 and i + 1 < len(entries) and entries[i + 1].start_offset == entries[i].start_offset:
        i += 1  # several epochs starting at one offset: the latest one wrote it
    return entries[i].epoch if i >= 0 else NO_EPOCH


def agreed_end(
    ours: list[EpochEntry], our_end: int, theirs: list[EpochEntry], their_end: int, *, start: int = 0
) -> int:
    """The first offset at which two logs may differ: the end of their common prefix.

    Below ``min(our_end, their_end)`` the logs agree exactly where the same epoch wrote both
    (one leader per epoch), so the answer is the first epoch boundary, on either side, past which
    the epochs differ. ``start`` is where comparison starts (the later of the two log starts).
    """
    limit = min(our_end, their_end)
    boundaries = sorted({start, *(s for _e, s in ours), *(s for _e, s in theirs)})
    for offset in boundaries:
        if offset < start:
            continue
        if offset >= limit:
            break
        if epoch_at(ours, offset) != epoch_at(theirs, offset):
            return offset
    return limit


def end_offset_for(entries: list[EpochEntry], epoch: int, log_end: int) -> tuple[int, int]:
    """Kafka's OffsetsForLeaderEpoch: (largest epoch <= ``epoch``, the offset its range ends at)."""
    i = bisect.bisect_right([e for e, _s in entries], epoch) - 1
    if i < 0:
        return NO_EPOCH, entries[0].start_offset if entries else log_end
    end = entries[i + 1].start_offset if i + 1 < len(entries) else log_end
    return entries[i].epoch, end


class EpochCache:
    """The cache of one partition directory. Not thread-safe: its log's single writer owns it."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / EPOCH_FILE
        self.entries: list[EpochEntry] = []
        if self.path.exists():
            self.entries = parse(self.path.read_text())

    @property
    def latest_epoch(self) -> int:
        return self.entries[-1].epoch if self.entries else NO_EPOCH

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Note that ``epoch`` writes from ``start_offset`` on; False if it already was (or older)."""
        if epoch <= self.latest_epoch:
            return False
        if self.entries and start_offset < self.entries[-1].start_offset:
            raise CorruptRecordError(
                f"epoch {epoch} would start at {start_offset}, below {self.entries[-1]} in {self.path}"
            )
        self.entries.append(EpochEntry(epoch, start_offset))
        self._save()
        return True

    def truncate_from_end(self, end_offset: int) -> None:
        """After the log was cut to ``end_offset``: forget epochs that start at or past it."""
        kept = [e for e in self.entries if e.start_offset < end_offset]
        if len(kept) != len(self.entries):
            self.entries = kept
            self._save()

    def clear(self) -> None:
        if self.entries:
            self.entries = []
            self._save()

    def _save(self) -> None:
        write_atomic(self.path, render(self.entries).encode())
