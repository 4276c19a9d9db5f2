"""Linux futexes on shared memory: sleep until a u32 changes, wake every sleeper on it.

An event counter is one u32 with one writer. A waiter loads it (``e``), checks its own condition,
and if there is nothing to do calls ``wait(address, e, timeout_s)``; the kernel compares the word
with ``e`` and sleeps only if they are equal, atomically with respect to ``wake``. The writer
stores its data, then the counter + 1, then calls ``wake``. So a waiter never sleeps through an
event that happened after it loaded ``e`` (the word differs, or the wake finds it asleep): unlike
the flag protocol of doorbell.py, no store->load fence in Python is needed. It needs only that
loads stay in program order and stores do too, which x86-64 (TSO) and CPython both give.

Shared (not ``FUTEX_PRIVATE_FLAG``) futexes: the kernel keys them by the mapped file and offset,
so processes that map the same shm block at different addresses meet on the same word.

Where the syscall is missing (another OS or architecture), ``wait`` sleeps a short while and
``wake`` does nothing: waiters then poll, which is slower but still correct, because every wait
is bounded by its timeout. Calls go through ctypes, which releases the GIL while the thread sleeps.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

FUTEX_WAIT = 0
FUTEX_WAKE = 1
FUTEX2_SIZE_U32 = 0x02  # futex_waitv: the word is a u32
CLOCK_MONOTONIC = 1
WAKE_ALL = 0x7FFFFFFF
WAITV_MAX = 128  # the kernel's FUTEX_WAITV_MAX
FALLBACK_SLEEP_S = 0.0002  # no futex: poll this often (bounded by the caller's timeout)
# syscall numbers: futex differs per architecture; futex_waitv (Linux 5.16) is 449 everywhere.
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
_SYS_FUTEX_WAITV = 449


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _WaitV(ctypes.Structure):  # struct futex_waitv
    _fields_ = [
        ("val", ctypes.c_uint64),
        ("uaddr", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


def _load(*argtypes: Any) -> Any:
    """A fresh ``syscall`` function object with its own argtypes (about half the call cost of
    wrapping every argument by hand: the worker wakes readers once per turn)."""
    if _SYS_FUTEX is None or os.name != "posix":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True)["syscall"]
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = list(argtypes)
    return fn


_LONG, _PTR, _INT, _U32 = ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
# syscall(SYS_futex, uaddr, op, val, timeout, uaddr2, val3)
_futex_wait = _load(_LONG, _PTR, _INT, _U32, _PTR, _PTR, _U32)
_futex_wake = _load(_LONG, _PTR, _INT, _U32)  # syscall(SYS_futex, uaddr, FUTEX_WAKE, n)
# syscall(SYS_futex_waitv, waiters, nr_futexes, flags, absolute timeout, clockid)
_futex_waitv = _load(_LONG, _PTR, _U32, _U32, _PTR, _INT)
_AVAILABLE = None not in (_futex_wait, _futex_wake, _futex_waitv)
_waitv_missing = False  # set once the kernel says ENOSYS to futex_waitv


def available() -> bool:
    """True where wait really sleeps on the word and wake really wakes (Linux x86-64, aarch64)."""
    return _AVAILABLE


def address_of(region: memoryview, offset: int) -> int:
    """The virtual address of ``region[offset]`` in this process (a u32-aligned, writable view).

    The address is valid while the mapping under ``region`` stays mapped: the caller must stop
    waiting on it before it closes the block (a stale address makes the kernel answer EFAULT or,
    on a reused page, sleep until the timeout: never a crash, never a hang).
    """
    if offset % 4 or offset + 4 > len(region):
        raise ValueError(f"futex word at {offset} outside or misaligned in a {len(region)}-byte region")
    anchor = ctypes.c_char.from_buffer(region, offset)  # holds an export of region until deleted
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def _timespec(timeout_s: float) -> _Timespec:
    timeout_s = max(0.0, timeout_s)
    seconds = int(timeout_s)
    return _Timespec(seconds, int((timeout_s - seconds) * 1e9))


def wait(address: int, expected: int, timeout_s: float) -> bool:
    """Sleep while the u32 at ``address`` equals ``expected``, at most ``timeout_s``.

    True if woken or the word already differed; False on timeout (or a signal): recheck either way.
    """
    if not _AVAILABLE:
        time.sleep(min(timeout_s, FALLBACK_SLEEP_S))
        return False
    ts = _timespec(timeout_s)
    result = _futex_wait(_SYS_FUTEX, address, FUTEX_WAIT, expected, ctypes.byref(ts), None, 0)
    if result == 0:
        return True
    return ctypes.get_errno() == errno.EAGAIN  # EAGAIN: it had changed already


def wake(address: int, waiters: int = WAKE_ALL) -> int:
    """Wake up to ``waiters`` sleepers on the u32 at ``address``; returns how many woke."""
    if not _AVAILABLE:
        return 0
    return max(0, int(_futex_wake(_SYS_FUTEX, address, FUTEX_WAKE, waiters)))


def wait_any(words: Sequence[tuple[int, int]], timeout_s: float) -> bool:
    """Sleep until any ``(address, expected)`` word differs or is woken, at most ``timeout_s``.

    One word is ``wait``; several use futex_waitv (Linux 5.16+). Past ``WAITV_MAX`` words, or on
    an older kernel, it waits on the first word only, for at most ``FALLBACK_SLEEP_S``: the others
    are then polled by the caller's loop. True if woken or changed; False on timeout.
    """
    global _waitv_missing
    if not words:
        time.sleep(max(0.0, timeout_s))
        return False
    if len(words) == 1 or not _AVAILABLE:
        return wait(words[0][0], words[0][1], timeout_s)
    if _waitv_missing or len(words) > WAITV_MAX:
        return wait(words[0][0], words[0][1], min(timeout_s, FALLBACK_SLEEP_S))
    vector = (_WaitV * len(words))(*(_WaitV(value, address, FUTEX2_SIZE_U32, 0) for address, value in words))
    now = time.clock_gettime(time.CLOCK_MONOTONIC)
    deadline = _timespec(now + max(0.0, timeout_s))  # futex_waitv takes an absolute time
    result = _futex_waitv(_SYS_FUTEX_WAITV, vector, len(words), 0, ctypes.byref(deadline), CLOCK_MONOTONIC)
    if result >= 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        _waitv_missing = True
        return wait(words[0][0], words[0][1], min(timeout_s, FALLBACK_SLEEP_S))
    return err == errno.EAGAIN
