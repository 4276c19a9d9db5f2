from __future__ import annotations

import json
from pathlib import Path

import pytest

from shmbroker.disk import dumplog
from shmbroker.disk.log import Log
from tests.unit.disk.conftest import make_batch, small_config


def test_dump_log_json_with_data(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    log.append(make_batch([b"v1", b"v2"], keys=[b"k1", None], timestamp_ms=50), now_ms=0)
    log.append(make_batch([b"v3"]), now_ms=0)
    log.close()
    assert (
        dumplog.main([str(log_dir / "00000000000000000000.log"), "--json", "--print-data", "--verify"]) == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    batches = [r for r in rows if "base_offset" in r]
    assert [(b["base_offset"], b["last_offset"], b["count"], b["crc_ok"]) for b in batches] == [
        (0, 1, 2, True),
        (2, 2, 1, True),
    ]
    data = [r for r in rows if "value" in r]
    assert [(r["offset"], r["key"], r["value"], r["timestamp_ms"]) for r in data] == [
        (0, "k1", "v1", 50),
        (1, None, "v2", 51),
        (2, None, "v3", 1000),
    ]


def test_dump_index_and_text_output(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    for _ in range(20):
        log.append(make_batch([b"x" * 100]), now_ms=0)
    log.close()
    assert dumplog.main([str(log_dir / "00000000000000000000.index"), "--verify"]) == 0
    assert "relative_offset:" in capsys.readouterr().out
    assert dumplog.main([str(log_dir)]) == 0
    assert "base_offset: 19" in capsys.readouterr().out


def test_dump_log_torn_tail_fails_verify(log_dir: Path) -> None:
    log = Log.open(log_dir, small_config(), now_ms=0)
    log.append(make_batch([b"x" * 100]), now_ms=0)
    log.close()
    path = log_dir / "00000000000000000000.log"
    path.write_bytes(path.read_bytes() + bytes(make_batch([b"y" * 100]))[:70])
    assert dumplog.main([str(path), "--verify"]) == 1
    assert dumplog.main(["/nonexistent/x.log"]) == 2
