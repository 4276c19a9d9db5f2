"""Turn shared futex words into a readable file descriptor, for a process that waits in poll().

The router waits in ``zmq.Poller.poll`` for client requests, and must also wake when a partition
worker bumps the event counter of a partition it waits for (a completion of its lane, new data
for a parked fetch). A futex cannot join a poll set, so one thread sleeps on the words and makes an
eventfd readable when one moves; the poll loop lists the eventfd beside its sockets.

    poll loop (main thread)                        waker thread
    1. words = [(address, counter)] loaded          a. take the newest words handed over
       before it looks for completions / data      b. futex_wait_any(words + handover word)
    2. look; answer what is ready                  c. eventfd += 1; back to a.
    3. ``watch(words)``; poll(sockets + fd)
    4. fd readable: ``drain()``; back to 1.

The counters are loaded before the look (1-2), so a worker turn after the look makes the futex wait
return at once; a turn before it was seen by the look. ``watch`` bumps a private handover word
the thread also waits on when the new words name an address the thread's current wait does not
cover (a fetch parked on another partition), so it never sleeps on a stale set. Every wait is
bounded by ``timeout_s``: if the thread is ever late, the loop still looks again that often.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence

from shmbroker.ring import futex

DEFAULT_TIMEOUT_S = 0.05


class FutexFd:
    """One waker thread and its eventfd. ``watch``/``drain``/``close`` from one thread (the loop)."""

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._timeout_s = timeout_s
        self._handover = ctypes.c_uint32(0)  # bumped by watch() to pull the thread out of a wait
        self._handover_address = ctypes.addressof(self._handover)
        self._cond = threading.Condition()
        self._words: list[tuple[int, int]] | None = None  # handed over, not yet taken
        self._waiting_on: frozenset[int] = frozenset()  # addresses of the thread's current wait
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="futex-fd", daemon=True)
        self._thread.start()

    def watch(self, words: Sequence[tuple[int, int]]) -> None:
        """Wake the fd once any ``(address, counter)`` word moves past its counter (loaded before
        the caller looked for work). Replaces the words handed over before."""
        with self._cond:
            self._words = list(words)
            if not {address for address, _ in words} <= self._waiting_on:
                self._handover.value = (self._handover.value + 1) & 0xFFFFFFFF
                futex.wake(self._handover_address)
            self._cond.notify()

    def drain(self) -> None:
        """Reset the fd after poll() said it is readable."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._handover.value = (self._handover.value + 1) & 0xFFFFFFFF
            futex.wake(self._handover_address)
            self._cond.notify()
        self._thread.join(self._timeout_s + 1.0)
        os.close(self.fd)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._words is None and not self._closed:
                    self._cond.wait(self._timeout_s)
                if self._closed:
                    return
                words, self._words = self._words or [], None
                self._waiting_on = frozenset(address for address, _ in words)
                handover = self._handover.value
            futex.wait_any([*words, (self._handover_address, handover)], self._timeout_s)
            with self._cond:
                self._waiting_on = frozenset()
                if self._closed:
                    return
            os.eventfd_write(self.fd, 1)
