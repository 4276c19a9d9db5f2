"""Fixtures shared by every test: temp data dirs, unique shm names (unlinked after), free ports, and a
reaper that kills any child process a test leaves behind, even when the test fails."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest


@pytest.fixture
def shm_name() -> Iterator[str]:
    """A unique POSIX shm name; whatever a test created under it is unlinked afterwards."""
    import posix_ipc

    name = f"/shmbtest-{os.getpid()}-{secrets.token_hex(6)}"
    yield name
    for unlink in (posix_ipc.unlink_shared_memory, posix_ipc.unlink_semaphore):
        try:
            unlink(name)
        except posix_ipc.ExistentialError:
            pass


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
    """Kill (by pid) every child process a test started and left running."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leftovers = [p for p in me.children(recursive=True) if p.pid not in before]
    for p in leftovers:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=5)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d
