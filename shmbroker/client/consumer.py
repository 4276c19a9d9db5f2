"""Consumer, shaped like confluent_kafka.Consumer, for assigned partitions (no group needed).

On the broker's host a partition is read straight from its segment files (read-only mmap) up to
the high watermark the worker publishes in the partition's shared-memory control block: no request
to anyone per read. Elsewhere (or with ``shmbroker.transport=zmq``) it is read with FETCH requests
that long-poll up to ``fetch.max.wait.ms``. Either way whole batches arrive and are decoded here;
records below the position (a batch may start before it) are skipped.

Every batch's CRC-32C is checked before it is decoded, whatever ``check.crcs`` says (it costs ~3 us
per 64 KiB). A batch that fails (bit rot on disk, a torn copy) or does not decode comes out as one
Message whose ``error()`` is ``_BAD_MSG``, at the batch's base offset, and the consumer goes on after
it, as librdkafka does; a batch header that cannot be read (its length unknown) is reported at the
position, which stays there until the application seeks past it.

``consume_columnar`` is the fast path: whole batches as columns (numpy offsets, one data buffer)
without a Python object per record. Consumer groups (``subscribe``, ``commit``, ``committed``) live
in ``GroupMixin`` (group_consumer.py); assigned partitions are read the same way whichever way they
were assigned. Not thread-safe (the group's heartbeat thread is the consumer's own business).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from itertools import repeat
from typing import Any

import numpy as np

from shmbroker import records
from shmbroker.client.config import ConsumerConfig
from shmbroker.client.group_consumer import GroupMixin
from shmbroker.client.heap import keep_freed_heap
from shmbroker.client.transport import TransportFactory
from shmbroker.client.types import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    OFFSET_STORED,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from shmbroker.disk.reader import LogReader
from shmbroker.errors import (
    BrokenError,
    BrokerError,
    CorruptRecordError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    UnknownTopicOrPartitionError,
    UnsupportedCompressionTypeError,
    error_for_code,
)
from shmbroker.net.protocol import ApiKey
from shmbroker.ring import futex
from shmbroker.ring.control import ControlReader, WorkerState

WAIT_S = 0.002  # longest sleep on the event counters: bounds the cost of a missed wakeup
IDLE_SLEEP_S = 0.05  # longest sleep with nothing to wait on (every partition paused or backing off)
LIVENESS_CHECK_S = 0.05  # an idle local partition: how often to look whether its worker is gone
# A FETCH is answered by fetch.max.wait.ms at the latest; one unanswered this much later went to a
# router that died (ZeroMQ reconnects without a word) and is asked again (was 30 s: a router or broker
# restart stalled remote consumers that long).
FETCH_REPLY_SLACK_S = 5.0
REATTACH_TIMEOUT_S = 1.0  # asking a restarted broker for its new control block: poll() waits no longer


class _Assigned:
    """One assigned partition: its position and (local path) its reader and control block."""

    def __init__(self, topic: str, partition: int, position: int) -> None:
        self.topic, self.partition, self.position = topic, partition, position
        self.reader: LogReader | None = None
        self.control: ControlReader | None = None
        self.paused = False
        self.retry_fetch_at = 0.0  # monotonic: a FETCH error backs this partition off until then
        self.control_name = ""  # the shm name ``control`` was attached by
        self.check_at = 0.0  # local, idle: when to look next whether its worker is still there


def _high_watermark(part: _Assigned) -> int:
    """The partition's high watermark from its control block; -1 (nothing to read now) while the
    block stays mid-update (its worker preempted on a loaded host, or restarting): retried next round,
    instead of failing the application's poll."""
    assert part.control is not None
    try:
        return part.control.offsets()[1]
    except BrokenError:
        return -1


# What decoding one batch can raise on bad bytes: reported as a _BAD_MSG Message, never raised.
_UNDECODABLE = (CorruptRecordError, RecordTooLargeError, UnsupportedCompressionTypeError)


def _worker_gone(part: _Assigned) -> bool:
    """The partition's control block says its worker stopped (a deleted topic, a broker shut down)
    or names a process that no longer exists (a broker killed whole). A worker the supervisor
    restarts writes the same block again, so this is only true for a while then."""
    assert part.control is not None
    try:
        snapshot = part.control.read()
    except BrokenError:
        return False
    if snapshot.state == WorkerState.STOPPING:
        return True
    if snapshot.worker_pid <= 0:
        return False  # not written yet
    try:
        os.kill(snapshot.worker_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's broker: alive
    return False


def _nap(now: float, until: float, deadline: float | None) -> None:
    """Sleep until ``until`` (or the deadline, if sooner), at most IDLE_SLEEP_S: for a consumer with
    nothing that could wake it earlier."""
    if deadline is not None:
        until = min(until, deadline)
    time.sleep(max(0.0, min(until - now, IDLE_SLEEP_S)))


def _batches_after(
    view: memoryview | CorruptRecordError, position: int
) -> Iterator[tuple[memoryview, records.BatchHeader]]:
    """Each whole batch of a read that ends above ``position``, with its header; raises
    CorruptRecordError at a header that does not read (or at once, for a read that was one)."""
    if isinstance(view, CorruptRecordError):
        raise view
    for start, header in records.iter_batches(view):
        if header.next_offset > position:
            yield view[start : start + header.size_bytes], header


def _end_offset(view: memoryview, start: int) -> int:
    """The offset after the last whole batch in ``view`` (``start`` if it holds none) whose header
    reads; the decoder reports the first that does not."""
    end = start
    try:
        for _position, header in records.iter_batches(view):
            end = header.next_offset
    except CorruptRecordError:
        pass
    return end


def _bad_error(topic: str, partition: int, offset: int, exc: BrokerError) -> KafkaError:
    """A batch a consumer cannot hand out: librdkafka's _BAD_MSG, naming where and why."""
    return KafkaError(KafkaError._BAD_MSG, f"batch at offset {offset} of {topic}-{partition}: {exc}")


def _bad_batch(topic: str, partition: int, offset: int, exc: BrokerError) -> Message:
    """The Message a consumer returns in place of a batch it cannot hand out."""
    return Message.make(topic, partition, offset, None, None, error=_bad_error(topic, partition, offset, exc))


class Consumer(GroupMixin):
    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._config = ConsumerConfig.from_dict({**(config or {}), **kwargs})
        self._transports = TransportFactory(self._config.common)
        self._assigned: dict[tuple[str, int], _Assigned] = {}
        self._ready: list[Message] = []  # decoded, not yet returned: self._ready[self._next:]
        self._next = 0
        self._max_uncompressed = max(self._config.fetch_max_bytes, 64 << 20)
        self._closed = False
        # A FETCH already sent for the positions after the last reply: (correlation id, positions, max_bytes).
        self._prefetch: tuple[int, dict[tuple[str, int], int], int | None] | None = None
        self._bad_columnar: KafkaError | None = None  # a batch consume_columnar raises for on its next call
        self._init_group()
        keep_freed_heap()  # each read's values reuse the last read's freed memory (client/heap.py)

    # -- assignment ---------------------------------------------------------------------------------
    def assign(self, partitions: list[TopicPartition]) -> None:
        self._check_open()
        self.unassign()
        self.incremental_assign(partitions)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self._check_open()
        self._rebalance_assigned = True
        committed = self._committed_for(partitions)
        for tp in partitions:
            self._add(tp, committed.get((tp.topic, tp.partition)))

    def _add(self, tp: TopicPartition, committed: int | None = None) -> None:
        info = self._offsets(tp.topic, tp.partition, -1)
        part = _Assigned(tp.topic, tp.partition, 0)
        if self._transports.local:
            part.reader = LogReader(info["directory"])
            part.control, part.control_name = ControlReader.attach(info["control"]), str(info["control"])
        self._assigned[(tp.topic, tp.partition)] = part
        part.position = self._resolve(part, tp.offset, info, committed)
        if committed is not None and part.position == committed:
            self._commit_marks[(tp.topic, tp.partition)] = committed

    def _resolve(
        self, part: _Assigned, offset: int, info: dict[str, Any], committed: int | None = None
    ) -> int:
        if offset == OFFSET_BEGINNING:
            return int(info["log_start_offset"])
        if offset == OFFSET_END:
            return int(info["high_watermark"])
        if offset in (OFFSET_STORED, OFFSET_INVALID) or offset < 0:
            # The group's committed offset if there is one in the log; else auto.offset.reset decides.
            if committed is not None and int(info["log_start_offset"]) <= committed <= int(
                info["high_watermark"]
            ):
                return committed
            if self._config.auto_offset_reset == "error":
                raise KafkaException(
                    KafkaError(
                        KafkaError._NO_OFFSET,
                        f"no committed offset for {part.topic}-{part.partition} and auto.offset.reset=error",
                    )
                )
            return int(
                info["log_start_offset" if self._config.auto_offset_reset == "earliest" else "high_watermark"]
            )
        return offset

    def unassign(self) -> None:
        self._rebalance_assigned = True
        for part in self._assigned.values():
            if part.reader is not None:
                part.reader.close()
            if part.control is not None:
                part.control.close()
        self._assigned.clear()
        self._ready, self._next = [], 0

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self._rebalance_assigned = True
        for tp in partitions:
            part = self._assigned.pop((tp.topic, tp.partition), None)
            if part is not None and part.reader is not None:
                part.reader.close()
        self._ready = [m for m in self._ready[self._next :] if (m[0], m[1]) in self._assigned]
        self._next = 0

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(p.topic, p.partition) for p in self._assigned.values()]

    def seek(self, partition: TopicPartition) -> None:
        part = self._part(partition)
        info = self._offsets(part.topic, part.partition, -1)
        part.position = self._resolve(part, partition.offset, info)
        self._ready = [m for m in self._ready[self._next :] if (m[0], m[1]) != (part.topic, part.partition)]
        self._next = 0

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            part = self._assigned.get((tp.topic, tp.partition))
            out.append(
                TopicPartition(tp.topic, tp.partition, OFFSET_INVALID if part is None else part.position)
            )
        return out

    def pause(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._part(tp).paused = True

    def resume(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._part(tp).paused = False

    # -- reading --------------------------------------------------------------------------------------
    def poll(self, timeout: float | None = None) -> Message | None:
        """The next record, or None when none arrived within ``timeout`` seconds (None = forever)."""
        i = self._next
        if i >= len(self._ready):
            self._ready, self._next, i = [], 0, 0
            if self._sub is not None:
                errors = self._fill_grouped(timeout)
                if errors:
                    return errors[0]
            else:
                self._fill(timeout)
            if not self._ready:
                return None
        self._next = i + 1
        return self._ready[i]

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if not 1 <= num_messages <= 1_000_000:
            raise ValueError(f"num_messages {num_messages}: 1..1000000")
        if self._next >= len(self._ready):
            self._ready, self._next = [], 0
            if self._sub is not None:
                errors = self._fill_grouped(None if timeout is None or timeout < 0 else timeout)
                if errors:
                    return errors
            else:
                self._fill(None if timeout is None or timeout < 0 else timeout)
        i = self._next
        out = self._ready[i : i + num_messages]
        self._next = i + len(out)
        return out

    def consume_columnar(
        self, timeout: float = -1, max_bytes: int | None = None
    ) -> list[tuple[str, int, records.ColumnarRecords]]:
        """Whole batches as columns: [(topic, partition, ColumnarRecords)] (records below the position
        are not cut out of the first batch: use ``offsets >= position``). Advances past what it returns."""
        if self._bad_columnar is not None:  # found by the last call, after the batches it returned
            error, self._bad_columnar = self._bad_columnar, None
            raise KafkaException(error)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while True:
            out: list[tuple[str, int, records.ColumnarRecords]] = []
            if self._sub is not None:
                self._group_step()
            for part, view in self._read_all(max_bytes):
                bad = self._columns_into(out, part, view)
                if bad is not None:
                    if not out:
                        raise KafkaException(bad)
                    self._bad_columnar = bad
                    return out
            if out or not self._wait(deadline):
                return out
            if not self._assigned and self._sub is not None:
                time.sleep(0.005)  # joining: nothing to read yet

    def _fill(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            views = self._read_all(None)
            if views:
                # The cyclic GC is held off while a read's Messages are built (a few ms): otherwise every
                # 700 new ones start a collection that walks those not yet consumed and, within a few
                # batches, promotes them to older generations whose collections walk them again
                # (measured, remote consume of 1024-record batches: GC on per batch 0.80M, held per read
                # 1.0M records/s). Only our decoders and builtins run meanwhile, so no cycle can form.
                gc_was_on = gc.isenabled()
                gc.disable()
                try:
                    for part, view in views:
                        self._decode_into(part, view)
                finally:
                    if gc_was_on:
                        gc.enable()
            if self._ready or not self._wait(deadline):
                return

    def _columns_into(
        self,
        out: list[tuple[str, int, records.ColumnarRecords]],
        part: _Assigned,
        view: memoryview | BrokerError,
    ) -> KafkaError | None:
        """``consume_columnar``'s decode of one read: its batches appended to ``out`` up to the first
        that does not decode, whose _BAD_MSG error is returned (positioned as ``_decode_into`` does)."""
        position = part.position
        if isinstance(view, BrokerError) and not isinstance(view, CorruptRecordError):
            return KafkaError.from_broker_error(view)
        try:
            for batch_view, header in _batches_after(view, position):
                try:
                    batch = records.decode_columnar(batch_view, max_uncompressed_bytes=self._max_uncompressed)
                except _UNDECODABLE as exc:
                    part.position = header.next_offset
                    return _bad_error(part.topic, part.partition, header.base_offset, exc)
                out.append((part.topic, part.partition, batch))
                position = part.position = header.next_offset
        except CorruptRecordError as exc:
            return _bad_error(part.topic, part.partition, position, exc)
        return None

    def _decode_into(self, part: _Assigned, view: memoryview | BrokerError) -> None:
        """Append the records of ``view`` at or above the position as Messages, a batch at a time."""
        topic, partition, position = part.topic, part.partition, part.position
        if isinstance(view, BrokerError) and not isinstance(view, CorruptRecordError):
            # A FETCH error for this partition (its topic deleted, say): once per backoff, as librdkafka.
            self._ready.append(
                Message.make(topic, partition, position, None, None, error=KafkaError.from_broker_error(view))
            )
            return
        try:
            for batch_view, header in _batches_after(view, position):
                try:
                    self._decode_batch(topic, partition, position, batch_view, header)
                except _UNDECODABLE as exc:
                    self._ready.append(_bad_batch(topic, partition, header.base_offset, exc))
                position = header.next_offset
        except CorruptRecordError as exc:
            # A header that does not read: where the next batch starts is unknown, so the position
            # stays (after the good batches before it) and each read reports it again until the
            # application seeks past it, as Kafka's Java consumer does.
            self._ready.append(_bad_batch(topic, partition, position, exc))
        part.position = position

    def _decode_batch(
        self, topic: str, partition: int, position: int, batch: memoryview, header: records.BatchHeader
    ) -> None:
        """Append the records at or above ``position`` of one whole batch (``header`` as read) as
        Messages; nothing when it raises (CRC, length, varints, codec: _UNDECODABLE)."""
        extend = self._ready.extend
        limit = self._max_uncompressed
        kind = (
            TIMESTAMP_LOG_APPEND_TIME
            if header.attributes & records.TIMESTAMP_TYPE_BIT
            else TIMESTAMP_CREATE_TIME
        )
        if header.records_count < records.SMALL_BATCH_RECORDS:
            _header, rows = records.decode_rows(batch, max_uncompressed_bytes=limit)
            extend(
                Message((topic, partition, offset, key, value, (kind, ts), list(headers) or None, None))
                for offset, ts, key, value, headers in rows
                if offset >= position
            )
            return
        columns = records.decode_columnar(batch, max_uncompressed_bytes=limit)
        first = 0 if header.base_offset >= position else int(np.searchsorted(columns.offsets, position))
        keys, values = columns.keys(), columns.values()
        headers_column: Any = repeat(None)
        if columns.headers:
            headers_column = [list(h) if h else None for h in columns.headers[first:]]
        if first:
            keys, values = keys[first:], values[first:]
        timestamps = columns.timestamps_ms[first:].tolist()
        # One (type, timestamp) tuple per distinct timestamp, shared by its records: a batch spans a
        # few milliseconds, so this saves a tracked tuple per record.
        stamps = {ts: (kind, ts) for ts in set(timestamps)}
        # One C-level map per batch: no Python frame per record.
        extend(
            map(
                Message,
                zip(
                    repeat(topic),
                    repeat(partition),
                    columns.offsets[first:].tolist(),
                    keys,
                    values,
                    map(stamps.__getitem__, timestamps),
                    headers_column,
                    repeat(None),
                ),
            )
        )

    def _read_all(self, max_bytes: int | None) -> list[tuple[_Assigned, memoryview | BrokerError]]:
        """One read of every active partition: its whole batches from the position, or the error of
        a batch header there that does not read (which the decoders report)."""
        active = [p for p in self._assigned.values() if not p.paused]
        if not active:
            return []
        now = time.monotonic()
        if self._transports.local:
            out: list[tuple[_Assigned, memoryview | BrokerError]] = []
            for part in active:
                assert part.control is not None
                assert part.reader is not None
                if part.retry_fetch_at > now:
                    continue
                hw = _high_watermark(part)
                if part.position < hw:
                    try:
                        view = part.reader.read(
                            part.position, max_bytes or self._config.max_partition_fetch_bytes, upto_offset=hw
                        )
                    except OffsetOutOfRangeError:
                        self._reset_out_of_range(part)
                        continue
                    except CorruptRecordError as exc:  # no batch header at the position: reported there
                        out.append((part, exc))
                        continue
                    except FileNotFoundError:  # the partition's directory went with its topic
                        out.append((part, self._deleted(part, now)))
                        continue
                    if view is not None:
                        out.append((part, view))
                elif now >= part.check_at:
                    part.check_at = now + LIVENESS_CHECK_S
                    if _worker_gone(part):
                        if not part.reader.directory.exists():  # its topic was deleted
                            out.append((part, self._deleted(part, now)))
                        else:  # the broker restarted: new control blocks; follow it
                            self._reattach(part, now)
            return out
        fetchable = [p for p in active if p.retry_fetch_at <= now]
        return self._fetch_remote(fetchable, max_bytes) if fetchable else []

    def _reattach(self, part: _Assigned, now: float) -> None:
        """Map the partition's control block (and directory) anew, as the broker now names them;
        while the broker is away, try again after fetch.error.backoff.ms."""
        try:
            info = self._transports.connection.call(
                ApiKey.LIST_OFFSETS,
                {"topic": part.topic, "partition": part.partition, "timestamp": -1},
                timeout_s=REATTACH_TIMEOUT_S,
            ).body
        except BrokerError:
            part.retry_fetch_at = now + self._config.fetch_error_backoff_ms / 1000
            return
        if info["control"] == part.control_name:
            return  # the same block: its worker is being restarted and will write it again
        assert part.control is not None
        assert part.reader is not None
        part.control.close()
        part.reader.close()
        part.control, part.control_name = ControlReader.attach(info["control"]), str(info["control"])
        part.reader = LogReader(info["directory"])
        if part.position > int(info["high_watermark"]):  # an unclean restart cut the tail we read
            self._reset_out_of_range(part)

    def _deleted(self, part: _Assigned, now: float) -> BrokerError:
        """A local partition whose topic was deleted: reported as a remote FETCH would report it (and
        as often: once per fetch.error.backoff.ms)."""
        part.retry_fetch_at = now + self._config.fetch_error_backoff_ms / 1000
        return UnknownTopicOrPartitionError(f"unknown topic or partition {part.topic}-{part.partition}")

    def _fetch_remote(
        self, active: list[_Assigned], max_bytes: int | None
    ) -> list[tuple[_Assigned, memoryview | BrokerError]]:
        """One FETCH's batches. While the caller decodes them, the next FETCH (from where these
        end) is already on its way: the broker reads and sends while this process decodes, as
        librdkafka's prefetch does. A prefetch that no longer matches the positions (a seek, a
        partial consume) is dropped."""
        positions = {(p.topic, p.partition): p.position for p in active}
        connection = self._transports.connection
        timeout_s = self._config.fetch_max_wait_ms / 1000 + FETCH_REPLY_SLACK_S
        reply = None
        if self._prefetch is not None:
            cid, asked, asked_max = self._prefetch
            self._prefetch = None
            if asked == positions and asked_max == max_bytes:
                try:
                    reply = connection.wait(cid, ApiKey.FETCH, timeout_s=timeout_s)
                except BrokerError:
                    reply = None  # asked again below, and any error then is the caller's
            else:
                connection.forget(cid)
        try:
            if reply is None:
                reply = connection.call(
                    ApiKey.FETCH, self._fetch_body(positions, max_bytes), timeout_s=timeout_s
                )
        except BrokerError as exc:
            raise KafkaException(KafkaError.from_broker_error(exc)) from exc
        out: list[tuple[_Assigned, memoryview | BrokerError]] = []
        ahead = dict(positions)
        for entry in reply.body["partitions"]:
            part = self._assigned.get((entry["topic"], entry["partition"]))
            if part is None:
                continue
            if entry["error_code"] == OffsetOutOfRangeError.kafka_code:
                self._reset_out_of_range(part)
                ahead.pop((part.topic, part.partition), None)
            elif entry["error_code"] == CorruptRecordError.kafka_code:  # the broker could not read on
                out.append((part, CorruptRecordError(f"broker: {entry.get('error_message', '')}")))
            elif entry["error_code"]:  # anything else: reported, and not asked again at once
                part.retry_fetch_at = time.monotonic() + self._config.fetch_error_backoff_ms / 1000
                out.append((part, error_for_code(entry["error_code"], str(entry.get("error_message", "")))))
            elif entry["frame"] >= 0:
                view = reply.data[entry["frame"]]
                out.append((part, view))
                ahead[(part.topic, part.partition)] = _end_offset(view, part.position)
        if out and len(ahead) == len(positions) and not any(isinstance(v, BrokerError) for _p, v in out):
            cid = connection.send(ApiKey.FETCH, self._fetch_body(ahead, max_bytes))
            self._prefetch = (cid, ahead, max_bytes)
        return out

    def _fetch_body(self, positions: dict[tuple[str, int], int], max_bytes: int | None) -> dict[str, Any]:
        return {
            "partitions": [
                {"topic": t, "partition": p, "offset": o, "max_bytes": self._config.max_partition_fetch_bytes}
                for (t, p), o in positions.items()
            ],
            "max_bytes": max_bytes or self._config.fetch_max_bytes,
            "min_bytes": self._config.fetch_min_bytes,
            "max_wait_ms": self._config.fetch_max_wait_ms,
        }

    def _reset_out_of_range(self, part: _Assigned) -> None:
        info = self._offsets(part.topic, part.partition, -1)
        if self._config.auto_offset_reset == "error":
            raise KafkaException(
                KafkaError(
                    KafkaError.OFFSET_OUT_OF_RANGE,
                    f"offset {part.position} out of range for {part.topic}-{part.partition}",
                )
            )
        part.position = self._resolve(part, OFFSET_INVALID, info)

    def _wait(self, deadline: float | None) -> bool:
        """Wait a little for new data; False once the deadline has passed.

        Local: sleep on the control blocks' event counters (ring/control.py), which the worker bumps
        and wakes after every turn, so a record is seen as soon as it is published, without
        spinning (on 2 shared cores a spin takes the CPU the worker and the producer need). The
        counters are loaded before the positions are compared with the high watermarks, so an
        append after the check moves the counter and the sleep returns at once. Each sleep lasts
        at most WAIT_S, which bounds what a missed wakeup (a worker restarting) can cost.
        """
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False
        if not self._transports.local:
            # The FETCH long-poll did the waiting, unless there was none to send: every partition
            # paused, or backing off after an error. Then sleep, not spin, until one may be asked.
            due = [p.retry_fetch_at for p in self._assigned.values() if not p.paused]
            if not due or min(due) > now:
                _nap(now, min(due, default=now + IDLE_SLEEP_S), deadline)
            return True
        words = []
        retry_at = now + IDLE_SLEEP_S
        for p in self._assigned.values():
            if p.control is None or p.paused:
                continue
            if p.retry_fetch_at > now:  # backing off after an error: its data is not read now
                retry_at = min(retry_at, p.retry_fetch_at)
                continue
            seen = p.control.events()
            if p.position < _high_watermark(p):
                return True  # published since the read: read again
            words.append((p.control.events_address, seen))
        if words:
            futex.wait_any(words, WAIT_S if deadline is None else min(WAIT_S, deadline - now))
        else:  # every partition paused or backing off: nothing to wake us but time
            _nap(now, retry_at, deadline)
        return True

    # -- offsets ----------------------------------------------------------------------------------------
    def _offsets(self, topic: str, partition: int, timestamp: int) -> dict[str, Any]:
        try:
            return dict(
                self._transports.connection.call(
                    ApiKey.LIST_OFFSETS, {"topic": topic, "partition": partition, "timestamp": timestamp}
                ).body
            )
        except BrokerError as exc:
            raise KafkaException(KafkaError.from_broker_error(exc)) from exc

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        """``(low, high)``: the log start offset and the high watermark. An assigned partition read
        through shared memory answers from its control block, where the broker itself reads them
        (no request; a watcher polling this every millisecond used to cost the broker ~10% of a
        core); otherwise, or while its worker is not serving, the broker is asked."""
        part = self._assigned.get((partition.topic, partition.partition))
        if part is not None and part.control is not None:
            try:
                snapshot = part.control.read()
            except BrokenError:
                snapshot = None  # mid-update for too long: the broker's answer below
            if snapshot is not None and snapshot.state == WorkerState.READY:
                return snapshot.log_start_offset, snapshot.high_watermark
        info = self._offsets(partition.topic, partition.partition, -1)
        return int(info["log_start_offset"]), int(info["high_watermark"])

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        """For each partition the first offset whose timestamp >= tp.offset (a timestamp in ms)."""
        return [
            TopicPartition(
                tp.topic, tp.partition, int(self._offsets(tp.topic, tp.partition, tp.offset)["offset"])
            )
            for tp in partitions
        ]

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return self._transports.cluster_metadata(topic, timeout)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _part(self, tp: TopicPartition) -> _Assigned:
        part = self._assigned.get((tp.topic, tp.partition))
        if part is None:
            raise KafkaException(KafkaError(KafkaError._STATE, f"{tp.topic}-{tp.partition} is not assigned"))
        return part

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Consumer closed")

    def close(self) -> None:
        if self._closed:
            return
        self._close_group()
        self.unassign()
        self._transports.close()
        self._closed = True

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
