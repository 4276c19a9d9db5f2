"""What each broker process imports before it can work: the start-up budget (issue #3) rests on it.

Each case runs a fresh interpreter (the only way to see a cold import) and lists the modules it
must not have loaded: the command line and the fork server's launcher stay light, the supervisor
skips numpy and the children's modules, and the fork server's preload skips what only the
client, the coordinator, the replicator or CURVE use.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shmbroker.workers.forkserver import PRELOAD

CLIENT = ["shmbroker.client.admin", "shmbroker.client.producer", "shmbroker.client.consumer"]
CHILDREN = ["shmbroker.workers.partition", "shmbroker.workers.router", "shmbroker.workers.replicator"]
GROUPS = ["shmbroker.workers.coordinator", "shmbroker.workers.group_state"]
CASES = {
    "command line": (["shmbroker.cli", "shmbroker.workers.forkserver"], ["numpy", "zmq", *CLIENT]),
    "supervisor": (
        ["shmbroker.workers.service"],
        ["numpy", "asyncio", "shmbroker.records", *CHILDREN, *GROUPS, *CLIENT],
    ),
    "fork server preload": (
        PRELOAD,
        ["asyncio", "tomllib", "lz4", "zstandard", "shmbroker.workers.replicator", *GROUPS, *CLIENT],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_start_up_imports_stay_light(case: str) -> None:
    imported, forbidden = CASES[case]
    code = (
        "import importlib, json, sys\n"
        f"for name in {imported!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        pass  # optional ones (setproctitle), as the fork server does\n"
        f"print(json.dumps([m for m in {forbidden!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == [], f"{case} imports them at start-up"
