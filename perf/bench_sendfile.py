"""Reference for replication catch-up: raw ``socket.sendfile()`` of a cached file between two network
namespaces, over veth (tests/netns.py).

    .venv/bin/python -m perf.bench_sendfile [--size-mib 1024] [--runs 3]     # root; from the repo root

A file of ``--size-mib`` MiB (pseudo-random bytes, written once, fsynced, then left in the page cache)
is sent whole by a sender process in ns_a with one ``socket.sendfile()`` to a receiver process in ns_b
that ``recv_into``s a reused 1 MiB buffer until EOF. Both are fresh ``python -m perf.bench_sendfile``
processes with default socket buffers; the receiver's clock runs from ``accept()`` returning to EOF,
so interpreter start-up is not timed. This is what a follower fetching a log tail over the network
could get at best on this host: ``raw_sendfile_mb_s()`` measures it, so a replication benchmark can
quote its own throughput as a ratio to this one from the same run.

Prints JSON (MB/s per run, median, min, max; MB = 10^6 bytes) on stdout and one human line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.netns import NetnsPair, netns_available

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
READY_TIMEOUT_S = 15.0  # a child's start-up: interpreter, imports, `ip netns exec`
SOCKET_TIMEOUT_S = 30.0  # the longest any single accept/recv/send may block


def transfer_timeout_s(size_bytes: int) -> float:
    """Deadline for one transfer: generous (20 MB/s) so only a hang trips it."""
    return 30.0 + size_bytes / 20e6


# ---- the two child processes ----------------------------------------------------------------------
def receive(port: int, write_to: Path | None = None) -> None:
    """Accept one connection on ``port``; drain it; print {"bytes", "seconds"}. Prints the port first.

    With ``write_to``, every chunk is also written to that (new) file: what any replica must pay on
    top of the transfer, page-cache allocation included."""
    buffer = bytearray(8 * MIB if write_to else MIB)
    view = memoryview(buffer)
    fd = os.open(write_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if write_to else -1
    with socket.create_server(("0.0.0.0", port)) as server:  # its own namespace: only the veth and lo
        server.settimeout(SOCKET_TIMEOUT_S)
        print(json.dumps({"port": server.getsockname()[1]}), flush=True)
        conn, _ = server.accept()
    with conn:
        conn.settimeout(SOCKET_TIMEOUT_S)
        start = time.perf_counter()
        received = 0
        while n := conn.recv_into(view):
            if fd >= 0:
                os.write(fd, view[:n])
            received += n
        seconds = time.perf_counter() - start
    if fd >= 0:
        os.close(fd)
        os.unlink(write_to)  # type: ignore[arg-type]
    print(json.dumps({"bytes": received, "seconds": seconds}), flush=True)


def send(host: str, port: int, path: Path) -> None:
    """Send the whole file at ``path`` with one ``socket.sendfile()``; print {"bytes"}."""
    with socket.create_connection((host, port), timeout=SOCKET_TIMEOUT_S) as conn, path.open("rb") as file:
        sent = conn.sendfile(file)
        conn.shutdown(socket.SHUT_WR)
    print(json.dumps({"bytes": sent}), flush=True)


# ---- one measurement ------------------------------------------------------------------------------
def raw_sendfile_mb_s(path: Path, pair: NetnsPair, *, write_to: Path | None = None) -> float:
    """MB/s (10^6 bytes/s) of one sendfile of ``path`` from ``pair.ns_a`` to ``pair.ns_b`` (the
    receiver writing what arrives to the new file ``write_to``, deleted after, if given).

    Runs two child processes, each bounded by a deadline and killed (by pid) on the way out.
    Raises RuntimeError if a child fails, hangs, or fewer bytes arrive than the file holds.
    """
    size_bytes = path.stat().st_size
    me = [sys.executable, "-m", "perf.bench_sendfile"]
    children: list[subprocess.Popen[str]] = []
    try:
        receiver_argv = [*me, "--receiver", "0", *(["--write-to", str(write_to)] if write_to else [])]
        receiver = pair.popen(pair.ns_b, receiver_argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        children.append(receiver)
        port = _read_json(receiver, READY_TIMEOUT_S)["port"]
        sender_argv = [*me, "--sender", f"{pair.ip_b}:{port}", "--file", str(path)]
        sender = pair.popen(pair.ns_a, sender_argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        children.append(sender)
        result = _read_json(receiver, READY_TIMEOUT_S + transfer_timeout_s(size_bytes))
        sent = _read_json(sender, READY_TIMEOUT_S)["bytes"]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
    if not result["bytes"] == sent == size_bytes:
        raise RuntimeError(f"file has {size_bytes} bytes; sender sent {sent}, receiver got {result['bytes']}")
    return float(size_bytes / result["seconds"] / 1e6)


def _read_json(child: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """The next line of ``child``'s stdout, as JSON, within ``timeout_s``."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout_s)
    if not ready:
        raise RuntimeError(f"{child.args!r} printed nothing within {timeout_s:.0f} s")
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"{child.args!r} exited {child.wait(timeout=10)} without a result")
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def write_file(path: Path, size_bytes: int) -> None:
    """One pseudo-random 4 MiB block, repeated (nothing on the path compresses or dedups, so fresh bytes
    would buy nothing), fsynced so its writeback cannot land in a measurement."""
    block = random.Random(0).randbytes(4 * MIB)
    with path.open("wb") as file:
        for offset in range(0, size_bytes, len(block)):
            file.write(block[: size_bytes - offset])
        file.flush()
        os.fsync(file.fileno())


# ---- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.bench_sendfile")
    parser.add_argument("--size-mib", type=int, default=1024, help="file size, MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--sender", metavar="HOST:PORT", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver is not None:
        receive(args.receiver, args.write_to)
        return 0
    if args.sender is not None:
        host, port = args.sender.rsplit(":", 1)
        send(host, int(port), args.file)
        return 0

    reason = netns_available()
    if reason is not None:
        print(f"bench_sendfile needs network namespaces: {reason}", file=sys.stderr)
        return 2
    size_bytes = args.size_mib * MIB
    root = Path(tempfile.mkdtemp(prefix="bench-sendfile-", dir="/tmp"))
    try:
        path = root / "data.bin"
        write_file(path, size_bytes)
        with NetnsPair.create() as pair:
            runs = []
            for run_number in range(args.runs):
                runs.append(raw_sendfile_mb_s(path, pair))
                print(f"run {run_number + 1}/{args.runs}: {runs[-1]:.0f} MB/s", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {
        "name": "raw sendfile over veth (netns)",
        "unit": "MB/s",
        "size_mib": args.size_mib,
        "median": statistics.median(runs),
        "min": min(runs),
        "max": max(runs),
        "runs": runs,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(json.dumps(summary))
    print(
        f"raw sendfile over veth, {args.size_mib} MiB: {summary['median']:.0f} MB/s median "
        f"[{summary['min']:.0f}-{summary['max']:.0f}] over {args.runs} runs",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
