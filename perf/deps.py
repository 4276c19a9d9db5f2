"""Install what the peer benchmarks need and is missing: `python -m perf.deps` (`make bench-deps`).

- Debian packages `redis-server` and `nats-server` (the peers' servers), through `apt-get install -y`;
  `apt-get update` first only when the plain install fails; nothing is done when the binaries are
  already on PATH (or in /usr/sbin, /usr/bin). Installing needs root: without it the message says
  which command to run.
- Python packages come from the project's pip extra `bench` (`pip install -e '.[dev,bench]'`, which
  the Makefile's `.stamp-bench` target does); here we only check they import and say what is missing.

Importable: `missing_binaries()`, `ensure_binaries()`, `find_binary()` are what the smoke test uses.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

# binary name -> Debian package
BINARIES: dict[str, str] = {"redis-server": "redis-server", "nats-server": "nats-server"}
# import name -> pip distribution (all in the `bench` extra, plus pyzmq/psutil/numpy from the base deps)
PY_MODULES: dict[str, str] = {
    "redis": "redis",
    "hiredis": "hiredis",
    "nats": "nats-py",
    "faster_fifo": "faster-fifo",
    "matplotlib": "matplotlib",
    "zmq": "pyzmq",
    "psutil": "psutil",
    "numpy": "numpy",
}
APT_TIMEOUT_S = 600.0
_EXTRA_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin")


class DepsError(RuntimeError):
    """A dependency is missing and could not be installed here."""


def find_binary(name: str) -> str | None:
    """Path of `name` on PATH or in the usual system dirs (apt puts redis-server in /usr/bin)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _EXTRA_DIRS:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if find_binary(b) is None]


def missing_python_modules() -> list[str]:
    missing = []
    for mod, dist in PY_MODULES.items():
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(dist)
    return missing


def _apt(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("+ apt-get " + " ".join(args), flush=True)
    return subprocess.run(
        ["apt-get", *args], env=env, text=True, capture_output=True, timeout=APT_TIMEOUT_S, check=False
    )


def ensure_binaries(log: bool = True) -> dict[str, str]:
    """Install the missing Debian packages; return {binary: path}. Raises DepsError if it can't."""
    missing = missing_binaries()
    if missing:
        pkgs = sorted({BINARIES[b] for b in missing})
        if os.geteuid() != 0:
            raise DepsError(
                f"missing {', '.join(missing)}; installing needs root: "
                f"sudo apt-get update && sudo apt-get install -y {' '.join(pkgs)}"
            )
        if shutil.which("apt-get") is None:
            raise DepsError(f"missing {', '.join(missing)} and no apt-get here; install {' '.join(pkgs)}")
        proc = _apt(["install", "-y", "--no-install-recommends", *pkgs])
        if proc.returncode != 0:
            upd = _apt(["update"])
            if upd.returncode != 0:
                raise DepsError(f"apt-get update failed:\n{upd.stderr[-2000:]}")
            proc = _apt(["install", "-y", "--no-install-recommends", *pkgs])
        if proc.returncode != 0:
            raise DepsError(f"apt-get install {' '.join(pkgs)} failed:\n{proc.stderr[-2000:]}")
        still = missing_binaries()
        if still:
            raise DepsError(f"installed {' '.join(pkgs)} but still cannot find {', '.join(still)}")
    paths = {b: find_binary(b) or "" for b in BINARIES}
    if log:
        for b, p in paths.items():
            print(f"ok {b}: {p}", flush=True)
    return paths


def main() -> int:
    rc = 0
    try:
        ensure_binaries()
    except (DepsError, subprocess.TimeoutExpired) as e:
        print(f"perf.deps: {e}", file=sys.stderr)
        rc = 1
    missing_py = missing_python_modules()
    if missing_py:
        print(
            f"perf.deps: missing Python packages {', '.join(missing_py)}; "
            "run `make bench-deps` or `.venv/bin/pip install -e '.[dev,bench]'`",
            file=sys.stderr,
        )
        rc = 1
    else:
        print("ok python packages: " + ", ".join(sorted(PY_MODULES.values())), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
