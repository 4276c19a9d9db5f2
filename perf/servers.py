"""Start and stop the peers' servers for one benchmark run: redis-server and nats-server.

Each is a context manager that picks a free port on 127.0.0.1, runs the server in the foreground
(`daemonize no`) with its data in a fresh temp dir, waits until it answers (with a deadline), and on
exit stops it by the pid it started (SIGTERM, then SIGKILL after a deadline) and removes the temp
dir, even when the body raised. Nothing here looks up or signals a process it did not start.

    with RedisServer(aof="everysec") as r:      # r.port, r.pid, r.host
        ...
    with NatsServer() as n:                     # n.url, n.port, n.pid
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

from perf.deps import find_binary

HOST = "127.0.0.1"
START_DEADLINE_S = 15.0
STOP_DEADLINE_S = 10.0


class ServerError(RuntimeError):
    """A server could not be started or did not become ready in time."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _stop_pid(proc: subprocess.Popen[bytes], deadline_s: float = STOP_DEADLINE_S) -> None:
    """Stop the process we started: SIGTERM, wait, then SIGKILL; always reaps it."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=deadline_s)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=deadline_s)


class _Server:
    name = "server"

    def __init__(self) -> None:
        self.host = HOST
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None
        self._log: Path | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _argv(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        binary = find_binary(self.name)
        if binary is None:
            raise ServerError(f"{self.name} not installed: run `make bench-deps` (python -m perf.deps)")
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"perf-{self.name}-"))
        self._log = self.tmpdir / "server.log"
        last_err = ""
        for _attempt in range(3):  # a free port can be taken between bind-close and the server's bind
            self.port = free_port()
            with open(self._log, "ab") as logf:
                self.proc = subprocess.Popen(
                    self._argv(binary),
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.tmpdir,
                )
            deadline = time.monotonic() + START_DEADLINE_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self._ready():
                    return
                time.sleep(0.02)
            last_err = self._log.read_text(errors="replace")[-2000:]
            _stop_pid(self.proc)
            self.proc = None
        raise ServerError(f"{self.name} did not become ready on {HOST}:{self.port}:\n{last_err}")

    def stop(self) -> None:
        try:
            if self.proc is not None:
                _stop_pid(self.proc)
        finally:
            self.proc = None
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None

    def __enter__(self) -> _Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer(_Server):
    """redis-server, persistence off (`aof="off"`: `--save "" --appendonly no`) or AOF with
    `--appendfsync everysec` (`aof="everysec"`), data dir in a temp dir."""

    name = "redis-server"

    def __init__(self, aof: Literal["off", "everysec"] = "off") -> None:
        super().__init__()
        self.aof = aof

    def _argv(self, binary: str) -> list[str]:
        assert self.tmpdir is not None
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--daemonize", "no",
            "--dir", str(self.tmpdir),
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", "",
        ]  # fmt: skip
        if self.aof == "everysec":
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def _ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class NatsServer(_Server):
    """nats-server with JetStream on (`-js -sd <tmpdir>/js -a 127.0.0.1 -p <port>`)."""

    name = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def _argv(self, binary: str) -> list[str]:
        assert self.tmpdir is not None
        return [binary, "-js", "-sd", str(self.tmpdir / "js"), "-a", HOST, "-p", str(self.port)]

    def _ready(self) -> bool:
        # INFO arrives on connect; JetStream is up once the log says so (the client API would also do).
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as s:
                if not s.recv(4096).startswith(b"INFO"):
                    return False
        except OSError:
            return False
        assert self._log is not None
        with contextlib.suppress(OSError):
            return "Server is ready" in self._log.read_text(errors="replace")
        return False
