"""Disk log benchmark: append throughput against plain ``os.write``, and recovery scan speed.

    .venv/bin/python -m perf.bench_disk [--runs 5] [--mib 1024] [--quick]

Append: 1 MiB batches into a partition log (``Log.append_many``, one and eight batches a call),
against a plain sequential ``os.write`` of the same bytes in the same run (target >= 0.9x), with
and without ``log.preallocate`` (ftruncate, posix_fallocate), and a raw overwrite of an existing,
cached file (what recycling deleted segments would buy). Modes are interleaved in every run so
drift hits them alike. Each run deletes its files, so every write lands in freshly allocated page
cache, as a live broker's would.
Recovery: a full scan at open (no clean-shutdown marker) of a ~1 GiB log, page cache warm, and
cold for this log only (fsync + POSIX_FADV_DONTNEED on its files; nothing else is evicted).
Medians and spread (min..max) over the runs; JSON to perf/results/disk-latest.json.
Data lives in a temp dir under /tmp, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shmbroker import records
from shmbroker.config import LogConfig
from shmbroker.disk import segment as segment_module
from shmbroker.disk.log import Log
from shmbroker.records import HEADER_BYTES, crc32c

RESULTS = Path(__file__).resolve().parent / "results" / "disk-latest.json"
MIB = 1 << 20
CHECK_BATCH = records.check_batch
DEFAULT_PREALLOCATE_WITH = segment_module.PREALLOCATE_WITH
DEFAULT_RESERVE_AHEAD_BYTES = segment_module.RESERVE_AHEAD_BYTES
DEFAULT_WRITE_CALL_BYTES = segment_module.WRITE_CALL_BYTES


def make_batch(size_bytes: int, records_count: int = 1) -> bytearray:
    """A valid RecordBatch v2 of exactly ``size_bytes`` (the disk layer never looks past the header)."""
    import struct

    batch = bytearray(os.urandom(size_bytes))
    struct.pack_into(">qiibIhiqqqhii", batch, 0, 0, size_bytes - 12, -1, 2, 0, 0, records_count - 1,
                     1, 1, -1, -1, -1, records_count)  # fmt: skip
    struct.pack_into(">I", batch, 17, crc32c(memoryview(batch)[21:]))
    assert len(batch) >= HEADER_BYTES
    return batch


# ---- append ---------------------------------------------------------------------------------------
# Each mode returns the seconds of its write loop only: opening a log (mkdir, files, an fsync of
# the directory) is a once-per-partition cost and would swamp a 250 ms run on a busy disk.
def os_write(path: Path, batch: bytearray, count: int) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    start = time.perf_counter()
    for _ in range(count):
        os.write(fd, batch)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


def os_write_calls(path: Path, batch: bytearray, count: int, call_bytes: int) -> float:
    """As ``os_write``, each batch in calls of ``call_bytes`` (the page cache sizes folios after the call)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    view = memoryview(batch)
    start = time.perf_counter()
    for _ in range(count):
        for offset in range(0, len(view), call_bytes):
            os.write(fd, view[offset : offset + call_bytes])
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


def os_pwrite_recycled(path: Path, batch: bytearray, count: int) -> float:
    """Overwrite a file that exists, full length, with its pages cached (a recycled segment)."""
    fd = os.open(path, os.O_WRONLY)
    start = time.perf_counter()
    for i in range(count):
        os.pwrite(fd, batch, i * len(batch))
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


def log_append(
    directory: Path,
    batch: bytearray,
    count: int,
    per_call: int,
    preallocate: str,
    *,
    check_crc: bool = True,
    reserve_bytes: int = DEFAULT_RESERVE_AHEAD_BYTES,
    write_call_bytes: int = DEFAULT_WRITE_CALL_BYTES,
) -> float:
    """Append ``count`` batches; with ``preallocate`` the first segment is preallocated at open,
    so the timed loop sees what a broker sees after a roll (which preallocates the next one).
    ``reserve_bytes``: segment.RESERVE_AHEAD_BYTES for this run (0: no reserve, the old default);
    ``write_call_bytes``: segment.WRITE_CALL_BYTES (2**62: one pwritev per call, the old way)."""
    segment_module.PREALLOCATE_WITH = preallocate or "ftruncate"
    segment_module.RESERVE_AHEAD_BYTES = reserve_bytes
    segment_module.WRITE_CALL_BYTES = write_call_bytes
    if not check_crc:  # attribution only: what the CRC-32C check costs (never do this for real)
        records.check_batch = lambda buf, *, max_batch_bytes: records.parse_batch_header(buf)
    log = Log.open(directory, LogConfig(preallocate=bool(preallocate)), now_ms=0)
    # distinct buffers, as a drained lane gives; each is stamped again every call
    group = [batch] + [bytearray(batch) for _ in range(per_call - 1)]
    start = time.perf_counter()
    for i in range(count // per_call):
        log.append_many(group, now_ms=i)
    elapsed = time.perf_counter() - start
    records.check_batch = CHECK_BATCH
    segment_module.RESERVE_AHEAD_BYTES = DEFAULT_RESERVE_AHEAD_BYTES
    segment_module.WRITE_CALL_BYTES = DEFAULT_WRITE_CALL_BYTES
    log.close(clean=False)
    return elapsed


def bench_append(root: Path, runs: int, mib: int) -> dict[str, list[float]]:
    batch = make_batch(MIB)
    count = mib
    recycled = root / "recycled.bin"
    os_write(recycled, batch, count)  # written once, kept cached: the "reused pages" case
    fd = os.open(recycled, os.O_RDONLY)
    os.fsync(fd)  # clean, so its writeback does not land in someone else's measurement
    os.close(fd)
    modes: dict[str, Callable[[Path], float]] = {
        "os.write (fresh file)": lambda d: os_write(d / "plain.bin", batch, count),
        "os.write, 128 KiB calls (fresh file)": lambda d: os_write_calls(
            d / "plain.bin", batch, count, 128 << 10
        ),
        "Log.append": lambda d: log_append(d / "log", batch, count, 1, ""),
        "Log.append_many x8": lambda d: log_append(d / "log", batch, count, 8, ""),
        "Log.append_many x8, one pwritev per call (before)": lambda d: log_append(
            d / "log", batch, count, 8, "", write_call_bytes=1 << 62
        ),
        "Log.append, no reserve (before)": lambda d: log_append(
            d / "log", batch, count, 1, "", reserve_bytes=0
        ),
        "Log.append, reserve 16 MiB": lambda d: log_append(
            d / "log", batch, count, 1, "", reserve_bytes=16 * MIB
        ),
        "Log.append, reserve 64 MiB": lambda d: log_append(
            d / "log", batch, count, 1, "", reserve_bytes=64 * MIB
        ),
        "Log.append preallocate=ftruncate": lambda d: log_append(d / "log", batch, count, 1, "ftruncate"),
        "Log.append preallocate=fallocate": lambda d: log_append(d / "log", batch, count, 1, "fallocate"),
        "Log.append, CRC check off (attribution only)": lambda d: log_append(
            d / "log", batch, count, 1, "", check_crc=False
        ),
        "os.pwrite over cached file (recycled)": lambda d: os_pwrite_recycled(recycled, batch, count),
    }
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    order = list(modes)
    shuffler = random.Random(0)
    for run_number in range(runs):
        print(f"append run {run_number + 1}/{runs}", file=sys.stderr)
        shuffler.shuffle(order)  # a fresh order each run: drift and neighbours hit every mode alike
        for name in order:
            work = root / "run"
            work.mkdir()
            seconds[name].append(modes[name](work))
            shutil.rmtree(work)
    segment_module.PREALLOCATE_WITH = DEFAULT_PREALLOCATE_WITH
    return {name: [count * MIB / s / 1e9 for s in values] for name, values in seconds.items()}


# ---- recovery -------------------------------------------------------------------------------------
def evict(directory: Path) -> None:
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def bench_recovery(root: Path, runs: int, mib: int, batch_kibs: list[int]) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for batch_kib in batch_kibs:
        for preallocate in (False, True):
            directory = root / f"recover-{batch_kib}-{preallocate}"
            config = LogConfig(segment_bytes=256 * MIB, preallocate=preallocate)  # fallocate'd
            log = Log.open(directory, config, now_ms=0)
            batch = make_batch(batch_kib * 1024)
            for i in range(mib * 1024 // batch_kib):
                log.append(batch, now_ms=i)
            data_bytes = log.statistics().size_bytes
            log.close(clean=False)
            print(f"recovery: {batch_kib} KiB batches, preallocate={preallocate}", file=sys.stderr)
            for cold in (False, True):
                name = f"recovery scan, {batch_kib} KiB batches, preallocate={preallocate}, " + (
                    "cold (this log evicted)" if cold else "page cache warm"
                )
                speeds = []
                for _ in range(runs):
                    if cold:
                        evict(directory)
                    start = time.perf_counter()
                    log = Log.open(directory, config, now_ms=0)  # no marker: full scan
                    elapsed = time.perf_counter() - start
                    assert log.statistics().bytes_cut_at_open == 0
                    log.close(clean=False)
                    speeds.append(data_bytes / elapsed / 1e9)
                results[name] = speeds
            shutil.rmtree(directory)
    return results


def add_ratios(rows: list[dict[str, object]], append: dict[str, list[float]], runs: int) -> None:
    """Ratio of medians to os.write, plus the median and spread of the per-run ratios (both
    measured in the same run, so a slow run hits both sides: a steadier figure on a noisy VM)."""
    if not append:
        return
    baseline = statistics.median(append["os.write (fresh file)"])
    per_run_base = append["os.write (fresh file)"]
    for row in rows:
        name = str(row["name"])
        if name in append:
            row["ratio_to_os_write"] = float(row["median"]) / baseline  # type: ignore[arg-type]
            ratios = [v / b for v, b in zip(append[name], per_run_base, strict=True)]
            row["run_ratios"] = ratios
            row["run_ratio_median"] = statistics.median(ratios)
            row["run_ratio_min"], row["run_ratio_max"] = min(ratios), max(ratios)


def summarize(name: str, values: list[float]) -> dict[str, object]:
    return {
        "name": name,
        "unit": "GB/s",
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.bench_disk")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=1024, help="bytes written per append run, MiB")
    parser.add_argument("--recovery-mib", type=int, default=1024, help="size of the recovered log, MiB")
    parser.add_argument(
        "--recovery-kib",
        default="1024,16,4,1",
        help="batch sizes of the recovered logs, KiB, comma-separated",
    )
    parser.add_argument("--only", choices=["append", "recovery"], help="run one half (still writes the JSON)")
    parser.add_argument("--quick", action="store_true", help="3 runs of 128 MiB: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.mib, args.recovery_mib = 3, 128, 128
    batch_kibs = [int(k) for k in args.recovery_kib.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-disk-", dir="/tmp"))
    try:
        append = bench_append(root, args.runs, args.mib) if args.only != "recovery" else {}
        recovery = (
            bench_recovery(root, args.runs, args.recovery_mib, batch_kibs) if args.only != "append" else {}
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [summarize(n, v) for n, v in {**append, **recovery}.items()]
    add_ratios(rows, append, args.runs)
    print(f"{'benchmark':74} {'median':>8} {'min..max GB/s':>15} {'vs write':>9} {'per-run ratio':>20}")
    for row in rows:
        ratio = f"{row['ratio_to_os_write']:.2f}x" if "ratio_to_os_write" in row else ""
        per_run = (
            f"{row['run_ratio_median']:.2f} ({row['run_ratio_min']:.2f}..{row['run_ratio_max']:.2f})"
            if "run_ratio_median" in row
            else ""
        )
        spread = f"{row['min']:.2f}..{row['max']:.2f}"
        print(f"{row['name']!s:74} {row['median']:8.2f} {spread:>15} {ratio:>9} {per_run:>20}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "runs": args.runs,
        "mib_per_run": args.mib,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    RESULTS.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
