"""Futex waits on shared memory (ring/futex.py) and the fd that turns them into poll events
(ring/futex_fd.py): every wait returns when the word moves, returns at once when it had moved
already, and is bounded by its timeout when nobody wakes it."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator

import pytest

from shmbroker.ring import futex
from shmbroker.ring.block import SharedBlock
from shmbroker.ring.futex_fd import FutexFd

pytestmark = pytest.mark.skipif(not futex.available(), reason="no futex syscall on this platform")


@pytest.fixture
def words(shm_name: str) -> Iterator[tuple[memoryview, list[int]]]:
    """Two u32 words in a real shm block: (their 'I' view, their addresses)."""
    block = SharedBlock.create(4096, name=shm_name)
    view = block.slice(0, 64)
    cells = view[0:8].cast("I")
    try:
        yield cells, [futex.address_of(view, 0), futex.address_of(view, 4)]
    finally:
        cells.release()
        view.release()
        block.close()


def _in_thread(fn: object) -> tuple[threading.Thread, list[tuple[bool, float]]]:
    out: list[tuple[bool, float]] = []

    def run() -> None:
        started = time.monotonic()
        out.append((fn(), time.monotonic() - started))  # type: ignore[operator]

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_wait_returns_at_once_when_the_word_already_moved(words: tuple[memoryview, list[int]]) -> None:
    cells, (a, _b) = words
    cells[0] = 5
    started = time.monotonic()
    assert futex.wait(a, 4, 1.0)
    assert time.monotonic() - started < 0.5


def test_wait_without_a_wake_is_bounded_by_its_timeout(words: tuple[memoryview, list[int]]) -> None:
    cells, (a, _b) = words
    started = time.monotonic()
    assert not futex.wait(a, cells[0], 0.02)
    assert 0.015 < time.monotonic() - started < 1.0


def test_wake_wakes_a_sleeper_before_its_timeout(words: tuple[memoryview, list[int]]) -> None:
    cells, (a, _b) = words
    thread, out = _in_thread(lambda: futex.wait(a, 0, 10.0))
    time.sleep(0.05)
    cells[0] = 1
    futex.wake(a)
    thread.join(5)
    assert out and out[0][0] and out[0][1] < 5.0


def test_wait_any_returns_when_either_word_is_woken(words: tuple[memoryview, list[int]]) -> None:
    cells, (a, b) = words
    thread, out = _in_thread(lambda: futex.wait_any([(a, 0), (b, 0)], 10.0))
    time.sleep(0.05)
    cells[1] = 1
    futex.wake(b)
    thread.join(5)
    assert out and out[0][0] and out[0][1] < 5.0
    assert futex.wait_any([(a, 0), (b, 0)], 1.0)  # b moved: at once
    assert not futex.wait_any([(a, 0), (b, 1)], 0.01)


def test_address_of_refuses_a_misaligned_or_outside_word(words: tuple[memoryview, list[int]]) -> None:
    region = memoryview(bytearray(16))
    with pytest.raises(ValueError, match="misaligned"):
        futex.address_of(region, 2)
    with pytest.raises(ValueError, match="outside"):
        futex.address_of(region, 16)
    region.release()  # address_of left no export behind


def _readable(fd: int, timeout_s: float) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


def test_futex_fd_is_readable_once_a_watched_word_moves(words: tuple[memoryview, list[int]]) -> None:
    cells, (a, b) = words
    waker = FutexFd(timeout_s=10.0)
    try:
        waker.watch([(a, cells[0])])
        assert not _readable(waker.fd, 0.05)
        cells[0] += 1
        futex.wake(a)
        assert _readable(waker.fd, 5.0)
        waker.drain()
        assert not _readable(waker.fd, 0.0)
        # A new address is taken at once (the handover word), not after the old wait ends.
        waker.watch([(a, cells[0]), (b, cells[1])])
        time.sleep(0.05)
        waker.drain()  # the handover itself may have made it readable once
        cells[1] += 1
        futex.wake(b)
        assert _readable(waker.fd, 5.0)
    finally:
        waker.close()


def test_futex_fd_watching_a_stale_counter_wakes_at_once(words: tuple[memoryview, list[int]]) -> None:
    cells, (a, _b) = words
    waker = FutexFd(timeout_s=10.0)
    try:
        seen = cells[0]
        cells[0] += 1  # the worker moved between the caller's load and its look
        waker.watch([(a, seen)])
        assert _readable(waker.fd, 5.0)
    finally:
        waker.close()


def test_futex_fd_without_a_wake_still_fires_after_its_timeout(words: tuple[memoryview, list[int]]) -> None:
    cells, (a, _b) = words
    waker = FutexFd(timeout_s=0.05)
    try:
        waker.watch([(a, cells[0])])
        assert _readable(waker.fd, 5.0)  # a missed wakeup costs one timeout, never a hang
    finally:
        waker.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(waker.fd)  # closed with its thread
