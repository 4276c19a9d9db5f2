"""Run the benchmarks and write the report: `python -m perf.run` (`make bench`).

    python -m perf.run                      # every scenario, 5 runs each, full counts
    python -m perf.run --smoke              # tiny counts, 1 run, every scenario, < 90 s, no speed asserted
    python -m perf.run --only redis --only zmq-pushpull-ipc --sizes 100,1k --runs 3
    python -m perf.run --list               # scenarios and their docs

Runs are interleaved (run 1 of every scenario and size, then run 2, ...) so that a burst of load
from something else on the machine hits every scenario alike. Writes, under --out (default
perf/results): `<YYYY-MM-DD>/results.json` (machine info, every run, summaries, ratios),
`results.md`, `throughput.png`, `latency.png`, and copies the md and pngs to `latest/`. --smoke
writes to `<YYYY-MM-DD>-smoke/` and leaves `latest/` alone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from perf.harness import REGISTRY, Result, Scenario

# Imported in this order when present; a missing module is skipped (perf.scenarios_shmbroker comes later).
SCENARIO_MODULES = ("perf.scenarios_peers", "perf.scenarios_shmbroker")
# The peers every scenario is compared against in the main table (all peers are in the ratio matrix).
KEY_PEERS = ("redis-streams-aof-everysec", "nats-jetstream-file", "zmq-pushpull-ipc")
SMOKE_BUDGET_S = 72.0  # stop starting runs here: the whole smoke stays < 90 s
FULL_BUDGET_S = 14 * 60.0
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def load_scenarios(modules: tuple[str, ...] = SCENARIO_MODULES) -> dict[str, Scenario]:
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    return REGISTRY


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = 1
    if s.endswith(("k", "kib")):
        mult, s = 1024, s.rstrip("kib")
    elif s.endswith(("m", "mib")):
        mult, s = 1 << 20, s.rstrip("mib")
    return int(s) * mult


def select(scens: dict[str, Scenario], only: list[str] | None) -> list[Scenario]:
    if not only:
        return list(scens.values())
    names = [n for o in only for n in o.split(",") if n]
    exact = [s for s in scens.values() if s.name in names]
    if len(exact) == len(names):
        return exact
    return [s for s in scens.values() if any(n == s.name or n in s.name for n in names)]


# ---------------------------------------------------------------------------------------------
# machine info


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def settle_page_cache() -> float:
    """Write back every dirty page before a run starts; returns the seconds it took.

    A run leaves up to GBs of dirty page cache (its log, a peer's AOF, the os.write ceiling's file),
    which the kernel writes back ~30 s later (vm.dirty_expire_centisecs), i.e. in the middle of some
    later run. Measured here: a sync of 1.5 GB during a 50k records/s latency run took its p99 from
    ~2-3 ms to 1.1-1.3 s for every writer on the file system (ext4 journal commits wait for ordered
    data). So each run starts with nothing of the previous ones still to write, whatever system it
    measures.
    """
    t = time.monotonic()
    os.sync()
    return time.monotonic() - t


def calibrate_loop_ns(n: int = 5_000_000) -> float:
    """ns per iteration of a bare `for` loop, best of 3: how fast this Python is right now (compare
    runs or machines with it; FACTS.md measured 17 ns on this machine kind)."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter_ns()
        for _ in range(n):
            pass
        best = min(best, (time.perf_counter_ns() - t) / n)
    return best


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    import psutil

    from perf.deps import find_binary

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    pkgs = {}
    for dist in ("pyzmq", "redis", "hiredis", "nats-py", "faster-fifo", "psutil", "numpy", "matplotlib"):
        try:
            pkgs[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pkgs[dist] = None
    with contextlib.suppress(Exception):
        import zmq

        pkgs["libzmq"] = zmq.zmq_version()
    servers = {}
    for b, flag in (("redis-server", "--version"), ("nats-server", "--version")):
        path = find_binary(b)
        servers[b] = _cmd([path, flag]) if path else None
    root = Path(__file__).resolve().parent.parent
    return {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "os": _cmd(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]) or platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "python_executable": sys.executable,
        "packages": pkgs,
        "servers": servers,
        "git_commit": _cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
        "loadavg_start": list(os.getloadavg()),
        "bare_loop_ns_start": calibrate_loop_ns(),
    }


# ---------------------------------------------------------------------------------------------
# summarizing


def _clean(x: Any) -> Any:
    """JSON without NaN/inf (they become null)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def summarize(scen: Scenario, size: int, results: list[Result]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    rps = [r.records_per_s for r in ok]
    out: dict[str, Any] = {
        "scenario": scen.name,
        "kind": scen.kind,
        "peer": scen.peer,
        "size_bytes": size,
        "n_records": results[0].n_records if results else 0,
        "runs_ok": len(ok),
        "runs_total": len(results),
        "errors": [(r.error or "timed out")[-600:] for r in results if not r.ok],
    }
    if not ok:
        return out
    out.update(
        rps_median=statistics.median(rps),
        rps_min=min(rps),
        rps_max=max(rps),
        mbps_median=statistics.median(r.mb_per_s for r in ok),
        elapsed_median_s=statistics.median(r.elapsed_s for r in ok),
    )
    names = list(dict.fromkeys(p.name for r in ok for p in r.procs))
    out["cpu_pct"] = {
        n: statistics.median(
            p.cpu_pct for r in ok for p in r.procs if p.name == n and math.isfinite(p.cpu_pct)
        )
        for n in names
        if any(p.name == n and math.isfinite(p.cpu_pct) for r in ok for p in r.procs)
    }
    out["peak_rss_bytes"] = {
        n: max(p.peak_rss_bytes for r in ok for p in r.procs if p.name == n) for n in names
    }
    lats = [r.latency for r in ok if r.latency]
    if lats:
        lat: dict[str, Any] = {}
        for k in ("p50_us", "p99_us", "p999_us", "max_us", "achieved_rate", "offered_rate"):
            vals = [d[k] for d in lats if k in d and d[k] is not None and math.isfinite(d[k])]
            if vals:
                lat[k] = statistics.median(vals)
                lat[k + "_min"] = min(vals)
                lat[k + "_max"] = max(vals)
        out["latency"] = lat
    return out


def ratios(summary: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{size: {scenario: {peer: scenario median records/s / peer median records/s}}}, throughput only."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    tp = [s for s in summary if s["kind"] == "throughput" and s.get("rps_median")]
    for size in sorted({s["size_bytes"] for s in tp}):
        at = [s for s in tp if s["size_bytes"] == size]
        peers = [s for s in at if s["peer"]]
        out[str(size)] = {
            s["scenario"]: {p["scenario"]: s["rps_median"] / p["rps_median"] for p in peers} for s in at
        }
    return out


# ---------------------------------------------------------------------------------------------
# report


def _si(x: float | None, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}{unit}"
    return f"{x:.3g}{unit}"


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f}"


def write_markdown(path: Path, data: dict[str, Any]) -> None:
    m = data["machine"]
    lines = [
        f"# shmbroker benchmarks: {data['started_utc']}",
        "",
        f"- machine: {m['cpu_model']}, {m['logical_cores']} logical cores,"
        f" {m['memory_bytes'] / (1 << 30):.1f} GiB, {m['os']}, kernel {m['kernel']}",
        f"- python {m['python']} ({m['python_executable']}); "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        "- servers: " + "; ".join(f"{v}" for v in m["servers"].values() if v),
        f"- git {m['git_commit']}; runs per cell: {data['args']['runs']}; smoke: {data['args']['smoke']};"
        f" wall {data['wall_s']:.0f} s; load average at start {m['loadavg_start'][0]:.2f},"
        f" at end {m.get('loadavg_end', [0])[0]:.2f}; bare Python loop {m['bare_loop_ns_start']:.0f} ns/iter"
        f" at start, {m.get('bare_loop_ns_end', 0):.0f} at end"
        " (other work shares this machine: read ratios and spreads)",
        "",
        "## Throughput (end to end: producer released -> consumer has every record)",
        "",
        "records/s is the median over runs [min-max]; CPU% is per process (100 = one core) over the"
        " end-to-end window, median; peak RSS (MiB) is the maximum over runs. Ratios: this row's median"
        " records/s / the peer's, same size, same invocation.",
        "",
    ]
    key = [p for p in KEY_PEERS if p in data["scenarios"]]
    hdr = "| scenario | size | records | records/s median [min-max] | MB/s | CPU% | peak RSS MiB | ok |"
    hdr += "".join(f" / {p} |" for p in key)
    lines += [hdr, "|" + "---|" * (8 + len(key))]
    rat = data["ratios"]
    for s in data["summary"]:
        if s["kind"] != "throughput":
            continue
        if not s.get("rps_median"):
            err = (s["errors"][0] if s["errors"] else "no run").splitlines()[-1][:120] if s["errors"] else ""
            lines.append(
                f"| {s['scenario']} | {_size(s['size_bytes'])} | {s['n_records']} | FAILED: {err} | | | | "
                f"{s['runs_ok']}/{s['runs_total']} |" + " |" * len(key)
            )
            continue
        cpu = " ".join(f"{k[:4]} {v:.0f}" for k, v in s["cpu_pct"].items())
        rss = " ".join(f"{k[:4]} {_mib(v)}" for k, v in s["peak_rss_bytes"].items())
        r = rat.get(str(s["size_bytes"]), {}).get(s["scenario"], {})
        lines.append(
            f"| {s['scenario']} | {_size(s['size_bytes'])} | {s['n_records']} | {_si(s['rps_median'])}"
            f" [{_si(s['rps_min'])}-{_si(s['rps_max'])}] | {s['mbps_median']:.1f} | {cpu} | {rss} |"
            f" {s['runs_ok']}/{s['runs_total']} |"
            + "".join(f" {r[p]:.3g} |" if p in r else " - |" for p in key)
        )
    lat = [s for s in data["summary"] if s["kind"] == "latency"]
    if lat:
        lines += [
            "",
            "## Latency at a fixed offered rate (receive time - scheduled send time, per record)",
            "",
            "Medians over runs of each run's percentile [min-max over runs]. When achieved < offered the peer"
            " could not keep up and its queue grew for the whole run (latency then reflects that backlog).",
            "",
            "| scenario | size | offered/s | achieved/s | p50 us | p99 us | p99.9 us | max us | CPU% | ok |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in lat:
            d = s.get("latency")
            if not d:
                err = (s["errors"][0].splitlines()[-1][:120]) if s["errors"] else "no run"
                lines.append(
                    f"| {s['scenario']} | {_size(s['size_bytes'])} | FAILED: {err} | | | | | | |"
                    f" {s['runs_ok']}/{s['runs_total']} |"
                )
                continue
            cpu = " ".join(f"{k[:4]} {v:.0f}" for k, v in s.get("cpu_pct", {}).items())

            def pr(k: str, d: dict[str, Any] = d) -> str:
                return f"{d[k]:.0f} [{d[k + '_min']:.0f}-{d[k + '_max']:.0f}]" if k in d else "-"

            sat = d.get("achieved_rate", 0) < 0.95 * d.get("offered_rate", 0)
            lines.append(
                f"| {s['scenario']} | {_size(s['size_bytes'])} | {_si(d.get('offered_rate'))} |"
                f" {_si(d.get('achieved_rate'))}{' SATURATED' if sat else ''} |"
                f" {pr('p50_us')} | {pr('p99_us')} | {pr('p999_us')} |"
                f" {d.get('max_us', 0):.0f} | {cpu} | {s['runs_ok']}/{s['runs_total']} |"
            )
    for size, table in rat.items():
        peers = list(next(iter(table.values()), {}).keys())
        if not peers:
            continue
        lines += ["", f"## Ratios at {_size(int(size))}: row median records/s / column peer's", ""]
        lines.append("| scenario | " + " | ".join(peers) + " |")
        lines.append("|---|" + "---|" * len(peers))
        for sc, row in table.items():
            lines.append(f"| {sc} | " + " | ".join(f"{row[p]:.3g}" for p in peers) + " |")
    if data.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in data["skipped"]]
    lines += ["", "## Scenarios and client settings", ""]
    for name, sc in data["scenarios"].items():
        lines.append(f"- **{name}** ({sc['kind']}{', peer' if sc['peer'] else ''}): {sc['doc']}")
    path.write_text("\n".join(lines) + "\n")


def write_plots(outdir: Path, data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tp = [s for s in data["summary"] if s["kind"] == "throughput"]
    sizes = sorted({s["size_bytes"] for s in tp}) or [0]
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(6 * len(sizes), 0.35 * max(8, len(tp) // len(sizes)) + 2)
    )
    axes = axes if len(sizes) > 1 else [axes]
    for ax, size in zip(axes, sizes, strict=True):
        rows = [s for s in tp if s["size_bytes"] == size and s.get("rps_median")]
        rows.sort(key=lambda s: s["rps_median"])
        y = range(len(rows))
        med = [s["rps_median"] for s in rows]
        err = [[s["rps_median"] - s["rps_min"] for s in rows], [s["rps_max"] - s["rps_median"] for s in rows]]
        colors = ["tab:blue" if s["peer"] else "tab:red" for s in rows]
        ax.barh(list(y), med, xerr=err, color=colors, capsize=3)
        ax.set_yticks(list(y), [s["scenario"] for s in rows], fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("records/s (median, bars = min-max)")
        ax.set_title(f"{_size(size)} records")
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle(f"end-to-end throughput ({data['started_utc'][:10]}, {data['args']['runs']} runs)")
    fig.tight_layout()
    fig.savefig(outdir / "throughput.png", dpi=110)
    plt.close(fig)

    lat = [s for s in data["summary"] if s["kind"] == "latency" and s.get("latency")]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(lat) + 2), 5))
    if lat:
        width = 0.27
        for i, (k, lab) in enumerate((("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"))):
            xs = [j + (i - 1) * width for j in range(len(lat))]
            vals = [s["latency"].get(k, float("nan")) for s in lat]
            lo = [v - s["latency"].get(k + "_min", v) for v, s in zip(vals, lat, strict=True)]
            hi = [s["latency"].get(k + "_max", v) - v for v, s in zip(vals, lat, strict=True)]
            ax.bar(xs, vals, width, yerr=[lo, hi], label=lab, capsize=2)
        ax.set_xticks(range(len(lat)), [s["scenario"] for s in lat], rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("latency, us (median over runs, bars = min-max)")
        ax.legend()
        ax.grid(axis="y", which="both", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no latency scenario ran", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("latency at fixed offered rate")
    fig.tight_layout()
    fig.savefig(outdir / "latency.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# main


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m perf.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=None, help="runs per scenario and size (default 5; smoke 1)")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny counts, 1 run, every scenario, no speed claims"
    )
    ap.add_argument("--only", action="append", help="scenario name or substring; repeat or comma-separate")
    ap.add_argument(
        "--sizes", help="comma-separated record sizes, e.g. 100,1k,64k (default: each scenario's)"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every record count (full runs)")
    ap.add_argument(
        "--timeout", type=float, default=None, help="per-run time bound, s (default per scenario)"
    )
    ap.add_argument("--budget", type=float, default=None, help="stop starting runs after this many s")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results base dir (default perf/results)")
    ap.add_argument("--no-latest", action="store_true", help="do not copy the report to <out>/latest")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    args = ap.parse_args(argv)
    runs = args.runs if args.runs is not None else (1 if args.smoke else 5)
    budget = args.budget if args.budget is not None else (SMOKE_BUDGET_S if args.smoke else FULL_BUDGET_S)

    scens = load_scenarios()
    if args.list:
        for s in scens.values():
            print(f"{s.name:34} {s.kind:10} sizes={list(s.sizes)} {'peer' if s.peer else ''}\n    {s.doc}")
        return {}
    chosen = select(scens, args.only)
    if not chosen:
        raise SystemExit(f"no scenario matches {args.only}; see --list")
    want_sizes = {parse_size(x) for x in args.sizes.split(",")} if args.sizes else None

    from perf.deps import find_binary

    skipped: list[str] = []
    cells: list[tuple[Scenario, int, int, float]] = []
    for s in chosen:
        missing = [b for b in s.requires if find_binary(b) is None]
        if missing:
            msg = f"{s.name}: SKIPPED, {', '.join(missing)} not installed (run `make bench-deps`)"
            print(msg, file=sys.stderr, flush=True)
            skipped.append(msg)
            continue
        for size in s.sizes:
            if want_sizes is not None and size not in want_sizes:
                continue
            n = s.n_records(size, smoke=args.smoke)
            if not args.smoke:
                n = max(1, int(n * args.scale))
            timeout = args.timeout or (min(s.timeout_s, 15.0) if args.smoke else s.timeout_s)
            cells.append((s, size, n, timeout))

    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    machine = machine_info()
    results: dict[tuple[str, int], list[Result]] = {(s.name, size): [] for s, size, _n, _t in cells}
    total = runs * len(cells)
    done = 0
    for r in range(runs):
        for s, size, n, timeout in cells:
            done += 1
            if time.monotonic() - t_start > budget:
                msg = f"{s.name} {size} B run {r + 1}: not run, --budget {budget:.0f}s spent"
                skipped.append(msg)
                print(msg, file=sys.stderr, flush=True)
                continue
            sync_s = settle_page_cache()
            t0 = time.monotonic()
            try:
                res = s.run(size, n, timeout)
            except Exception as e:
                res = Result(
                    s.name,
                    size,
                    n,
                    0,
                    float("nan"),
                    0.0,
                    0.0,
                    error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}",
                )
            res.extra["sync_before_s"] = round(sync_s, 3)
            results[(s.name, size)].append(res)
            status = "ok" if res.ok else ("TIMEOUT" if res.timed_out else "ERROR")
            lat = ""
            if res.latency:
                lat = f" p50 {res.latency.get('p50_us', 0):.0f}us p99 {res.latency.get('p99_us', 0):.0f}us"
            print(
                f"[{done}/{total}] run {r + 1} {s.name:32} {_size(size):>6} n={n:<9} {status:7}"
                f" {_si(res.records_per_s, ' rec/s'):>14} {res.mb_per_s:9.1f} MB/s{lat}"
                f" ({time.monotonic() - t0:.1f}s)",
                flush=True,
            )
            if res.error:
                print("    " + res.error.strip().replace("\n", "\n    ")[-1500:], file=sys.stderr, flush=True)

    summary = [summarize(s, size, results[(s.name, size)]) for s, size, _n, _t in cells]
    machine["loadavg_end"] = list(os.getloadavg())
    machine["bare_loop_ns_end"] = calibrate_loop_ns()
    data: dict[str, Any] = {
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_s": time.monotonic() - t_start,
        "args": {
            "runs": runs,
            "smoke": args.smoke,
            "only": args.only,
            "sizes": args.sizes,
            "scale": args.scale,
            "argv": sys.argv[1:] if argv is None else argv,
        },
        "machine": machine,
        "scenarios": {
            s.name: {
                "kind": s.kind,
                "peer": s.peer,
                "sizes": list(s.sizes),
                "requires": list(s.requires),
                "doc": s.doc,
            }
            for s in chosen
        },
        "summary": summary,
        "ratios": ratios(summary),
        "skipped": skipped,
        "runs": [r.to_dict() for rs in results.values() for r in rs],
    }
    day = started.strftime("%Y-%m-%d") + ("-smoke" if args.smoke else "")
    outdir = args.out / day
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "results.json").write_text(json.dumps(_clean(data), indent=1) + "\n")
    write_markdown(outdir / "results.md", data)
    write_plots(outdir, data)
    if not args.smoke and not args.no_latest:
        latest = args.out / "latest"
        latest.mkdir(parents=True, exist_ok=True)
        for f in ("results.md", "throughput.png", "latency.png"):
            shutil.copy2(outdir / f, latest / f)
    print(f"wrote {outdir}/results.json, results.md, throughput.png, latency.png ({data['wall_s']:.0f} s)")
    data["outdir"] = str(outdir)
    return data


def main(argv: list[str] | None = None) -> int:
    data = run(argv)
    if not data:
        return 0
    failed = [s for s in data["summary"] if s["runs_ok"] == 0]
    for s in failed:
        print(f"FAILED: {s['scenario']} {s['size_bytes']} B", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
