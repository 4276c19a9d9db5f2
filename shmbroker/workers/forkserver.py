"""The fork server (docs/adr/0004) and the entry point of every process it forks.

``shmbroker serve`` starts it first (cli.py), before importing the supervisor: it is a fresh
interpreter that imports ``PRELOAD`` once and then forks each child warm, while the supervisor runs
its own imports on the other core. Started before anything is bound, and exec'd rather than
forked, it holds none of the supervisor's sockets.

This module stays light (the standard library only at import time): the command line imports it
before anything else, and every child imports it to find its entry point. Each entry point imports
its process's module itself; the coordinator's and the replicator's load after their fork, in their
one process each, instead of delaying the first fork (they are not part of "ready").
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shmbroker.workers.specs import CoordinatorSpec, ReplicationSpec, RouterSpec, WorkerSpec

# What the fork server imports before its first fork: what the partition workers and the router run
# (setproctitle is optional: the fork server skips what does not import).
PRELOAD = [
    "shmbroker.workers.forkserver",
    "shmbroker.workers.partition",
    "shmbroker.workers.router",
    "setproctitle",
]


def context() -> ForkServerContext:
    """The multiprocessing context children start from, with ``PRELOAD`` set."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the fork server now rather than at the first child's start. Returns at once: the first
    ``Process.start`` waits for the preload to finish."""
    # OpenBLAS starts a thread per core when numpy is imported: ~0.1 s of CPU taken from the
    # supervisor's start-up on this 2-core host, for threads a forked child does not even inherit.
    # No broker process does linear algebra. Children inherit the environment.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    context()
    multiprocessing.forkserver.ensure_running()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` still runs. A child cannot watch its parent with getppid: children come from
    the fork server, which every child keeps alive (each holds its alive-pipe), so only the
    supervisor's own pid tells whether it died."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def set_title(title: str) -> None:
    """What `ps` shows for this process; each entry point sets it first, before its imports, so a
    child is recognisable as soon as it exists."""
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:  # optional: only `ps` output suffers
        pass


def worker_main(spec: WorkerSpec, commands: Connection) -> None:
    set_title(f"shmbroker: partition {spec.topic}-{spec.partition}")
    from shmbroker.workers import partition

    # A forked child inherits the supervisor's signal handlers; the worker stops on the pipe's
    # "stop", so a Ctrl-C to the process group must not kill it mid-append.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {spec.topic}-{spec.partition} %(message)s")
    partition.run(spec, commands)


def router_main(spec: RouterSpec) -> None:
    set_title("shmbroker: router")
    from shmbroker.workers import router

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops it (SIGTERM) after its own
    logging.basicConfig(level=logging.INFO, format="%(asctime)s router %(message)s")
    router.run(spec)


def replication_main(spec: ReplicationSpec, commands: Connection) -> None:
    set_title(f"shmbroker: replication {spec.role}")
    from shmbroker.workers import replicator

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s replication %(message)s")
    replicator.run(spec, commands)


def _exit_cleanly(*_: object) -> None:
    raise SystemExit(0)  # unwinds run()'s finally: the offset store is closed


def coordinator_main(spec: CoordinatorSpec) -> None:
    set_title("shmbroker: coordinator")
    from shmbroker.workers import coordinator

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s coordinator %(message)s")
    coordinator.run(spec)
