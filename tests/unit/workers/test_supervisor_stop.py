"""The supervisor's stop of a child that does not stop: named in the log, killed, never waited on forever."""

from __future__ import annotations

import logging
import multiprocessing
import time

import pytest

from shmbroker.workers import supervisor


def _sleep_forever() -> None:
    time.sleep(60)


def test_a_child_that_does_not_stop_is_named_and_killed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor, "STOP_TIMEOUT_S", 0.3)
    process = multiprocessing.get_context("fork").Process(target=_sleep_forever, daemon=True)
    process.start()
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger=supervisor.log.name):
            supervisor._join_or_kill(process, "test child")
        assert time.monotonic() - started < 5
        assert not process.is_alive()
        assert f"test child (pid {process.pid}) did not stop" in caplog.text
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)
