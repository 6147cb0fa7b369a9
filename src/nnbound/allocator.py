"""Keep freed memory in the process instead of handing it back to the system at each free.

A bound pass allocates and frees many tensors of a few MB each (coefficient blocks, gathered
weight rows). glibc serves any allocation above its dynamic mmap threshold (128 KB to start)
with a fresh ``mmap`` and unmaps it on free, so every such tensor pays page faults on its
first write: a quarter of a batched radius search's time on ``mnist-fc-3layer``
(``bench/bench_allocator.py``). Raising the mmap threshold to glibc's largest (32 MB on 64-bit)
and the trim threshold lets freed blocks be reused from the heap. Larger tensors are still
mapped and unmapped as before.

This changes the whole process's allocator, so the library never calls it on import: the
``nnbound`` command does, at start (``NNBOUND_KEEP_FREED_MEMORY=0`` turns it off), and a
program embedding nnbound may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MB on 64-bit systems.
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap above this goes back to the system.
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring). Returns whether they
    were set: False off Linux or with a C library that has no ``mallopt`` (musl, macOS),
    where nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 for a value it refuses.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
