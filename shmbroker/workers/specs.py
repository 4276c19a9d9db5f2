"""What the supervisor hands each child process (workers/forkserver.py starts them, pickled).

Small frozen dataclasses in a module of light imports: the supervisor builds them without
importing the children's own modules (numpy and the disk layer for a worker, the group state for
the coordinator, the replicator), which keeps those imports off its start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shmbroker.config import BrokerConfig, LogConfig


@dataclass(frozen=True)
class WorkerSpec:
    topic: str
    partition: int
    directory: Path
    log_config: LogConfig
    control_name: str  # the control block; its doorbell semaphore has the same name
    cpu: int | None = None
    spin_s: float = 0.0  # shm.worker.spin.us: keep looking this long after the last batch, then sleep
    leader_epoch: int = 0  # stamped in every batch (partitionLeaderEpoch); promote bumps it


@dataclass(frozen=True)
class RouterSpec:
    config: BrokerConfig
    control_endpoint: str  # the supervisor's private ROUTER (ipc, in a 0700 directory)
    status_path: Path
    supervisor_pid: int = 0  # it stops when that process is gone (0: never checks)


@dataclass(frozen=True)
class CoordinatorSpec:
    data_dir: Path
    endpoint: str  # ipc://... in the broker's private runtime directory
    supervisor_pid: int = 0  # it stops when that process is gone (0: never checks)


@dataclass(frozen=True)
class ReplicationSpec:
    data_dir: Path
    status_path: Path
    node: str  # this broker's name in peers' status: its replication listener or data dir
    listener: str  # "host:port" where followers and probers connect; "" = none
    peers: tuple[str, ...]
    role: str
    epoch: int
    lag_time_max_ms: int
    socket_timeout_ms: int
    key_file: str  # this broker's own key (it presents it when following)
    allowed_keys_dir: str  # followers' keys (checked when leading); "" = no authentication
    log_config: LogConfig
