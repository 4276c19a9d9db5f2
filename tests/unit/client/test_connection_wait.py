"""Connection.receive waits without spinning, also for timeouts under ZeroMQ's 1-ms unit."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator

import pytest
import zmq

from shmbroker.client.connection import Connection


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A ROUTER socket that takes requests and never answers (a slow or stuck broker)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        sock.close()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("timeout_s", [0.0005, 0.0009, 0.003])
def test_waiting_for_a_reply_sleeps_instead_of_spinning(silent_broker: str, timeout_s: float) -> None:
    conn = Connection(silent_broker, request_timeout_s=5.0)
    try:
        calls = int(0.3 / timeout_s)
        wall0, cpu0 = time.monotonic(), _cpu_s()
        for _ in range(calls):
            assert conn.receive(timeout_s) is None  # nobody answers: every call times out
        wall, cpu = time.monotonic() - wall0, _cpu_s() - cpu0
        # Each call waited at least its timeout (rounded up to whole ms: never shorter)...
        assert wall >= calls * timeout_s * 0.9
        # ...asleep: a busy loop until the deadline costs as much CPU as wall time.
        assert cpu < 0.35 * wall, f"{cpu:.3f} s of CPU in {wall:.3f} s of waiting"
    finally:
        conn.close()


def test_a_zero_timeout_does_not_wait(silent_broker: str) -> None:
    conn = Connection(silent_broker, request_timeout_s=5.0)
    try:
        t0 = time.monotonic()
        for _ in range(1000):
            assert conn.receive(0.0) is None
        assert time.monotonic() - t0 < 1.0  # 1000 non-blocking looks, no 1-ms waits among them
    finally:
        conn.close()
