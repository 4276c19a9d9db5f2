"""Broker start-up and idle memory with 16 partitions: `python -m perf.bench_broker_start [--runs 5]`.

Each run: a fresh data dir with one 16-partition topic (created once, broker stopped), then a timed
restart: wall time from spawning `shmbroker serve` to its "ready" line (every partition accepts
writes), and, after 2 s idle, the sum of USS (memory unique to each process, psutil) and of RSS over
the supervisor, fork server, coordinator and workers. Reference in the same run: spawning a bare
`python -c pass` (the floor any Python broker pays once). Writes perf/results/start-latest.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from perf.scenarios_shmbroker import Broker

PARTITIONS = 16
IDLE_S = 2.0


def one_run() -> dict[str, float]:
    with Broker(partitions=PARTITIONS) as first:
        data_dir = first.dir
        first.process.send_signal(15)  # type: ignore[union-attr]
        first.process.wait(15)  # type: ignore[union-attr]
        broker = Broker()
        broker.dir = data_dir  # reuse the directory: a restart with 16 partitions on disk
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "shmbroker", "serve", "--data-dir", data_dir, "--listen", broker.address],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if " ready: " in line:
                    break
            ready_s = time.monotonic() - started
            time.sleep(IDLE_S)
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            uss = sum(p.memory_full_info().uss for p in family)
            rss = sum(p.memory_info().rss for p in family)
            cpu = sum(p.cpu_percent(0.5) for p in family)
            return {"ready_s": ready_s, "uss_mib": uss / 2**20, "rss_mib": rss / 2**20,
                    "processes": len(family), "idle_cpu_pct": cpu, "ready_line": line.strip()}  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(15)


def python_floor_s() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    floor = [python_floor_s() for _ in range(args.runs)]
    summary = {
        key: {"median": statistics.median(r[key] for r in runs), "min": min(r[key] for r in runs),
              "max": max(r[key] for r in runs)}
        for key in ("ready_s", "uss_mib", "rss_mib", "idle_cpu_pct")
    }  # fmt: skip
    summary["python_start_s"] = {"median": statistics.median(floor), "min": min(floor), "max": max(floor)}
    out = {"partitions": PARTITIONS, "runs": runs, "summary": summary}
    Path("perf/results").mkdir(parents=True, exist_ok=True)
    Path("perf/results/start-latest.json").write_text(json.dumps(out, indent=1))
    for key, s in summary.items():
        print(f"{key:>16}: median {s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]")
    print(f"processes: {runs[0]['processes']}; ready line: {runs[0]['ready_line']}")
    ratio = summary["ready_s"]["median"] / summary["python_start_s"]["median"]
    print(f"ready / bare python start: {ratio:.1f}x")


if __name__ == "__main__":
    main()
