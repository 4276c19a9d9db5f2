"""``shmbroker serve``: the supervisor's main loop and the control requests it answers.

Remote clients talk to the router process (workers/router.py), which owns the public listener and the
remote data path (produce into its own lanes, fetch from the segment files). Every other request
(metadata, topics, local lane hand-over, offsets, status, groups, promote) the router relays here,
over a private ipc ROUTER socket in the broker's 0700 runtime directory, with the client's identity
in front: ``[router, client identity, header, body...]``. Replies go back the same way. The router
is a child like the workers: if it dies, the supervisor restarts it and clients reconnect.

Every request that fails gets a typed error reply (Kafka's code and a message); a message that
cannot be parsed at all is counted and dropped. Nothing a client sends can stop this loop.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import zmq

from shmbroker import __version__
from shmbroker.config import BrokerConfig
from shmbroker.errors import (
    BrokerError,
    CoordinatorNotAvailableError,
    InvalidConfigError,
    InvalidRequestError,
    NotLeaderOrFollowerError,
    OffsetOutOfRangeError,
    UnknownTopicOrPartitionError,
)
from shmbroker.net import protocol
from shmbroker.net.protocol import GROUP_APIS, INTERNAL_APIS, ApiKey, Message, field_of
from shmbroker.ring.control import WorkerState
from shmbroker.workers import dispatch
from shmbroker.workers.supervisor import Supervisor
from shmbroker.workers.topics import TopicStore, check_topic_name

if TYPE_CHECKING:  # imported where used: numpy, the disk layer and zmq's auth thread stay off start-up
    from shmbroker.disk.reader import LogReader
    from shmbroker.net.auth import CurveServer

log = logging.getLogger(__name__)

POLL_MS = 50
ROUTER_IDENTITY = b"router"  # the client identity of the router's own calls (INTERNAL_APIS)
# What a follower answers itself; everything else (produce, fetch, lanes, admin, groups) belongs to
# the leader and gets NOT_LEADER_OR_FOLLOWER, which clients retry.
FOLLOWER_APIS = frozenset({ApiKey.METADATA, ApiKey.STATUS, ApiKey.PROMOTE}) | INTERNAL_APIS
TOPIC_READY_TIMEOUT_S = 10.0


def process_age_s() -> float:
    """Seconds since this process started, to 10 ms (0.0 where /proc cannot say). The ready line
    counts from there: `shmbroker serve` starts the fork server and imports the broker before it
    calls serve(), and that is start-up time too. (psutil's create_time adds up to a second of
    error: it counts from the boot time in whole seconds.)"""
    try:
        # Field 22 of /proc/self/stat, after the parenthesised command name: clock ticks since boot.
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def host_id() -> str:
    """Same value on every process of one boot of one host: decides whether shared memory is usable."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return os.uname().nodename


class BrokerService:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.supervisor = Supervisor(config)
        self.counters: Counter[str] = Counter()
        self.readers: dict[tuple[str, int], LogReader] = {}  # ListOffsets by timestamp
        self.router_peer: bytes | None = None  # the router's relay socket, where deferred replies go
        self._processes: dict[int, psutil.Process] = {}
        self.relay: zmq.Socket[Any] | None = None
        self.relayed: dict[tuple[bytes, int], Message] = {}  # group requests awaiting the coordinator
        self._topics_sent_to = 0
        self._rate_marks: dict[tuple[str, int], tuple[float, int, int]] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.supervisor.check_peers_at_start()
        # Before the workers, though "ready" does not wait for it: a broker that says ready has
        # every child running. Its imports come after its fork (workers/forkserver.py) and overlap
        # the workers' start.
        self.supervisor.start_coordinator()
        if self.supervisor.is_leader:
            for spec in list(self.supervisor.topics.topics.values()):
                self.supervisor.start_topic(spec)
        self.supervisor.start_replication()

    def send_topics(self) -> None:
        """Tell the coordinator the topics (assignments and commit checks need partition counts)."""
        if self.relay is None:
            return
        body = {"partitions_per_topic": {n: s.partitions for n, s in self.supervisor.topics.topics.items()}}
        self.relay.send_multipart([b"", *protocol.encode_request(ApiKey.METADATA, 0, body)])

    def _relay_to_coordinator(self, identity: bytes, request: Message, frames: list[Any]) -> list[Any] | None:
        if self.relay is None or not self.supervisor.coordinator_alive():
            raise CoordinatorNotAvailableError("the group coordinator is restarting; retry")
        # The coordinator may have restarted since we last told it the topics: it is cheap to repeat.
        if self.supervisor.coordinator_restarts != self._topics_sent_to:
            self.send_topics()
            self._topics_sent_to = self.supervisor.coordinator_restarts
        self.relay.send_multipart([identity, *frames], copy=False)
        self.relayed[(identity, request.correlation_id)] = request
        return None

    def relay_reply(self, socket: zmq.Socket[Any], frames: list[Any]) -> None:
        """A coordinator reply, [client identity, header, body, ...], goes to its client."""
        if len(frames) >= 2 and len(frames[1]) == protocol.HEADER.size:
            correlation_id = protocol.HEADER.unpack(frames[1].bytes)[3]
            self.relayed.pop((frames[0].bytes, correlation_id), None)
        if self.router_peer is not None:
            socket.send_multipart([self.router_peer, *frames], copy=False)

    def fail_relayed(self, socket: zmq.Socket[Any]) -> None:
        """The coordinator died with these requests (parked joins among them): answer them now, retriable,
        rather than let each client wait out its timeout."""
        error = CoordinatorNotAvailableError("the group coordinator restarted; retry")
        for (identity, _cid), request in self.relayed.items():
            if self.router_peer is not None:
                reply = protocol.encode_error_reply(request, error)
                socket.send_multipart([self.router_peer, identity, *reply], copy=False)
        self.relayed.clear()

    # -- request dispatch ----------------------------------------------------------------------------
    def handle(self, identity: bytes, frames: list[Any]) -> list[Any] | None:
        """The reply frames, or None when the reply comes later (a relayed group request)."""
        return dispatch.answer(
            frames, self.counters, lambda request: self._dispatch(identity, request, frames)
        )

    def _dispatch(self, identity: bytes, request: Message, frames: list[Any]) -> list[Any] | None:
        if request.api in INTERNAL_APIS and identity != ROUTER_IDENTITY:
            raise InvalidRequestError(f"{request.api.name} is internal to the broker")
        if not self.supervisor.is_leader and request.api not in FOLLOWER_APIS:
            raise NotLeaderOrFollowerError(
                f"this broker follows {', '.join(self.config.replication_peers)}; "
                f"send {request.api.name} to the leader (or `shmbroker promote` this one)"
            )
        if request.api in GROUP_APIS:
            return self._relay_to_coordinator(identity, request, frames)
        handler = getattr(self, f"_on_{request.api.name.lower()}")
        return handler(identity, request)  # type: ignore[no-any-return]

    def _on_init_producer_id(self, identity: bytes, request: Message) -> list[Any]:
        # Epochs would fence a zombie with the same id; every InitProducerId gets a new id instead.
        return protocol.encode_reply(
            request, {"producer_id": self.supervisor.new_producer_id(), "producer_epoch": 0}
        )

    def _on_metadata(self, identity: bytes, request: Message) -> list[Any]:
        wanted = field_of(request.body, "topics", list, default=None)
        if not self.supervisor.is_leader:
            self.supervisor.topics = TopicStore(self.supervisor.data_dir)  # the replicator mirrors them
        topics = self.supervisor.topics.topics
        names = sorted(topics) if wanted is None else [str(t) for t in wanted]
        out = []
        for name in names:
            spec = topics.get(name)
            if (
                spec is None
                and wanted is not None
                and self.config.auto_create_topics
                and request.body.get("allow_auto_create")
            ):
                spec = self._create_topic(check_topic_name(name), self.config.num_partitions, {})
            if spec is None:
                out.append({"name": name, "error_code": UnknownTopicOrPartitionError.kafka_code})
                continue
            out.append({"name": name, "error_code": 0, "partitions": spec.partitions, "config": spec.config})
        return protocol.encode_reply(
            request,
            {
                "topics": out,
                "host_id": host_id(),
                "data_dir": str(self.supervisor.data_dir),
                "broker_pid": os.getpid(),
                "version": __version__,
                "max_message_bytes": self.config.log.max_message_bytes,
                "role": self.supervisor.node.role,
                "leader_epoch": self.supervisor.node.epoch,
                "protocol_revision": protocol.REVISION,
            },
        )

    def _create_topic(self, name: str, partitions: int, config: dict[str, Any]) -> Any:
        spec = self.supervisor.topics.create(name, partitions, config, self.config.log)
        self.supervisor.start_topic(spec)
        # Answer once the partitions take writes (directories exist, offsets published), so a client
        # can use the topic as soon as create_topics returns. Bounded: a worker that does not come
        # up is the supervisor's to restart, and clients retry.
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
        while time.monotonic() < deadline and not self.supervisor.all_ready(spec.name):
            time.sleep(0.001)
        self.send_topics()
        return spec

    def _on_create_topics(self, identity: bytes, request: Message) -> list[Any]:
        results = []
        for entry in field_of(request.body, "topics", list):
            try:
                if not isinstance(entry, dict):
                    raise InvalidRequestError("each topic is an object with name, num_partitions, config")
                self._create_topic(
                    check_topic_name(entry.get("name")),
                    entry.get("num_partitions", self.config.num_partitions),
                    entry.get("config", {}),
                )
                results.append({"name": entry["name"], "error_code": 0})
            except BrokerError as exc:
                results.append(
                    {
                        "name": str(entry.get("name") if isinstance(entry, dict) else entry)[:255],
                        "error_code": exc.kafka_code,
                        "error_message": str(exc),
                    }
                )
        return protocol.encode_reply(request, {"topics": results})

    def _on_delete_topics(self, identity: bytes, request: Message) -> list[Any]:
        results = []
        for name in field_of(request.body, "topics", list):
            try:
                check_topic_name(name)
                self.supervisor.topics.get(name)
                self.supervisor.stop_topic(name)
                for key in [k for k in self.readers if k[0] == name]:
                    self.readers.pop(key).close()
                self.supervisor.topics.delete(name)
                self.send_topics()
                results.append({"name": name, "error_code": 0})
            except BrokerError as exc:
                results.append(
                    {"name": str(name)[:255], "error_code": exc.kafka_code, "error_message": str(exc)}
                )
        return protocol.encode_reply(request, {"topics": results})

    def _slot(self, body: dict[str, Any]) -> Any:
        topic = check_topic_name(field_of(body, "topic", str))
        partition = field_of(body, "partition", int)
        self.supervisor.topics.check_partition(topic, partition)
        return self.supervisor.slots[(topic, partition)]

    def _on_open_lane(self, identity: bytes, request: Message) -> list[Any]:
        slot = self._slot(request.body)
        pid = field_of(request.body, "pid", int)
        if not psutil.pid_exists(pid):
            raise InvalidRequestError(f"pid {pid} does not exist on this host")
        # A producer whose lane died with an earlier broker asks again with that lane and its
        # producer id: the lane it still has, if this broker serves it, else a new lane with the same
        # id, so the batches it resends are deduplicated against the log's tail (partition.py).
        known = request.body.get("lane")
        lane = slot.lanes.get(known) if isinstance(known, str) else None
        if lane is None or lane.pid != pid:
            wanted = request.body.get("producer_id")
            lane = self.supervisor.open_lane(
                slot.topic, slot.partition, pid, producer_id=wanted if isinstance(wanted, int) else None
            )
        return protocol.encode_reply(
            request,
            {
                "lane": lane.name,
                "producer_id": lane.producer_id,
                "control": slot.control.name,
                "directory": str(self.supervisor.topics.partition_dir(slot.topic, slot.partition)),
            },
        )

    def _on_close_lane(self, identity: bytes, request: Message) -> list[Any]:
        slot = self._slot(request.body)
        self.supervisor.close_lane(slot, field_of(request.body, "lane", str))
        return protocol.encode_reply(request, {})

    def _partition_info(self, topic: str, partition: int) -> dict[str, Any]:
        slot = self.supervisor.slots[(topic, partition)]
        snap = slot.reader().read()
        return {
            "topic": topic,
            "partition": partition,
            "control": slot.control.name,
            "directory": str(self.supervisor.topics.partition_dir(topic, partition)),
            "log_start_offset": snap.log_start_offset,
            "log_end_offset": snap.log_end_offset,
            "high_watermark": snap.high_watermark,
            "state": WorkerState(snap.state).name,
            "records_in": snap.records_in,
            "bytes_in": snap.bytes_in,
            "batches_in": snap.batches_in,
            "errors": snap.errors_corrupt + snap.errors_too_large + snap.errors_storage + snap.errors_other,
            "pid": slot.process.pid if slot.process else None,
            "failed": slot.failed,
            "lanes": len(slot.lanes),
        }

    def _on_list_offsets(self, identity: bytes, request: Message) -> list[Any]:
        slot = self._slot(request.body)
        timestamp = field_of(request.body, "timestamp", int, default=-1)
        info = self._partition_info(slot.topic, slot.partition)
        offset: int | None
        if timestamp == -1:  # latest, as Kafka's ListOffsets
            offset = info["high_watermark"]
        elif timestamp == -2:  # earliest
            offset = info["log_start_offset"]
        else:
            found = self._offset_for_timestamp(slot.topic, slot.partition, timestamp, info)
            offset = info["high_watermark"] if found is None else found
        return protocol.encode_reply(request, {**info, "offset": offset})

    def _offset_for_timestamp(
        self, topic: str, partition: int, timestamp_ms: int, info: dict[str, Any]
    ) -> int | None:
        """First offset whose timestamp >= ``timestamp_ms`` (Kafka's ListOffsets), below the high watermark.

        Scans batch headers (max timestamp per batch), then decodes the one batch that holds the
        answer; bounded by the log's size, not by memory.
        """
        from shmbroker import records

        reader = self._reader(topic, partition)
        offset, end = info["log_start_offset"], info["high_watermark"]
        while offset < end:
            view = reader.read(offset, 1 << 20, upto_offset=end)
            if view is None:
                return None
            for position, header in records.iter_batches(view):
                if header.max_timestamp_ms >= timestamp_ms:
                    batch = view[position : position + header.size_bytes]
                    for record in records.decode_batch(batch, max_uncompressed_bytes=64 << 20):
                        if record.timestamp_ms >= timestamp_ms and record.offset >= offset:
                            return int(record.offset)
                offset = max(offset, header.next_offset)
        return None

    def _process_row(self, role: str, pid: int) -> dict[str, Any]:
        """psutil's view of one process; the Process object is kept so CPU% covers the last interval."""
        process = self._processes.get(pid)
        if process is None:
            try:
                process = self._processes[pid] = psutil.Process(pid)
            except psutil.Error:
                return {"role": role, "pid": pid, "gone": True}
        return _process_row_of(process, role)

    def _on_status(self, identity: bytes, request: Message) -> list[Any]:
        processes = [self._process_row("supervisor", os.getpid())]
        partitions = []
        now = time.monotonic()
        for role, child in (("router", self.supervisor.router), ("replication", self.supervisor.replication)):
            if child is not None and child.process is not None and child.process.pid:
                processes.append(self._process_row(role, child.process.pid))
        router = self.supervisor.router_status()
        for (topic, partition), slot in sorted(self.supervisor.slots.items()):
            info = self._partition_info(topic, partition)
            # Rates over the time since the previous status request (the first one reports 0).
            before = self._rate_marks.get((topic, partition))
            self._rate_marks[(topic, partition)] = (now, info["records_in"], info["bytes_in"])
            if before is not None and now > before[0]:
                info["records_per_s"] = (info["records_in"] - before[1]) / (now - before[0])
                info["bytes_per_s"] = (info["bytes_in"] - before[2]) / (now - before[0])
            partitions.append(info)
            if slot.process is not None and slot.process.pid:
                processes.append(self._process_row(f"partition {topic}-{partition}", slot.process.pid))
        return protocol.encode_reply(
            request,
            {
                "processes": processes,
                "partitions": partitions,
                "counters": dict(self.counters + Counter(router.get("counters", {}))),
                "connections": router.get("connections", 0),
                "router": router,
                "data_dir": str(self.supervisor.data_dir),
                "listeners": self.config.listeners,
                "role": self.supervisor.node.role,
                "leader_epoch": self.supervisor.node.epoch,
                "replication": self.supervisor.replication_status(),
            },
        )

    def _on_promote(self, identity: bytes, request: Message) -> list[Any]:
        epoch = self.supervisor.promote()
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
        while time.monotonic() < deadline and not self.supervisor.all_ready():
            time.sleep(0.002)
        self.send_topics()
        log.warning("promoted to leader at epoch %d", epoch)
        return protocol.encode_reply(
            request, {"leader_epoch": epoch, "partitions": len(self.supervisor.slots)}
        )

    # -- the router's own calls (INTERNAL_APIS) ---------------------------------------------------------
    def _on_internal_partitions(self, identity: bytes, request: Message) -> list[Any]:
        partitions = [
            [topic, p, slot.control.name, str(self.supervisor.topics.partition_dir(topic, p))]
            for (topic, p), slot in sorted(self.supervisor.slots.items())
        ]
        return protocol.encode_reply(request, {"role": self.supervisor.node.role, "partitions": partitions})

    def _on_internal_open_router_lane(self, identity: bytes, request: Message) -> list[Any]:
        slot = self._slot(request.body)
        lane = self.supervisor.open_lane(
            slot.topic, slot.partition, field_of(request.body, "pid", int), trusted=True
        )
        return protocol.encode_reply(request, {"lane": lane.name})

    def _on_internal_router_ready(self, identity: bytes, request: Message) -> list[Any]:
        self.supervisor.router_ready_pid = field_of(request.body, "pid", int)
        return protocol.encode_reply(request, {})

    def _reader(self, topic: str, partition: int) -> LogReader:
        reader = self.readers.get((topic, partition))
        if reader is None:
            from shmbroker.disk.reader import LogReader

            reader = LogReader(self.supervisor.topics.partition_dir(topic, partition))
            self.readers[(topic, partition)] = reader
        return reader

    def shutdown(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()
        self.supervisor.shutdown()


def _out_of_range(offset: int, info: dict[str, Any]) -> OffsetOutOfRangeError:
    return OffsetOutOfRangeError(
        f"offset {offset} outside [{info['log_start_offset']}, {info['high_watermark']}]"
        f" of {info['topic']}-{info['partition']}"
    )


def _process_row_of(p: psutil.Process, role: str) -> dict[str, Any]:
    try:
        with p.oneshot():
            memory = p.memory_full_info()
            return {
                "role": role,
                "pid": p.pid,
                "cpu_percent": p.cpu_percent(None),
                "rss_bytes": memory.rss,
                "uss_bytes": memory.uss,
                "cpu_s": sum(p.cpu_times()[:2]),
            }
    except psutil.Error:
        return {"role": role, "pid": p.pid, "gone": True}


def curve_of(config: BrokerConfig) -> CurveServer | None:
    if bool(config.curve_secret_key_file) != bool(config.curve_allowed_keys_dir):
        raise InvalidConfigError(
            "CURVE needs both listener.curve.secret.key.file and listener.curve.allowed.keys.dir"
        )
    if not config.curve_secret_key_file:
        return None
    from shmbroker.net.auth import CurveServer

    return CurveServer(Path(config.curve_secret_key_file), Path(config.curve_allowed_keys_dir))


def check_listener(address: str, *, authenticated: bool) -> None:
    """Refuse to listen beyond loopback without CURVE: CURVE without ZAP would take any client key."""
    if address.startswith("ipc://"):
        return  # a Unix socket: this host only, guarded by its file mode
    if not address.startswith("tcp://"):
        raise InvalidConfigError(f"listener {address!r}: tcp://HOST:PORT or ipc:///PATH")
    host = address[len("tcp://") :].rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]") and not authenticated:
        raise InvalidConfigError(
            f"listener {address!r} is not loopback; set listener.curve.secret.key.file and "
            "listener.curve.allowed.keys.dir (see `shmbroker keys generate`) to serve beyond this host"
        )


def check_replication_listener(config: BrokerConfig) -> None:
    """Beyond loopback the replication listener needs keys: a stranger must not pose as a follower."""
    address = config.replication_listener
    if not address:
        return
    host = address.rpartition(":")[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1") and not config.replication_allowed_keys_dir:
        raise InvalidConfigError(
            f"replication.listener {address!r} is not loopback; set replication.allowed.keys.dir "
            "(followers' keys, see `shmbroker keys replication`) to replicate beyond this host"
        )


def serve(config: BrokerConfig, *, stop: threading.Event | None = None, ready: Any = None) -> int:
    """Run the broker until SIGTERM/SIGINT (or ``stop``); return the exit code."""
    curve = curve_of(config)
    check_listener(config.listeners, authenticated=curve is not None)
    if curve is not None and not curve.allowed_keys_dir.is_dir():
        raise InvalidConfigError(f"CURVE allow-list directory {curve.allowed_keys_dir} does not exist")
    check_replication_listener(config)
    stop = stop or threading.Event()
    service = BrokerService(config)
    # The handler only stores a flag: Event.set takes a lock, and a second SIGTERM arriving while the
    # first handler held it deadlocked the supervisor (seen: `pkill` twice left a broker hung).
    signalled: list[int] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: signalled.append(signum))
    context = zmq.Context()
    control = context.socket(zmq.ROUTER)  # the router's relay and calls; private (0700 directory)
    control.setsockopt(zmq.LINGER, 0)
    control.setsockopt(zmq.ROUTER_MANDATORY, 0)
    started = time.monotonic() - process_age_s()
    try:
        # The router first: it binds the public listener and asks for the partitions while the
        # workers start (its calls wait in the control socket until the loop below answers). No
        # socket of ours leaks into a child: the fork server is a fresh exec, passed only its fds.
        control.bind(service.supervisor.control_endpoint)
        service.supervisor.start_router()
        forked_router = time.monotonic()  # its start waited for the fork server's preload
        service.start()
        forked_all = time.monotonic()
        relay = context.socket(zmq.DEALER)  # to the group coordinator process
        relay.setsockopt(zmq.LINGER, 0)
        relay.connect(service.supervisor.coordinator_endpoint)
        service.relay = relay
        service.send_topics()
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(relay, zmq.POLLIN)
        deadline = time.monotonic() + 30
        announced = False
        next_watch = 0.0
        while not stop.is_set() and not signalled:
            events = dict(poller.poll(POLL_MS if announced else 2))
            if control in events:
                for _ in range(256):
                    try:
                        frames = control.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if len(frames) < 3:
                        service.counters["malformed"] += 1
                        continue
                    peer, identity = frames[0], frames[1].bytes
                    if identity != ROUTER_IDENTITY:
                        service.router_peer = peer.bytes  # the relay socket: deferred replies go there
                    reply = service.handle(identity, [f.buffer for f in frames[2:]])
                    if reply is not None:
                        control.send_multipart([peer, frames[1], *reply], copy=False)
            if relay in events:
                for _ in range(256):  # coordinator replies: [client identity, header, body, ...]
                    try:
                        service.relay_reply(control, relay.recv_multipart(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
            now = time.monotonic()
            if not announced:
                supervisor = service.supervisor
                if supervisor.router_failed():
                    print(f"shmbroker: cannot serve on {config.listeners}: {supervisor.router_failed()}",
                          file=sys.stderr, flush=True)  # fmt: skip
                    return 1
                if (supervisor.all_ready() and supervisor.router_ready_pid) or now > deadline:
                    announced = True
                    log.debug(
                        "start-up after process start: router forked (fork server up) %.0f ms, "
                        "workers and coordinator forked %.0f ms, ready %.0f ms",
                        *((t - started) * 1000 for t in (forked_router, forked_all, now)),
                    )
                    print(
                        f"shmbroker {__version__} ready: {len(supervisor.slots)} partitions, data in "
                        f"{supervisor.data_dir}, listening on {config.listeners} "
                        f"({(now - started) * 1000:.0f} ms after start)",
                        flush=True,
                    )
                    if ready is not None:
                        ready()
            if now >= next_watch:
                service.supervisor.watch(now)
                next_watch = now + 0.2
                if not service.supervisor.coordinator_alive() and service.relayed:
                    service.fail_relayed(control)
        return 0
    finally:
        control.close(0)
        if service.relay is not None:
            service.relay.close(0)
        context.term()
        service.shutdown()
        print("shmbroker stopped cleanly", file=sys.stderr, flush=True)
