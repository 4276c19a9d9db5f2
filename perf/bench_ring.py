"""Cross-process lane throughput and round-trip latency: ``python -m perf.bench_ring``.

Throughput: a producer process sends N frames through one lane (shmbroker.ring.lane) to a worker
process that drains everything available, completes what needs completing and releases the space in
one store. Both ends behave as in production: the producer rings the worker's doorbell when it sleeps
and yields the CPU when the ring is full; the worker sleeps on its doorbell when the ring is empty.
(Spinning ends measured 0.5-11 GB/s on this shared 2-vCPU host: two spinners and any third process
fight over two cores.) Time runs from the producer's first send to the worker holding the last frame
(``time.perf_counter`` is CLOCK_MONOTONIC, shared by both processes). Cases:

    batch64k   RecordBatch v2 of ~64 KiB holding 100-B records (records.encode_values), acks=1:
               one completion per batch flows back
    frame64k   raw 64 KiB frames, acks=0: the ring alone
    frame100   100-B frames, acks=0: per-frame overhead

Each run also times ``memcpy``: memoryview slice assignment of the same frame size into a ring-sized
buffer at advancing offsets, in this process, in the same run. ``ratio`` = lane GB/s / memcpy GB/s.

Latency: one 100-B-record batch per round trip (producer send -> worker drain -> complete -> producer
sees the completion), both ends spinning, then both ends sleeping on their doorbells (the producer
pauses 1 ms between round trips so the worker is asleep when the batch lands).

Median and spread (min, max) over ``--runs`` runs; JSON to perf/results/ring-latest.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shmbroker import records
from shmbroker.ring.control import ControlWriter, WorkerState, create_control
from shmbroker.ring.lane import LaneProducer, LaneWorker, create_lane

RESULTS = Path(__file__).resolve().parent / "results" / "ring-latest.json"
LANE_BYTES = 8 << 20
FRAME_64K = 64 << 10
VALUE_BYTES = 100
SPAWN = multiprocessing.get_context("spawn")


def record_batch(max_bytes: int) -> tuple[bytes, int]:
    """The largest batch of 100-B records not above ``max_bytes``, and its record count."""
    n = max_bytes // VALUE_BYTES
    while True:
        batch = bytes(records.encode_values([b"v" * VALUE_BYTES] * n, timestamp_ms=1))
        if len(batch) <= max_bytes:
            return batch, n
        n -= 1


def payload_for(case: str) -> tuple[bytes, int, int]:
    """(payload, records per frame, acks) for a throughput case."""
    if case == "batch64k":
        batch, n = record_batch(FRAME_64K)
        return batch, n, 1
    if case == "frame64k":
        return os.urandom(FRAME_64K), 0, 0
    return os.urandom(100), 0, 0


# --- child processes: loop on commands from the parent, report over a pipe ---


def producer_main(lane_name: str, case: str, conn: Connection) -> None:
    producer = LaneProducer.attach(lane_name)
    payload, _, acks = payload_for(case)
    conn.send("ready")
    sequence = 0
    while (n_frames := conn.recv()) is not None:
        started = time.perf_counter()
        for _ in range(n_frames):
            # notify=True (the default): ring the worker if it sleeps, as a real client does.
            while not producer.try_send(payload, sequence=sequence, acks=acks):
                producer.poll_completions()
                os.sched_yield()  # full: let the worker run if it shares our core (2 vCPUs here)
            sequence += 1
        while producer.in_flight:
            producer.poll_completions()
        conn.send(started)
    producer.close()


def worker_main(lane_name: str, control_name: str, mode: str, conn: Connection) -> None:
    """mode "spin": drain in a tight loop; "sleep": sleep on the worker doorbell when idle."""
    control = ControlWriter.attach(control_name)
    control.set_state(WorkerState.READY)
    worker = LaneWorker.attach(lane_name)
    conn.send("ready")
    while (n_frames := conn.recv()) is not None:
        got = 0
        while got < n_frames:
            requests = worker.drain(LANE_BYTES)
            if not requests:
                if mode == "sleep":
                    control.wake_flag.sleep(worker.has_requests)
                continue
            got += len(requests)
            done = [(sequence, sequence, -1, 1, 0) for sequence, acks, _ in requests if acks]
            worker.release()
            worker.complete_many(done)
        conn.send(time.perf_counter())
    worker.close()
    control.close()


def start(target: Any, *args: Any) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    parent, child = SPAWN.Pipe()
    process = SPAWN.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    if not parent.poll(60):
        raise TimeoutError(f"{target.__name__} did not start")
    assert parent.recv() == "ready"
    return process, parent


def memcpy_gbps(frame_bytes: int, total_bytes: int) -> float:
    """memoryview slice assignment of frame_bytes pieces into a LANE_BYTES buffer, advancing."""
    dst, src = memoryview(bytearray(LANE_BYTES)), memoryview(os.urandom(frame_bytes))
    slots = LANE_BYTES // frame_bytes
    n = max(1, total_bytes // frame_bytes)
    started = time.perf_counter()
    for i in range(n):
        at = (i % slots) * frame_bytes
        dst[at : at + frame_bytes] = src
    return n * frame_bytes / (time.perf_counter() - started) / 1e9


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def throughput(case: str, n_frames: int, runs: int) -> dict[str, Any]:
    payload, records_per_frame, acks = payload_for(case)
    control_name, control = create_control(0)
    lane_name, lane = create_lane(LANE_BYTES, partition_id=0, control_name=control_name)
    procs = []
    try:
        worker, to_worker = start(worker_main, lane_name, control_name, "sleep")
        producer, to_producer = start(producer_main, lane_name, case)
        procs = [worker, producer]
        gbps, fps, memcpy = [], [], []
        for _ in range(runs):
            to_worker.send(n_frames)
            to_producer.send(n_frames)
            started, ended = to_producer.recv(), to_worker.recv()
            seconds = ended - started
            gbps.append(n_frames * len(payload) / seconds / 1e9)
            fps.append(n_frames / seconds)
            memcpy.append(memcpy_gbps(len(payload), min(n_frames * len(payload), 1 << 30)))
        for conn in (to_worker, to_producer):
            conn.send(None)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        for handle in (lane, control):
            handle.close()
            handle.unlink()
    ratios = [g / m for g, m in zip(gbps, memcpy, strict=True)]
    out: dict[str, Any] = {
        "frame_bytes": len(payload),
        "acks": acks,
        "frames_per_run": n_frames,
        "lane_gb_per_s": spread(gbps),
        "frames_per_s": spread(fps),
        "memcpy_gb_per_s": spread(memcpy),
        "ratio_to_memcpy": spread(ratios),
    }
    if records_per_frame:
        out["records_per_frame"] = records_per_frame
        out["records_per_s"] = spread([f * records_per_frame for f in fps])
    return out


def latency(mode: str, round_trips: int, runs: int) -> dict[str, Any]:
    batch, _ = record_batch(1024)
    control_name, control = create_control(0)
    lane_name, lane = create_lane(1 << 20, partition_id=0, control_name=control_name)
    p50s, p99s = [], []
    worker = None
    try:
        worker, to_worker = start(worker_main, lane_name, control_name, mode)
        producer = LaneProducer.attach(lane_name)
        sequence = 0
        for _ in range(runs):
            to_worker.send(round_trips)
            samples = []
            for _ in range(round_trips):
                if mode == "sleep":
                    time.sleep(0.001)  # let the worker fall asleep
                t0 = time.perf_counter_ns()
                producer.try_send(batch, sequence=sequence, acks=1)
                if mode == "sleep":
                    while not producer.wait_completions(1.0):
                        pass
                else:
                    while not producer.poll_completions():
                        pass
                samples.append(time.perf_counter_ns() - t0)
                sequence += 1
            to_worker.recv()
            samples.sort()
            p50s.append(samples[len(samples) // 2] / 1e3)
            p99s.append(samples[len(samples) * 99 // 100] / 1e3)
        to_worker.send(None)
        producer.close()
    finally:
        if worker is not None:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
        for handle in (lane, control):
            handle.close()
            handle.unlink()
    return {"round_trips_per_run": round_trips, "p50_us": spread(p50s), "p99_us": spread(p99s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--frames-64k", type=int, default=16384, help="64 KiB frames per run (1 GiB)")
    parser.add_argument("--frames-100", type=int, default=300_000)
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--only", choices=["throughput", "latency"], help="run one half")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "ring",
        "runs": args.runs,
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "throughput": {},
        "latency": {},
    }
    for case, n in (
        ("batch64k", args.frames_64k),
        ("frame64k", args.frames_64k),
        ("frame100", args.frames_100),
    ):
        r = result["throughput"][case] = throughput(case, n, args.runs)
        print(
            f"{case:9} {r['frame_bytes']:6} B  {r['lane_gb_per_s']['median']:6.2f} GB/s "
            f"[{r['lane_gb_per_s']['min']:.2f}-{r['lane_gb_per_s']['max']:.2f}]  "
            f"{r['frames_per_s']['median'] / 1e3:8.1f}k frames/s  "
            f"memcpy {r['memcpy_gb_per_s']['median']:6.2f} GB/s  "
            f"ratio {r['ratio_to_memcpy']['median']:.3f}"
            + (f"  {r['records_per_s']['median'] / 1e6:.1f}M records/s" if "records_per_s" in r else "")
        )
    modes = (("spin", args.round_trips), ("sleep", max(200, args.round_trips // 5)))
    for mode, n in modes if args.only != "throughput" else ():
        r = result["latency"][mode] = latency(mode, n, args.runs)
        print(
            f"round trip, {mode:5}: p50 {r['p50_us']['median']:8.1f} us [{r['p50_us']['min']:.1f}-"
            f"{r['p50_us']['max']:.1f}]  p99 {r['p99_us']['median']:8.1f} us "
            f"[{r['p99_us']['min']:.1f}-{r['p99_us']['max']:.1f}]"
        )
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
