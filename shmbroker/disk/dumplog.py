"""``shmbroker dump-log PATH... [--verify] [--json] [--print-data]`` and ``shmbroker recover-log DIR``.

dump-log reads segment files as they are (never writes): for a ``.log`` one line per batch (base
and last offset, count, codec, CRC check, position, size), for a ``.index``/``.timeindex`` one line
per entry; a directory means its ``.log`` files. ``--verify`` exits 1 at the first problem: bad
CRC, bad header, torn batch, offsets not dense. A zero-filled tail (``log.preallocate``) is not one.
recover-log runs full recovery on an offline partition directory (never while a broker owns it).
"""

from __future__ import annotations

import argparse
import json
import mmap
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shmbroker import records
from shmbroker.config import LogConfig
from shmbroker.disk.files import INDEX_SUFFIX, LOG_SUFFIX, TIMEINDEX_SUFFIX
from shmbroker.disk.index import INDEX_ENTRY, load_entries
from shmbroker.disk.timeindex import TIMEINDEX_ENTRY
from shmbroker.errors import BrokerError

MAX_UNCOMPRESSED_BYTES = 256 << 20  # --print-data decodes one batch at a time, at most this big


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shmbroker dump-log", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help=".log/.index/.timeindex files or directories")
    parser.add_argument("--verify", action="store_true", help="check every CRC; exit 1 on any problem")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--print-data", action="store_true", help="decode and print every record")
    return parser.parse_args(argv)


def _expand(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(path.glob("*" + LOG_SUFFIX))
        else:
            yield path


def _batch_row(position: int, header: records.BatchHeader, crc_ok: bool) -> dict[str, Any]:
    return {
        "base_offset": header.base_offset,
        "last_offset": header.last_offset,
        "count": header.records_count,
        "position": position,
        "size": header.size_bytes,
        "codec": header.codec.name.lower(),
        "timestamp_type": "LogAppendTime" if header.attributes & records.TIMESTAMP_TYPE_BIT else "CreateTime",
        "max_timestamp_ms": header.max_timestamp_ms,
        "leader_epoch": header.partition_leader_epoch,
        "producer_id": header.producer_id,
        "transactional": bool(header.attributes & records.TRANSACTIONAL_BIT),
        "control": bool(header.attributes & records.CONTROL_BIT),
        "crc": header.crc,
        "crc_ok": crc_ok,
    }


def _emit(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(row))
    else:
        print(" ".join(f"{k}: {v}" for k, v in row.items()))


def _dump_log(path: Path, args: argparse.Namespace) -> list[str]:
    """Print the batches of one .log file; return the problems found."""
    problems: list[str] = []
    with path.open("rb") as f:  # mmap refuses empty files
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) if path.stat().st_size else None
    buf = memoryview(mapped if mapped is not None else b"")
    position, expect = 0, None
    while len(buf) - position >= records.HEADER_BYTES:
        header = records.parse_batch_header(buf, position)
        if header.magic == 0 and not np.frombuffer(buf[position:], dtype=np.uint8).any():
            _emit({"zero_filled_tail_from": position, "bytes": len(buf) - position}, args.json)
            position = len(buf)
            break
        try:
            records.check_header(header, max_batch_bytes=2**31 - 1)
        except BrokerError as exc:
            problems.append(f"{path}: position {position}: {exc}")
            break
        end = position + header.size_bytes
        if end > len(buf):
            problems.append(f"{path}: position {position}: batch of {header.size_bytes} bytes is torn")
            break
        crc_ok = records.crc32c(buf[position + records.CRC_START : end]) == header.crc
        if not crc_ok:
            problems.append(f"{path}: position {position}: CRC mismatch")
        if expect is not None and header.base_offset != expect:
            problems.append(f"{path}: position {position}: offset {header.base_offset}, expected {expect}")
        expect = header.next_offset
        _emit(_batch_row(position, header, crc_ok), args.json)
        if args.print_data:
            _print_records(buf[position:end], args.json)
        position = end
    if 0 < len(buf) - position < records.HEADER_BYTES:
        problems.append(f"{path}: {len(buf) - position} trailing bytes after position {position}")
    del buf
    if mapped is not None:
        mapped.close()
    return problems


def _print_records(batch: memoryview, as_json: bool) -> None:
    try:
        decoded = records.decode_batch(batch, max_uncompressed_bytes=MAX_UNCOMPRESSED_BYTES, verify_crc=False)
    except BrokerError as exc:
        _emit({"records_error": str(exc)}, as_json)
        return
    for record in decoded:
        _emit(
            {
                "offset": record.offset,
                "timestamp_ms": record.timestamp_ms,
                "key": _text(record.key),
                "value": _text(record.value),
                "headers": [[k, _text(v)] for k, v in record.headers],
            },
            as_json,
        )


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="backslashreplace")


def _dump_index(path: Path, args: argparse.Namespace) -> list[str]:
    dtype = INDEX_ENTRY if path.suffix == INDEX_SUFFIX else TIMEINDEX_ENTRY
    entries = load_entries(path, dtype)
    names = dtype.names or ()
    for entry in entries:
        _emit({name: int(entry[name]) for name in names}, args.json)
    return [
        f"{path}: {name} column is not increasing"
        for name in names
        if len(entries) > 1 and not np.all(np.diff(entries[name].astype(np.int64)) >= 0)
    ]


def main(argv: list[str]) -> int:
    """Exit 0, or 1 when --verify found a problem, or 2 when a path cannot be read."""
    args = _parse(argv)
    problems: list[str] = []
    for path in _expand(args.paths):
        if not args.json:
            print(f"Dumping {path}")
        try:
            if path.suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX):
                problems += _dump_index(path, args)
            else:
                problems += _dump_log(path, args)
        except OSError as exc:
            print(f"cannot read {path}: {exc}", file=sys.stderr)
            return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems and args.verify else 0


def recover_main(argv: list[str]) -> int:
    """``shmbroker recover-log DIR [DIR...]``: full recovery scan; prints the bytes cut per directory."""
    from shmbroker.disk.log import Log  # here, so dump-log needs nothing but the file formats

    parser = argparse.ArgumentParser(prog="shmbroker recover-log")
    parser.add_argument("directories", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for directory in args.directories:
        if not directory.is_dir():
            print(f"{directory}: not a directory", file=sys.stderr)
            return 2
        log = Log.open(directory, LogConfig(), force_recovery=True)
        stats = log.statistics()
        log.close(clean=False)  # the broker's next open checks again; this tool leaves no marker
        print(
            f"{directory}: {stats.bytes_cut_at_open} bytes cut; offsets "
            f"{stats.log_start_offset}..{stats.log_end_offset} in {stats.segments} segments"
        )
    return 0
