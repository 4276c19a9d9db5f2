"""A real process appending in a loop is SIGKILLed; every append that returned must be there.

``pwritev`` puts the bytes in the page cache before ``append`` returns, and the page cache
survives the death of the process (not of the machine: that is what ``flush()`` is for).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shmbroker.config import LogConfig
from shmbroker.disk.log import Log
from shmbroker.records import decode_batches

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kafka.record.default_records import DefaultRecordBatchBuilder
    from shmbroker.config import LogConfig
    from shmbroker.disk.log import Log

    log = Log.open(Path(sys.argv[1]), LogConfig(segment_bytes=64 << 10, preallocate=sys.argv[2] == "1"))
    seq = 0
    while True:
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
            producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        for i in range(1 + seq % 7):
            builder.append(i, timestamp=seq, key=None, value=b"%d/%d" % (seq, i) * (1 + seq % 50),
                           headers=[])
        batches = [bytearray(builder.build())]
        infos = log.append_many(batches, now_ms=seq)
        sys.stdout.write(f"{infos[-1].last_offset}\\n")
        sys.stdout.flush()
        seq += 1
    """
)


@pytest.mark.parametrize("preallocate", [False, True])
def test_sigkill_mid_append_keeps_every_acknowledged_batch(tmp_path: Path, preallocate: bool) -> None:
    log_dir = tmp_path / "t-0"
    rng = random.Random(7)
    start = 0
    for _ in range(3):  # kill, reopen, and kill again on top of the recovered log
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(log_dir), "1" if preallocate else "0"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        acked = -1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked = int(line)
            if acked >= start + 300:
                break
        time.sleep(rng.uniform(0, 0.01))  # let it run on: the kill lands at an arbitrary instruction
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        # Lines the child wrote before dying are acknowledgements too.
        for line in child.stdout:
            acked = max(acked, int(line))
        assert acked >= 0, "child acknowledged nothing"

        log = Log.open(log_dir, LogConfig(segment_bytes=64 << 10))
        assert log.statistics().recovered_at_open
        assert log.log_end_offset > acked  # every acknowledged offset survived
        offsets = []
        offset = log.log_start_offset
        while (found := log.read(offset, 1 << 20)) is not None:
            records = decode_batches(
                os.pread(found.fd, found.size, found.position), max_uncompressed_bytes=1 << 24
            )
            offsets += [r.offset for r in records]
            offset = offsets[-1] + 1
        assert offsets == list(range(log.log_end_offset))  # dense, from 0
        start = log.log_end_offset
        log.close(clean=False)
