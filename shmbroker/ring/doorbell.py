"""Doorbells: wake a sleeping consumer without a syscall on the producer's fast path.

``Doorbell`` wraps a named POSIX semaphore (posix_ipc; created O_CREX, mode 0600, by the broker, which
also unlinks it). ``WakeFlag`` adds the sleeping-flag protocol over a u32 in shared memory, whose
value is 0 (awake) or the number of the current sleep episode (1, 2, ... wrapping, never 0):

    consumer (sleeper)                           producer (ringer)
    0. poll its rings for spin_s (100 us)        a. commit: store write position
    1. store flag = next episode number          b. load flag
    2. re-check its rings; if work: flag = 0     c. if flag != 0 and != the episode this producer
    3. wait on the semaphore, timeout T             last rang: post the semaphore, remember it
    4. store flag = 0

A producer rings once per episode: a woken sleeper can take a millisecond to run on a loaded host, and
a producer that rang on every commit until then paid ~11 us a frame in futex wakes (measured). The
spin in step 0 keeps a consumer that is faster than its producer from sleeping between frames.

Each side does a store then a load of the other's location (Dekker). x86-64 (TSO) may let a load pass
an earlier store to another address, so without a full fence both sides can miss each other: the
producer reads flag == 0 while the consumer reads the old write position and sleeps on unseen work.
``full_fence()`` (an uncontended ``threading.Lock`` acquire: glibc's ``sem_trywait`` is a ``lock
cmpxchg``, which x86 serializes against all earlier stores) closes that window as far as CPython
allows, but Python promises no memory order, so correctness rests on the *bounded* wait: a lost
wakeup delays the consumer by at most T (default 2 ms), never forever. Semaphore posts may pile up
(several producers ring one sleeper); the sleeper drains them after waking, so the count stays small
and a stale post costs one spurious wakeup.

Owning process: the sleeper writes the flag; any number of producers read it and ring.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Protocol

import posix_ipc

from shmbroker.errors import BrokenError
from shmbroker.ring.block import MODE, new_name

DEFAULT_WAIT_S = 0.002
# Poll this long before announcing sleep. Without it a worker that drains faster than its producer
# writes fell asleep after nearly every 64 KiB frame, and the producer paid a futex wake (~11 us, the
# top of its profile) per frame: 29k semaphore posts for 33k frames.
DEFAULT_SPIN_S = 0.0001
FLAG = struct.Struct("<I")
_DGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_FENCE = threading.Lock()


def spin(ready: Callable[[], bool], spin_s: float) -> bool:
    """Poll ``ready`` for ``spin_s``; True as soon as it is. Each miss yields the core (sched_yield):
    on a host with fewer cores than busy processes the one we wait for may need this core to run."""
    until = time.perf_counter() + spin_s
    while True:
        if ready():
            return True
        if time.perf_counter() >= until:
            return False
        os.sched_yield()


def full_fence() -> None:
    """Best-effort full memory barrier: a locked read-modify-write (see the module docstring)."""
    if _FENCE.acquire(False):
        _FENCE.release()


class Bell(Protocol):
    def ring(self) -> None: ...
    def wait(self, timeout_s: float) -> bool: ...


class Doorbell:
    """A named POSIX semaphore used as a doorbell. ``ring`` posts; ``wait`` blocks at most ``timeout_s``."""

    def __init__(self, semaphore: posix_ipc.Semaphore, *, created: bool) -> None:
        self._sem = semaphore
        self.name: str = semaphore.name
        self.created = created

    @classmethod
    def create(cls, name: str | None = None) -> Doorbell:
        """A new semaphore at 0 (O_CREX, mode 0600). The creator unlinks it."""
        return cls(
            posix_ipc.Semaphore(name or new_name(), posix_ipc.O_CREX, mode=MODE, initial_value=0),
            created=True,
        )

    @classmethod
    def attach(cls, name: str) -> Doorbell:
        try:
            return cls(posix_ipc.Semaphore(name), created=False)
        except posix_ipc.ExistentialError as exc:
            raise BrokenError(f"doorbell {name} does not exist (its creator unlinked it or died)") from exc

    def ring(self) -> None:
        """Wake one waiter (sem_post: a futex syscall only if someone sleeps)."""
        self._sem.release()

    def wait(self, timeout_s: float) -> bool:
        """Block until rung or ``timeout_s`` passes; True if rung. Drains extra posts (no pile-up)."""
        try:
            self._sem.acquire(timeout_s)
        except posix_ipc.BusyError:
            return False
        while True:
            try:
                self._sem.acquire(0)
            except posix_ipc.BusyError:
                return True

    def close(self) -> None:
        self._sem.close()

    def unlink(self) -> None:
        """Remove the name (creator only); idempotent."""
        try:
            posix_ipc.unlink_semaphore(self.name)
        except posix_ipc.ExistentialError:
            pass


class LocalBell:
    """A doorbell for threads of one process (unit tests, and in-process lanes)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def ring(self) -> None:
        self._event.set()

    def wait(self, timeout_s: float) -> bool:
        rung = self._event.wait(timeout_s)
        self._event.clear()
        return rung


def socket_bell_address(lane_name: str) -> bytes:
    """The abstract-namespace address (Linux: no file, gone with its socket) of a lane's socket bell."""
    return b"\0shmbroker-wake" + lane_name.encode()


class SocketBell:
    """Ringer side of a doorbell that is a datagram socket, so a process waiting in ``poll()`` next to
    other sockets (the router, in ``zmq.Poller``) wakes on it directly: one wakeup where a semaphore
    would need a thread that waits on it and writes an eventfd (two wakeups and a GIL handover; the
    slowest hop of a remote produce, p50 100 us / p99 630 us measured on 2 vCPUs).

    ``ring`` sends one byte and never blocks; a full queue (a wake is pending already) or nobody
    bound (the waiter has gone; the flag protocol's bounded wait covers a wake lost that way) is
    ignored. The address lives in the abstract namespace of this network namespace, derived from the
    lane's unguessable name; whoever could send to it can only cause a spurious wakeup.
    """

    def __init__(self, address: bytes) -> None:
        self.address = address
        self._socket = socket.socket(socket.AF_UNIX, _DGRAM)

    def ring(self) -> None:
        try:
            self._socket.sendto(b"\1", self.address)
        except OSError:  # EAGAIN: a wake is queued already; ECONNREFUSED/ENOENT: nobody waits there
            pass

    def wait(self, timeout_s: float) -> bool:
        raise TypeError("a SocketBell is waited on by poll()ing its SocketWaiter's fd")

    def close(self) -> None:
        self._socket.close()


class SocketWaiter:
    """Waiter side of a ``SocketBell``: a bound datagram socket whose ``fd`` goes in a poll set."""

    def __init__(self, address: bytes) -> None:
        self._socket = socket.socket(socket.AF_UNIX, _DGRAM)
        try:
            self._socket.bind(address)  # OSError (EADDRINUSE) if the name is taken: the caller falls back
        except OSError:
            self._socket.close()
            raise
        self.fd = self._socket.fileno()

    def drain(self) -> int:
        """Read every queued wake; returns how many there were."""
        n = 0
        while True:
            try:
                self._socket.recv(64)
            except (BlockingIOError, InterruptedError):
                return n
            n += 1

    def close(self) -> None:
        self._socket.close()


class WakeFlag:
    """The sleeping flag at ``offset`` in ``region`` plus the bell that goes with it.

    Holds its own small view of ``region``; ``close`` releases it. A ``bell`` of None means nobody can
    be woken: the sleeper then just sleeps ``timeout_s`` (polling) and ``notify`` is a load.
    """

    def __init__(self, region: memoryview, offset: int, bell: Bell | None) -> None:
        if offset % FLAG.size or offset + FLAG.size > len(region):
            raise ValueError(f"flag offset {offset} outside or misaligned in a {len(region)}-byte region")
        # A one-item native u32 view: whole stores, unlike struct.pack_into (see layout.py).
        self._cell, self.bell = region[offset : offset + FLAG.size].cast("I"), bell
        # Sleeper-local: continue numbering from what a predecessor left, so no ringer skips an episode.
        self._episode: int = self._cell[0]
        self._last_rung = 0  # ringer-local: the episode this process already rang for

    @property
    def sleeping(self) -> bool:
        return bool(self._cell[0])

    def sleep(
        self, ready: Callable[[], bool], timeout_s: float = DEFAULT_WAIT_S, *, spin_s: float = DEFAULT_SPIN_S
    ) -> bool:
        """Sleeper side: poll ``ready`` for ``spin_s``, then announce, re-check, wait at most ``timeout_s``.

        True if woken or ready, False on timeout (which may be a lost wakeup: check your rings).
        """
        if spin_s > 0 and spin(ready, spin_s):
            return True
        self._episode = self._episode % 0xFFFFFFFF + 1
        self._cell[0] = self._episode
        full_fence()  # order the flag store before the loads ready() makes
        try:
            if ready():
                return True
            if self.bell is None:
                time.sleep(timeout_s)
                return False
            return self.bell.wait(timeout_s)
        finally:
            self._cell[0] = 0

    def announce(self) -> None:
        """Sleeper side, for a sleeper that waits elsewhere (``poll()`` on a ``SocketWaiter``): steps 1
        and 2 of the protocol are this call and the caller's re-check of its rings after it; step 3 is
        its poll, bounded by its own timeout; ``clear()`` is step 4."""
        self._episode = self._episode % 0xFFFFFFFF + 1
        self._cell[0] = self._episode
        full_fence()  # order the flag store before the loads of the caller's re-check

    def clear(self) -> None:
        self._cell[0] = 0

    def notify(self) -> bool:
        """Ringer side, after committing: ring if the sleeper announced a sleep this process has not
        rung for yet. True if it rang."""
        full_fence()  # order the caller's commit store before the flag load
        episode = self._cell[0]
        if episode and episode != self._last_rung and self.bell is not None:
            self._last_rung = episode
            self.bell.ring()
            return True
        return False

    def close(self) -> None:
        """Release the view of the flag (before the block is closed)."""
        self._cell.release()
