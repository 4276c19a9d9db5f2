"""The benchmark harness: a scenario registry, a two-process runner, and what a run returns.

A scenario measures one way of moving records from a producer to a consumer (or a ceiling such as
memcpy). It is a `Scenario` whose `run(size_bytes, n_records, timeout_s) -> Result` does one
measurement; `perf.run` calls it R times per record size and reports median and spread. Register one
with the decorator (the function IS the `run` callable) or by `register(Scenario(...))`:

    from perf.harness import Result, scenario, run_pair

    @scenario("shmbroker-local", sizes=(100, 1024, 65536), kind="throughput", peer=False,
              records={100: 1_000_000, 1024: 500_000, 65536: 20_000})
    def shmbroker_local(size_bytes: int, n_records: int, timeout_s: float) -> Result:
        '''What is measured and the client settings used (this docstring goes into the report).'''
        return run_pair("shmbroker-local", size_bytes, n_records, timeout_s,
                        producer=(my_producer, {...}), consumer=(my_consumer, {...}),
                        servers={"broker": broker_pid})

Modules listed in `perf.run.SCENARIO_MODULES` are imported when present (`perf.scenarios_peers`,
then `perf.scenarios_shmbroker`), so adding a file is enough.

Two-process scenarios use `run_pair`: it spawns the consumer and the producer (multiprocessing
"spawn"), waits until both did their setup and called `ctl.ready()`, releases both at once, and
measures end to end from the producer's release to the consumer having every record. Each child
reports its own CPU time (user+system delta from release to done, CLOCK_PROCESS_CPUTIME_ID) and peak RSS
(`ru_maxrss`); a server's pid passed in `servers` is measured by the parent (psutil cpu_times delta) (peak RSS
from /proc/<pid>/status VmHWM). Every child is stopped by its pid (terminate, then kill) even on error.

Latency: each record carries its scheduled send time (`time.monotonic_ns()`, one clock for every
process on Linux) in its first 8 bytes; the consumer computes receive - send per record. Stamping the
*scheduled* time, not the moment the producer got round to it, keeps a saturated peer from hiding
its queueing delay (coordinated omission); `achieved_rate` shows when a peer could not keep up.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import resource
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

import psutil

Kind = Literal["throughput", "latency"]
SIZES_DEFAULT: tuple[int, ...] = (100, 1024, 65536)
SETUP_DEADLINE_S = 60.0  # children must be connected and ready within this
STOP_GRACE_S = 10.0  # after timeout_s, how long a child gets to report before it is terminated
MADV_POPULATE_WRITE = 23  # Linux 5.14+; Python 3.11's mmap module does not name it
RECYCLE_SLACK_BYTES = 512 << 20  # the processes' own memory on top of the records' bytes
RECYCLE_MAX_BYTES = 3 << 30


@dataclass
class ProcStats:
    name: str  # "producer", "consumer", "redis-server", ...
    cpu_s: float  # user+system seconds from release to done
    cpu_pct: float  # cpu_s / end-to-end seconds * 100 (100 = one full core)
    peak_rss_bytes: int


@dataclass
class Result:
    scenario: str
    size_bytes: int
    n_records: int  # asked for
    received: int  # records the consumer got (== n_records unless timed out or failed)
    elapsed_s: float  # producer release -> consumer has all (or the timeout)
    records_per_s: float
    mb_per_s: float  # 10**6 bytes/s of record payload
    procs: list[ProcStats] = field(default_factory=list)
    latency: dict[str, float] | None = None  # p50_us, p99_us, p999_us, max_us, offered_rate, achieved_rate
    timed_out: bool = False
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        if self.latency is not None and self.error is None:
            # a latency run that hit its time bound is still a measurement: a saturated peer
            return self.received > 0
        return self.error is None and not self.timed_out and self.received >= self.n_records

    @property
    def saturated(self) -> bool:
        """Latency runs: the consumer received less than 95% of the offered rate."""
        d = self.latency or {}
        return bool(d) and d.get("achieved_rate", 0.0) < 0.95 * d.get("offered_rate", 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["saturated"] = self.saturated
        return d


RunFn = Callable[[int, int, float], Result]


@dataclass
class Scenario:
    """One benchmark. `run(size_bytes, n_records, timeout_s)` does one measurement."""

    name: str
    run: RunFn
    sizes: tuple[int, ...] = SIZES_DEFAULT
    kind: Kind = "throughput"
    peer: bool = True  # peers are the yardsticks every scenario's ratio is computed against
    records: dict[int, int] = field(default_factory=dict)  # full-run count per size
    smoke_records: dict[int, int] = field(default_factory=dict)  # --smoke count per size
    timeout_s: float = 30.0  # per run, on top of the count bound
    requires: tuple[str, ...] = ()  # binaries (see perf.deps.BINARIES) the scenario needs
    doc: str = ""  # what is measured and the client settings; goes into the report

    def n_records(self, size: int, smoke: bool = False) -> int:
        if smoke:
            if size in self.smoke_records:
                return self.smoke_records[size]
            return max(50, min(self.n_records(size) // 50, 2000 if size < 65536 else 200))
        if size in self.records:
            return self.records[size]
        return max(1000, min(1_000_000, (256 << 20) // size))


REGISTRY: dict[str, Scenario] = {}


def register(s: Scenario) -> Scenario:
    if s.name in REGISTRY:
        raise ValueError(f"scenario {s.name!r} registered twice")
    REGISTRY[s.name] = s
    return s


def scenario(
    name: str,
    sizes: Iterable[int] = SIZES_DEFAULT,
    kind: Kind = "throughput",
    peer: bool = True,
    records: dict[int, int] | None = None,
    smoke_records: dict[int, int] | None = None,
    timeout_s: float = 30.0,
    requires: Sequence[str] = (),
) -> Callable[[RunFn], RunFn]:
    """Decorator: register `fn(size_bytes, n_records, timeout_s) -> Result` as scenario `name`."""

    def deco(fn: RunFn) -> RunFn:
        register(
            Scenario(
                name=name,
                run=fn,
                sizes=tuple(sizes),
                kind=kind,
                peer=peer,
                records=dict(records or {}),
                smoke_records=dict(smoke_records or {}),
                timeout_s=timeout_s,
                requires=tuple(requires),
                doc=" ".join((fn.__doc__ or "").split()),
            )
        )
        return fn

    return deco


# ---------------------------------------------------------------------------------------------
# measuring


def cpu_seconds(p: psutil.Process | None = None) -> float:
    """user+system CPU seconds: of process `p` from psutil cpu_times (10 ms ticks), or of this process
    (all threads) from CLOCK_PROCESS_CPUTIME_ID, which resolves short runs too."""
    if p is None:
        return time.process_time()
    t = p.cpu_times()
    return float(t.user + t.system)


def self_peak_rss() -> int:
    """Peak RSS of this process. VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a
    spawned child would report at least its parent's RSS at fork time."""
    return pid_peak_rss(os.getpid()) or int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def pid_peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) of a process from /proc, 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def percentiles_us(lat_ns: Any) -> dict[str, float]:
    import numpy as np

    a = np.asarray(lat_ns, dtype=np.int64)
    if a.size == 0:
        return {"p50_us": float("nan"), "p99_us": float("nan"), "p999_us": float("nan"), "max_us": 0.0}
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {
        "p50_us": float(p50) / 1e3,
        "p99_us": float(p99) / 1e3,
        "p999_us": float(p999) / 1e3,
        "max_us": float(a.max()) / 1e3,
        "samples": float(a.size),
    }


def stamp_payload(size: int) -> Callable[[int], bytes]:
    """Builder of latency payloads: 8-byte little-endian send time, then zero padding up to size."""
    pad = bytes(max(0, size - 8))
    return lambda t_ns: t_ns.to_bytes(8, "little") + pad


def read_stamp(buf: bytes | memoryview) -> int:
    return int.from_bytes(buf[:8], "little")


class Pacer:
    """Offered-rate schedule: `due(now_ns)` = how many records should have been sent by now;
    record i's scheduled send time is t0 + i / rate."""

    def __init__(self, rate: float, t0_ns: int) -> None:
        self.rate = rate
        self.t0_ns = t0_ns
        self.period_ns = 1e9 / rate

    def due(self, now_ns: int) -> int:
        return int((now_ns - self.t0_ns) / self.period_ns) + 1

    def sched_ns(self, i: int) -> int:
        return self.t0_ns + int(i * self.period_ns)

    def sleep_until(self, i: int) -> None:
        """Sleep (not spin: this machine has 2 cores) until record i is due."""
        wait = (self.sched_ns(i) - time.monotonic_ns()) / 1e9
        if wait > 0:
            time.sleep(min(wait, 0.01))


class Ctl:
    """Handed to each child: call `ready()` after setup; it blocks until the parent releases both
    children and starts the child's CPU clock. Loops stop at `deadline` (time.monotonic())."""

    def __init__(self, ready_ev: Any, go_ev: Any, timeout_s: float) -> None:
        self._ready_ev = ready_ev
        self._go_ev = go_ev
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + SETUP_DEADLINE_S + timeout_s
        self.t_go_ns = 0
        self.cpu0 = 0.0
        self.cpu1: float | None = None

    def ready(self) -> None:
        self._ready_ev.set()
        if not self._go_ev.wait(SETUP_DEADLINE_S):
            raise TimeoutError("not released by the parent within the setup deadline")
        self.cpu0 = cpu_seconds()
        self.t_go_ns = time.monotonic_ns()
        self.deadline = time.monotonic() + self.timeout_s

    def stop_clock(self) -> int:
        """Call when the work is done (before cleanup): returns the monotonic ns to report as
        t_last_ns and freezes this process's CPU time there."""
        self.cpu1 = cpu_seconds()
        return time.monotonic_ns()

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


ChildFn = Callable[..., dict[str, Any]]


def _child_entry(
    role: str,
    fn: ChildFn,
    kwargs: dict[str, Any],
    conn: Connection,
    ready_ev: Any,
    go_ev: Any,
    timeout_s: float,
) -> None:
    try:
        ctl = Ctl(ready_ev, go_ev, timeout_s)
        out = fn(ctl, **kwargs)
        out["cpu_s"] = (ctl.cpu1 if ctl.cpu1 is not None else cpu_seconds()) - ctl.cpu0
        out["t_go_ns"] = ctl.t_go_ns
        out["t_done_ns"] = time.monotonic_ns()
        out["peak_rss_bytes"] = self_peak_rss()
        out["role"] = role
        conn.send(out)
    except BaseException:
        ready_ev.set()  # do not make the parent wait the whole setup deadline
        try:
            conn.send({"role": role, "error": traceback.format_exc(limit=8)})
        except Exception:
            pass
    finally:
        conn.close()


def recycle_free_memory(nbytes: int) -> float:
    """Touch `nbytes` of fresh anonymous memory and free it again; returns the seconds it took.

    This VM returns free memory to its host (virtio-balloon free page reporting), and the first
    touch of such memory costs the host a page fault: os.write of 1 GiB into a new file ran at
    ~650 MiB/s on reported memory and ~5.6 GB/s on memory freed just before. Which state a run got
    depended on what the run before it freed and when, so one scenario swung 15x between runs
    (os.write 64 KiB: 6.1k-88.7k records/s in one invocation). Every run is released right after
    this, so it starts with the memory it will write warm. Not a guarantee: the kernel may hand some
    back first (in 2 of 3 invocations the reference still ran cold), so read a 64-KiB cell with its
    [min-max] (perf/README.md, "Memory state and core placement").
    """
    nbytes = min(RECYCLE_MAX_BYTES, nbytes + RECYCLE_SLACK_BYTES)
    t = time.monotonic()
    try:
        with mmap.mmap(-1, nbytes) as m:
            m.madvise(MADV_POPULATE_WRITE)
    except OSError:  # an older kernel: no claim about the memory state then
        pass
    return time.monotonic() - t


def _stop_child(p: mp.process.BaseProcess, grace_s: float = 5.0) -> None:
    """Stop a child we started, by its pid: join, terminate, then kill."""
    p.join(grace_s)
    if p.is_alive():
        p.terminate()
        p.join(grace_s)
    if p.is_alive():
        p.kill()
        p.join(grace_s)


def run_pair(
    scenario_name: str,
    size_bytes: int,
    n_records: int,
    timeout_s: float,
    producer: tuple[ChildFn, dict[str, Any]],
    consumer: tuple[ChildFn, dict[str, Any]],
    servers: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Result:
    """Run producer and consumer in two spawned processes and measure them (see module doc).

    Both child functions are `fn(ctl, **kwargs) -> dict`, top-level (spawn pickles them by name).
    The producer returns {"sent": k}; the consumer returns {"received": k, "t_last_ns": monotonic ns
    when it had everything} and, for latency runs, {"latency": percentiles_us(...)} plus whatever
    else it wants kept (in Result.extra). Shared queues go in the kwargs (inherited at spawn).
    """
    return run_procs(
        scenario_name, size_bytes, n_records, timeout_s,
        {"consumer": consumer, "producer": producer}, servers=servers, extra=extra,
    )  # fmt: skip


def run_single(
    scenario_name: str,
    size_bytes: int,
    n_records: int,
    timeout_s: float,
    fn: ChildFn,
    kwargs: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Result:
    """One-process scenarios (ceilings) in one spawned child: `fn(ctl, **kwargs)` returns
    {"received": records done, "t_last_ns": ...}; measured from its release to t_last_ns."""
    return run_procs(scenario_name, size_bytes, n_records, timeout_s, {"process": (fn, kwargs)}, extra=extra)


def run_procs(
    scenario_name: str,
    size_bytes: int,
    n_records: int,
    timeout_s: float,
    roles: dict[str, tuple[ChildFn, dict[str, Any]]],
    servers: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Result:
    """Spawn one process per role (started in dict order), release them together, collect reports.
    The clock starts at the "producer"'s release (else the first role's) and stops at the
    "consumer"'s `t_last_ns` (else the last role's)."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    children: list[tuple[str, mp.process.BaseProcess, Connection, Any]] = []
    outs: dict[str, dict[str, Any]] = {}
    server_procs = {name: psutil.Process(pid) for name, pid in (servers or {}).items()}
    server_cpu0: dict[str, float] = {}
    error: str | None = None
    recycle_s = 0.0
    try:
        # One after the other: each role finishes its setup (e.g. the consumer binds or subscribes)
        # before the next starts, so a producer never races a consumer that is not there yet.
        for role, (fn, kw) in roles.items():
            rx, tx = ctx.Pipe(duplex=False)
            ready = ctx.Event()
            p = ctx.Process(
                target=_child_entry,
                args=(role, fn, kw, tx, ready, go, timeout_s),
                name=f"perf-{scenario_name}-{role}",
                daemon=True,
            )
            p.start()
            tx.close()
            children.append((role, p, rx, ready))
            if not ready.wait(SETUP_DEADLINE_S):
                raise TimeoutError(f"{role} not ready within {SETUP_DEADLINE_S}s")
            if rx.poll(0):  # reported already: that is an error report
                outs[role] = rx.recv()
                raise RuntimeError(f"{role} failed in setup")
        recycle_s = recycle_free_memory(size_bytes * n_records)
        for name, sp in server_procs.items():
            server_cpu0[name] = cpu_seconds(sp)
        go.set()
        result_deadline = time.monotonic() + timeout_s + STOP_GRACE_S
        for role, _p, rx, _r in children:
            if role in outs:
                continue
            if rx.poll(max(0.0, result_deadline - time.monotonic())):
                try:
                    outs[role] = rx.recv()
                except EOFError:
                    outs[role] = {"error": f"{role} exited without a report"}
            else:
                outs[role] = {"error": f"{role} gave no report within {timeout_s + STOP_GRACE_S:.0f}s"}
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        go.set()
        for _role, p, rx, _r in children:
            _stop_child(p)
            rx.close()

    errs = [f"{r}: {o['error']}" for r, o in outs.items() if o.get("error")]
    if errs:
        error = "\n".join(([error] if error else []) + errs)
    names = list(roles)
    first = outs.get("producer" if "producer" in outs else names[0], {})
    last = outs.get("consumer" if "consumer" in outs else names[-1], {})
    received = int(last.get("received", 0))
    t0 = int(first.get("t_go_ns") or last.get("t_go_ns") or 0)
    t1 = int(last.get("t_last_ns") or last.get("t_done_ns") or 0)
    elapsed = max((t1 - t0) / 1e9, 1e-9) if t0 and t1 else float("nan")
    procs = []
    for role in names:
        o = outs.get(role, {})
        cs = float(o.get("cpu_s", float("nan")))
        procs.append(ProcStats(role, cs, 100.0 * cs / elapsed, int(o.get("peak_rss_bytes", 0))))
    for name, sp in server_procs.items():
        try:
            cs = cpu_seconds(sp) - server_cpu0.get(name, cpu_seconds(sp))
            procs.append(ProcStats(name, cs, 100.0 * cs / elapsed, pid_peak_rss(sp.pid)))
        except psutil.Error:
            pass
    keep: dict[str, Any] = {}
    for role in names:
        o = outs.get(role, {})
        pre = "" if o is last else f"{role}_"
        keep.update({f"{pre}{k}": v for k, v in o.items() if k not in _REPORT_KEYS})
    keep.update(extra or {})
    keep["recycle_s"] = round(recycle_s, 3)
    return Result(
        scenario=scenario_name,
        size_bytes=size_bytes,
        n_records=n_records,
        received=received,
        elapsed_s=elapsed,
        records_per_s=received / elapsed if received else 0.0,
        mb_per_s=received * size_bytes / elapsed / 1e6 if received else 0.0,
        procs=procs,
        latency=last.get("latency") or first.get("latency"),  # produce-latency runs: the producer's
        timed_out=bool(last.get("timed_out")) or (received < n_records and error is None),
        error=error,
        extra=keep,
    )


_REPORT_KEYS = {"role", "cpu_s", "t_go_ns", "t_done_ns", "peak_rss_bytes", "received", "t_last_ns",
                "latency", "timed_out", "error"}  # fmt: skip
