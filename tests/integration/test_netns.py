"""NetnsPair (tests/netns.py): the veth carries TCP, cut() stalls it as a pulled cable does, restore()
heals it, and close() leaves no namespace behind. Fails, never skips, without root: CI runs as root."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns import NetnsPair, list_namespaces, netns_available, remove_stale

pytestmark = pytest.mark.integration

STALL_S = 1.5  # how long a cut connection must stay silent for the test to call it stalled

# Echo server: one thread per connection, so a connection stalled by cut() does not block new ones.
# Prints its port, then serves until killed; every socket has a timeout so nothing outlives the test.
SERVER = """
import socket, sys, threading
def echo(conn):
    with conn:
        conn.settimeout(60)
        while data := conn.recv(65536):
            conn.sendall(data)
server = socket.create_server((sys.argv[1], 0))
server.settimeout(60)
print(server.getsockname()[1], flush=True)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""

# Client driven line by line from stdin: "connect HOST PORT TIMEOUT_S" opens a new connection (the
# current one, if any, stays open until the next successful connect replaces it), "echo TIMEOUT_S"
# sends b"ping" and waits for it back, "recv TIMEOUT_S" waits for 4 bytes. One JSON line per command.
CLIENT = """
import json, socket, sys, time
conn = None
for line in sys.stdin:
    verb, *args = line.split()
    start = time.monotonic()
    try:
        if verb == "connect":
            new = socket.create_connection((args[0], int(args[1])), timeout=float(args[2]))
            conn = new
        else:
            conn.settimeout(float(args[0]))
            if verb == "echo":
                conn.sendall(b"ping")
            got = b""
            while len(got) < 4:
                chunk = conn.recv(4 - len(got))
                if not chunk:
                    raise EOFError("peer closed")
                got += chunk
        result = {"ok": True}
    except Exception as exc:
        result = {"ok": False, "error": type(exc).__name__}
    result["seconds"] = time.monotonic() - start
    print(json.dumps(result), flush=True)
"""


def read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, f"no output from {process.args!r} within {timeout_s} s"
    line = process.stdout.readline()
    assert line, f"{process.args!r} exited {process.wait(timeout=5)} without output"
    return line


class Client:
    def __init__(self, pair: NetnsPair, ns: str) -> None:
        self.process = pair.popen(
            ns, [sys.executable, "-c", CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ask(self, command: str, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(read_line(self.process, timeout_s + 5))
        return result


def start_server(pair: NetnsPair, ns: str, host: str) -> tuple[subprocess.Popen[str], int]:
    server = pair.popen(ns, [sys.executable, "-c", SERVER, host], stdout=subprocess.PIPE, text=True)
    return server, int(read_line(server, 10))


def kill(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture
def echo_server(netns_pair: NetnsPair) -> Iterator[int]:
    """An echo server in ns_b on ip_b; yields its port."""
    server, port = start_server(netns_pair, netns_pair.ns_b, netns_pair.ip_b)
    try:
        yield port
    finally:
        kill(server)


@pytest.fixture
def client(netns_pair: NetnsPair) -> Iterator[Client]:
    """A client process in ns_a."""
    made = Client(netns_pair, netns_pair.ns_a)
    try:
        yield made
    finally:
        kill(made.process)


def test_netns_is_available() -> None:
    reason = netns_available()
    assert reason is None, f"tests/netns.py cannot work on this host: {reason}"


def test_server_in_ns_b_is_reachable_from_ns_a(
    netns_pair: NetnsPair, echo_server: int, client: Client
) -> None:
    assert client.ask(f"connect {netns_pair.ip_b} {echo_server} 5", 5)["ok"]
    assert client.ask("echo 5", 5)["ok"]


def test_loopback_is_up_in_both_namespaces(netns_pair: NetnsPair) -> None:
    for ns in (netns_pair.ns_a, netns_pair.ns_b):
        server, port = start_server(netns_pair, ns, "127.0.0.1")
        local = Client(netns_pair, ns)
        try:
            assert local.ask(f"connect 127.0.0.1 {port} 5", 5)["ok"], ns
            assert local.ask("echo 5", 5)["ok"], ns
        finally:
            kill(server, local.process)


def test_cut_stalls_transfer_and_connect_until_restore(
    netns_pair: NetnsPair, echo_server: int, client: Client
) -> None:
    connect = f"connect {netns_pair.ip_b} {echo_server}"
    assert client.ask(f"{connect} 5", 5)["ok"]
    assert client.ask("echo 5", 5)["ok"]

    netns_pair.cut()
    stalled = client.ask(f"echo {STALL_S}", STALL_S)
    assert stalled["error"] == "TimeoutError", stalled  # not an instant error: the packets vanish
    assert stalled["seconds"] >= STALL_S - 0.1, stalled
    refused = client.ask(f"{connect} {STALL_S}", STALL_S)
    assert refused["error"] == "TimeoutError", refused
    assert refused["seconds"] >= STALL_S - 0.1, refused

    netns_pair.restore()
    # The ping sent during the cut is retransmitted (after TCP's backoff) and its echo arrives on the
    # connection that was open all along; then new connections work too.
    assert client.ask("recv 15", 15)["ok"]
    assert client.ask("echo 5", 5)["ok"]
    assert client.ask(f"{connect} 5", 5)["ok"]
    assert client.ask("echo 5", 5)["ok"]


def test_close_leaves_no_namespace_and_is_idempotent() -> None:
    with NetnsPair.create() as pair:
        assert {pair.ns_a, pair.ns_b} <= set(list_namespaces())
    assert not {pair.ns_a, pair.ns_b} & set(list_namespaces())
    pair.close()  # again: no error
    subprocess.run(["ip", "netns", "delete", pair.ns_a], capture_output=True, timeout=10, check=False)
    pair.close()


def test_remove_stale_deletes_only_namespaces_of_dead_pids() -> None:
    prefix = "shmbstaletest"
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    names = [f"{prefix}-{dead.pid}-abc123-a", f"{prefix}-{dead.pid}-abc123-b", f"{prefix}-1-abc123-a"]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
        assert sorted(remove_stale(prefix)) == names[:2]  # pid 1 (init) lives
        assert not set(names[:2]) & set(list_namespaces())
        assert names[2] in list_namespaces()
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10, check=False)
