"""The router process: the public ZeroMQ ROUTER that remote clients talk to.

    client DEALER --tcp--> router (this process) --shm lane--> partition worker   (PRODUCE)
                                                  <--mmap---- segment files        (FETCH)
                                                  --ipc-----> supervisor           (everything else)

It is a child of the supervisor, started through the fork server, and restarted by it if it dies:
clients' DEALER sockets reconnect by themselves and retry what timed out; idempotent producers'
retries are appended once (the worker deduplicates by producer id and sequence), so a router killed
mid-load loses no acked record and stores none twice.

Remote produce goes into this process's own "trusted" lane per partition, which it asks the
supervisor for (OPEN_ROUTER_LANE); the reply to the client leaves when the worker's completion
comes back. Remote fetch reads segment files through a read-only mmap up to the high watermark the
worker publishes, and sends the bytes as they are (``copy=False``), with long-poll. Everything
else (metadata, admin, local lane hand-over, offsets, status, groups, promote) is relayed whole to
the supervisor's private control socket, with the client's identity in front; the replies come back
the same way. Internal requests (``INTERNAL_APIS``) from clients are refused.

The limits against abuse live here: ``socket.request.max.bytes`` (ZMQ_MAXMSGSIZE), the handshake
interval, high-water marks, ``max.connections``, CURVE with its ZAP allow-list.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from shmbroker.disk.files import write_replace
from shmbroker.disk.reader import LogReader
from shmbroker.errors import (
    BrokerError,
    InvalidRequestError,
    InvalidRequiredAcksError,
    NotLeaderOrFollowerError,
    OffsetOutOfRangeError,
    RequestTimedOutError,
    TooManyConnectionsError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from shmbroker.net import protocol
from shmbroker.net.connections import ConnectionTable
from shmbroker.net.protocol import INTERNAL_APIS, ApiKey, Message, field_of
from shmbroker.net.zmqio import recv_frames, send_frames
from shmbroker.ring.control import ControlReader
from shmbroker.ring.doorbell import SocketWaiter, socket_bell_address
from shmbroker.ring.futex_fd import FutexFd
from shmbroker.ring.lane import LaneProducer
from shmbroker.workers import dispatch
from shmbroker.workers.forkserver import pid_alive
from shmbroker.workers.specs import RouterSpec
from shmbroker.workers.topics import check_topic_name

log = logging.getLogger(__name__)

POLL_MS = 50
# Longest poll while a produce waits for its completion: bounds a wakeup lost to store->load
# reordering in the lane's flag protocol (ring/doorbell.py), as the workers' own sleeps are bounded.
COMPLETION_WAIT_MS = 2
ROUTER_BACKLOG_BYTES = 256 << 20  # remote batches waiting for room in a router lane, all partitions
FETCH_MAX_BYTES = 50 << 20
PARTITION_FETCH_MAX_BYTES = 1 << 20
RPC_TIMEOUT_S = 10.0
RPC_SLICE_MS = 50  # a call() waiting for the supervisor looks at ``stopping`` this often
REFRESH_S = 1.0  # partitions known to the router are re-listed at least this often
STATUS_INTERVAL_S = 0.5
SEND_HWM = 10_000  # messages queued per client before a slow reader's replies are dropped


@dataclass
class PendingProduce:
    identity: bytes
    request: Message
    outstanding: int
    results: list[dict[str, Any]]


@dataclass
class PendingFetch:
    identity: bytes
    request: Message
    deadline: float
    partitions: tuple[tuple[str, int], ...] = ()  # whose event counters can answer it


class _Partition:
    """What the router holds for one partition: its control block (read-only) and segment reader."""

    def __init__(self, topic: str, partition: int, control: str, directory: str) -> None:
        self.topic, self.partition, self.control_name = topic, partition, control
        self.directory = Path(directory)
        self._control: ControlReader | None = None
        self._reader: LogReader | None = None

    def control(self) -> ControlReader:
        if self._control is None:
            self._control = ControlReader.attach(self.control_name)
        return self._control

    def reader(self) -> LogReader:
        if self._reader is None:
            self._reader = LogReader(self.directory)
        return self._reader

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
        if self._reader is not None:
            self._reader.close()


class Router:
    def __init__(self, spec: RouterSpec, context: zmq.Context[Any]) -> None:
        self.spec = spec
        self.config = spec.config
        self.counters: Counter[str] = Counter()
        self.connections = ConnectionTable(self.config.max_connections, self.config.connections_max_idle_ms)
        self.upstream = context.socket(zmq.DEALER)  # relayed client requests and their replies
        self.upstream.setsockopt(zmq.LINGER, 0)
        self.upstream.connect(spec.control_endpoint)
        self.rpc = context.socket(zmq.DEALER)  # the router's own blocking calls to the supervisor
        self.rpc.setsockopt(zmq.LINGER, 0)
        self.rpc.connect(spec.control_endpoint)
        self._rpc_id = 0
        self.role = "leader"
        self.partitions: dict[tuple[str, int], _Partition] = {}
        self._listed_at = 0.0
        self.router_lanes: dict[tuple[str, int], LaneProducer] = {}
        # Each router lane's socket bell (the worker rings it after posting completions): polled
        # beside the client sockets, so a completion wakes this loop directly. A lane without one
        # (its name was taken) is watched through the FutexFd thread instead.
        self.lane_waiters: dict[tuple[str, int], SocketWaiter] = {}
        self.poller: zmq.Poller | None = None  # run()'s, so new waiters join it
        self.pending_produce: dict[tuple[str, int, int], tuple[PendingProduce, int]] = {}
        self.pending_fetches: list[PendingFetch] = []
        self.router_backlog: dict[tuple[str, int], deque[tuple[int, int, memoryview]]] = {}
        self.router_backlog_bytes = 0
        self._sequence = 0
        # Set by SIGTERM: a blocking call() to the supervisor gives up, since the supervisor stops
        # answering while it waits for this process to exit (it used to cost every stop 10 s).
        self.stopping = False

    # -- calls to the supervisor ---------------------------------------------------------------------
    def call(self, api: ApiKey, body: dict[str, Any]) -> dict[str, Any]:
        self._rpc_id += 1
        self.rpc.send_multipart([b"router", *protocol.encode_request(api, self._rpc_id, body)])
        deadline = time.monotonic() + RPC_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.stopping:
                raise RequestTimedOutError(f"router stopping: {api.name} to the supervisor abandoned")
            if not self.rpc.poll(min(RPC_SLICE_MS, int((deadline - time.monotonic()) * 1000) + 1)):
                continue
            frames = self.rpc.recv_multipart()
            reply = protocol.decode(frames[1:])
            if reply.correlation_id != self._rpc_id:
                continue  # a late answer to a call that timed out
            if reply.error_code:
                raise error_for_code(reply.error_code, str(reply.body.get("error_message", "")))
            return dict(reply.body)
        raise RequestTimedOutError(f"the supervisor did not answer {api.name} in {RPC_TIMEOUT_S} s")

    def refresh(self, force: bool = False) -> None:
        """Re-list partitions (control block names, directories) and the broker's role."""
        now = time.monotonic()
        if not force and now - self._listed_at < REFRESH_S:
            return
        self._listed_at = now
        body = self.call(ApiKey.INTERNAL_PARTITIONS, {})
        self.role = str(body["role"])
        listed = {(str(t), int(p)): (str(c), str(d)) for t, p, c, d in body["partitions"]}
        for key in [k for k, part in self.partitions.items() if listed.get(k, ("",))[0] != part.control_name]:
            self.partitions.pop(key).close()
            lane = self.router_lanes.pop(key, None)
            if lane is not None:
                lane.close()
            self._drop_waiter(key)
            for _seq, _acks, batch in self.router_backlog.pop(key, ()):
                self.router_backlog_bytes -= len(batch)
        for key, (control, directory) in listed.items():
            if key not in self.partitions:
                self.partitions[key] = _Partition(key[0], key[1], control, directory)

    def partition(self, topic: str, partition: int) -> _Partition:
        found = self.partitions.get((topic, partition))
        if found is None:
            self.refresh(force=True)  # created since the last listing?
            found = self.partitions.get((topic, partition))
        if found is None:
            if self.role != "leader":
                raise NotLeaderOrFollowerError(
                    "this broker is a follower; produce and fetch go to the leader"
                )
            raise UnknownTopicOrPartitionError(f"unknown topic or partition {topic}-{partition}")
        return found

    # -- dispatch --------------------------------------------------------------------------------------
    def handle(self, identity: bytes, frames: list[Any]) -> list[Any] | None:
        """Reply frames for requests answered here; None for relayed ones and deferred replies."""
        return dispatch.answer(
            frames, self.counters, lambda request: self._dispatch(identity, request, frames)
        )

    def _dispatch(self, identity: bytes, request: Message, frames: list[Any]) -> list[Any] | None:
        if request.api == ApiKey.GOODBYE:
            self.connections.forget(identity)
            return None
        if not self.connections.try_admit(identity, time.monotonic()):
            self.counters["connections.refused"] += 1
            raise TooManyConnectionsError(
                f"max.connections={self.connections.max_connections} clients are connected; retry "
                f"after one idles out (connections.max.idle.ms={self.config.connections_max_idle_ms})"
            )
        if request.api in INTERNAL_APIS:
            raise InvalidRequestError(f"{request.api.name} is internal to the broker")
        if request.api == ApiKey.PRODUCE:
            return self._on_produce(identity, request)
        if request.api == ApiKey.FETCH:
            return self._on_fetch(identity, request)
        if request.api == ApiKey.STATUS:
            self.write_status()  # fresh figures for the supervisor's answer, not 0.5 s old ones
        self.upstream.send_multipart([identity, *frames], copy=False)
        return None

    # -- remote produce ----------------------------------------------------------------------------------
    def _router_lane(self, topic: str, partition: int) -> LaneProducer:
        lane = self.router_lanes.get((topic, partition))
        if lane is None:
            body = self.call(
                ApiKey.INTERNAL_OPEN_ROUTER_LANE, {"topic": topic, "partition": partition, "pid": os.getpid()}
            )
            lane = LaneProducer.attach(str(body["lane"]))
            self.router_lanes[(topic, partition)] = lane
            try:
                waiter = SocketWaiter(socket_bell_address(str(body["lane"])))
            except OSError as exc:
                log.warning("no socket bell for %s-%d (%r): completions come through the futex thread",
                            topic, partition, exc)  # fmt: skip
            else:
                self.lane_waiters[(topic, partition)] = waiter
                if self.poller is not None:
                    self.poller.register(waiter.fd, zmq.POLLIN)
        return lane

    def _drop_waiter(self, key: tuple[str, int]) -> None:
        waiter = self.lane_waiters.pop(key, None)
        if waiter is not None:
            if self.poller is not None:
                self.poller.unregister(waiter.fd)
            waiter.close()

    def announce_waits(self) -> tuple[list[LaneProducer], bool]:
        """Before polling: announce the wait on every router lane with a produce outstanding (the
        worker then rings its socket bell). Returns those lanes (``end_waits`` them after the poll)
        and whether a completion is there already (then do not sleep)."""
        keys = {(topic, partition) for topic, partition, _sequence in self.pending_produce}
        announced, ready = [], False
        for key in keys:
            lane = self.router_lanes.get(key)
            if lane is not None and key in self.lane_waiters:
                announced.append(lane)
                ready = lane.announce_wait() or ready
        return announced, ready

    @staticmethod
    def end_waits(lanes: list[LaneProducer]) -> None:
        for lane in lanes:
            lane.end_wait()

    def _on_produce(self, identity: bytes, request: Message) -> list[Any] | None:
        topic = check_topic_name(field_of(request.body, "topic", str))
        partitions = field_of(request.body, "partitions", list)  # one partition id per data frame
        acks = field_of(request.body, "acks", int, default=1)
        if len(partitions) != len(request.data):
            raise InvalidRequestError(f"{len(partitions)} partitions for {len(request.data)} batches")
        pending = PendingProduce(identity, request, 0, [{} for _ in partitions])
        for i, (partition, batch) in enumerate(zip(partitions, request.data, strict=True)):
            try:
                if isinstance(partition, bool) or not isinstance(partition, int):
                    raise InvalidRequestError(f"partition {partition!r} is not an integer")
                self.partition(topic, partition)
                if acks not in (0, 1, -1):
                    raise InvalidRequiredAcksError(f"acks={acks}: 0, 1 or -1 (all)")
                self._sequence += 1
                key = (topic, partition)
                backlog = self.router_backlog.setdefault(key, deque())
                if backlog or not self._router_lane(topic, partition).try_send(
                    batch, sequence=self._sequence, acks=acks
                ):
                    if self.router_backlog_bytes + len(batch) > ROUTER_BACKLOG_BYTES:
                        raise RequestTimedOutError(
                            "the partition's router lane is full; retry (the worker is behind)"
                        )
                    # The lane is full: keep the batch (a zmq frame, no copy) and send it in order later.
                    backlog.append((self._sequence, acks, batch))
                    self.router_backlog_bytes += len(batch)
                if acks == 0:  # nobody waits for the append (Kafka's acks=0)
                    pending.results[i] = {"base_offset": -1, "error_code": 0, "partition": partition}
                    continue
                pending.outstanding += 1
                self.pending_produce[(topic, partition, self._sequence)] = (pending, i)
            except BrokerError as exc:
                pending.results[i] = {"error_code": exc.kafka_code, "error_message": str(exc)}
        if pending.outstanding == 0:
            return protocol.encode_reply(request, {"results": pending.results})
        return None

    def send_backlog(self) -> None:
        for key, backlog in self.router_backlog.items():
            lane = self.router_lanes.get(key)
            while backlog and lane is not None:
                sequence, acks, batch = backlog[0]
                if not lane.try_send(batch, sequence=sequence, acks=acks):
                    break
                backlog.popleft()
                self.router_backlog_bytes -= len(batch)

    def collect_completions(self, socket: zmq.Socket[Any]) -> None:
        if self.router_backlog_bytes:
            self.send_backlog()
        for (topic, partition), lane in self.router_lanes.items():
            for c in lane.poll_completions():
                entry = self.pending_produce.pop((topic, partition, c.sequence), None)
                if entry is None:
                    continue
                pending, i = entry
                pending.results[i] = {
                    "base_offset": c.base_offset,
                    "error_code": c.error_code,
                    "partition": partition,
                    "log_append_time_ms": c.log_append_time_ms,  # -1 unless the topic uses LogAppendTime
                }
                pending.outstanding -= 1
                if pending.outstanding == 0:
                    reply = protocol.encode_reply(pending.request, {"results": pending.results})
                    send_frames(socket, [pending.identity, *reply])

    # -- remote fetch ------------------------------------------------------------------------------------
    def _on_fetch(self, identity: bytes, request: Message) -> list[Any] | None:
        reply = self._try_fetch(request)
        if reply is not None:
            return reply
        wait_ms = field_of(request.body, "max_wait_ms", int, default=500)
        keys = tuple((str(e["topic"]), int(e["partition"])) for e in request.body["partitions"])
        self.pending_fetches.append(
            PendingFetch(identity, request, time.monotonic() + min(wait_ms, 30_000) / 1000, keys)
        )
        return None

    def _try_fetch(self, request: Message, *, final: bool = False) -> list[Any] | None:
        """Read every requested partition; None when nothing is there yet and we may still wait."""
        entries = field_of(request.body, "partitions", list)
        max_bytes = min(field_of(request.body, "max_bytes", int, default=FETCH_MAX_BYTES), FETCH_MAX_BYTES)
        results: list[dict[str, Any]] = []
        data: list[memoryview] = []
        total = 0
        for entry in entries:
            topic = check_topic_name(field_of(entry, "topic", str))
            partition = field_of(entry, "partition", int)
            offset = field_of(entry, "offset", int)
            part_max = min(
                field_of(entry, "max_bytes", int, default=PARTITION_FETCH_MAX_BYTES), max_bytes - total
            )
            try:
                part = self.partition(topic, partition)
                snap = part.control().read()
                high_watermark, log_start = snap.high_watermark, snap.log_start_offset
                if not log_start <= offset <= high_watermark:
                    raise OffsetOutOfRangeError(
                        f"offset {offset} outside [{log_start}, {high_watermark}] of {topic}-{partition}"
                    )
                view = None
                if offset < high_watermark and part_max > 0:
                    view = part.reader().read(offset, part_max, upto_offset=high_watermark)
                results.append(
                    {
                        "topic": topic,
                        "partition": partition,
                        "error_code": 0,
                        "high_watermark": high_watermark,
                        "log_start_offset": log_start,
                        "frame": len(data) if view is not None else -1,
                    }
                )
                if view is not None:
                    data.append(view)
                    total += len(view)
            except BrokerError as exc:
                self.counters[f"errors.{exc.kafka_name}"] += 1  # a damaged log: CORRUPT_MESSAGE
                results.append(
                    {
                        "topic": topic,
                        "partition": partition,
                        "error_code": exc.kafka_code,
                        "error_message": str(exc),
                        "frame": -1,
                    }
                )
        min_bytes = field_of(request.body, "min_bytes", int, default=1)
        if total < min_bytes and not final and not any(r["error_code"] for r in results):
            return None
        return protocol.encode_reply(request, {"partitions": results}, data)

    def expire_fetches(self, socket: zmq.Socket[Any]) -> None:
        now = time.monotonic()
        still = []
        for pending in self.pending_fetches:
            try:
                reply = self._try_fetch(pending.request, final=now >= pending.deadline)
            except BrokerError as exc:
                reply = protocol.encode_error_reply(pending.request, exc)
            if reply is None:
                still.append(pending)
            else:
                send_frames(socket, [pending.identity, *reply], copy=len(reply) <= 2)
        self.pending_fetches = still

    # -- waiting ------------------------------------------------------------------------------------------
    def watch_words(self) -> list[tuple[int, int]]:
        """``(address, counter)`` of the event counter of every partition something here waits for
        (a completion, lane room, data for a parked fetch); load it before looking (ring/futex_fd.py)."""
        # Completions of lanes with a socket bell wake the poll directly; the rest come through here.
        keys = {(t, p) for t, p, _sequence in self.pending_produce if (t, p) not in self.lane_waiters}
        keys.update(key for key, backlog in self.router_backlog.items() if backlog)
        for pending in self.pending_fetches:
            keys.update(pending.partitions)
        words = []
        for key in keys:
            part = self.partitions.get(key)
            if part is None:
                continue
            try:
                control = part.control()
            except BrokerError:
                continue  # gone: the pass answers its fetches with the error
            words.append((control.events_address, control.events()))
        return words

    def poll_timeout_ms(self, now: float) -> int:
        """Until the earliest parked fetch is due (its empty answer), at most POLL_MS; at most
        COMPLETION_WAIT_MS while a produce waits for its completion."""
        longest = COMPLETION_WAIT_MS if self.pending_produce else POLL_MS
        if not self.pending_fetches:
            return longest
        due_s = min(pending.deadline for pending in self.pending_fetches) - now
        return max(0, min(longest, int(due_s * 1000) + 1))

    # -- status and shutdown -----------------------------------------------------------------------------
    def write_status(self) -> None:
        status = {
            "pid": os.getpid(),
            "counters": dict(self.counters),
            "connections": len(self.connections),
            "pending_produce": len(self.pending_produce),
            "pending_fetches": len(self.pending_fetches),
            "backlog_bytes": self.router_backlog_bytes,
        }
        write_replace(self.spec.status_path, json.dumps(status).encode())

    def close(self) -> None:
        for part in self.partitions.values():
            part.close()
        for lane in self.router_lanes.values():
            lane.close()
        for waiter in self.lane_waiters.values():
            waiter.close()
        self.upstream.close(0)
        self.rpc.close(0)


def run(spec: RouterSpec) -> None:
    """The router process's body: serve until SIGTERM (or the supervisor's death)."""
    stopping = False
    router: Router | None = None

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        if router is not None:
            router.stopping = True

    signal.signal(signal.SIGTERM, stop)
    config = spec.config
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
    # An oversize message makes libzmq drop the sender's connection without a word (FACTS.md):
    # clients time out their requests and report, they never assume success.
    socket.setsockopt(zmq.MAXMSGSIZE, config.request_max_bytes)
    socket.setsockopt(zmq.HANDSHAKE_IVL, 5000)  # a peer that never finishes the handshake is dropped
    socket.setsockopt(zmq.SNDHWM, SEND_HWM)
    authenticator = None
    if config.curve_secret_key_file:
        from shmbroker.net.auth import CurveServer  # zmq's auth thread (asyncio, ssl): only with CURVE

        curve = CurveServer(Path(config.curve_secret_key_file), Path(config.curve_allowed_keys_dir))
        authenticator = curve.apply(context, socket)
    router = Router(spec, context)
    # The worker's wake-ups (completions, new data) as a readable fd next to the sockets: the loop
    # sleeps in poll instead of spinning with 100-us sleeps while anything is pending.
    waker = FutexFd()
    try:
        socket.bind(config.listeners)
        router.refresh(force=True)
        router.call(ApiKey.INTERNAL_ROUTER_READY, {"pid": os.getpid()})
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(router.upstream, zmq.POLLIN)
        poller.register(waker.fd, zmq.POLLIN)
        router.poller = poller
        for waiter in router.lane_waiters.values():
            poller.register(waiter.fd, zmq.POLLIN)
        next_tick = 0.0
        while not stopping:
            # Loaded before the look below, so a worker turn after it wakes the poll at once.
            words = router.watch_words()
            if router.pending_produce or router.router_backlog_bytes:
                router.collect_completions(socket)
            if router.pending_fetches:
                router.expire_fetches(socket)
            if words:
                waker.watch(words)
            announced, ready = router.announce_waits()
            events = dict(poller.poll(0 if ready else router.poll_timeout_ms(time.monotonic())))
            router.end_waits(announced)
            if waker.fd in events:
                waker.drain()
            if len(events) > 1 or (events and socket not in events and router.upstream not in events):
                for waiter in router.lane_waiters.values():
                    if waiter.fd in events:
                        waiter.drain()
            if socket in events:
                for _ in range(256):
                    frames = recv_frames(socket)
                    if frames is None:
                        break
                    if len(frames) < 2:
                        router.counters["malformed"] += 1
                        continue
                    reply = router.handle(frames[0].bytes, [f.buffer for f in frames[1:]])
                    if reply is not None:  # data frames (a fetch's log bytes) go without a copy
                        send_frames(socket, [frames[0], *reply], copy=len(reply) <= 2)
            if router.upstream in events:
                for _ in range(256):  # the supervisor's replies: [client identity, header, body, ...]
                    try:
                        socket.send_multipart(
                            router.upstream.recv_multipart(zmq.NOBLOCK, copy=False), copy=False
                        )
                    except zmq.Again:
                        break
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + STATUS_INTERVAL_S
                router.connections.expire(now)
                if spec.supervisor_pid and not pid_alive(spec.supervisor_pid):
                    break  # the supervisor is gone: nobody restarts workers or answers admin
                try:
                    router.refresh()
                    router.write_status()
                except (BrokerError, OSError) as exc:
                    if not router.stopping:
                        log.warning("router housekeeping: %r", exc)
    finally:
        waker.close()
        if authenticator is not None:
            authenticator.stop()
        socket.close(0)
        router.close()
        context.term()
