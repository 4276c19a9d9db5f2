from __future__ import annotations

from shmbroker.disk.retention import SegmentFacts, deletable_prefix


def facts(*rows: tuple[int, int]) -> list[SegmentFacts]:
    """(size_bytes, max_timestamp_ms) per segment; offsets 100 per segment."""
    return [SegmentFacts(i * 100, (i + 1) * 100, size, ts) for i, (size, ts) in enumerate(rows)]


def test_time_retention_deletes_a_prefix_and_never_the_active_segment() -> None:
    segs = facts((10, 100), (10, 500), (10, 200), (10, 100))
    assert deletable_prefix(segs, now_ms=1000, retention_ms=600, retention_bytes=-1) == 1
    assert deletable_prefix(segs, now_ms=10**6, retention_ms=600, retention_bytes=-1) == 3
    assert deletable_prefix(segs, now_ms=10**6, retention_ms=-1, retention_bytes=-1) == 0


def test_size_retention_keeps_at_least_retention_bytes() -> None:
    segs = facts((10, 0), (10, 0), (10, 0), (5, 0))
    assert deletable_prefix(segs, now_ms=0, retention_ms=-1, retention_bytes=25) == 1
    assert deletable_prefix(segs, now_ms=0, retention_ms=-1, retention_bytes=0) == 3


def test_retention_stops_at_the_high_watermark() -> None:
    segs = facts((10, 0), (10, 0), (10, 0))
    assert deletable_prefix(segs, now_ms=10**6, retention_ms=1, retention_bytes=-1, high_watermark=150) == 1
