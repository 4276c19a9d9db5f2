"""Keep freed C heap memory for the next read's values (glibc ``mallopt``), once per process.

A consumer turns every record value into a new ``bytes`` (confluent-kafka's ``Message.value()``),
and the application usually drops a read's messages before the next read. With glibc's defaults a
batch of big values (tens of KiB and up) is freed into the top of the heap, which ``free`` then
hands back to the kernel as soon as it exceeds ``M_TRIM_THRESHOLD`` (128 KiB): so the next read's
values land on pages the kernel must find, zero and map again, one minor fault per 4 KiB. Measured
(perf shmbroker-local-consume, 64-KiB values, 4-MiB reads): ~13 faults per record, about half the
consumer's CPU, 1.7 GB/s; with the heap kept, ~3.0 GB/s.

So the first Consumer of a process raises the trim threshold to ``KEEP_FREED_BYTES``: up to that
much freed memory stays mapped for reuse (the process's resident size can stay that much above
what it uses). Setting it turns off glibc's sliding thresholds, so the mmap threshold is set too:
to glibc's own upper bound, the value the sliding threshold reaches after the first big free, so
values up to ``MMAP_FROM_BYTES`` come from the reusable heap instead of a fresh mmap each.
Nothing happens on a C library without ``mallopt`` (musl, macOS): only speed differs.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc <malloc.h> parameter numbers
M_MMAP_THRESHOLD = -3
KEEP_FREED_BYTES = 64 << 20  # > a few reads of max.partition.fetch.bytes (1 MiB, the bench 4 MiB)
MMAP_FROM_BYTES = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: mallopt refuses more

_done: bool | None = None


def keep_freed_heap() -> bool:
    """Apply the settings above (first call only); True if the C library took them."""
    global _done
    if _done is None:
        _done = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_FROM_BYTES) == 1
        trim_set = mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1
        _done = mmap_set and trim_set
    return _done
