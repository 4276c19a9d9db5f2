"""keep_freed_heap: a read's big values reuse the last read's freed heap instead of fresh pages."""

from __future__ import annotations

import subprocess
import sys

# A child process (the setting is process-wide): rounds of 64 values of 64 KiB, made and dropped as a
# consumer's reads are, counting minor page faults after the first round.
CHILD = """
import resource, sys
from shmbroker.client.heap import keep_freed_heap
if sys.argv[1] == "keep":
    assert keep_freed_heap() and keep_freed_heap()  # the second call only reports
source = bytes(range(256)) * 256
values = [source[1:] + bytes([i % 256]) for i in range(64)]
del values
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round_ in range(20):
    values = [source[1:] + bytes([i % 256]) for i in range(64)]
    assert values[7][-1] == 7
    del values
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout.strip())


def test_dropped_big_values_leave_their_heap_for_the_next_ones() -> None:
    kept = _faults("keep")
    # 20 rounds of 64 values (16 pages each) fault ~20000 times when freed memory goes back to the
    # kernel; kept, the rounds reuse the first round's pages.
    assert kept < 200, kept
    assert _faults("default") > 10 * max(kept, 100)
