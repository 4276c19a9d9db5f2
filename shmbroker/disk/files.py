"""Small file-system helpers with the durability rules of this package spelled out once.

A new, renamed or deleted directory entry is durable only after the *directory* is fsynced
(KAFKA-3968), so every create/rename/unlink that matters is followed by ``fsync_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path

CLEAN_SHUTDOWN_FILE = ".clean_shutdown"  # present only between a clean close and the next open
RECOVERY_POINT_FILE = "recovery-point"  # offset below which every byte was fsynced
LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX = ".log", ".index", ".timeindex"


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (creates, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file, whole."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_replace(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole (temp file, rename) but without fsync: for status files
    that are rewritten twice a second and worthless after a crash. An fsync there stalled the
    router's loop for milliseconds whenever the disk was busy."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def segment_name(base_offset: int, suffix: str) -> str:
    """``00000000000000001234.log``: 20 digits so names sort as offsets do."""
    return f"{base_offset:020d}{suffix}"


def list_segment_bases(directory: Path) -> list[int]:
    """Base offsets of the ``.log`` files in ``directory``, ascending; ignores anything else."""
    bases = []
    for name in os.listdir(directory):
        stem, dot, suffix = name.partition(".")
        if dot and "." + suffix == LOG_SUFFIX and len(stem) == 20 and stem.isdigit():
            bases.append(int(stem))
    bases.sort()
    return bases


def remove_if_exists(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_strays(directory: Path) -> None:
    """Temp files of an interrupted write_atomic, and indexes whose .log is gone."""
    names = set(os.listdir(directory))
    for name in names:
        stem, _, suffix = name.partition(".")
        orphan = ("." + suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX)) and stem + LOG_SUFFIX not in names
        if name.endswith(".tmp") or orphan:
            remove_if_exists(directory / name)
