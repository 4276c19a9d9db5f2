"""Producer, shaped like confluent_kafka.Producer: ``produce``, ``poll``, ``flush``, ``len()``.

Records accumulate per partition in a BatchBuilder (``append`` only stores; the encoding happens once
per batch). A batch is sealed when it reaches ``batch.size`` bytes or ``batch.num.messages`` records,
or in ``poll``/``flush`` once it is ``linger.ms`` old; sealed batches go to the partition's transport
in order: a shared-memory lane when the broker is on this host, a ZeroMQ request otherwise
(``shmbroker.transport`` = auto | shm | zmq). A full lane keeps batches queued here; past
``queue.buffering.max.messages`` undelivered records ``produce`` raises BufferError, exactly as
confluent-kafka does, and the caller serves deliveries with ``poll``.

Delivery callbacks (``on_delivery(err, msg)``) run inside ``poll``/``flush`` with the record's offset.
Not thread-safe: one thread per Producer, as with any librdkafka handle used from Python.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from shmbroker import records
from shmbroker.client import transport as tx
from shmbroker.client.config import ProducerConfig
from shmbroker.client.partitioner import KeyPartitioner
from shmbroker.client.types import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    Message,
)
from shmbroker.errors import BrokerError

# Errors worth sending the batch again for, until message.timeout.ms: the broker was busy or a
# disk was full, not "this batch is bad" (a corrupt batch stays corrupt however often it is sent).
# REQUEST_TIMED_OUT, NETWORK_EXCEPTION, NOT_ENOUGH_REPLICAS(_AFTER_APPEND), KAFKA_STORAGE_ERROR, _TRANSPORT
RETRY_CODES = frozenset({7, 13, 19, 20, 56, -195})
# One lingering batch in flight per partition: the next waits for its answer and grows meanwhile. At 50k
# records/s over ZeroMQ, 1 instead of 2 halves the requests (the router's CPU 45% -> 34%) and moved the
# produce p99 from ~3.3 to ~2.2 ms (perf.run alternated, 6 runs each); batches sealed by batch.size or
# batch.num.messages never wait for it, so throughput runs do not change.
NATURAL_BATCHING_IN_FLIGHT = 1
# A local batch unanswered this long makes the producer ask (once per interval) whether its topic
# still exists (a lane's worker stops without a word when its topic is deleted) and whether the broker
# still serves its lane (it died with a broker restart: take a new one and resend).
LANE_CHECK_S = 1.0
# message.timeout.ms is checked this often, not on every poll(): a scan of the in-flight batches per
# poll(0) was ~10% of a producer's loop in a latency run (librdkafka scans once a second).
EXPIRE_CHECK_S = 0.01
# How long poll()/flush() wait for that check's answer: a local broker answers in well under a ms, and
# one that is down must not hold the caller for request.timeout.ms (it did: 30 s, then a raise).
LANE_PROBE_TIMEOUT_S = 0.25
# Plain uncompressed values at least this big on average are encoded straight into the lane's frame
# when the batch is sent (records.encode_values_into): no batch-sized bytearray, one copy less. Below
# it the per-record Python of the in-place encoder costs more than the join and the copy it saves.
IN_PLACE_MIN_VALUE_BYTES = 4096
DeliveryCallback = Callable[[KafkaError | None, Message], None]
BatchCallback = Callable[[KafkaError | None, str, int, int, int], None]


def _stamps(producer_id: int, sequence: int) -> tuple[int, int]:
    """(producer_id, base_sequence) for a batch: Kafka's -1, -1 when the producer is not idempotent."""
    return (producer_id, sequence & 0x7FFFFFFF) if producer_id >= 0 else (-1, -1)


@dataclass
class _Sealed:
    """A sealed batch waiting for the transport, then for its completion.

    Either ``batch`` holds its bytes, or (``batch`` None) ``values`` holds its plain records, to be
    encoded at ``timestamp_ms`` into the frame the lane gives it (``LaneTransport.try_send_values``),
    again on a retry: the frame is the broker's once committed, the values stay the caller's.
    """

    batch: bytearray | None
    count: int
    callbacks: list[Any] | None  # per record: (callback, key, value, timestamp_ms, headers) or None
    batch_callback: BatchCallback | None = None
    created_s: float = 0.0
    sequence: int = 0
    values: Sequence[bytes] | None = None
    timestamp_ms: int = 0  # what its records produced without a timestamp carry (their delivery reports too)
    size_bytes: int = 0  # the batch's size, built or not: what _queued_bytes counts


@dataclass(slots=True)  # slots: produce()'s fast path reads and writes a few fields per record
class _Partition:
    topic: str
    partition: int
    transport: Any  # transport.LaneTransport or RemoteTransport
    limit_bytes: int  # a batch never grows past this: batch.size, the lane's frame, max.message.bytes
    values: list[bytes] = field(default_factory=list)  # plain records of the open batch
    builder: records.BatchBuilder | None = None  # instead of values once a record has key/headers/time
    count: int = 0  # records in the open batch
    size_bytes: int = 0  # its estimated size
    callbacks: list[Any] | None = None
    fast: bool = False  # the open batch has no builder (plain values): produce() may skip _produce
    opened_s: float = 0.0
    backlog: deque[_Sealed] = field(default_factory=deque)  # sealed, not yet taken by the transport
    in_flight: dict[int, _Sealed] = field(default_factory=dict)  # sequence -> batch
    retry_at: float = 0.0  # after a retriable refusal, nothing is resent before this (retry.backoff.ms)
    check_at: float = 0.0  # a local partition with old batches: when to ask next whether it still exists


class Producer:
    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._config = ProducerConfig.from_dict({**(config or {}), **kwargs})
        self._transports = tx.TransportFactory(
            self._config.common,
            idempotent=self._config.enable_idempotence,
            poll_spin_s=self._config.poll_spin_us / 1e6,
        )
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._broker_silent_s = -LANE_CHECK_S  # when a lane check last got no answer: one wait per interval
        self._expire_at = 0.0  # when _service next looks for batches past message.timeout.ms
        # Undelivered records (or produce_batch batches) with a delivery callback. poll()/flush() spin
        # for reports (shmbroker.poll.spin.us) only while one waits: a producer without callbacks has
        # nobody to hurry for, and its spin took a consumer's core on 2 vCPUs (end-to-end p99 at 50k/s
        # 5-9 -> 26-72 ms).
        self._reports_waiting = 0
        self._last_part: _Partition | None = None  # produce()'s fast path: the partition it last filled
        self._topic_partitions: dict[str, int] = {}
        self._sticky: dict[str, int] = {}
        self._by_key = KeyPartitioner()
        self._undelivered = 0
        self._codec = self._config.codec
        self._closed = False
        # Copies of settings the fast path of produce() reads (one attribute load each).
        self._max_queued = self._config.max_queued_messages
        self._max_queued_bytes = self._config.max_queued_bytes
        self._queued_bytes = 0  # bytes of sealed batches not yet delivered: memory stays bounded
        self._batch_num_messages = self._config.batch_num_messages
        if self._config.on_delivery is not None:  # a default callback: every record takes _produce
            self._max_queued = -1

    # -- the confluent-kafka API ----------------------------------------------------------------
    def produce(
        self,
        topic: str,
        value: bytes | str | None = None,
        key: bytes | str | None = None,
        partition: int = -1,
        on_delivery: DeliveryCallback | None = None,
        timestamp: int = 0,
        headers: Any = None,
        callback: DeliveryCallback | None = None,
    ) -> None:
        """Queue one record. BufferError when ``queue.buffering.max.messages`` records are undelivered."""
        # The fast path: a plain bytes value to an explicit partition whose open batch has room.
        # It is most of what a high-rate producer does, so it touches as little as possible; a
        # delivery callback (what a latency-minded producer passes with every record) is only one
        # more append.
        if (
            key is None
            and headers is None
            and not timestamp
            and value.__class__ is bytes
            and self._undelivered < self._max_queued
            and self._queued_bytes < self._max_queued_bytes
        ):
            part = self._last_part  # a high-rate producer mostly sends to the partition it just did
            if part is None or part.partition != partition or part.topic is not topic:
                part = self._partitions.get((topic, partition))
            if part is not None and part.fast and part.count:
                self._last_part = part
                size = len(value)
                if part.size_bytes + size + 64 <= part.limit_bytes:
                    # (a default on_delivery from the config sends every record to _produce: _max_queued)
                    cb = on_delivery or callback
                    if cb is not None:
                        self._reports_waiting += 1
                    if part.callbacks is not None:
                        part.callbacks.append(None if cb is None else (cb, None, value, 0, None))
                    elif cb is not None:
                        part.callbacks = [None] * part.count
                        part.callbacks.append((cb, None, value, 0, None))
                    part.values.append(value)
                    part.size_bytes += size + 8
                    part.count += 1
                    self._undelivered += 1
                    if part.count >= self._batch_num_messages:
                        self._seal(part)
                        self._send_backlog(part)
                    return
        self._produce(topic, value, key, partition, on_delivery or callback, timestamp, headers)

    def _produce(
        self,
        topic: str,
        value: bytes | str | None,
        key: bytes | str | None,
        partition: int,
        on_delivery: DeliveryCallback | None,
        timestamp: int,
        headers: Any,
    ) -> None:
        self._make_room()
        if value.__class__ is not bytes and value is not None:
            value = value.encode() if isinstance(value, str) else bytes(value)
        if key is not None and key.__class__ is not bytes:
            key = key.encode() if isinstance(key, str) else bytes(key)
        size = 0 if value is None else len(value)
        if size > self._config.message_max_bytes:
            raise KafkaException(
                KafkaError(
                    KafkaError.MSG_SIZE_TOO_LARGE,
                    f"record of {size} bytes exceeds message.max.bytes={self._config.message_max_bytes}",
                )
            )
        if partition < 0:
            partition = self._choose(topic, key)
        part = self._partitions.get((topic, partition)) or self._open(topic, partition)
        # Seal first if this record would push the batch past the limit: batches never exceed it.
        if part.count and part.size_bytes + size + (0 if key is None else len(key)) + 64 > part.limit_bytes:
            self._seal(part)
            self._send_backlog(part)
        if not part.count:
            part.opened_s = time.monotonic()
        if key is None and headers is None and not timestamp and value is not None and part.builder is None:
            part.values.append(value)  # the common plain record: encoded in bulk at seal time
            part.size_bytes += size + 8
        else:
            self._append_general(part, value, key, timestamp, headers)
        part.count += 1
        cb = on_delivery or self._config.on_delivery
        if cb is not None:
            self._reports_waiting += 1
            if part.callbacks is None:
                part.callbacks = [None] * (part.count - 1)
            part.callbacks.append((cb, key, value, timestamp, headers))
        elif part.callbacks is not None:
            part.callbacks.append(None)
        self._undelivered += 1
        part.fast = part.builder is None
        if part.count >= self._config.batch_num_messages or part.size_bytes >= part.limit_bytes:
            self._seal(part)
            self._send_backlog(part)

    def _make_room(self) -> None:
        """Serve deliveries once if the local queue is full; BufferError if it still is."""
        full = (
            self._undelivered >= self._config.max_queued_messages
            or self._queued_bytes >= self._max_queued_bytes
        )
        if not full:
            return
        self.poll(0)
        if self._undelivered >= self._config.max_queued_messages:
            raise BufferError("Local: Queue full")
        if self._queued_bytes >= self._max_queued_bytes:
            raise BufferError("Local: Queue full (queue.buffering.max.kbytes)")

    def _append_general(
        self, part: _Partition, value: bytes | None, key: bytes | None, timestamp: int, headers: Any
    ) -> None:
        builder = part.builder
        if builder is None:  # the batch so far was plain values: carry them over, in order
            builder = part.builder = records.BatchBuilder()
            for plain in part.values:
                builder.append(plain)
            part.values = []
        if isinstance(headers, dict):
            headers = list(headers.items())
        builder.append(value, key, timestamp or None, headers)
        part.size_bytes = builder.size_bytes_estimate

    def produce_batch(
        self,
        topic: str,
        values: Sequence[bytes] | np.ndarray,
        partition: int = -1,
        keys: Sequence[bytes | None] | None = None,
        timestamp: int = 0,
        on_delivery: BatchCallback | None = None,
    ) -> int:
        """Queue many records at once (the columnar fast path). Returns how many were queued.

        ``values`` is a list of bytes or a 2-D uint8 array (one fixed-size value per row). The
        records are split into batches of at most ``batch.num.messages``/``batch.size``; each batch's
        outcome goes to ``on_delivery(err, topic, partition, base_offset, count)`` in ``poll``/``flush``.
        """
        n = len(values)
        if n == 0:
            return 0
        self._make_room()
        if partition < 0:
            partition = self._choose(topic, None)
        part = self._partitions.get((topic, partition)) or self._open(topic, partition)
        self._seal(part)  # records produced one by one before this call keep their order
        row_bytes = (values.shape[1] if isinstance(values, np.ndarray) else max(1, len(values[0]))) + 16
        per_batch = max(1, min(self._config.batch_num_messages, self._config.batch_size // row_bytes))
        ts = timestamp or int(time.time() * 1000)
        now = time.monotonic()
        for start in range(0, n, per_batch):
            chunk = values[start : start + per_batch]
            chunk_keys = keys[start : start + per_batch] if keys is not None else None
            sequence = part.transport.reserve()
            if chunk_keys is None and self._in_place(part, chunk):
                sealed = self._deferred(cast("Sequence[bytes]", chunk), ts, None, on_delivery, now, sequence)
            else:
                producer_id, base_sequence = _stamps(part.transport.producer_id, sequence)
                batch = records.encode_values(
                    chunk,
                    keys=chunk_keys,
                    timestamp_ms=ts,
                    codec=self._codec,
                    producer_id=producer_id,
                    base_sequence=base_sequence,
                )
                sealed = _Sealed(batch, len(chunk), None, on_delivery, now, sequence, size_bytes=len(batch))
            part.backlog.append(sealed)
            self._queued_bytes += sealed.size_bytes
            self._undelivered += len(chunk)
            if on_delivery is not None:
                self._reports_waiting += 1
        self._send_backlog(part)
        return n

    def poll(self, timeout: float | None = None) -> int:
        """Serve delivery callbacks; wait up to ``timeout`` seconds (None or negative = forever) for one.

        As in confluent-kafka, a finite timeout with nothing to report blocks for all of it, so a loop
        of ``poll(1.0)`` does not spin. Forever with nothing undelivered returns 0 at once: librdkafka
        would block for an error event, and this producer has no event but delivery reports.
        """
        served = self._service()
        if served or not timeout:
            return served
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while self._undelivered and (deadline is None or time.monotonic() < deadline):
            wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
            self._transports.wait(wait, spin=self._reports_waiting > 0)
            served = self._service()
            if served:
                return served
        if deadline is not None and (remaining_s := deadline - time.monotonic()) > 0:
            time.sleep(remaining_s)  # nothing was undelivered: no report can come before the deadline
        return 0

    def flush(self, timeout: float | None = None) -> int:
        """Seal and send everything, wait for its deliveries; return how many are still undelivered."""
        for part in self._partitions.values():
            self._seal(part)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while self._undelivered:
            self._service()
            if not self._undelivered:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self._transports.wait(
                0.05 if remaining is None else min(0.05, remaining), spin=self._reports_waiting > 0
            )
        return self._undelivered

    def __len__(self) -> int:
        return self._undelivered

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return self._transports.cluster_metadata(topic, timeout)

    def close(self, timeout: float | None = 30.0) -> int:
        left = self.flush(timeout)
        self._transports.close()
        self._closed = True
        return left

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------
    def _partition_count(self, topic: str) -> int:
        count = self._topic_partitions.get(topic)
        if count is None:
            count = self._transports.partition_count(topic, allow_auto_create=self._config.allow_auto_create)
            self._topic_partitions[topic] = count
        return count

    def _choose(self, topic: str, key: bytes | None) -> int:
        count = self._partition_count(topic)
        if key is not None:
            return self._by_key(key, count)
        sticky = self._sticky.get(topic)
        if sticky is None:  # keyless records stick to one partition per batch, as Kafka's sticky partitioner
            sticky = self._sticky[topic] = random.randrange(count)
        return sticky

    def _open(self, topic: str, partition: int) -> _Partition:
        count = self._partition_count(topic)
        if not 0 <= partition < count:
            raise KafkaException(
                KafkaError(
                    KafkaError._UNKNOWN_PARTITION,
                    f"topic {topic!r} has partitions 0..{count - 1}; got {partition}",
                )
            )
        transport = self._transports.open(topic, partition)
        limit = min(self._config.batch_size, transport.max_batch_bytes, self._transports.max_message_bytes)
        part = _Partition(topic, partition, transport, limit - 128)
        self._partitions[(topic, partition)] = part
        return part

    def _seal(self, part: _Partition) -> None:
        if not part.count:
            return
        sequence = part.transport.reserve()
        producer_id, base_sequence = _stamps(part.transport.producer_id, sequence)
        if part.builder is not None:
            batch = part.builder.build(
                codec=self._codec, producer_id=producer_id, base_sequence=base_sequence
            )
            sealed = _Sealed(batch, part.count, part.callbacks, None, part.opened_s, sequence)
            sealed.size_bytes = len(batch)
            sealed.timestamp_ms = part.builder.first_append_ms
        elif self._in_place(part, part.values, part.size_bytes - 8 * part.count):  # produce() adds len + 8
            sealed = self._deferred(
                part.values, int(time.time() * 1000), part.callbacks, None, part.opened_s, sequence
            )
        else:
            now_ms = int(time.time() * 1000)
            batch = records.encode_values(
                part.values,
                timestamp_ms=now_ms,
                codec=self._codec,
                producer_id=producer_id,
                base_sequence=base_sequence,
            )
            sealed = _Sealed(batch, part.count, part.callbacks, None, part.opened_s, sequence)
            sealed.size_bytes = len(batch)
            sealed.timestamp_ms = now_ms
        part.backlog.append(sealed)
        self._queued_bytes += sealed.size_bytes
        part.builder, part.callbacks, part.values, part.count, part.size_bytes = None, None, [], 0, 0
        part.fast = False
        if part.topic in self._sticky:  # move keyless records on after each batch
            self._sticky[part.topic] = random.randrange(self._partition_count(part.topic))

    def _in_place(
        self, part: _Partition, values: Sequence[Any] | np.ndarray, value_bytes: int | None = None
    ) -> bool:
        """Whether this batch of plain values is built in the lane's frame at send time.
        ``value_bytes``: their total size when the caller knows it (then they are bytes, none None)."""
        if self._codec != records.Codec.NONE or not getattr(part.transport, "builds_in_place", False):
            return False
        if value_bytes is None:
            if values.__class__ is not list or None in values:
                return False
            value_bytes = sum(map(len, values))
        return value_bytes >= IN_PLACE_MIN_VALUE_BYTES * len(values)

    def _deferred(
        self,
        values: Sequence[bytes],
        timestamp_ms: int,
        callbacks: list[Any] | None,
        batch_callback: BatchCallback | None,
        created_s: float,
        sequence: int,
    ) -> _Sealed:
        return _Sealed(
            None, len(values), callbacks, batch_callback, created_s, sequence,
            values, timestamp_ms, records.plain_batch_bytes(values),
        )  # fmt: skip

    def _send_backlog(self, part: _Partition) -> None:
        if part.retry_at and time.monotonic() < part.retry_at:
            return  # a refusing broker is not asked again in a hot loop
        acks = self._config.acks
        while part.backlog:
            sealed = part.backlog[0]
            if sealed.batch is None:
                assert sealed.values is not None
                producer_id, base_sequence = _stamps(part.transport.producer_id, sealed.sequence)
                sent = part.transport.try_send_values(
                    sealed.values,
                    timestamp_ms=sealed.timestamp_ms,
                    batch_bytes=sealed.size_bytes,
                    sequence=sealed.sequence,
                    producer_id=producer_id,
                    base_sequence=base_sequence,
                    acks=acks,
                )
            else:
                sent = part.transport.try_send(sealed.batch, sealed.sequence, acks=acks)
            if not sent:
                return  # full: keep the order, try again on the next poll
            part.backlog.popleft()
            if self._config.acks == 0:  # nobody answers acks=0: delivered once handed over (offset unknown)
                self._deliver(part, sealed, -1, None)
            else:
                part.in_flight[sealed.sequence] = sealed

    def _service(self) -> int:
        served = 0
        linger_s = self._config.linger_ms / 1000
        timeout_s = self._config.message_timeout_ms / 1000
        now = time.monotonic()
        expire = now >= self._expire_at
        if expire:
            self._expire_at = now + EXPIRE_CHECK_S
        for part in list(self._partitions.values()):  # _check_exists may forget one
            # Answers first: a batch answered while the caller slept frees its in-flight slot for
            # the lingering batch below in this same call (sealing first left a record produced after
            # a pause unsent until the next poll(): a whole pause of latency).
            if part.in_flight:
                retry: list[_Sealed] = []
                for sequence, base_offset, error, append_time_ms in part.transport.poll_completions():
                    sealed = part.in_flight.pop(sequence, None)
                    if sealed is None:
                        continue
                    if (
                        error is not None
                        and error.code() in RETRY_CODES
                        and now - sealed.created_s < timeout_s
                    ):
                        retry.append(sealed)  # the broker could not take it now; it may later
                        continue
                    served += self._deliver(part, sealed, base_offset, error, append_time_ms)
                if retry:
                    part.backlog.extendleft(reversed(retry))  # ahead of newer batches, in their order
                    part.retry_at = now + self._config.retry_backoff_ms / 1000
            # Natural batching: a lingering batch waits while NATURAL_BATCHING_IN_FLIGHT batches of its
            # partition are unanswered, so a busy broker gets fewer, bigger batches (latency stays
            # that of one round trip) and an idle one gets each record at once.
            if (
                part.count
                and now - part.opened_s >= linger_s
                and len(part.in_flight) < NATURAL_BATCHING_IN_FLIGHT
            ):
                self._seal(part)
            if part.backlog:
                self._send_backlog(part)
            if expire:
                served += self._expire(part, now)
            if (
                (part.in_flight or part.backlog)
                and now >= part.check_at
                and isinstance(part.transport, tx.LaneTransport)
            ):
                served += self._check_exists(part, now)
        return served

    def _check_exists(self, part: _Partition, now: float) -> int:
        """A local partition whose oldest batch waits past LANE_CHECK_S: if its topic (or the
        partition) is gone, fail its batches with UNKNOWN_TOPIC_OR_PART now, as the remote path's
        replies do, instead of at message.timeout.ms; forget it, so a new topic of that name gets a
        new lane."""
        oldest = min(b.created_s for b in (*part.in_flight.values(), *part.backlog))
        if now - oldest < LANE_CHECK_S:
            part.check_at = oldest + LANE_CHECK_S  # look again when that batch has waited long enough
            return 0
        part.check_at = now + LANE_CHECK_S
        if now - self._broker_silent_s < LANE_CHECK_S:
            return 0  # another partition's check just waited for the broker in vain: not each of them
        try:
            entry = self._transports.metadata([part.topic], timeout_s=LANE_PROBE_TIMEOUT_S).body["topics"][0]
        except KafkaException:
            self._broker_silent_s = now
            return 0  # the broker itself is slow or away (restarting?): look again in LANE_CHECK_S
        if not entry.get("error_code") and part.partition < int(entry.get("partitions", 0)):
            return self._check_lane(part, now)
        error = KafkaError(
            KafkaError.UNKNOWN_TOPIC_OR_PART, f"unknown topic or partition {part.topic}-{part.partition}"
        )
        self._seal(part)
        served = 0
        for sealed in [*part.in_flight.values(), *part.backlog]:
            served += self._deliver(part, sealed, -1, error)
        part.in_flight.clear()
        part.backlog.clear()
        self._forget(part)
        return served

    def _check_lane(self, part: _Partition, now: float) -> int:
        """The topic exists; if the broker restarted, our lane died with it: take a new lane with the
        same producer id and resend every unanswered batch, byte for byte, ahead of the backlog. The
        new worker knows the ones its predecessor appended from the log's tail (their original
        offsets come back) and appends the rest once."""
        old = part.transport
        try:
            new = self._transports.reopen(old, timeout_s=LANE_PROBE_TIMEOUT_S)
        except BrokerError:
            self._broker_silent_s = now
            return 0  # the broker is still starting: look again in LANE_CHECK_S
        if new is None:
            return 0  # same lane, a slow worker: message.timeout.ms decides
        part.transport = new
        resend = [part.in_flight[s] for s in sorted(part.in_flight)]
        part.in_flight.clear()
        part.retry_at = 0.0
        if new.producer_id != old.producer_id:  # could not keep the id: a resend might append twice
            error = KafkaError(
                KafkaError._TRANSPORT, "the broker restarted; these records may or may not have been stored"
            )
            return sum(self._deliver(part, sealed, -1, error) for sealed in resend)
        part.backlog.extendleft(reversed(resend))
        self._send_backlog(part)
        return 0

    def _forget(self, part: _Partition) -> None:
        self._partitions.pop((part.topic, part.partition), None)
        self._topic_partitions.pop(part.topic, None)
        self._sticky.pop(part.topic, None)
        if self._last_part is part:
            self._last_part = None
        if part.transport in self._transports.transports:
            self._transports.transports.remove(part.transport)
        part.transport.close()

    def _expire(self, part: _Partition, now: float) -> int:
        """Fail batches older than message.timeout.ms (the broker never answered): _MSG_TIMED_OUT."""
        timeout_s = self._config.message_timeout_ms / 1000
        expired = 0
        for sequence in [s for s, b in part.in_flight.items() if now - b.created_s > timeout_s]:
            sealed = part.in_flight.pop(sequence)
            part.transport.forget(sequence)
            expired += self._deliver(
                part, sealed, -1, KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")
            )
        return expired

    def _deliver(
        self,
        part: _Partition,
        sealed: _Sealed,
        base_offset: int,
        error: KafkaError | None,
        append_time_ms: int = -1,
    ) -> int:
        """Run the batch's callbacks. ``append_time_ms`` >= 0: the topic stamps LogAppendTime, which
        every record of the batch then carries (its own timestamp was replaced, as in Kafka)."""
        self._undelivered -= sealed.count
        self._queued_bytes -= sealed.size_bytes
        if sealed.batch_callback is not None:
            self._reports_waiting -= 1
            sealed.batch_callback(error, part.topic, part.partition, base_offset, sealed.count)
        if sealed.callbacks is None:
            return sealed.count
        topic, partition = part.topic, part.partition
        stored_ts = (TIMESTAMP_CREATE_TIME, sealed.timestamp_ms)  # of records produced without one
        if append_time_ms >= 0:
            stored_ts = (TIMESTAMP_LOG_APPEND_TIME, append_time_ms)
        for i, entry in enumerate(sealed.callbacks):
            if entry is None:
                continue
            self._reports_waiting -= 1
            cb, key, value, ts, headers = entry
            offset = base_offset + i if error is None and base_offset >= 0 else -1001
            cb(
                error,
                Message(
                    (topic, partition, offset, key, value,
                     (TIMESTAMP_CREATE_TIME, ts) if ts and append_time_ms < 0 else stored_ts, headers, error)
                ),
            )  # fmt: skip
        return sealed.count
