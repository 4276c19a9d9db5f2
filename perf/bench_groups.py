"""Consumer-group overhead: ``python -m perf.bench_groups [--runs 3] [--records 2000000]``.

One broker (``shmbroker serve`` on a free port, temp data dir), one topic of 4 partitions filled
once with 100-B records. Each run starts 2 consumer processes twice, interleaved so load from other
work on the machine spreads over both cases:

    manual   assign() of 2 partitions each, from the beginning (no group.id)
    group    subscribe() in a fresh group (range assignor, auto commit every 5 s, heartbeat thread),
             auto.offset.reset=earliest

Each process reads with ``consume(10000)`` until it holds every record of the partitions it was
given. The clock (``time.perf_counter``, CLOCK_MONOTONIC, shared by the processes) runs from the
first record either process got to the last record either got: the group's join (>= 3 s, the
coordinator's initial rebalance delay) is reported apart, not counted. records/s = records / that
span. Median and [min, max] over the runs; ratio = group median / manual median (target >= 0.8).
JSON to perf/results/groups-latest.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "groups-latest.json"
SPAWN = multiprocessing.get_context("spawn")
TOPIC, PARTITIONS, VALUE_BYTES = "bench-groups", 4, 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reader(address: str, mode: str, index: int, group: str, transport: str, out: Connection) -> None:
    """One consumer process: read its partitions to their end; send back timings."""
    from shmbroker import Consumer, TopicPartition

    conf: dict[str, Any] = {
        "bootstrap.servers": address,
        "shmbroker.transport": transport,
        "auto.offset.reset": "earliest",
    }
    if mode == "group":
        conf.update({"group.id": group, "session.timeout.ms": 10000})
    consumer = Consumer(conf)
    started = time.perf_counter()
    if mode == "group":
        consumer.subscribe([TOPIC])
    else:
        consumer.assign([TopicPartition(TOPIC, p, -2) for p in (2 * index, 2 * index + 1)])
    out.send("ready")
    got, first, last, assigned_at = 0, 0.0, 0.0, 0.0
    ends: dict[int, int] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        batch = consumer.consume(10000, timeout=0.2)
        if batch:
            if not first:
                first = time.perf_counter()
            last = time.perf_counter()
            got += len(batch)
        parts = consumer.assignment()
        if parts and not ends:
            assigned_at = time.perf_counter()
            ends = {tp.partition: consumer.get_watermark_offsets(tp)[1] for tp in parts}
        if ends and got >= sum(ends.values()):
            break
    consumer.close()
    out.send(
        {
            "got": got,
            "first": first,
            "last": last,
            "join_s": assigned_at - started if assigned_at else -1,
            "partitions": sorted(ends),
        }
    )


def one_run(address: str, mode: str, run: int, transport: str) -> dict[str, Any]:
    pipes, procs = [], []
    for i in range(2):
        parent, child = SPAWN.Pipe()
        proc = SPAWN.Process(
            target=reader, args=(address, mode, i, f"bench-{run}-{os.getpid()}", transport, child)
        )
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for p in pipes:
        if not p.poll(60):
            raise RuntimeError("a consumer did not start")
        p.recv()
    results = []
    for p in pipes:
        if not p.poll(150):
            raise RuntimeError("a consumer did not finish")
        results.append(p.recv())
    for proc in procs:
        proc.join(10)
    total = sum(r["got"] for r in results)
    span = max(r["last"] for r in results) - min(r["first"] for r in results)
    return {
        "mode": mode,
        "records": total,
        "span_s": span,
        "records_per_s": total / span,
        "join_s": max(r["join_s"] for r in results),
        "partitions": [r["partitions"] for r in results],
    }


def fill(address: str, records: int) -> None:
    from shmbroker import AdminClient, NewTopic, Producer

    admin = AdminClient({"bootstrap.servers": address})
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS)])[TOPIC].result()
    admin.close()
    rows = np.random.default_rng(1).integers(
        0, 256, size=(records // PARTITIONS, VALUE_BYTES), dtype=np.uint8
    )
    producer = Producer({"bootstrap.servers": address})
    for p in range(PARTITIONS):
        for start in range(0, len(rows), 50_000):
            while True:
                try:
                    producer.produce_batch(TOPIC, rows[start : start + 50_000], partition=p)
                    break
                except BufferError:  # the producer's queue is full: let deliveries drain it
                    producer.poll(0.1)
    if producer.flush(120):
        raise RuntimeError("records not delivered")
    producer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--transport", default="auto", choices=("auto", "shm", "zmq"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-groups-") as tmp:
        address = f"tcp://127.0.0.1:{free_port()}"
        broker = subprocess.Popen(
            [sys.executable, "-m", "shmbroker", "serve", "--data-dir", f"{tmp}/data", "--listen", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            assert broker.stdout is not None
            for line in broker.stdout:
                if " ready: " in line:
                    break
            fill(address, args.records)
            runs: dict[str, list[dict[str, Any]]] = {"manual": [], "group": []}
            for run in range(args.runs):
                for mode in ("manual", "group"):
                    result = one_run(address, mode, run, args.transport)
                    runs[mode].append(result)
                    print(
                        f"run {run + 1} {mode:<6} {result['records_per_s']:>12,.0f} records/s "
                        f"({result['records']} in {result['span_s']:.2f} s; join {result['join_s']:.2f} s)",
                        flush=True,
                    )
        finally:
            broker.send_signal(signal.SIGTERM)
            try:
                broker.wait(20)
            except subprocess.TimeoutExpired:
                broker.kill()
    summary = {}
    for mode, rows in runs.items():
        rates = [r["records_per_s"] for r in rows]
        summary[mode] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
    ratio = summary["group"]["median"] / summary["manual"]["median"]
    for mode, s in summary.items():
        print(f"{mode:<6} median {s['median']:>12,.0f} records/s  [{s['min']:,.0f} - {s['max']:,.0f}]")
    print(f"ratio group/manual = {ratio:.2f}x (target >= 0.8x)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "transport": args.transport,
                "records": args.records,
                "runs": runs,
                "summary": summary,
                "ratio": ratio,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
