"""Consumer-group methods of ``Consumer`` (confluent-kafka's subscribe/commit/committed/store_offsets)
and the poll loop's group step. The group itself is ``Subscription`` (subscription.py).
"""

from __future__ import annotations

import time
from typing import Any

from shmbroker.client.config import ConsumerConfig
from shmbroker.client.group_events import TP, Assigned, CommitDone, GroupError, GroupEvent, Lost, Revoked
from shmbroker.client.subscription import Subscription
from shmbroker.client.types import (
    OFFSET_INVALID,
    OFFSET_STORED,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

GROUP_STEP_S = 0.1  # while waiting for records, the group is stepped at least this often


class GroupMixin:
    """Consumer-group methods of ``Consumer``: confluent-kafka's subscribe/commit/committed/store_offsets.

    Callbacks run as in confluent-kafka: ``on_assign(consumer, partitions)`` (then the partitions are
    assigned unless the callback called assign itself), ``on_revoke`` (auto commit commits the revoked
    partitions' positions after it, then they are unassigned), ``on_lost`` (``on_revoke`` if unset; no
    commit: they may already be someone else's). Committed "positions" are those of records already
    returned to the application (librdkafka's ``enable.auto.offset.store``), never records still
    buffered; ``store_offsets`` replaces them when that key is false.
    """

    # Provided by Consumer.
    _config: ConsumerConfig
    _assigned: dict[TP, Any]
    _ready: list[Message]
    _next: int
    _closed: bool

    def assign(self, partitions: list[TopicPartition]) -> None: ...  # pragma: no cover
    def unassign(self) -> None: ...  # pragma: no cover
    def incremental_assign(self, partitions: list[TopicPartition]) -> None: ...  # pragma: no cover
    def incremental_unassign(self, partitions: list[TopicPartition]) -> None: ...  # pragma: no cover
    def _fill(self, timeout: float | None) -> None: ...  # pragma: no cover

    def _init_group(self) -> None:
        self._sub: Subscription | None = None  # only once subscribed; _group for offsets alone
        self._group: Subscription | None = None
        self._callbacks: dict[str, Any] = {}
        self._rebalance_assigned = False
        self._stored: dict[TP, tuple[int, str]] = {}
        self._commit_marks: dict[TP, int] = {}  # last offset committed (or found committed) per partition
        self._next_auto_commit_s = time.monotonic() + self._config.auto_commit_interval_ms / 1000

    def _group_handle(self) -> Subscription:
        if self._config.group_id is None:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, 'this needs "group.id" in the config'))
        if self._group is None:
            self._group = Subscription(self._config)
        return self._group

    # -- subscribe ------------------------------------------------------------------------------------
    def subscribe(
        self, topics: list[str], on_assign: Any = None, on_revoke: Any = None, on_lost: Any = None
    ) -> None:
        if self._closed:
            raise RuntimeError("Consumer closed")
        if not topics or any(not isinstance(t, str) or t.startswith("^") for t in topics):
            raise KafkaException(
                KafkaError(KafkaError._INVALID_ARG, f"subscribe({topics!r}): give topic names (no regex yet)")
            )
        group = self._group_handle()
        if self._sub is None and self._assigned:
            self.unassign()  # a manual assignment gives way to the group's
        self._callbacks = {"on_assign": on_assign, "on_revoke": on_revoke, "on_lost": on_lost}
        self._sub = group
        self._handle(group.subscribe(list(topics)))
        group.start()

    def unsubscribe(self) -> None:
        if self._sub is None:
            return
        self._revoke_all()
        self._sub.leave()
        self._sub = None

    # -- the poll loop ----------------------------------------------------------------------------------
    def _fill_grouped(self, timeout: float | None) -> list[Message]:
        """``_fill`` in slices of GROUP_STEP_S with the group stepped between; error Messages if any."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            errors = self._group_step()
            if errors or self._ready:
                return errors
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            chunk = GROUP_STEP_S if remaining is None else min(remaining, GROUP_STEP_S)
            if self._assigned:
                self._fill(chunk)
            else:
                time.sleep(min(chunk, 0.005))  # joining: nothing to read yet
            if self._ready:
                return []

    def _group_step(self) -> list[Message]:
        assert self._sub is not None
        errors = self._handle(self._sub.step())
        if self._config.enable_auto_commit and time.monotonic() >= self._next_auto_commit_s:
            self._next_auto_commit_s = time.monotonic() + self._config.auto_commit_interval_ms / 1000
            offsets = {k: v for k, v in self._positions(None).items() if self._commit_marks.get(k) != v[0]}
            if offsets:
                self._sub.commit_async(offsets)
                self._commit_marks.update({k: v[0] for k, v in offsets.items()})
        return errors

    def _handle(self, events: list[GroupEvent]) -> list[Message]:
        errors: list[Message] = []
        for event in events:
            tps = [TopicPartition(t, p) for t, p in getattr(event, "partitions", ())]
            if isinstance(event, Assigned):
                self._rebalance_assigned = False
                if self._callbacks.get("on_assign"):
                    self._callbacks["on_assign"](self, tps)
                if not self._rebalance_assigned:
                    (self.incremental_assign if event.incremental else self.assign)(tps)
            elif isinstance(event, Revoked):
                self._revoke(tps, event.incremental, lost=False)
            elif isinstance(event, Lost):
                self._revoke(tps, event.incremental, lost=True)
            elif isinstance(event, CommitDone):
                if event.error is not None:
                    for t, p, _o in event.offsets:
                        self._commit_marks.pop((t, p), None)  # try again next time
                callback = self._config.on_commit
                if callback is not None:
                    callback(event.error, [TopicPartition(t, p, o) for t, p, o in event.offsets])
            elif isinstance(event, GroupError):
                errors.append(Message.make(None, -1, -1, None, None, error=event.error))
        return errors

    def _revoke(self, tps: list[TopicPartition], incremental: bool, *, lost: bool) -> None:
        """Callback, then (auto commit, not lost) commit, then unassign, then let the member rejoin:
        all of it even when the callback raises (the exception then leaves poll, as in confluent-kafka)."""
        assert self._sub is not None
        keys = {(tp.topic, tp.partition) for tp in tps}
        before = self._positions(keys)
        callback = self._callbacks.get("on_lost" if lost else "on_revoke") or self._callbacks.get("on_revoke")
        self._rebalance_assigned = False
        try:
            if callback:
                callback(self, tps)
        finally:
            self._finish_revoke(tps, keys, before, incremental, lost=lost)

    def _finish_revoke(
        self, tps: list[TopicPartition], keys: set[TP], before: dict[TP, tuple[int, str]], incremental: bool,
        *, lost: bool,
    ) -> None:  # fmt: skip
        assert self._sub is not None
        try:
            if not lost and self._config.enable_auto_commit:
                offsets = {**before, **self._positions(keys)}
                offsets = {k: v for k, v in offsets.items() if self._commit_marks.get(k) != v[0]}
                if offsets:
                    try:
                        self._sub.commit_sync(offsets)
                    except KafkaException:
                        pass  # the next owner re-reads from the last commit: duplicates, never a gap
            for key in keys:
                self._commit_marks.pop(key, None)
                self._stored.pop(key, None)
            if not self._rebalance_assigned:
                if incremental:
                    self.incremental_unassign(tps)
                else:
                    self.unassign()
        finally:
            if not lost:
                self._sub.revocation_done()

    def _revoke_all(self) -> None:
        if self._sub is not None and self._assigned:
            tps = [TopicPartition(t, p) for t, p in self._assigned]
            self._revoke(tps, self._sub.member.cooperative, lost=False)

    # -- offsets ----------------------------------------------------------------------------------------
    def _positions(self, keys: set[TP] | None) -> dict[TP, tuple[int, str]]:
        """What to commit per assigned partition: the offset after the last record returned."""
        if not self._config.enable_auto_offset_store:
            return {
                k: v for k, v in self._stored.items() if k in self._assigned and (keys is None or k in keys)
            }
        out = {k: p.position for k, p in self._assigned.items() if keys is None or k in keys}
        for m in self._ready[self._next :]:  # decoded but not yet returned: not consumed
            key = (m[0], m[1])
            if key in out and m[2] < out[key]:
                out[key] = m[2]
        return {k: (o, "") for k, o in out.items() if o >= 0}

    def _committed_for(self, partitions: list[TopicPartition]) -> dict[TP, int]:
        if self._config.group_id is None:
            return {}
        wanted = [
            (tp.topic, tp.partition) for tp in partitions if tp.offset in (OFFSET_STORED, OFFSET_INVALID)
        ]
        if not wanted:
            return {}
        found = self._group_handle().fetch_committed(wanted)
        return {k: o for k, (o, _m) in found.items() if o >= 0}

    def commit(
        self,
        message: Message | None = None,
        offsets: list[TopicPartition] | None = None,
        asynchronous: bool = True,
    ) -> list[TopicPartition] | None:
        """Commit ``message``'s offset + 1, ``offsets``, or the positions of what poll returned."""
        group = self._group_handle()
        if message is not None:
            wanted = {(message.topic() or "", message.partition()): (message.offset() + 1, "")}
        elif offsets is not None:
            wanted = {(tp.topic, tp.partition): (tp.offset, tp.metadata or "") for tp in offsets}
        else:
            wanted = self._positions(None)
        if not wanted:
            raise KafkaException(KafkaError(KafkaError._NO_OFFSET, "nothing to commit"))
        if asynchronous:
            group.commit_async(wanted)
            self._commit_marks.update({k: v[0] for k, v in wanted.items()})
            return None
        group.commit_sync(wanted)
        self._commit_marks.update({k: v[0] for k, v in wanted.items()})
        return [TopicPartition(t, p, o, m or None) for (t, p), (o, m) in sorted(wanted.items())]

    def committed(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        found = self._group_handle().fetch_committed(
            [(tp.topic, tp.partition) for tp in partitions],
            None if timeout is None or timeout < 0 else timeout,
        )
        out = []
        for tp in partitions:
            offset, metadata = found.get((tp.topic, tp.partition), (-1, ""))
            out.append(
                TopicPartition(
                    tp.topic, tp.partition, offset if offset >= 0 else OFFSET_INVALID, metadata or None
                )
            )
        return out

    def store_offsets(
        self, message: Message | None = None, offsets: list[TopicPartition] | None = None
    ) -> None:
        if self._config.enable_auto_offset_store:
            raise KafkaException(
                KafkaError(KafkaError._INVALID_ARG, "store_offsets() needs enable.auto.offset.store=false")
            )
        if message is not None:
            self._stored[(message.topic() or "", message.partition())] = (message.offset() + 1, "")
        for tp in offsets or ():
            self._stored[(tp.topic, tp.partition)] = (tp.offset, tp.metadata or "")

    def _close_group(self) -> None:
        """As librdkafka's close: revoke (callbacks, auto commit), leave, stop the heartbeat thread."""
        try:
            if self._sub is not None:
                self.unsubscribe()
            elif self._group is not None and self._config.enable_auto_commit and self._assigned:
                offsets = {
                    k: v for k, v in self._positions(None).items() if self._commit_marks.get(k) != v[0]
                }
                if offsets:
                    self._group.commit_sync(offsets)
        except KafkaException:
            pass
        finally:
            if self._group is not None:
                self._group.close()
                self._group = None
