from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.broker_fixture import BrokerProcess


@pytest.fixture
def broker(tmp_path: Path, free_port: int) -> Iterator[BrokerProcess]:
    """A running broker (real processes, shm, sockets, files), stopped after the test."""
    process = BrokerProcess(tmp_path / "data", free_port).start()
    try:
        yield process
    finally:
        process.stop()
