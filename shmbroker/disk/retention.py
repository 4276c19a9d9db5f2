"""Which segments retention deletes: a pure function of segment facts, config and the clock.

Kafka's rules: whole segments only, oldest first, never the active (last) one.
- ``retention_ms``: a segment goes when ``now - its largest timestamp > retention_ms``; deletion
  stops at the first segment that is still young (a prefix is deleted, so the log stays dense).
- ``retention_bytes``: the oldest segment goes while the log without it still holds at least
  ``retention_bytes`` (``total - segment size >= retention_bytes``).
- Nothing at or above ``high_watermark`` (when given) is deleted: a consumer may not have it yet.
-1 disables a limit. The answer is how many leading segments to delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class SegmentFacts(NamedTuple):
    base_offset: int
    next_offset: int  # one past the segment's last offset
    size_bytes: int
    max_timestamp_ms: int  # largest batch max_timestamp in the segment; -1 if empty


def deletable_prefix(
    segments: Sequence[SegmentFacts],
    *,
    now_ms: int,
    retention_ms: int,
    retention_bytes: int,
    high_watermark: int | None = None,
) -> int:
    """How many of the oldest segments retention deletes now (0 .. len(segments) - 1)."""
    candidates = len(segments) - 1  # never the active segment
    if high_watermark is not None:
        candidates = min(candidates, sum(1 for s in segments[:candidates] if s.next_offset <= high_watermark))
    by_time = 0
    if retention_ms >= 0:
        while by_time < candidates and now_ms - segments[by_time].max_timestamp_ms > retention_ms:
            by_time += 1
    by_size = 0
    if retention_bytes >= 0:
        excess = sum(s.size_bytes for s in segments) - retention_bytes
        while by_size < candidates and excess - segments[by_size].size_bytes >= 0:
            excess -= segments[by_size].size_bytes
            by_size += 1
    return max(by_time, by_size)
