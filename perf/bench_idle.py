"""CPU that waiting costs: consumers polling an empty partition, and the router holding their FETCH.

    python -m perf.bench_idle [--runs 3] [--seconds 3]

A fresh broker (perf.scenarios_shmbroker.Broker), one empty partition. For each transport (shm:
the control block's event counter; zmq: a FETCH parked in the router, fetch.max.wait.ms=500) one
Consumer in this process calls poll(0.1) for --seconds; reported: this process's CPU and the
router's, in % of one core, median [min-max] over --runs. The reference is the same loop's wall
time: 100% means a waiting client takes a whole core from the producer and the worker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import psutil

from perf.scenarios_shmbroker import TOPIC, Broker


def _router(broker: Broker) -> psutil.Process:
    for child in psutil.Process(broker.pid).children(recursive=True):
        cmdline = child.cmdline()  # its title; the fork server's command line names the module too
        if cmdline and cmdline[0].startswith("shmbroker: router"):
            return child
    raise RuntimeError("no router process under the broker")


def idle_cpu_pct(broker: Broker, transport: str, seconds: float) -> tuple[float, float]:
    """(consumer %, router %) of one core while a consumer waits ``seconds`` on an empty partition."""
    from shmbroker import Consumer, TopicPartition

    router = _router(broker)
    consumer = Consumer(
        {"bootstrap.servers": broker.address, "shmbroker.transport": transport, "fetch.max.wait.ms": 500}
    )
    try:
        consumer.assign([TopicPartition(TOPIC, 0, 0)])
        consumer.poll(0.1)  # set-up (metadata, mappings) outside the measurement
        router0, cpu0, started = sum(router.cpu_times()[:2]), time.process_time(), time.monotonic()
        while time.monotonic() - started < seconds:
            if consumer.poll(0.1) is not None:
                raise RuntimeError("the partition was meant to stay empty")
        wall = time.monotonic() - started
        return 100 * (time.process_time() - cpu0) / wall, 100 * (sum(router.cpu_times()[:2]) - router0) / wall
    finally:
        consumer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    samples: dict[str, list[tuple[float, float]]] = {"shm": [], "zmq": []}
    for _ in range(args.runs):
        with Broker() as broker:
            for transport in samples:
                samples[transport].append(idle_cpu_pct(broker, transport, args.seconds))
    out = {}
    for transport, rows in samples.items():
        for i, who in enumerate(("consumer", "router")):
            values = [row[i] for row in rows]
            out[f"{transport}_{who}_cpu_pct"] = {
                "median": statistics.median(values), "min": min(values), "max": max(values)
            }  # fmt: skip
            print(f"idle {transport} {who}: {statistics.median(values):.1f}% of a core "
                  f"[{min(values):.1f}-{max(values):.1f}]")  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
