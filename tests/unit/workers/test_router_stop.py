"""A router told to stop while it waits on the supervisor: the supervisor stops answering once it
waits for the router to exit, so the router must give up the call, not sit out RPC_TIMEOUT_S."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import zmq

from shmbroker.config import BrokerConfig
from shmbroker.errors import RequestTimedOutError
from shmbroker.net.protocol import ApiKey
from shmbroker.workers.router import RPC_TIMEOUT_S, Router
from shmbroker.workers.specs import RouterSpec


def test_a_call_to_a_silent_supervisor_ends_soon_after_stopping_is_set(tmp_path: Path) -> None:
    context = zmq.Context()
    silent = context.socket(zmq.ROUTER)  # a supervisor busy stopping: it takes the call, never answers
    silent.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/control"
    silent.bind(endpoint)
    router = Router(RouterSpec(BrokerConfig(data_dir=tmp_path), endpoint, tmp_path / "status.json"), context)
    timer = threading.Timer(0.3, lambda: setattr(router, "stopping", True))
    try:
        timer.start()
        started = time.monotonic()
        with pytest.raises(RequestTimedOutError, match="router stopping"):
            router.call(ApiKey.INTERNAL_PARTITIONS, {})
        waited_s = time.monotonic() - started
        assert 0.25 <= waited_s < 2.0 < RPC_TIMEOUT_S
        assert silent.poll(1000), "the call never reached the supervisor's socket"
    finally:
        timer.cancel()
        router.close()
        silent.close(0)
        context.term()
