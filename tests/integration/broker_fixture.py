"""A real broker in a child process for integration tests: started with ``shmbroker serve`` on a
free port and a temp data dir, stopped (SIGTERM, then SIGKILL after a deadline) by pid, with its
workers, even when the test fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class BrokerProcess:
    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        config: Path | None = None,
        address: str | None = None,
        argv_prefix: list[str] | None = None,
    ) -> None:
        self.data_dir, self.port = data_dir, port
        self.address = address or f"tcp://127.0.0.1:{port}"
        self.config = config
        self.argv_prefix = argv_prefix or []  # e.g. ["ip", "netns", "exec", NS]: it execs, same pid
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.ready_line = ""

    def start(self) -> BrokerProcess:
        args = [
            *self.argv_prefix,
            sys.executable,
            "-m",
            "shmbroker",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.address,
        ]
        if self.config is not None:
            args += ["--config", str(self.config)]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line)
                if " ready: " in line and not ready.is_set():
                    self.ready_line = line
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(READY_TIMEOUT_S):
            self.stop()
            raise AssertionError(f"broker not ready in {READY_TIMEOUT_S} s:\n{''.join(self.output)}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def worker_pid(self, topic: str, partition: int) -> int:
        title = f"shmbroker: partition {topic}-{partition}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for child in self.children():
                try:
                    if title in " ".join(child.cmdline()):
                        return child.pid
                except psutil.Error:
                    continue
            time.sleep(0.05)
        raise AssertionError(f"no worker process titled {title!r}")

    def status(self) -> dict[str, Any]:
        """What ``shmbroker status --json`` says (counters, the router's included, processes, partitions)."""
        out = subprocess.run(
            [sys.executable, "-m", "shmbroker", "status", "--bootstrap", self.address, "--json",
             "--interval-s", "0.1"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        status: dict[str, Any] = json.loads(out)
        return status

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.process is None:
            return None
        family = [self.process.pid] + [c.pid for c in self.children()]
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pid in family[1:]:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        return self.process.returncode


def produce_one(broker: BrokerProcess, topic: str, value: bytes, partition: int = 0) -> None:
    """One record, acknowledged, through a Producer of its own."""
    from shmbroker import Producer

    producer = Producer({"bootstrap.servers": broker.address})
    try:
        producer.produce(topic, value, partition=partition)
        assert producer.flush(10) == 0
    finally:
        producer.close()


def remove_registered_shm(data_dir: Path) -> None:
    """After every broker of `data_dir` stopped: unlink what a SIGKILLed one left, as the next broker's
    start would (the registry lists its names), for a test that fails before it restarts one."""
    from shmbroker.workers.supervisor import REGISTRY_FILE, unlink_name

    registry = data_dir / REGISTRY_FILE
    if registry.exists():
        for name in registry.read_text().split():
            unlink_name(name)


def shm_names() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if "shmb-" in n}
