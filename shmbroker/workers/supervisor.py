"""The supervisor: ``shmbroker serve``. Spawns, watches, restarts and stops the partition workers,
owns every shared-memory block, and answers clients on the listener (workers/service.py).

    shmbroker serve
      |- fork server            started first (workers/forkserver.py); forks every child warm
      |- partition worker x N   one per partition (leader role only)
      |- coordinator            consumer groups
      |- replication            when configured: streams to followers, or (follower role) owns the
      |                         logs and follows the leader (workers/replicator.py)
      |- router                 the public ZeroMQ listener and the remote data path (workers/router.py)
      '- (in this process) a private control socket the router relays admin requests to

Ownership (docs/ownership.md): this process creates and unlinks every shm block and semaphore; it
lists their names in ``<data>/.shm-registry`` before creating them, so a broker that starts after
a SIGKILLed one removes what the dead one left. ``<data>/.lock`` (flock) keeps a second broker off
the same data directory; the kernel drops the lock with its holder, so a dead broker never wedges
the next one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import posix_ipc
import psutil

from shmbroker.config import BrokerConfig
from shmbroker.disk.epochs import EpochCache
from shmbroker.errors import BrokenError, LockedError, NotLeaderOrFollowerError
from shmbroker.net.replication import tp_name
from shmbroker.ring.block import new_name
from shmbroker.ring.control import ControlBlock, ControlReader, WorkerState, create_control
from shmbroker.ring.lane import LaneBlock, create_lane
from shmbroker.workers import forkserver, node_state
from shmbroker.workers.specs import CoordinatorSpec, ReplicationSpec, RouterSpec, WorkerSpec
from shmbroker.workers.topics import TopicSpec, TopicStore

log = logging.getLogger(__name__)

REGISTRY_FILE = ".shm-registry"
RUNTIME_FILE = ".runtime-dir"
LOCK_FILE = ".lock"
STOP_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 0.2


def unlink_name(name: str) -> None:
    """Remove the shm block and the semaphore called ``name``, whichever exist (blocks and their
    doorbells share a name; the registry lists each name once)."""
    for unlink in (posix_ipc.unlink_shared_memory, posix_ipc.unlink_semaphore):
        try:
            unlink(name)
        except posix_ipc.ExistentialError:
            pass


@dataclass
class LaneRecord:
    name: str
    topic: str
    partition: int
    producer_id: int
    pid: int
    pid_create_time: float
    lane: LaneBlock
    trusted: bool = False


@dataclass
class ChildSlot:
    """A child process other than a partition worker (the coordinator), under the same restart policy."""

    process: BaseProcess | None = None
    crashes: list[float] = field(default_factory=list)
    restart_at: float = 0.0
    failed: str | None = None


@dataclass
class PartitionSlot:
    """Everything the supervisor keeps for one partition, across restarts of its worker."""

    topic: str
    partition: int
    control: ControlBlock
    process: BaseProcess | None = None
    commands: Connection | None = None
    crashes: list[float] = field(default_factory=list)
    restart_at: float = 0.0
    failed: str | None = None  # set when the supervisor gave up restarting it
    lanes: dict[str, LaneRecord] = field(default_factory=dict)
    _reader: ControlReader | None = None

    @property
    def key(self) -> str:
        return f"{self.topic}-{self.partition}"

    def reader(self) -> ControlReader:
        if self._reader is None:
            self._reader = ControlReader(self.control.block.view[: self.control.block.size_bytes])
        return self._reader

    def send(self, *command: Any) -> None:
        if self.commands is not None:
            try:
                self.commands.send(command)
            except (BrokenPipeError, OSError):  # the worker died; its restart re-attaches the lanes
                pass
        self.control.doorbell.ring()


class Supervisor:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        self._registry = self.data_dir / REGISTRY_FILE
        self._remove_stale_blocks()
        self.topics = TopicStore(self.data_dir)
        self.slots: dict[tuple[str, int], PartitionSlot] = {}
        # Children come from the fork server (workers/forkserver.py): `shmbroker serve` started it
        # before this process imported much, and in any case before any socket is bound.
        self._ctx = forkserver.context()
        self._next_producer_id = (time.time_ns() >> 20) & 0x3FFFFFFFFFFF  # unique across restarts
        self.started_ms = int(time.time() * 1000)
        # Private (0700) directory for the internal ipc endpoints: only this user can connect.
        # A SIGKILLed predecessor could not remove its own: do it for it.
        previous = self.data_dir / RUNTIME_FILE
        if previous.exists():
            shutil.rmtree(previous.read_text().strip() or "/nonexistent", ignore_errors=True)
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="shmb-run-"))
        previous.write_text(str(self.runtime_dir))
        self.coordinator_endpoint = f"ipc://{self.runtime_dir}/coordinator.sock"
        self.control_endpoint = f"ipc://{self.runtime_dir}/control.sock"
        self.router: ChildSlot | None = None
        self.router_ready_pid = 0
        self.router_status_path = self.runtime_dir / "router-status.json"
        self.coordinator: ChildSlot | None = None
        self.coordinator_restarts = 0
        self.node = node_state.load(self.data_dir, config.replication_role)
        self.replication: ChildSlot | None = None
        self._replication_pipe: Connection | None = None
        self.replication_status_path = self.runtime_dir / "replication-status.json"

    @property
    def replicating(self) -> bool:
        return bool(self.config.replication_listener or self.config.replication_peers)

    @property
    def is_leader(self) -> bool:
        return self.node.role == "leader"

    # -- data dir lock and shm registry ---------------------------------------------------------
    def _take_lock(self) -> int:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockedError(
                f"data dir {self.data_dir} is in use by another broker (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _remove_stale_blocks(self) -> None:
        if self._registry.exists():
            for name in self._registry.read_text().split():
                unlink_name(name)
        self._registry.write_text("")

    def _new_registered_name(self) -> str:
        """A fresh name, written to the registry before anything is created under it."""
        name = new_name()
        with open(self._registry, "a") as f:
            f.write(name + "\n")
        return name

    # -- partitions -----------------------------------------------------------------------------
    def start_topic(self, spec: TopicSpec) -> None:
        for p in range(spec.partitions):
            _name, control = create_control(p, name=self._new_registered_name())
            slot = PartitionSlot(spec.name, p, control)
            self.slots[(spec.name, p)] = slot
            self._spawn(slot)
        self.notify_replication()

    def _spawn(self, slot: PartitionSlot) -> None:
        spec = self.topics.get(slot.topic)
        cpu = None
        if self.config.cpu_affinity:
            cpu = len(self.slots) % (os.cpu_count() or 1)
        worker_spec = WorkerSpec(
            topic=slot.topic,
            partition=slot.partition,
            directory=self.topics.partition_dir(slot.topic, slot.partition),
            log_config=spec.log_config(self.config.log),
            control_name=slot.control.name,
            cpu=cpu,
            spin_s=self.config.worker_spin_us / 1e6,
            leader_epoch=self.node.epoch,
        )
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=forkserver.worker_main,
            args=(worker_spec, child_end),
            name=f"partition {slot.key}",
            daemon=False,
        )
        process.start()
        child_end.close()
        slot.process, slot.commands = process, parent_end
        for lane in slot.lanes.values():
            slot.send("attach", lane.name, lane.producer_id, lane.pid, lane.trusted)

    def stop_topic(self, topic: str) -> None:
        for key in [k for k in self.slots if k[0] == topic]:
            slot = self.slots.pop(key)
            self._stop_slot(slot)
        self.notify_replication()

    def _stop_slot(self, slot: PartitionSlot) -> None:
        slot.send("stop")
        if slot.process is not None:
            slot.process.join(STOP_TIMEOUT_S)
            if slot.process.is_alive():
                log.error("worker %s did not stop in %.0f s; killing it", slot.key, STOP_TIMEOUT_S)
                slot.process.kill()
                slot.process.join(2)
        for lane in slot.lanes.values():
            lane.lane.close()
            lane.lane.unlink()
        if slot._reader is not None:
            slot._reader.close()
        slot.control.close()
        slot.control.unlink()

    def all_ready(self, topic: str | None = None) -> bool:
        return all(s.failed or _is_ready(s) for s in self.slots.values() if topic is None or s.topic == topic)

    def watch(self, now: float) -> None:
        """Restart crashed children with backoff; give up on a crash loop; reclaim dead producers' lanes."""
        for slot in self.slots.values():
            if self._crashed_and_due(slot, f"partition {slot.key}", now):
                self._spawn(slot)
        if self.coordinator is not None and self._crashed_and_due(self.coordinator, "coordinator", now):
            self._spawn_coordinator()
            self.coordinator_restarts += 1
        if self.replication is not None and self._crashed_and_due(self.replication, "replication", now):
            self._spawn_replication()
        if self.router is not None and self._crashed_and_due(self.router, "router", now):
            self._spawn_router()
        self._reclaim_dead_lanes()

    def _crashed_and_due(self, slot: PartitionSlot | ChildSlot, name: str, now: float) -> bool:
        """The restart policy, for any child: True when it died and its backoff has passed."""
        process = slot.process
        if slot.failed or process is None or process.exitcode is None:
            return False
        if slot.restart_at == 0.0:
            slot.crashes = [t for t in slot.crashes if now - t < self.config.restart_window_ms / 1000]
            slot.crashes.append(now)
            log.error("%s exited with %s (crash %d)", name, process.exitcode, len(slot.crashes))
            if len(slot.crashes) > self.config.max_restarts:
                slot.failed = (
                    f"{name} crashed {len(slot.crashes)} times in "
                    f"{self.config.restart_window_ms} ms; not restarting it (see the log above)"
                )
                log.error(slot.failed)
                return False
            backoff_ms = min(5000, self.config.restart_backoff_ms * 2 ** (len(slot.crashes) - 1))
            slot.restart_at = now + backoff_ms / 1000
            return False
        if now >= slot.restart_at:
            slot.restart_at = 0.0
            return True
        return False

    # -- group coordinator ------------------------------------------------------------------------
    def start_coordinator(self) -> str:
        """Start the coordinator process; return the private endpoint the relay connects to."""
        self.coordinator = ChildSlot()
        self._spawn_coordinator()
        return self.coordinator_endpoint

    def _spawn_coordinator(self) -> None:
        assert self.coordinator is not None
        spec = CoordinatorSpec(self.data_dir, self.coordinator_endpoint, os.getpid())
        process = self._ctx.Process(
            target=forkserver.coordinator_main, args=(spec,), name="coordinator", daemon=False
        )
        process.start()
        self.coordinator.process = process

    # -- the router process ---------------------------------------------------------------------------
    def start_router(self) -> None:
        self.router = ChildSlot()
        self._spawn_router()

    def _spawn_router(self) -> None:
        assert self.router is not None
        self.router_ready_pid = 0
        spec = RouterSpec(self.config, self.control_endpoint, self.router_status_path, os.getpid())
        process = self._ctx.Process(target=forkserver.router_main, args=(spec,), name="router", daemon=False)
        process.start()
        self.router.process = process

    def router_failed(self) -> str | None:
        """Why the router cannot serve, once the restart policy gave up on it (a busy port...)."""
        return self.router.failed if self.router is not None else None

    def router_status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads(self.router_status_path.read_text())
            return status
        except (OSError, ValueError):
            return {}

    def _stop_router(self) -> None:
        if self.router is None or self.router.process is None:
            return
        self.router.process.terminate()
        _join_or_kill(self.router.process, "router")
        self.router = None

    # -- replication --------------------------------------------------------------------------------
    def check_peers_at_start(self) -> None:
        """A leader with peers asks them first: if one leads at a newer epoch, this broker is an old
        leader coming back, and it follows instead (its divergent tail is cut on the handshake)."""
        if not (self.is_leader and self.config.replication_peers):
            return
        from shmbroker.workers import replicator  # only with peers: keeps it off a plain start-up

        for address in self.config.replication_peers:
            try:
                role, epoch = replicator.probe(
                    address, node=self._node_name(), key_file=self.config.replication_secret_key_file
                )
            except Exception as exc:  # unreachable or refusing: no evidence of a newer leader
                log.info("peer %s not answering (%r); leading at epoch %d", address, exc, self.node.epoch)
                continue
            if role == "leader" and epoch > self.node.epoch:
                log.warning(
                    "peer %s leads at epoch %d, newer than ours (%d): following it",
                    address,
                    epoch,
                    self.node.epoch,
                )
                self.node = node_state.NodeState("follower", epoch)
                node_state.save(self.data_dir, self.node)
                return

    def _node_name(self) -> str:
        return self.config.replication_listener or str(self.data_dir)

    def start_replication(self) -> None:
        if not self.replicating:
            return
        self.replication = ChildSlot()
        self._spawn_replication()

    def _spawn_replication(self) -> None:
        assert self.replication is not None
        spec = ReplicationSpec(
            data_dir=self.data_dir,
            status_path=self.replication_status_path,
            node=self._node_name(),
            listener=self.config.replication_listener,
            peers=self.config.replication_peers,
            role=self.node.role,
            epoch=self.node.epoch,
            lag_time_max_ms=self.config.replica_lag_time_max_ms,
            socket_timeout_ms=self.config.replica_socket_timeout_ms,
            key_file=self.config.replication_secret_key_file,
            allowed_keys_dir=self.config.replication_allowed_keys_dir,
            log_config=self.config.log,
        )
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=forkserver.replication_main, args=(spec, child_end), name="replication", daemon=False
        )
        process.start()
        child_end.close()
        self.replication.process, self._replication_pipe = process, parent_end
        self.notify_replication()

    def notify_replication(self) -> None:
        """Tell the replicator (leader role) which partitions exist and where their control blocks are."""
        if self._replication_pipe is None or not self.is_leader:
            return
        controls = {tp_name(t, p): slot.control.name for (t, p), slot in self.slots.items()}
        try:
            self._replication_pipe.send(("partitions", controls))
        except (BrokenPipeError, OSError):
            pass  # it died: its restart sends the list again

    def _stop_replication(self) -> None:
        if self.replication is None or self.replication.process is None:
            return
        if self._replication_pipe is not None:
            try:
                self._replication_pipe.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        _join_or_kill(self.replication.process, "replication process")
        self.replication = None
        self._replication_pipe = None

    def replication_status(self) -> dict[str, Any] | None:
        if self.replication is None:
            return None
        try:
            status: dict[str, Any] = json.loads(self.replication_status_path.read_text())
            return status
        except (OSError, ValueError):
            return {"role": self.node.role, "epoch": self.node.epoch, "starting": True}

    def promote(self) -> int:
        """Follower -> leader with a new epoch, above every epoch this broker's logs have seen."""
        if self.is_leader:
            raise NotLeaderOrFollowerError(f"this broker already leads (epoch {self.node.epoch})")
        self._stop_replication()  # closes the follower's logs cleanly: the workers open them next
        self.topics = TopicStore(self.data_dir)
        newest = self.node.epoch
        for spec in self.topics.topics.values():
            for p in range(spec.partitions):
                newest = max(newest, EpochCache(self.topics.partition_dir(spec.name, p)).latest_epoch)
        self.node = node_state.NodeState("leader", newest + 1)
        node_state.save(self.data_dir, self.node)
        for spec in list(self.topics.topics.values()):
            self.start_topic(spec)
        self.start_replication()
        return self.node.epoch

    def coordinator_alive(self) -> bool:
        c = self.coordinator
        return c is not None and c.process is not None and c.process.exitcode is None

    def _reclaim_dead_lanes(self) -> None:
        for slot in self.slots.values():
            for lane in list(slot.lanes.values()):
                if not _alive(lane.pid, lane.pid_create_time):
                    self.close_lane(slot, lane.name)

    # -- lanes ------------------------------------------------------------------------------------
    def new_producer_id(self) -> int:
        """A producer id for a local lane or a remote idempotent producer: one counter, so never shared.

        Workers deduplicate by (producer_id, base_sequence), so two producers with one id could have
        each other's batches taken for repeats.
        """
        self._next_producer_id += 1
        return self._next_producer_id

    def open_lane(
        self,
        topic: str,
        partition_id: int,
        pid: int,
        *,
        trusted: bool = False,
        producer_id: int | None = None,
    ) -> LaneRecord:
        """A new lane for `pid`. `producer_id`: the id of the caller's lane that died with an earlier
        broker; it is given again unless a live lane holds it (then a new one: the caller cannot have
        its resent batches deduplicated and says so to its callbacks)."""
        slot = self.slots[(topic, partition_id)]
        if producer_id is None or not 0 <= producer_id < 1 << 62 or self._producer_id_in_use(producer_id):
            producer_id = self.new_producer_id()
        else:
            self._next_producer_id = max(self._next_producer_id, producer_id)
        name, block = create_lane(
            self.config.lane_bytes,
            partition_id=partition_id,
            control_name=slot.control.name,
            name=self._new_registered_name(),
        )
        lane = LaneRecord(name, topic, partition_id, producer_id, pid, _create_time(pid), block, trusted)
        slot.lanes[name] = lane
        slot.send("attach", name, lane.producer_id, pid, trusted)
        return lane

    def _producer_id_in_use(self, producer_id: int) -> bool:
        return any(
            lane.producer_id == producer_id for slot in self.slots.values() for lane in slot.lanes.values()
        )

    def close_lane(self, slot: PartitionSlot, name: str) -> None:
        lane = slot.lanes.pop(name, None)
        if lane is None:
            return
        slot.send("detach", name)
        lane.lane.close()
        lane.lane.unlink()

    def shutdown(self) -> None:
        self._stop_router()  # first: no new remote requests while the rest stops
        self._stop_replication()
        for slot in list(self.slots.values()):
            slot.send("stop")
        if self.coordinator is not None and self.coordinator.process is not None:
            self.coordinator.process.terminate()  # SIGTERM: it closes its offset store and exits
        for slot in list(self.slots.values()):
            self._stop_slot(slot)
        self.slots.clear()
        if self.coordinator is not None and self.coordinator.process is not None:
            _join_or_kill(self.coordinator.process, "group coordinator")
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self._registry.write_text("")
        os.close(self._lock_fd)


def _join_or_kill(process: Any, what: str) -> None:
    """Wait up to STOP_TIMEOUT_S for a child told to stop; say how long a slow one took, kill a stuck one."""
    started = time.monotonic()
    process.join(STOP_TIMEOUT_S)
    if process.is_alive():
        log.error("%s (pid %s) did not stop in %.0f s; killing it", what, process.pid, STOP_TIMEOUT_S)
        process.kill()
        process.join(2)
    elif time.monotonic() - started > 1.0:
        log.warning("%s (pid %s) took %.1f s to stop", what, process.pid, time.monotonic() - started)


def _is_ready(slot: PartitionSlot) -> bool:
    try:
        return bool(slot.reader().read().state == WorkerState.READY)
    except BrokenError:  # its worker is mid-update (or died there): not ready yet
        return False


def _create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _alive(pid: int, create_time: float) -> bool:
    """Alive and the same process (not a recycled pid)."""
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and (create_time == 0.0 or p.create_time() == create_time)
    except psutil.Error:
        return False
