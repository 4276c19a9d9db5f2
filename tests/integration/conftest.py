from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.broker_fixture import BrokerProcess
from tests.netns import NetnsPair, netns_available


@pytest.fixture
def broker(tmp_path: Path, free_port: int) -> Iterator[BrokerProcess]:
    """A running broker (real processes, shm, sockets, files), stopped after the test."""
    process = BrokerProcess(tmp_path / "data", free_port).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Two network namespaces joined by veth (tests/netns.py), deleted afterwards. Fails without root:
    CI runs as root, so a skip here would hide a broken setup."""
    reason = netns_available()
    if reason is not None:
        pytest.fail(f"network namespaces unavailable: {reason}")
    pair = NetnsPair.create()
    try:
        yield pair
    finally:
        pair.close()
