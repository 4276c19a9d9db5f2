"""The control block's readers' event counter (ring/control.py) over real shared memory and real
processes: the worker's wake reaches a reader in another process, a reader killed while it sleeps
wedges nobody, a restarted worker carries the counter on, and a wake that never comes costs a reader
one bounded wait."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shmbroker.ring import futex
from shmbroker.ring.control import (
    ANNOUNCE_OFFSET,
    CONTROL_BYTES,
    EVENTS_OFFSET,
    ControlReader,
    ControlWriter,
    create_control,
)

pytestmark = pytest.mark.skipif(not futex.available(), reason="no futex syscall on this platform")
DEADLINE_S = 10.0


@pytest.fixture
def control() -> Iterator[str]:
    name, block = create_control(0)
    try:
        yield name
    finally:
        block.close()
        block.unlink()


# The sleeper is a fresh interpreter (subprocess, not multiprocessing: no resource tracker).
SLEEPER = """
import json, sys, time
from shmbroker.ring.control import ControlReader
reader = ControlReader.attach(sys.argv[1])
seen = reader.events()
print("ready", flush=True)
started = time.monotonic()
woken = reader.wait_event(seen, float(sys.argv[2]))
print(json.dumps([woken, time.monotonic() - started, reader.events() != seen]), flush=True)
reader.close()
"""
ROOT = Path(__file__).resolve().parents[3]


class _Sleeper:
    """A child process asleep on the counter; its answer is (woken, seconds slept, counter moved)."""

    def __init__(self, name: str, timeout_s: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SLEEPER, name, str(timeout_s)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready", "the sleeper did not start"
        time.sleep(0.05)  # let it reach the futex

    def result(self) -> tuple[bool, float, bool]:
        out, _ = self.process.communicate(timeout=DEADLINE_S)
        woken, slept_s, moved = json.loads(out)
        return bool(woken), float(slept_s), bool(moved)


def test_the_workers_wake_reaches_a_reader_in_another_process(control: str) -> None:
    writer = ControlWriter.attach(control)
    try:
        sleeper = _Sleeper(control, timeout_s=30.0)
        writer.wake_readers()
        woken, slept_s, moved = sleeper.result()
        assert woken and moved
        assert slept_s < DEADLINE_S  # woken, not timed out (30 s)
    finally:
        writer.close()


def test_a_reader_killed_while_it_sleeps_wedges_nobody(control: str) -> None:
    writer = ControlWriter.attach(control)
    try:
        victim = _Sleeper(control, timeout_s=30.0)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(DEADLINE_S)
        started = time.monotonic()
        for _ in range(100):
            writer.wake_readers()  # no sleeper left: each is one cheap syscall
        assert time.monotonic() - started < 1.0
        second = _Sleeper(control, timeout_s=30.0)  # the next reader is served
        writer.wake_readers()
        assert second.result()[0]
    finally:
        writer.close()


def test_a_restarted_worker_carries_the_counter_on(control: str) -> None:
    first = ControlWriter.attach(control)
    reader = ControlReader.attach(control)
    try:
        for _ in range(3):
            first.wake_readers()
        seen = reader.events()
        first.close()  # killed or stopped: the block stays
        second = ControlWriter.attach(control)
        assert reader.events() == seen  # not reset: a reader holding `seen` waits for the next turn
        second.wake_readers()
        assert reader.wait_event(seen, 0.0)  # moved: returns at once
        second.close()
    finally:
        reader.close()


def test_a_wake_that_never_comes_costs_one_bounded_wait(control: str) -> None:
    reader = ControlReader.attach(control)
    try:
        started = time.monotonic()
        assert not reader.wait_event(reader.events(), 0.02)
        assert time.monotonic() - started < 1.0
    finally:
        reader.close()


def test_the_counter_wraps_at_32_bits(control: str) -> None:
    writer = ControlWriter.attach(control)
    reader = ControlReader.attach(control)
    try:
        writer._events[0] = 0xFFFFFFFF  # as if 2**32 - 1 turns had passed
        writer.wake_readers()
        assert reader.events() == 0
    finally:
        reader.close()
        writer.close()


def test_the_counter_has_its_own_cache_line() -> None:
    assert EVENTS_OFFSET % 64 == 0
    assert EVENTS_OFFSET + 64 == CONTROL_BYTES
    assert EVENTS_OFFSET < ANNOUNCE_OFFSET < CONTROL_BYTES  # beside it: a reader touches one line


def test_the_wake_syscall_is_made_only_after_a_reader_announced_a_wait(control: str) -> None:
    writer = ControlWriter.attach(control)
    reader = ControlReader.attach(control)
    try:
        assert writer.wake_readers()  # the first turn wakes whoever a predecessor left asleep
        assert not writer.wake_readers()  # nobody announced since: the counter moves, no syscall
        seen = reader.events()  # announces a wait
        assert writer.wake_readers()
        assert reader.wait_event(seen, 0.0)  # moved: the reader would have been woken
        assert not writer.wake_readers()
        assert reader.events() != seen  # every turn still moves the counter
    finally:
        reader.close()
        writer.close()


def test_a_sleeper_that_announced_after_a_skipped_wake_is_still_woken(control: str) -> None:
    writer = ControlWriter.attach(control)
    try:
        writer.wake_readers()
        writer.wake_readers()  # skipped: nobody waits
        sleeper = _Sleeper(control, timeout_s=30.0)  # events() announces, then it sleeps
        assert writer.wake_readers()
        woken, slept_s, moved = sleeper.result()
        assert woken and moved and slept_s < DEADLINE_S
    finally:
        writer.close()
