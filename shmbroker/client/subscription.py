"""The Consumer's handle on its consumer group: a GroupMember, the lock around it, a heartbeat thread.

The member (``group.py``) never blocks and is driven from the application's ``poll``. So that a
member keeps its session while the application works between polls (as Kafka's heartbeat thread
and librdkafka's background thread do), a daemon thread steps it every ``BACKGROUND_STEP_S`` with
``foreground=False``: it heartbeats, handles replies and notices ``max.poll.interval.ms``, but never
starts a rejoin; its events wait in ``pending`` for the next poll, so every callback runs in the
application's thread. The thread only *tries* the lock: a poll or a blocking commit in progress
delays it by at most one step. Blocking calls (``commit_sync``, ``fetch_committed``) retry
COORDINATOR_NOT_AVAILABLE and timeouts with backoff until their deadline.
"""

from __future__ import annotations

import threading
import time

from shmbroker.client.config import ConsumerConfig
from shmbroker.client.connection import Connection, bootstrap_address
from shmbroker.client.group import GroupMember
from shmbroker.client.group_events import (
    COORDINATOR_NOT_AVAILABLE,
    REQUEST_TIMED_OUT,
    TP,
    GroupEvent,
    GroupSettings,
)
from shmbroker.client.types import (
    KafkaError,
    KafkaException,
)

BACKGROUND_STEP_S = 0.1
RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)


def settings_of(config: ConsumerConfig) -> GroupSettings:
    assert config.group_id is not None
    return GroupSettings(
        group_id=config.group_id,
        instance_id=config.group_instance_id,
        client_id=config.client_id,
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=config.heartbeat_interval_ms,
        max_poll_interval_ms=config.max_poll_interval_ms,
        strategies=config.assignment_strategies,
        request_timeout_ms=config.common.request_timeout_ms,
    )


class Subscription:
    def __init__(self, config: ConsumerConfig) -> None:
        self.settings = settings_of(config)
        self.connection = Connection(
            bootstrap_address({"bootstrap.servers": config.common.bootstrap_servers}),
            request_timeout_s=config.common.request_timeout_ms / 1000,
        )
        self.member = GroupMember(self.settings, self.connection, time.monotonic())
        self.lock = threading.Lock()
        self.pending: list[GroupEvent] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- stepping -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shmbroker-group", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(BACKGROUND_STEP_S):
            if not self.lock.acquire(blocking=False):
                continue
            try:
                self.pending.extend(self.member.step(time.monotonic(), foreground=False))
            except Exception:  # the application's next poll meets the same error, in its thread
                pass
            finally:
                self.lock.release()

    def step(self) -> list[GroupEvent]:
        """Called by the application's poll: note the poll, step the member, take every event."""
        with self.lock:
            now = time.monotonic()
            self.member.poll_called(now)
            events, self.pending = self.pending, []
            events.extend(self.member.step(now))
            return events

    def subscribe(self, topics: list[str]) -> list[GroupEvent]:
        with self.lock:
            self.member.poll_called(time.monotonic())
            return self.member.subscribe(tuple(topics), time.monotonic())

    def revocation_done(self) -> None:
        with self.lock:
            self.member.revocation_done(time.monotonic())

    # -- offsets ------------------------------------------------------------------------------------
    def commit_async(self, offsets: dict[TP, tuple[int, str]]) -> None:
        with self.lock:
            self.member.commit(offsets, time.monotonic(), sync=False)

    def commit_sync(self, offsets: dict[TP, tuple[int, str]], timeout_s: float | None = None) -> None:
        """Commit and wait for the durable acknowledgement; KafkaException on failure."""
        deadline = time.monotonic() + (
            self.settings.request_timeout_ms / 1000 if timeout_s is None else timeout_s
        )
        for attempt in range(1_000_000):
            with self.lock:
                now = time.monotonic()
                cid = self.member.commit(offsets, now, sync=True, timeout_s=max(0.0, deadline - now))
                reply = self.member.wait(cid, now, max(0.0, deadline - now), time.monotonic)
            code = REQUEST_TIMED_OUT if reply is None else reply.error_code
            if code == 0:
                return
            if code not in (COORDINATOR_NOT_AVAILABLE, REQUEST_TIMED_OUT) or time.monotonic() >= deadline:
                message = "" if reply is None else str(reply.body.get("error_message", ""))
                raise KafkaException(KafkaError(code, message or f"commit failed with error {code}"))
            time.sleep(min(RETRY_S[min(attempt, len(RETRY_S) - 1)], max(0.0, deadline - time.monotonic())))

    def fetch_committed(
        self, partitions: list[TP] | None, timeout_s: float | None = None
    ) -> dict[TP, tuple[int, str]]:
        """Committed offsets ((-1, "") where none); retries while the coordinator is away."""
        deadline = time.monotonic() + (
            self.settings.request_timeout_ms / 1000 if timeout_s is None else timeout_s
        )
        for attempt in range(1_000_000):
            with self.lock:
                now = time.monotonic()
                cid = self.member.fetch_committed_request(partitions, now, max(0.0, deadline - now))
                reply = self.member.wait(cid, now, max(0.0, deadline - now), time.monotonic)
            code = REQUEST_TIMED_OUT if reply is None else reply.error_code
            if code == 0 and reply is not None:
                return {
                    (str(t), int(p)): (int(o), str(m or "")) for t, p, o, m in reply.body.get("offsets", [])
                }
            if code not in (COORDINATOR_NOT_AVAILABLE, REQUEST_TIMED_OUT) or time.monotonic() >= deadline:
                message = "" if reply is None else str(reply.body.get("error_message", ""))
                raise KafkaException(KafkaError(code, message or f"offset fetch failed with error {code}"))
            time.sleep(min(RETRY_S[min(attempt, len(RETRY_S) - 1)], max(0.0, deadline - time.monotonic())))
        raise AssertionError("unreachable")

    # -- lifecycle ----------------------------------------------------------------------------------
    def leave(self) -> None:
        with self.lock:
            self.member.leave(time.monotonic(), time.monotonic)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.connection.close()
