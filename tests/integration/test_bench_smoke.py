"""The benchmark harness end to end, small: `python -m perf.run --smoke` on a few fast peers writes
results.json, results.md, throughput.png and latency.png, and they parse.

The Redis case needs redis-server. When it is missing the test installs it through perf.deps (the
code behind `make bench-deps`: apt-get, as root); if that cannot be done here it is SKIPPED WITH THE
REASON (shown by -ra), never silently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perf import deps

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _smoke(out: Path, only: list[str], sizes: str, timeout_s: float = 90.0) -> dict:
    argv = [sys.executable, "-m", "perf.run", "--smoke", "--out", str(out), "--sizes", sizes]
    argv += ["--budget", "45"]
    for name in only:
        argv += ["--only", name]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert proc.returncode == 0, f"perf.run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    days = [d for d in out.iterdir() if d.is_dir() and d.name.endswith("-smoke")]
    assert len(days) == 1, list(out.iterdir())
    day = days[0]
    data = json.loads((day / "results.json").read_text())
    md = (day / "results.md").read_text()
    for png in ("throughput.png", "latency.png"):
        blob = (day / png).read_bytes()
        assert blob.startswith(PNG_MAGIC), png
        assert len(blob) > 1000, png
    assert not (out / "latest").exists(), "--smoke must not overwrite latest/"
    assert "| scenario | size |" in md
    assert data["machine"]["logical_cores"] >= 1
    assert data["machine"]["python"]
    for name in only:
        rows = [s for s in data["summary"] if s["scenario"] == name]
        assert rows, f"{name} missing from the summary"
        for s in rows:
            assert s["runs_ok"] == 1, s
            assert s["rps_median"] > 0, s
            assert s["cpu_pct"], s
            assert s["peak_rss_bytes"], s
        assert name in md
    return data


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_bench_smoke_fast_peers(tmp_path: Path) -> None:
    only = ["zmq-pushpull-ipc", "mp-queue", "ceiling-os-write"]
    data = _smoke(tmp_path, only, "100,1k")
    assert {s["size_bytes"] for s in data["summary"]} == {100, 1024}
    # every scenario is compared with every peer of the same size, itself included (ratio 1)
    r = data["ratios"]["100"]
    assert r["zmq-pushpull-ipc"]["zmq-pushpull-ipc"] == pytest.approx(1.0)
    assert set(r["mp-queue"]) == set(only)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_bench_smoke_redis(tmp_path: Path) -> None:
    if deps.find_binary("redis-server") is None:
        try:
            deps.ensure_binaries()  # apt-get install redis-server nats-server, as `make bench-deps` does
        except (deps.DepsError, subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"redis-server is not installed and perf.deps could not install it: {e}")
    data = _smoke(tmp_path, ["redis-streams-aof-off"], "100")
    procs = data["summary"][0]["peak_rss_bytes"]
    assert procs.get("redis-server", 0) > 0, procs  # the server was measured too


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_bench_smoke_produce_latency_comes_from_the_delivery_reports(tmp_path: Path) -> None:
    """The produce-latency scenario (what #4's figure names) reports one sample per delivered
    record, measured in the producer, and is not mistaken for a saturated run."""
    data = _smoke(tmp_path, ["shmbroker-local-acklat10k"], "100")
    run = data["runs"][0]
    lat = run["latency"]
    assert lat["samples"] == run["n_records"] == run["received"]
    assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["max_us"]
    assert not run["saturated"], lat
    names = {p["name"] for p in run["procs"]}
    assert {"producer", "broker-worker-0", "broker-router"} <= names  # every broker process is measured
