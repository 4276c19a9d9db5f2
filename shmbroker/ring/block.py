"""POSIX shared-memory blocks: create, attach, close, unlink (posix_ipc, never multiprocessing).

``multiprocessing.shared_memory`` registers even a merely attaching process with the resource tracker,
which unlinks the block when that process exits (CPython gh-82300); posix_ipc does no such thing.

Ownership: the process that ``create``\\ s a block (the broker's supervisor) is the one that
``unlink``\\ s it; every other process only ``attach``\\ es and ``close``\\ s. Blocks are created with
``O_CREX`` and mode 0600 under an unguessable name (``/shmb-`` + 128 random bits), so no other user can
open one and no stale block is ever silently reused.

Memoryview lifetimes: ``view`` is the one memoryview of the mapping; the rings slice it. ``close()``
releases ``view`` and closes the mmap; if someone still holds a slice, the mmap cannot be closed yet
("cannot close exported pointers exist"), so ``close`` drops its reference instead and the kernel
mapping goes away when the last slice is released or collected. Close never raises for that.
"""

from __future__ import annotations

import mmap
import os
import secrets
from types import TracebackType

import posix_ipc

from shmbroker.errors import BrokenError, ClosedError

NAME_PREFIX = "/shmb-"
MODE = 0o600


def new_name(prefix: str = NAME_PREFIX) -> str:
    """A fresh POSIX IPC name: prefix + 32 hex digits (128 random bits)."""
    return f"{prefix}{secrets.token_hex(16)}"


class SharedBlock:
    """One mapped POSIX shared-memory object. Not thread-safe; one instance per process and block."""

    def __init__(self, name: str, mapping: mmap.mmap, *, created: bool) -> None:
        self.name = name
        self.size_bytes = len(mapping)
        self.created = created  # True only in the process that must unlink it
        self._mmap: mmap.mmap | None = mapping
        self.view: memoryview = memoryview(mapping)

    @classmethod
    def create(cls, size_bytes: int, *, name: str | None = None) -> SharedBlock:
        """Create a zero-filled block of ``size_bytes`` (O_CREX, mode 0600). The caller must unlink it."""
        if size_bytes <= 0:
            raise ValueError(f"shared block of {size_bytes} bytes")
        name = name or new_name()
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=MODE, size=size_bytes)
        try:
            mapping = mmap.mmap(shm.fd, size_bytes)
        except BaseException:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(name)
            raise
        shm.close_fd()  # the mapping keeps the object alive; the fd is not needed any more
        return cls(name, mapping, created=True)

    @classmethod
    def attach(cls, name: str, *, min_bytes: int = 1) -> SharedBlock:
        """Map an existing block. ``BrokenError`` if it is gone or smaller than ``min_bytes``."""
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError as exc:
            raise BrokenError(
                f"shared block {name} does not exist (its creator unlinked it or died)"
            ) from exc
        try:
            size = os.fstat(shm.fd).st_size
            if size < min_bytes:
                raise BrokenError(f"shared block {name} has {size} bytes; need at least {min_bytes}")
            mapping = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        return cls(name, mapping, created=False)

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def slice(self, offset: int, size_bytes: int) -> memoryview:
        """A view of ``[offset, offset + size_bytes)``; the caller releases it (or closes its ring)."""
        if self._mmap is None:
            raise ClosedError(f"shared block {self.name} is closed")
        if offset < 0 or offset + size_bytes > self.size_bytes:
            raise ValueError(
                f"slice [{offset}, {offset + size_bytes}) outside a {self.size_bytes}-byte block"
            )
        return self.view[offset : offset + size_bytes]

    def close(self) -> None:
        """Unmap (now, or when the last outstanding slice goes). Idempotent; never unlinks."""
        if self._mmap is None:
            return
        mapping, self._mmap = self._mmap, None
        self.view.release()
        try:
            mapping.close()
        except BufferError:
            pass  # slices still alive: the mapping is unmapped when the last one is released

    def unlink(self) -> None:
        """Remove the name (creator only). Mappings already made stay valid until closed. Idempotent."""
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    def __enter__(self) -> SharedBlock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        if self.created:
            self.unlink()
