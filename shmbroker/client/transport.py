"""How a client reaches a partition: a shared-memory lane (broker on this host) or ZeroMQ requests.

``TransportFactory`` asks the broker for metadata once; when the broker's host id (the kernel's
boot id) is ours and its data directory is visible, produce goes through lanes and fetch reads the
segment files directly. ``shmbroker.transport`` forces either path. Both kinds of partition
transport have one shape, so the Producer does not know which it has:

    reserve()                       -> sequence for the next batch built (its base_sequence field)
    try_send(batch, sequence, acks) -> bool (False: full, keep it and retry later, in order)
    poll_completions()              -> [(sequence, base_offset, KafkaError | None, log_append_time_ms)]

Sequences count batches per partition from 0 on both paths, and the worker deduplicates by
(producer_id, base_sequence). A lane's producer id comes with the lane; a remote producer asks the
broker for one (INIT_PRODUCER_ID) when ``enable.idempotence`` is on, else stamps -1. A remote
request unanswered for ``request.timeout.ms`` completes with REQUEST_TIMED_OUT, which the Producer
retries with the same batch bytes: appended once with idempotence, possibly twice without.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shmbroker import records
from shmbroker.client.config import CommonConfig
from shmbroker.client.connection import Connection
from shmbroker.client.types import KafkaError, KafkaException
from shmbroker.errors import BrokerError, RequestTimedOutError, error_for_code
from shmbroker.net.protocol import ApiKey, Message
from shmbroker.ring.lane import LaneProducer

MAX_REMOTE_IN_FLIGHT = 64  # produce requests per partition awaiting their reply


def _error(code: int, message: str = "") -> KafkaError | None:
    if code == 0:
        return None
    return KafkaError.from_broker_error(error_for_code(code, message))


def local_host_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return os.uname().nodename


class LaneTransport:
    """Produce through a shared-memory lane the broker created for this process."""

    def __init__(self, factory: TransportFactory, topic: str, partition: int, reply: Message) -> None:
        self._factory, self.topic, self.partition = factory, topic, partition
        self.lane_name: str = reply.body["lane"]
        self.producer_id: int = reply.body["producer_id"]
        self._lane = LaneProducer.attach(self.lane_name)
        self.max_batch_bytes: int = self._lane.max_batch_bytes
        self._next_sequence = 0
        self._early: list[Any] = []  # completions wait() picked up, for the next poll_completions()

    def reserve(self) -> int:
        """The sequence of the next batch; batches are built and sent in the same order."""
        sequence = self._next_sequence
        self._next_sequence += 1
        return sequence

    def try_send(self, batch: bytearray, sequence: int, *, acks: int) -> bool:
        # The worker checks the batch's base_sequence against the frame's sequence and deduplicates
        # by (producer_id, base_sequence) after a restart.
        return bool(self._lane.try_send(batch, sequence=sequence, acks=acks))

    builds_in_place = True  # try_send_values encodes plain values straight into a lane frame

    def try_send_values(
        self,
        values: Sequence[bytes],
        *,
        timestamp_ms: int,
        batch_bytes: int,
        sequence: int,
        producer_id: int,
        base_sequence: int,
        acks: int,
    ) -> bool:
        """Build the batch of plain ``values`` (``batch_bytes`` long: records.plain_batch_bytes) in a
        lane frame and commit it; False (nothing sent) when the lane is full, as ``try_send``."""
        frame = self._lane.try_claim(batch_bytes, acks=acks)
        if frame is None:
            return False
        try:
            records.encode_values_into(
                frame, values, timestamp_ms=timestamp_ms, producer_id=producer_id, base_sequence=base_sequence
            )
        except BaseException:
            self._lane.cancel_claim()
            raise
        self._lane.commit(sequence=sequence, acks=acks)
        return True

    def poll_completions(self) -> list[tuple[int, int, KafkaError | None, int]]:
        done = self._early + self._lane.poll_completions() if self._early else self._lane.poll_completions()
        self._early = []
        return [(c.sequence, c.base_offset, _error(c.error_code), c.log_append_time_ms) for c in done]

    def wait(self, timeout_s: float, *, spin: bool = False) -> None:
        """Wait for completions; with ``spin``, look for them shmbroker.poll.spin.us before sleeping."""
        spin_s = self._factory.poll_spin_s if spin else 0.0
        self._early = self._lane.wait_completions(timeout_s, spin_s=spin_s)

    def forget(self, sequence: int) -> None:
        pass

    def abandon(self) -> None:
        """Unmap a lane the broker no longer serves (it died with an earlier broker), without asking."""
        self._lane.close()

    def close(self) -> None:
        self._lane.close()
        try:
            self._factory.connection.call(
                ApiKey.CLOSE_LANE,
                {"topic": self.topic, "partition": self.partition, "lane": self.lane_name},
                timeout_s=2.0,
            )
        except BrokerError:
            pass  # the broker reclaims lanes of dead or silent producers by itself


class RemoteTransport:
    """Produce with ZeroMQ PRODUCE requests, one batch each, several in flight."""

    max_batch_bytes = 1 << 30

    def __init__(
        self,
        factory: TransportFactory,
        topic: str,
        partition: int,
        *,
        producer_id: int = -1,
        request_timeout_s: float = 30.0,
    ) -> None:
        self._factory, self.topic, self.partition = factory, topic, partition
        self.producer_id = producer_id  # -1: not idempotent, the broker appends every copy it gets
        self._request_timeout_s = request_timeout_s
        # correlation id -> (sequence, monotonic send time); in send order, so the oldest is first.
        self.in_flight: dict[int, tuple[int, float]] = {}
        self.done: list[tuple[int, int, KafkaError | None, int]] = []
        self._next_sequence = 0

    def reserve(self) -> int:
        """The sequence of the next batch: 0, 1, 2... for this partition, as a lane numbers them."""
        sequence = self._next_sequence
        self._next_sequence += 1
        return sequence

    def try_send(self, batch: bytearray, sequence: int, *, acks: int) -> bool:
        if len(self.in_flight) >= MAX_REMOTE_IN_FLIGHT:
            self._factory.pump(0)
            if len(self.in_flight) >= MAX_REMOTE_IN_FLIGHT:
                return False
        cid = self._factory.connection.send(
            ApiKey.PRODUCE, {"topic": self.topic, "partitions": [self.partition], "acks": acks}, [batch]
        )
        self.in_flight[cid] = (sequence, time.monotonic())
        self._factory.owners[cid] = self
        return True

    def poll_completions(self) -> list[tuple[int, int, KafkaError | None, int]]:
        self._factory.pump(0)
        if self.in_flight:
            self._time_out(time.monotonic())
        done, self.done = self.done, []
        return done

    def _time_out(self, now_s: float) -> None:
        """Fail requests unanswered for request.timeout.ms; the Producer sends their batches again.

        ZeroMQ may have lost a request with a dropped connection, or the broker may have appended it
        and its reply got lost: only the broker can tell, by deduplicating the resent batch.
        """
        while self.in_flight:
            cid, (sequence, sent_s) = next(iter(self.in_flight.items()))
            if now_s - sent_s < self._request_timeout_s:
                return
            del self.in_flight[cid]
            self._factory.owners.pop(cid, None)
            self._factory.connection.forget(cid)  # a late reply is dropped; the retry gets its own
            error = RequestTimedOutError(
                f"no PRODUCE reply for {self.topic}-{self.partition} within {self._request_timeout_s:.1f} s"
                " (request.timeout.ms)"
            )
            self.done.append((sequence, -1, KafkaError.from_broker_error(error), -1))

    def on_reply(self, reply: Message) -> None:
        entry = self.in_flight.pop(reply.correlation_id, None)
        if entry is None:
            return
        sequence = entry[0]
        if reply.error_code:
            self.done.append(
                (sequence, -1, _error(reply.error_code, reply.body.get("error_message", "")), -1)
            )
            return
        result = reply.body["results"][0]
        self.done.append(
            (
                sequence,
                int(result.get("base_offset", -1)),
                _error(int(result.get("error_code", 0)), result.get("error_message", "")),
                int(result.get("log_append_time_ms", -1)),  # absent from brokers before it: CreateTime
            )
        )

    def wait(self, timeout_s: float) -> bool:
        return self._factory.pump(timeout_s) > 0

    def forget(self, sequence: int) -> None:
        for cid, (seq, _sent_s) in list(self.in_flight.items()):
            if seq == sequence:
                del self.in_flight[cid]
                self._factory.owners.pop(cid, None)
                self._factory.connection.forget(cid)

    def close(self) -> None:
        pass


class TransportFactory:
    def __init__(self, common: CommonConfig, *, idempotent: bool = False, poll_spin_s: float = 0.0) -> None:
        self.common = common
        self.idempotent = idempotent  # a Producer's enable.idempotence (remote path only)
        self.poll_spin_s = poll_spin_s  # shmbroker.poll.spin.us: a lane's wait for completions spins first
        self._producer_id: int | None = None  # one per producer, asked of the broker once
        self.protocol_revision = 1  # what the broker speaks (net/protocol.py), from its metadata
        self.connection = Connection.for_config(common)
        self._metadata: Message | None = None
        self._local: bool | None = None
        self.max_message_bytes = 1048588  # the broker's max.message.bytes, from its metadata
        self.transports: list[Any] = []
        self.owners: dict[int, RemoteTransport] = {}

    def metadata(
        self,
        topics: list[str] | None = None,
        *,
        allow_auto_create: bool = False,
        timeout_s: float | None = None,
    ) -> Message:
        try:
            return self.connection.call(
                ApiKey.METADATA,
                {"topics": topics, "allow_auto_create": allow_auto_create},
                timeout_s=timeout_s,
            )
        except BrokerError as exc:
            raise KafkaException(KafkaError.from_broker_error(exc)) from exc

    @property
    def local(self) -> bool:
        if self._local is None:
            reply = self.metadata([])
            same_host = (
                reply.body.get("host_id") == local_host_id() and Path(reply.body.get("data_dir", "")).is_dir()
            )
            if self.common.transport == "shm" and not same_host:
                raise KafkaException(
                    KafkaError(
                        KafkaError._TRANSPORT, "shmbroker.transport=shm but the broker is not on this host"
                    )
                )
            self._local = same_host and self.common.transport != "zmq"
            self.max_message_bytes = int(reply.body.get("max_message_bytes", 1048588))
            self.protocol_revision = int(reply.body.get("protocol_revision", 1))
        return self._local

    def remote_producer_id(self) -> int:
        """The id all of this producer's remote partitions stamp; -1 without idempotence.

        A broker of protocol revision 1 issues none: its batches go without (at-least-once on retry).
        """
        if self._producer_id is None:
            self._producer_id = -1
            if self.idempotent and self.protocol_revision >= 2:
                try:
                    reply = self.connection.call(ApiKey.INIT_PRODUCER_ID, {})
                except BrokerError as exc:
                    self._producer_id = None  # ask again on the next open
                    raise KafkaException(KafkaError.from_broker_error(exc)) from exc
                self._producer_id = int(reply.body["producer_id"])
        return self._producer_id

    def partition_count(self, topic: str, *, allow_auto_create: bool) -> int:
        entry = self.metadata([topic], allow_auto_create=allow_auto_create).body["topics"][0]
        if entry.get("error_code"):
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC, f"Unknown topic {topic!r}"))
        return int(entry["partitions"])

    def open(self, topic: str, partition: int) -> Any:
        transport: Any
        if self.local:
            try:
                reply = self.connection.call(
                    ApiKey.OPEN_LANE, {"topic": topic, "partition": partition, "pid": os.getpid()}
                )
            except BrokerError as exc:
                raise KafkaException(KafkaError.from_broker_error(exc)) from exc
            transport = LaneTransport(self, topic, partition, reply)
        else:
            transport = RemoteTransport(
                self,
                topic,
                partition,
                producer_id=self.remote_producer_id(),
                request_timeout_s=self.common.request_timeout_ms / 1000,
            )
        self.transports.append(transport)
        return transport

    def reopen(self, old: LaneTransport, *, timeout_s: float | None = None) -> LaneTransport | None:
        """None while the broker still serves `old`'s lane; else a new lane with `old`'s producer id
        (when the broker could give it again) whose sequences go on from `old`'s. Raises BrokerError
        when the broker does not answer."""
        reply = self.connection.call(
            ApiKey.OPEN_LANE,
            {
                "topic": old.topic,
                "partition": old.partition,
                "pid": os.getpid(),
                "lane": old.lane_name,
                "producer_id": old.producer_id,
            },
            timeout_s=timeout_s,
        )
        if reply.body["lane"] == old.lane_name:
            return None
        new = LaneTransport(self, old.topic, old.partition, reply)
        new._next_sequence = old._next_sequence
        self.transports[self.transports.index(old)] = new
        old.abandon()
        return new

    def pump(self, timeout_s: float) -> int:
        """Route every reply that has arrived (waiting up to ``timeout_s`` for the first)."""
        handled = 0
        while True:
            reply = self.connection.receive(timeout_s if handled == 0 else 0.0)
            if reply is None:
                return handled
            owner = self.owners.pop(reply.correlation_id, None)
            if owner is not None:
                owner.on_reply(reply)
                handled += 1

    def wait(self, timeout_s: float, *, spin: bool = False) -> None:
        """Until a completion may be there, at most ``timeout_s``; ``spin``: a delivery report is
        awaited, so a single lane's wait spins first (LaneTransport.wait)."""
        if not self.local:
            self.pump(timeout_s)
            return
        lanes = [t for t in self.transports if isinstance(t, LaneTransport)]
        if len(lanes) == 1:
            lanes[0].wait(timeout_s, spin=spin)
        else:  # several lanes: no single doorbell to sleep on; a short sleep bounds the latency
            time.sleep(min(timeout_s, 0.0002))

    def cluster_metadata(self, topic: str | None, timeout: float) -> Any:
        from shmbroker.client.admin import ClusterMetadata

        reply = self.metadata(None if topic is None else [topic], timeout_s=None if timeout < 0 else timeout)
        return ClusterMetadata.from_reply(reply)

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        self.transports.clear()
        self.connection.close()
