"""Rings over plain bytearrays: the same classes the lanes use over shared memory."""

from __future__ import annotations

import pytest

from shmbroker.ring.layout import init_ring, ring_bytes


def new_region(capacity_bytes: int, *, entry_bytes: int = 0) -> memoryview:
    region = memoryview(bytearray(ring_bytes(capacity_bytes)))
    init_ring(region, capacity_bytes, entry_bytes=entry_bytes)
    return region


@pytest.fixture
def region() -> memoryview:
    """A 1 KiB frame ring over a bytearray."""
    return new_region(1024)
