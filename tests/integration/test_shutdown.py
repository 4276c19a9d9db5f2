"""Stopping the broker: repeated signals, and no process outlives a SIGKILLed supervisor."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.broker_fixture import BrokerProcess, shm_names

pytestmark = pytest.mark.integration


def test_a_burst_of_sigterms_still_stops_the_broker_cleanly(tmp_path: Path, free_port: int) -> None:
    """The handler used to call Event.set, which takes a lock: a second SIGTERM landing inside the
    first handler deadlocked the supervisor for good."""
    shm_before = shm_names()
    broker = BrokerProcess(tmp_path / "data", free_port).start()
    children = broker.children()
    assert children
    for _ in range(20):
        os.kill(broker.pid, signal.SIGTERM)
    assert broker.process is not None
    assert broker.process.wait(15) == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert shm_names() - shm_before == set()


def test_no_child_outlives_a_sigkilled_supervisor(tmp_path: Path, free_port: int) -> None:
    broker = BrokerProcess(tmp_path / "data", free_port).start()
    # "ready" means every partition takes writes; a child may not have named itself for ps yet.
    deadline = time.monotonic() + 10
    while True:
        children = broker.children()
        titles = {" ".join(c.cmdline()) for c in children}
        if any("router" in t for t in titles) and any("coordinator" in t for t in titles):
            break
        assert time.monotonic() < deadline, f"router and coordinator not both titled: {titles}"
        time.sleep(0.05)
    os.kill(broker.pid, signal.SIGKILL)
    assert broker.process is not None
    broker.process.wait(5)
    deadline = time.monotonic() + 15
    alive = children
    while alive and time.monotonic() < deadline:
        _gone, alive = psutil.wait_procs(alive, timeout=0.5)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"orphans: {[' '.join(p.cmdline()) for p in alive]}"
