"""shmbroker scenarios for the harness (perf/harness.py): the same shapes as the peers, measured the same way.

Each run starts a fresh broker (``python -m shmbroker serve``) on a temp data dir and a free loopback
port, creates one topic with one partition, runs a producer process and a consumer process
(multiprocessing spawn, released together by the harness), and stops the broker by pid. CPU and peak
memory of the supervisor and the partition worker are measured by the harness as "servers".

Client settings: acks=1, linger.ms=5, batch.size 1 MB, queue.buffering.max.messages 200000 (the
producer serves deliveries with poll(0) on BufferError, as a confluent-kafka user must), one
partition named explicitly. ``local`` uses the shared-memory lanes and reads segment files directly;
``remote`` forces ZeroMQ (``shmbroker.transport=zmq``). The consumer of the produce()/poll()
scenarios builds one Message per record (``consume(10000)``); the ``batch`` scenarios use
``produce_batch`` and ``consume_columnar`` (no Python object per record).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil

from perf.harness import (
    Ctl,
    Pacer,
    Result,
    percentiles_us,
    read_stamp,
    run_pair,
    run_procs,
    scenario,
    stamp_payload,
)
from perf.servers import HOST, free_port

SIZES = (100, 1024, 65536)
TOPIC = "bench"
READY_TIMEOUT_S = 30.0
LAT_RATES = (10_000, 50_000)
LAT_SECONDS = 2.0
LAT_TIMEOUT_S = 2 * LAT_SECONDS + 5.0
N_LOCAL = {100: 2_000_000, 1024: 500_000, 65536: 20_000}
N_BATCH = {100: 5_000_000, 1024: 1_000_000, 65536: 20_000}
N_REMOTE = {100: 1_000_000, 1024: 300_000, 65536: 10_000}


class Broker:
    """A fresh broker in a child process, with one topic; stopped (SIGTERM, then SIGKILL) by pid."""

    def __init__(
        self, partitions: int = 1, config: dict[str, str] | None = None, broker_toml: str = ""
    ) -> None:
        self.partitions, self.topic_config = partitions, config or {}
        self.dir = tempfile.mkdtemp(prefix="shmb-bench-")
        self.config_args: list[str] = []
        if broker_toml:  # a [broker] table for `serve --config`
            path = os.path.join(self.dir, "broker.toml")
            with open(path, "w") as f:
                f.write("[broker]\n" + broker_toml)
            self.config_args = ["--config", path]
        self.port = free_port()
        self.address = f"tcp://{HOST}:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self.ready_s = 0.0

    def __enter__(self) -> Broker:
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shmbroker", "serve", "--data-dir", self.dir, "--listen", self.address,
             *self.config_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        ready = threading.Event()

        def pump() -> None:
            assert self.process is not None
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if " ready: " in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(READY_TIMEOUT_S):
            self.__exit__()
            raise RuntimeError("shmbroker did not report ready")
        self.ready_s = time.monotonic() - started
        from shmbroker import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.address})
        admin.create_topics([NewTopic(TOPIC, self.partitions, config=self.topic_config)])[TOPIC].result()
        admin.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        out = []
        for child in psutil.Process(self.pid).children(recursive=True):
            try:
                if "shmbroker: partition" in " ".join(child.cmdline()):
                    out.append(child.pid)
            except psutil.Error:
                continue
        return out

    def servers(self) -> dict[str, int]:
        """Every broker process, so a run's CPU table shows where the time went (the router too)."""
        pids = {"broker-supervisor": self.pid}
        for i, pid in enumerate(self.worker_pids()):
            pids[f"broker-worker-{i}"] = pid
        for child in psutil.Process(self.pid).children(recursive=True):
            try:
                title = " ".join(child.cmdline())
            except psutil.Error:
                continue
            for role in ("router", "coordinator"):
                if title.startswith(f"shmbroker: {role}"):
                    pids[f"broker-{role}"] = child.pid
        return pids

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            family = [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            for pid in family:
                try:
                    psutil.Process(pid).kill()
                except psutil.Error:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


def pinned_child(ctl: Ctl, cpus: list[int], child: str, **kw: Any) -> dict[str, Any]:
    """Run the child function named `child` (one of this module's) on `cpus` only
    (os.sched_setaffinity), so it never shares a core with the pinned partition worker."""
    os.sched_setaffinity(0, cpus)
    fn: Any = globals()[child]
    result: dict[str, Any] = fn(ctl, **kw)
    return result


def _producer_conf(address: str, transport: str, codec: str, linger_ms: int = 5) -> dict[str, Any]:
    return {
        "bootstrap.servers": address,
        "acks": 1,
        "linger.ms": linger_ms,
        "compression.type": codec,
        "shmbroker.transport": transport,
        "queue.buffering.max.messages": 200_000,
    }


def producer_child(
    ctl: Ctl,
    address: str,
    transport: str,
    codec: str,
    size: int,
    n: int,
    batch: bool = False,
    rate: float | None = None,
    ack_latency: bool = False,
) -> dict[str, Any]:
    from shmbroker import Producer

    producer = Producer(_producer_conf(address, transport, codec, linger_ms=0 if rate else 5))
    acked: list[int] = []  # ack_latency: delivery-report time - scheduled send time, per record
    last_ack_ns = [0]

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            last_ack_ns[0] = now = time.monotonic_ns()
            acked.append(now - read_stamp(msg.value()))

    producer.produce(TOPIC, b"warm-up", partition=0)  # opens the lane before the clock starts
    producer.flush(10)
    payload = os.urandom(size)
    ctl.ready()
    sent = 0
    if rate:
        pacer, mk = Pacer(rate, ctl.t_go_ns), stamp_payload(size)
        while sent < n and not ctl.expired():
            due = min(pacer.due(time.monotonic_ns()), n)
            if due <= sent:
                producer.poll(0)
                wait_s = (pacer.sched_ns(sent) - time.monotonic_ns()) / 1e9
                # On a lane, wait in poll() as an application would: it serves a delivery report the
                # moment it lands. Over ZeroMQ poll() waits in whole milliseconds (zmq_poll), longer
                # than the 20 us to the next record at 50k/s, so there the pacer sleeps.
                if wait_s > 0 and len(producer) and transport == "shm":
                    producer.poll(min(wait_s, 0.01))
                else:
                    pacer.sleep_until(sent)
                continue
            cb = on_delivery if ack_latency else None
            for i in range(sent, due):
                producer.produce(TOPIC, mk(pacer.sched_ns(i)), partition=0, on_delivery=cb)
            sent = due
            producer.poll(0)
    elif batch:
        import numpy as np

        rows = np.frombuffer(payload * 1024, dtype=np.uint8).reshape(1024, size) if size <= 1024 else None
        chunk = 100_000 if size <= 1024 else 64
        while sent < n and not ctl.expired():
            k = min(chunk, n - sent)
            values: Any = np.tile(rows, (k // 1024 + 1, 1))[:k] if rows is not None else [payload] * k
            while True:
                try:
                    producer.produce_batch(TOPIC, values, partition=0)
                    break
                except BufferError:
                    producer.poll(0.001)
            sent += k
            if len(producer) > 400_000:
                producer.poll(0.001)
    else:
        produce, poll = producer.produce, producer.poll
        while sent < n:
            try:
                produce(TOPIC, payload, partition=0)
                sent += 1
            except BufferError:
                poll(0.0005)
                if ctl.expired():
                    break
    producer.flush(max(1.0, ctl.remaining()))
    producer.close(5)
    if ack_latency:
        d = percentiles_us(acked)
        d["offered_rate"] = float(rate or 0)
        d["achieved_rate"] = len(acked) / max((last_ack_ns[0] - ctl.t_go_ns) / 1e9, 1e-9)
        return {"sent": sent, "latency": d}
    return {"sent": sent}


def consumer_child(
    ctl: Ctl, address: str, transport: str, size: int, n: int, batch: bool = False, rate: float | None = None
) -> dict[str, Any]:
    from shmbroker import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": address,
            "shmbroker.transport": transport,
            "fetch.max.wait.ms": 100,
            "max.partition.fetch.bytes": 4 << 20,
        }
    )
    consumer.assign([TopicPartition(TOPIC, 0, 1)])  # offset 0 is the producer's warm-up record
    ctl.ready()
    got = 0
    lat: list[int] = []
    while got < n and not ctl.expired():
        if batch:
            for _t, _p, columns in consumer.consume_columnar(timeout=0.1):
                got += len(columns)
        elif rate:
            msg = consumer.poll(0.1)
            if msg is not None:
                lat.append(time.monotonic_ns() - read_stamp(msg.value()))  # type: ignore[arg-type]
                got += 1
        else:
            got += len(consumer.consume(10_000, timeout=0.1))
    t_last = ctl.stop_clock()
    consumer.close()
    out: dict[str, Any] = {"received": got, "t_last_ns": t_last, "timed_out": ctl.expired()}
    if rate:
        d = percentiles_us(lat)
        d["offered_rate"] = float(rate)
        d["achieved_rate"] = got / max((t_last - ctl.t_go_ns) / 1e9, 1e-9)
        out["latency"] = d
    return out


def acked_child(
    ctl: Ctl,
    address: str,
    transport: str,
    size: int,
    n: int,
    batch: bool = False,
    rate: float | None = None,
    poll_s: float = 0.001,
) -> dict[str, Any]:
    """The "consumer" of produce-only runs: done when the partition's high watermark shows all n
    records appended (it reads no record). It watches through shared memory whatever the producer's
    transport: an assigned local partition answers get_watermark_offsets from its control block, so
    the watcher costs the broker nothing (asking the broker every millisecond took ~10% of a core
    from the run it measured). ``transport`` is the producer's, unused here."""
    from shmbroker import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": address, "shmbroker.transport": "shm"})
    tp = TopicPartition(TOPIC, 0)
    consumer.assign([TopicPartition(TOPIC, 0, -1)])  # maps the control block; reads nothing
    ctl.ready()
    high = 0
    while high < n + 1 and not ctl.expired():  # +1: the producer's warm-up record
        _low, high = consumer.get_watermark_offsets(tp)
        time.sleep(poll_s)
    t_last = ctl.stop_clock()
    consumer.close()
    return {"received": max(0, high - 1), "t_last_ns": t_last, "timed_out": ctl.expired()}


def _run(
    name: str,
    size: int,
    n: int,
    timeout_s: float,
    *,
    transport: str,
    codec: str = "none",
    batch: bool = False,
    rate: float | None = None,
    produce_only: bool = False,
    ack_latency: bool = False,
    pinned: bool = False,
) -> Result:
    with Broker(broker_toml='"cpu.affinity" = true\n' if pinned else "") as broker:
        kw_p = {
            "address": broker.address,
            "transport": transport,
            "codec": codec,
            "size": size,
            "n": n,
            "batch": batch,
            "rate": rate,
            **({"ack_latency": True} if ack_latency else {}),
        }
        kw_c = {
            "address": broker.address,
            "transport": transport,
            "size": size,
            "n": n,
            "batch": batch,
            "rate": rate,
            # A produce-latency run only needs the end: a rare look keeps the broker's CPU for the producer.
            **({"poll_s": 0.05} if ack_latency else {}),
        }
        producer: tuple[Any, dict[str, Any]] = (producer_child, kw_p)
        consumer: tuple[Any, dict[str, Any]] = (
            acked_child if produce_only or ack_latency else consumer_child,
            kw_c,
        )
        extra = {"transport": transport, "codec": codec, "batch_api": batch, "rate": rate}
        if pinned:
            worker_cpus = {c for pid in broker.worker_pids() for c in psutil.Process(pid).cpu_affinity()}
            client_cpus = sorted(set(range(os.cpu_count() or 1)) - worker_cpus)
            if not client_cpus:
                raise RuntimeError(f"no core left for the clients: workers on {sorted(worker_cpus)}")
            producer, consumer = (
                (pinned_child, {"cpus": client_cpus, "child": fn.__name__, **kw})
                for fn, kw in (producer, consumer)
            )
            extra |= {"worker_cpus": sorted(worker_cpus), "client_cpus": client_cpus}
        return run_pair(
            name,
            size,
            n,
            timeout_s,
            producer=producer,
            consumer=consumer,
            servers=broker.servers(),
            extra=extra,
        )


def _register(name: str, doc: str, records: dict[int, int], **kw: Any) -> None:
    def run(size_bytes: int, n_records: int, timeout_s: float) -> Result:
        return _run(name, size_bytes, n_records, timeout_s, **kw)

    run.__doc__ = doc
    scenario(name, sizes=SIZES, peer=False, records=records, timeout_s=60.0)(run)


_register(
    "shmbroker-local",
    "Local e2e, shared-memory lanes, produce()/consume(); acks=1.",
    N_LOCAL,
    transport="shm",
)
_register(
    "shmbroker-local-lz4",
    "As shmbroker-local with compression.type=lz4.",
    N_LOCAL,
    transport="shm",
    codec="lz4",
)
_register(
    "shmbroker-local-batch",
    "Local e2e with produce_batch()/consume_columnar(); acks=1.",
    N_BATCH,
    transport="shm",
    batch=True,
)
_register(
    "shmbroker-local-batch-lz4",
    "As shmbroker-local-batch with lz4.",
    N_BATCH,
    transport="shm",
    codec="lz4",
    batch=True,
)
_register(
    "shmbroker-remote",
    "Remote e2e over ZeroMQ (tcp loopback), produce()/consume(); acks=1.",
    N_REMOTE,
    transport="zmq",
)
_register(
    "shmbroker-local-pinned",
    "As shmbroker-local with the broker's cpu.affinity = true (the partition worker pinned to one core) "
    "and both clients pinned to the other cores (os.sched_setaffinity): no client shares the worker's core.",
    N_LOCAL,
    transport="shm",
    pinned=True,
)
_register(
    "shmbroker-local-batch-pinned",
    "As shmbroker-local-batch, pinned as shmbroker-local-pinned.",
    N_BATCH,
    transport="shm",
    batch=True,
    pinned=True,
)
_register("shmbroker-remote-lz4", "As shmbroker-remote with lz4.", N_REMOTE, transport="zmq", codec="lz4")
_register(
    "shmbroker-local-produce",
    "Local produce only: produce()/poll() until the high watermark has every record; acks=1.",
    N_LOCAL,
    transport="shm",
    produce_only=True,
)
_register(
    "shmbroker-local-produce-lz4",
    "As shmbroker-local-produce with compression.type=lz4.",
    N_LOCAL,
    transport="shm",
    codec="lz4",
    produce_only=True,
)
_register(
    "shmbroker-remote-produce-lz4",
    "As shmbroker-remote-produce with compression.type=lz4.",
    N_REMOTE,
    transport="zmq",
    codec="lz4",
    produce_only=True,
)
_register(
    "shmbroker-remote-produce",
    "Remote produce only over ZeroMQ (tcp loopback) until the high watermark has every record; acks=1.",
    N_REMOTE,
    transport="zmq",
    produce_only=True,
)


def _register_latency(transport: str, rate: int, *, ack: bool) -> None:
    """End-to-end latency (a consumer's receive time), or with ``ack`` produce latency (the delivery
    report's time in the producer, what Kafka calls produce or request latency)."""
    where = "local" if transport == "shm" else "remote"
    name = f"shmbroker-{where}-{'acklat' if ack else 'lat'}{rate // 1000}k"

    def run(size_bytes: int, n_records: int, timeout_s: float) -> Result:
        return _run(name, size_bytes, n_records, timeout_s, transport=transport, rate=rate, ack_latency=ack)

    if ack:
        run.__doc__ = (
            f"Produce latency at {rate} records/s offered (100 B), what Kafka calls produce or request "
            "latency: produce() each due record with linger.ms=0 and an on_delivery callback, poll(0), then "
            "(local) wait in poll() until the next is due (remote: sleep); "
            "latency = delivery report (acks=1: appended) - scheduled send time. No consumer reads."
        )
    else:
        run.__doc__ = (
            f"Latency at {rate} records/s offered (100 B): produce() each due record with "
            "linger.ms=0, poll(0), then (local) wait in poll() until the next is due (remote: sleep); "
            "consumer poll(); latency = receive - scheduled send time."
        )
    scenario(
        name,
        sizes=(100,),
        kind="latency",
        peer=False,
        records={100: int(rate * LAT_SECONDS)},
        smoke_records={100: int(rate * 0.2)},
        timeout_s=LAT_TIMEOUT_S,
    )(run)


for _transport in ("shm", "zmq"):
    for _rate in LAT_RATES:
        _register_latency(_transport, _rate, ack=False)
        _register_latency(_transport, _rate, ack=True)


def _group_run(name: str, mode: str, size: int, n: int, timeout_s: float) -> Result:
    """Two consumer processes read a pre-filled 4-partition topic, in a group or assigned by hand."""
    from perf import bench_groups

    with Broker() as broker:
        started = time.monotonic()
        bench_groups.fill(broker.address, n)  # its own topic (bench_groups.TOPIC), 4 partitions
        if time.monotonic() - started > timeout_s:
            raise TimeoutError("filling the topic took longer than the run's time bound")
        out = bench_groups.one_run(broker.address, mode, 0, "auto")
    return Result(
        scenario=name, size_bytes=size, n_records=n, received=int(out["records"]),
        elapsed_s=float(out["span_s"]), records_per_s=float(out["records_per_s"]),
        mb_per_s=float(out["records_per_s"]) * size / 1e6,
        extra={"join_s": out["join_s"], "partitions": out["partitions"], "mode": mode},
    )  # fmt: skip


def _register_group(mode: str) -> None:
    name = "shmbroker-group-2x4" if mode == "group" else "shmbroker-manual-2x4"

    def run(size_bytes: int, n_records: int, timeout_s: float) -> Result:
        return _group_run(name, mode, size_bytes, n_records, timeout_s)

    how = "one consumer group, range assignor" if mode == "group" else "assign() by hand, 2 partitions each"
    run.__doc__ = (
        f"Two consumers over a pre-filled 4-partition topic ({how}); records/s from the first record "
        "read to the last, the group's join time excluded (in extra)."
    )
    scenario(
        name, sizes=(100,), peer=False, records={100: 2_000_000}, smoke_records={100: 20_000}, timeout_s=120.0
    )(run)


for _mode in ("group", "manual"):
    _register_group(_mode)


def _consume_only(name: str, transport: str, size: int, n: int, timeout_s: float) -> Result:
    """One consumer process reads a pre-filled 1-partition topic (filled through the local lane)."""
    import numpy as np

    from shmbroker import Producer

    with Broker() as broker:
        producer = Producer({"bootstrap.servers": broker.address, "acks": 1})
        rows = np.frombuffer(os.urandom(size) * min(n, 1024), dtype=np.uint8).reshape(-1, size)
        sent = 0
        while sent < n:
            k = min(len(rows), n - sent)
            try:
                producer.produce_batch(TOPIC, rows[:k], partition=0)
                sent += k
            except BufferError:
                producer.poll(0.01)
        if producer.flush(timeout_s):
            raise TimeoutError("the topic was not filled in time")
        producer.close()
        kw = {"address": broker.address, "transport": transport, "size": size, "n": n}
        return run_procs(name, size, n, timeout_s, {"consumer": (consumer_from_zero, kw)},
                         servers=broker.servers(), extra={"transport": transport})  # fmt: skip


def consumer_from_zero(ctl: Ctl, address: str, transport: str, size: int, n: int) -> dict[str, Any]:
    from shmbroker import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": address, "shmbroker.transport": transport,
                         "max.partition.fetch.bytes": 4 << 20})  # fmt: skip
    consumer.assign([TopicPartition(TOPIC, 0, 0)])
    ctl.ready()
    got = 0
    while got < n and not ctl.expired():
        got += len(consumer.consume(10_000, timeout=0.1))
    t_last = ctl.stop_clock()
    consumer.close()
    return {"received": got, "t_last_ns": t_last, "t_go_ns": ctl.t_go_ns, "timed_out": ctl.expired()}


def _register_consume(transport: str) -> None:
    name = f"shmbroker-{'local' if transport == 'shm' else 'remote'}-consume"

    def run(size_bytes: int, n_records: int, timeout_s: float) -> Result:
        return _consume_only(name, transport, size_bytes, n_records, timeout_s)

    run.__doc__ = (f"Consume only ({'mmap of the segment files' if transport == 'shm' else 'ZeroMQ FETCH'}): "
                   "one consumer, consume(10000), from offset 0 of a pre-filled topic.")  # fmt: skip
    scenario(name, sizes=SIZES, peer=False, records=N_REMOTE, timeout_s=60.0)(run)


for _transport in ("shm", "zmq"):
    _register_consume(_transport)
