"""This broker's place in replication: its role and the newest leader epoch it knows.

``<data>/replication-state.json``: ``{"role": "leader" | "follower", "epoch": N}``, rewritten whole
(write_atomic). The supervisor writes it on promote and demote; a follower's replicator raises the
epoch when it follows a newer leader, so a later ``promote`` picks an epoch above every one seen.
Without the file the broker starts in ``replication.role`` (default leader) at epoch 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shmbroker.disk.files import write_atomic
from shmbroker.errors import InvalidConfigError

STATE_FILE = "replication-state.json"
ROLES = ("leader", "follower")


@dataclass(frozen=True)
class NodeState:
    role: str
    epoch: int


def load(data_dir: Path, default_role: str) -> NodeState:
    path = data_dir / STATE_FILE
    if not path.exists():
        return NodeState(default_role, 0)
    try:
        raw = json.loads(path.read_text())
        state = NodeState(str(raw["role"]), int(raw["epoch"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidConfigError(f"cannot read {path}: {exc}") from exc
    if state.role not in ROLES or state.epoch < 0:
        raise InvalidConfigError(f"{path}: role {state.role!r}, epoch {state.epoch}")
    return state


def save(data_dir: Path, state: NodeState) -> None:
    write_atomic(data_dir / STATE_FILE, json.dumps({"role": state.role, "epoch": state.epoch}).encode())
