"""Encode/decode throughput of RecordBatch v2 with 100-B records: ``python -m perf.bench_records``.

Each case is timed over ``--records`` records (in batches of ``--batch-records``) in every run, and
each run also times two references over the very same bytes, so a loaded machine moves both:

    join   ``b"".join(values)`` of the batch's 100-B values: the least any encoder that takes one
           Python bytes per record must do (touch each object once, copy its bytes once).
    slice  one ``bytes`` per record cut at a fixed stride out of the batch's records block: the least
           any decoder that hands out one Python object per record must do.

Ratios are case rate / reference rate from the same run (medians over runs). ``memcpy`` (copying the
whole batch) is printed as GB/s for scale. Results go to perf/results/records-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shmbroker import records

VALUE_BYTES = 100
RESULTS = Path(__file__).resolve().parent / "results" / "records-latest.json"


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Seconds per call of ``fn``, best of a short inner loop (the outer runs give the spread)."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


Cases = dict[str, tuple[Callable[[], object], str]]


def build_cases(batch_records: int) -> tuple[Cases, int]:
    """(name -> (one batch's worth of work, its reference), the batch's size in bytes)."""
    rng = np.random.default_rng(7)
    rows = rng.integers(32, 127, size=(batch_records, VALUE_BYTES), dtype=np.uint8)
    values = [row.tobytes() for row in rows]
    ts_ms = 1_700_000_000_000
    batch = bytes(records.encode_values(values, timestamp_ms=ts_ms))
    limit = 64 * len(batch)
    stride = len(batch) // batch_records

    def builder() -> bytearray:
        builder = records.BatchBuilder()
        append = builder.append
        for value in values:
            append(value)
        return builder.build()

    def builder_append_only() -> None:
        builder = records.BatchBuilder()
        append = builder.append
        for value in values:
            append(value)

    def slice_reference() -> list[bytes]:
        return [batch[p : p + VALUE_BYTES] for p in range(records.HEADER_BYTES, len(batch) - stride, stride)]

    cases: Cases = {
        "encode BatchBuilder (append+build)": (builder, "join"),
        "  of which append only": (builder_append_only, "join"),
        "encode encode_values(list)": (lambda: records.encode_values(values, timestamp_ms=ts_ms), "join"),
        "encode encode_values(ndarray)": (lambda: records.encode_values(rows, timestamp_ms=ts_ms), "join"),
        "decode decode_batch": (lambda: records.decode_batch(batch, max_uncompressed_bytes=limit), "slice"),
        "decode decode_columnar": (
            lambda: records.decode_columnar(batch, max_uncompressed_bytes=limit),
            "slice",
        ),
        "decode decode_columnar+values()": (
            lambda: records.decode_columnar(batch, max_uncompressed_bytes=limit).values(),
            "slice",
        ),
        "ref join": (lambda: b"".join(values), "join"),
        "ref slice": (slice_reference, "slice"),
        "ref memcpy": (lambda: bytes(bytearray(batch)), "join"),
    }
    return cases, len(batch)


def measure(batch_records: int, *, runs: int, records_per_run: int) -> dict[str, object]:
    """Time every case ``runs`` times at one batch size; print a table and return its JSON section."""
    cases, batch_bytes = build_cases(batch_records)
    repeats = max(1, records_per_run // batch_records)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    ratios: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        # Cases and references interleave inside a run, so a run's ratio sees one machine state.
        run_rates = {name: batch_records / _timed(fn, repeats) for name, (fn, _) in cases.items()}
        for name, (_, reference) in cases.items():
            rates[name].append(run_rates[name])
            ratios[name].append(run_rates[name] / run_rates[f"ref {reference}"])
    rows = []
    print(f"\n{batch_records} records of {VALUE_BYTES} B per batch ({batch_bytes} B), {runs} runs")
    print(f"{'case':38} {'median rec/s':>13} {'min..max rec/s':>24} {'x ref':>6} ref")
    for name, (_, reference) in cases.items():
        median = statistics.median(rates[name])
        ratio = statistics.median(ratios[name])
        spread = f"{min(rates[name]) / 1e6:.2f}M..{max(rates[name]) / 1e6:.2f}M"
        print(f"{name:38} {median / 1e6:12.2f}M {spread:>24} {ratio:6.3f} {reference}")
        rows.append(
            {
                "case": name.strip(),
                "records_per_s_median": median,
                "records_per_s_min": min(rates[name]),
                "records_per_s_max": max(rates[name]),
                "ratio_to_reference_median": ratio,
                "reference": reference,
            }
        )
    memcpy = statistics.median(rates["ref memcpy"]) * batch_bytes / batch_records / 1e9
    print(f"memcpy of the batch: {memcpy:.1f} GB/s")
    return {
        "batch_records": batch_records,
        "batch_bytes": batch_bytes,
        "records_per_run": repeats * batch_records,
        "memcpy_gb_per_s_median": memcpy,
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--records", type=int, default=200_000, help="records per case per run")
    parser.add_argument(
        "--batch-records", type=int, nargs="+", default=[100, 1000, 10_000], help="records per batch"
    )
    args = parser.parse_args()
    sections = [measure(n, runs=args.runs, records_per_run=args.records) for n in args.batch_records]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "records",
        "command": "python -m perf.bench_records",
        "value_bytes": VALUE_BYTES,
        "runs": args.runs,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "references": {
            "join": 'b"".join of the batch\'s 100-B values (floor for an encoder taking Python bytes)',
            "slice": "one bytes per record cut at a fixed stride (floor for a decoder making objects)",
            "memcpy": "bytes(bytearray(batch)): copy of the whole batch",
        },
        "target_records_per_s": 2_000_000,
        "batch_sizes": sections,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
