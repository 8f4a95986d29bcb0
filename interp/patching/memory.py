"""Freed memory kept for reuse while a sweep runs (glibc's malloc; elsewhere nothing changes).

A sweep allocates and frees the same few large activations thousands of times. glibc hands a
freed block above its mmap threshold (32 MiB at most) straight back to the operating system,
and trims the top of its heap once more than twice that lies free there, so the next block of
that size is fresh memory and costs a page fault per 4 KiB on first touch. On a 2-core CPU
those faults took ~6% of exact edge patching on the GPT-2-small shape.

`keep_freed_memory()` has glibc, while any sweep runs, serve every block from its heap
(`M_MMAP_MAX` 0) and trim it only beyond 1 GiB free, so freed blocks are reused as they are.
When the last sweep ends it sets the values glibc's own adjustment settles at in a process
that has freed a block of 32 MiB (mmap threshold 32 MiB, trim threshold 64 MiB, mmap allowed)
and gives the free memory back (`malloc_trim`). The numbers a sweep computes do not depend on
any of this. `HEADLAB_KEEP_FREED_MEMORY=0` in the environment turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from contextlib import contextmanager

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
_SWEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30}
_AFTER = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20, M_MMAP_MAX: 65536}

_lock = threading.Lock()
_active = 0


def _glibc():
    """The C library when it is glibc with `mallopt` and `malloc_trim`, else None."""
    if not sys.platform.startswith("linux") or os.environ.get("HEADLAB_KEEP_FREED_MEMORY") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def _set(values: dict[int, int]) -> None:
    for param, value in values.items():
        _LIBC.mallopt(ctypes.c_int(param), ctypes.c_int(value))


@contextmanager
def keep_freed_memory():
    """Within this block (and any other running at the same time, on any thread), freed
    memory stays with the process for reuse; see the module docstring."""
    global _active
    if _LIBC is None:
        yield
        return
    with _lock:
        _active += 1
        if _active == 1:
            _set(_SWEEP)
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _set(_AFTER)
                _LIBC.malloc_trim(ctypes.c_size_t(0))
