"""Two network namespaces joined by a veth pair: two "machines" on one host, with a cable to cut.

    namespace <prefix>-<pid>-<token>-a               namespace <prefix>-<pid>-<token>-b
      lo   127.0.0.1 (up)                              lo   127.0.0.1 (up)
      eth0 ip_a/30  <------------ veth ------------>   eth0 ip_b/30

``ip_a`` and ``ip_b`` are the two hosts of one /30 in 10.200.0.0/16, drawn at random. The namespaces
are isolated, so a clash would be harmless; distinct addresses keep parallel runs apart in logs.

``cut()`` makes the link silently drop every packet, in both directions, as a pulled cable between
two hosts does: established TCP connections stall (sends queue up and retransmit, receives wait),
and a new ``connect()`` times out. It does so by pointing each side's permanent neighbour entry at a
MAC address nobody has, so the peer drops every frame as addressed to another host. Setting the
links down would not do: the kernel then deletes the routes over them, and ``connect()`` fails at
once with ENETUNREACH, which no real partition between two hosts produces. (netem and nftables,
the usual tools, are not available on every CI kernel; the neighbour table always is.)
``restore()`` points the entries back at the real MACs; stalled connections resume on their next
retransmission (TCP backs off, so that can take a few seconds after a long cut).

Namespace names carry the creating pid: ``remove_stale()``, which ``create()`` calls, deletes those
whose creator is dead, so a killed test run leaves nothing behind beyond the next run's start.
Deleting a namespace does not kill processes running in it (the namespace lives on until they exit);
whoever starts processes in it kills them. Needs root and iproute2's ``ip``. Not thread-safe.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import warnings
from types import TracebackType
from typing import Any

DEFAULT_PREFIX = "shmb"
DEVICE = "eth0"  # the veth end's name inside each namespace (each has its own, so no clash)
SUBNET = ipaddress.IPv4Network("10.200.0.0/16")
CUT_MAC = "02:00:00:00:de:ad"  # locally administered unicast; no interface in the pair has it
IP_TIMEOUT_S = 10.0  # one `ip` command; they take milliseconds, but a wedged one must not hang a test
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


def netns_available() -> str | None:
    """Why NetnsPair cannot work here, or None if it can."""
    if os.geteuid() != 0:
        return f"network namespaces need root; euid is {os.geteuid()}"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not on PATH"
    return None


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    # Lines read "name" or "name (id: 3)".
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def remove_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete the namespaces named ``<prefix>-<pid>-<token>-a|b`` whose pid is dead; return their names.

    A reused pid keeps its namespaces until that process dies too: late cleanup, never a wrong one.
    """
    pattern = re.compile(re.escape(prefix) + r"-(\d+)-[0-9a-f]+-[ab]")
    stale = [
        name
        for name in list_namespaces()
        if (match := pattern.fullmatch(name)) is not None and not _pid_alive(int(match.group(1)))
    ]
    for name in stale:
        _delete_namespace(name)
    return stale


class NetnsPair:
    """Two namespaces ``ns_a``/``ns_b`` at ``ip_a``/``ip_b``, joined by veth; see the module docstring.

    Make one with ``create()``; ``close()`` (or leaving the ``with`` block) deletes both namespaces.
    """

    def __init__(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> None:
        self.ns_a, self.ns_b = ns_a, ns_b
        self.ip_a, self.ip_b = ip_a, ip_b
        self.is_cut = False
        self._macs: dict[str, str] = {}  # namespace -> MAC of its eth0; filled by _set_up()
        self._closed = False

    @classmethod
    def create(cls, prefix: str | None = None) -> NetnsPair:
        """Create both namespaces, the veth between them, addresses, and bring every link up.

        Raises RuntimeError if this host cannot (see ``netns_available()``) or an ``ip`` command fails;
        whatever was created by then is deleted first.
        """
        prefix = DEFAULT_PREFIX if prefix is None else prefix
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"prefix {prefix!r} must match {_PREFIX_RE.pattern}")
        reason = netns_available()
        if reason is not None:
            raise RuntimeError(reason)
        remove_stale(prefix)
        base = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        block = SUBNET.network_address + 4 * secrets.randbelow(SUBNET.num_addresses // 4)
        pair = cls(f"{base}-a", f"{base}-b", str(block + 1), str(block + 2))
        try:
            pair._set_up()
        except BaseException:
            pair.close()
            raise
        return pair

    def _set_up(self) -> None:
        a, b = self.ns_a, self.ns_b
        _ip("netns", "add", a)
        _ip("netns", "add", b)
        # Created inside ns_a with its peer moved straight to ns_b: the root namespace never sees it.
        _ip("-n", a, "link", "add", DEVICE, "type", "veth", "peer", "name", DEVICE, "netns", b)
        for ns, address in ((a, self.ip_a), (b, self.ip_b)):
            _ip("-n", ns, "address", "add", f"{address}/30", "dev", DEVICE)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", DEVICE, "up")
            self._macs[ns] = json.loads(_ip("-n", ns, "-json", "link", "show", DEVICE))[0]["address"]
        # Permanent neighbour entries: no ARP ever, so cut() and restore() are one replace each.
        self._point_neighbours(self._macs[b], self._macs[a])

    def _point_neighbours(self, mac_seen_by_a: str, mac_seen_by_b: str) -> None:
        for ns, peer_ip, mac in (
            (self.ns_a, self.ip_b, mac_seen_by_a),
            (self.ns_b, self.ip_a, mac_seen_by_b),
        ):
            _ip("-n", ns, "neigh", "replace", peer_ip, "lladdr", mac, "dev", DEVICE, "nud", "permanent")

    def cut(self) -> None:
        """Drop every packet between the namespaces from now on, silently (idempotent)."""
        self._check_open()
        self._point_neighbours(CUT_MAC, CUT_MAC)
        self.is_cut = True

    def restore(self) -> None:
        """Undo ``cut()`` (idempotent)."""
        self._check_open()
        self._point_neighbours(self._macs[self.ns_b], self._macs[self.ns_a])
        self.is_cut = False

    def argv(self, ns: str, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` inside namespace ``ns`` (``ns_a`` or ``ns_b``)."""
        if ns not in (self.ns_a, self.ns_b):
            raise ValueError(f"{ns!r} is neither {self.ns_a!r} nor {self.ns_b!r}")
        return ["ip", "netns", "exec", ns, *argv]

    def popen(self, ns: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` of ``argv`` inside ``ns``. The caller waits with a timeout and kills it."""
        self._check_open()
        return subprocess.Popen(self.argv(ns, argv), **kwargs)

    def close(self) -> None:
        """Delete both namespaces (and so the veth). Idempotent; never raises, warns if one survives."""
        if self._closed:
            return
        self._closed = True
        for ns in (self.ns_a, self.ns_b):
            _delete_namespace(ns)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def __enter__(self) -> NetnsPair:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "cut" if self.is_cut else "up"
        return f"NetnsPair({self.ns_a} {self.ip_a} <-> {self.ns_b} {self.ip_b}, {state})"


def _ip(*args: str) -> str:
    """Run ``ip args``; return its stdout. RuntimeError, with ip's message, if it fails."""
    argv = ["ip", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=True)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{' '.join(argv)} exited {exc.returncode}: {exc.stderr.strip()}") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(argv)} took over {IP_TIMEOUT_S} s") from exc
    return done.stdout


def _delete_namespace(name: str) -> None:
    """Delete one namespace; already gone is fine. Runs in cleanup paths, so it warns, never raises."""
    try:
        done = subprocess.run(
            ["ip", "netns", "delete", name], capture_output=True, text=True, timeout=IP_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        warnings.warn(f"could not delete network namespace {name}: {exc!r}", RuntimeWarning, stacklevel=3)
        return
    if done.returncode != 0 and os.path.exists(f"/var/run/netns/{name}"):
        warnings.warn(
            f"could not delete network namespace {name}: {done.stderr.strip()}", RuntimeWarning, stacklevel=3
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
