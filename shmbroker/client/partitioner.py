"""Kafka's default partitioner for keyed records: murmur2 of the key bytes, made positive, modulo
the partition count (the Java client's and librdkafka's ``murmur2_random``). Keyed records land
where a Kafka cluster would put them, so a topic's key layout survives a move to Kafka.
"""

from __future__ import annotations

SEED = 0x9747B28C
M = 0x5BD1E995
MASK32 = 0xFFFFFFFF
_CACHE_LIMIT = 65536  # keys repeat in real workloads; a bounded memo keeps murmur2 off the hot path


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an unsigned 32-bit value."""
    length = len(data)
    h = (SEED ^ length) & MASK32
    whole = length & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * M) & MASK32
        k ^= k >> 24
        k = (k * M) & MASK32
        h = (h * M) & MASK32
        h ^= k
    tail = length & 3
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * M) & MASK32
    h ^= h >> 13
    h = (h * M) & MASK32
    h ^= h >> 15
    return h


class KeyPartitioner:
    """Partition for a key, memoised per partition count."""

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes, partitions: int) -> int:
        found = self._cache.get((key, partitions))
        if found is None:
            found = (murmur2(key) & 0x7FFFFFFF) % partitions
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[(key, partitions)] = found
        return found
