"""Two real brokers on two "hosts": network namespaces joined by veth (tests/netns.py).

Each broker runs inside its own namespace and replicates over the veth link, which tests cut and
restore. Clients (this test process) reach each broker through an ``ipc://`` listener, a Unix
socket in the test's temp dir, and through shared memory, which namespaces do not separate.
Replication beyond loopback needs keys, so each broker gets its own, and each allows the other's
(after a promote the roles swap).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shmbroker import AdminClient
from shmbroker.net.replication import write_key
from tests.integration.broker_fixture import BrokerProcess
from tests.netns import NetnsPair

REPLICATION_PORT = 9400
LAG_TIME_MAX_MS = 1500
SOCKET_TIMEOUT_MS = 2000


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 20.0, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


class ReplicatedPair:
    """Broker "a" (leader) in ns_a and broker "b" (follower) in ns_b; ``close`` stops both."""

    def __init__(self, root: Path, pair: NetnsPair, *, extra: str = "") -> None:
        self.root, self.net = root, pair
        keys = root / "keys"
        write_key(keys / "a.key", "a")
        write_key(keys / "b.key", "b")
        for name, ip, peer_ip, role in (
            ("a", pair.ip_a, pair.ip_b, "leader"),
            ("b", pair.ip_b, pair.ip_a, "follower"),
        ):
            allowed = root / f"allowed-{name}"
            allowed.mkdir()
            other = "b" if name == "a" else "a"
            (allowed / f"{other}.key").write_text((keys / f"{other}.key").read_text())
            (root / f"{name}.toml").write_text(
                "[broker]\n"
                f'"replication.role" = "{role}"\n'
                f'"replication.listener" = "{ip}:{REPLICATION_PORT}"\n'
                f'"replication.peers" = ["{peer_ip}:{REPLICATION_PORT}"]\n'
                f'"replication.secret.key.file" = "{keys / (name + ".key")}"\n'
                f'"replication.allowed.keys.dir" = "{allowed}"\n'
                f'"replica.lag.time.max.ms" = {LAG_TIME_MAX_MS}\n'
                f'"replica.socket.timeout.ms" = {SOCKET_TIMEOUT_MS}\n' + extra
            )
        self.brokers: dict[str, BrokerProcess] = {}
        self.killed: set[str] = set()

    def address(self, name: str) -> str:
        return f"ipc://{self.root}/{name}.sock"

    def start(self, name: str) -> BrokerProcess:
        ns = self.net.ns_a if name == "a" else self.net.ns_b
        broker = BrokerProcess(
            self.root / f"data-{name}",
            0,
            config=self.root / f"{name}.toml",
            address=self.address(name),
            argv_prefix=["ip", "netns", "exec", ns],
        ).start()
        self.brokers[name] = broker
        return broker

    def kill(self, name: str) -> None:
        import signal

        self.brokers.pop(name).stop(signal.SIGKILL)
        self.killed.add(name)

    def admin(self, name: str) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.address(name), "request.timeout.ms": 10000})

    def status(self, name: str) -> dict[str, Any]:
        admin = self.admin(name)
        try:
            return admin.status()
        finally:
            admin.close()

    def replication(self, name: str) -> dict[str, Any]:
        return dict(self.status(name).get("replication") or {})

    def in_sync(self, tp: str, follower: str = "b") -> bool:
        """Whether the leader's status lists the follower in the in-sync set of ``tp``."""
        leader = "a" if follower == "b" else "b"
        part = self.replication(leader).get("partitions", {}).get(tp, {})
        node = f"{self.net.ip_b if follower == 'b' else self.net.ip_a}:{REPLICATION_PORT}"
        return node in part.get("isr", [])

    def close(self) -> None:
        for broker in self.brokers.values():
            broker.stop()
        self.brokers.clear()
        # A SIGKILLed broker that was not started again left its shm blocks and semaphores; a broker
        # starting on that data dir would remove them (its registry), so the test does what it would.
        from shmbroker.workers.supervisor import REGISTRY_FILE, unlink_name

        for name in self.killed:
            registry = self.root / f"data-{name}" / REGISTRY_FILE
            if registry.exists():
                for block in registry.read_text().split():
                    unlink_name(block)
                registry.write_text("")
        self.killed.clear()
