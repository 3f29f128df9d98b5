"""Arrays in memory that asks the OS for 2 MiB pages (Linux transparent huge pages, ``madvise``).

A lazy step reads and writes rows scattered over tables of hundreds of
megabytes; with 4 KiB pages nearly every row costs a TLB miss (a page walk)
on each of p, m and u.  With 2 MiB pages the walks mostly disappear; on the
machine behind the README's sparse figures the lazy kernel's time on
10,000 random rows of 1M x 64 float32 fell from about 1.9 ms to 1.4 ms.

Where the OS does not offer ``madvise(MADV_HUGEPAGE)`` (not Linux, or
transparent huge pages set to ``never``) the arrays are ordinary ones.
"""

from __future__ import annotations

import contextlib
import mmap
import sys

import numpy as np

HUGE_PAGE = 2 << 20
# Below this a table gains little (a few pages); above it every array of a lazy table asks for huge pages.
MIN_BYTES = 8 << 20


def available() -> bool:
    """Whether this OS takes the ``MADV_HUGEPAGE`` hint."""
    return sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE")


def zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zero array of ``shape`` and ``dtype`` on 2 MiB-aligned memory advised for huge pages (where available
    and the array is at least ``MIN_BYTES``; else ``np.zeros``).  The memory lives as long as the array."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MIN_BYTES or not available():
        return np.zeros(shape, dtype)
    # Private anonymous memory (shared anonymous memory follows shmem's huge-page setting, not madvise), over-sized
    # by one huge page so that the array can start on a 2 MiB boundary; untouched pages read as zeros.
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # transparent huge pages off: ordinary pages, same array
        region.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(region, dtype=np.uint8)
    offset = -raw.ctypes.data % HUGE_PAGE
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)
