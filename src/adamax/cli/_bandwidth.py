"""The bandwidth limit both benchmarks measure in the same run: a scaled add over one large float32 array (numba,
parallel), 12 bytes per element, the least any in-place update of a parameter from a gradient moves."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LIMIT_BYTES_PER_ELEMENT = 12  # a += s * b: read a, b; write a
# A pause before each timed step, so that the previous method's thread pool (OpenMP, XLA's) has stopped
# spinning: without it, torch's steps ran up to 3x slower right after a jitted JAX step.
SETTLE_SECONDS = 0.03


def _bandwidth_stepper(numel: int) -> Callable[[], None]:
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def scaled_add(a, b, s):
        for i in prange(a.shape[0]):
            a[i] += s * b[i]

    a, b = np.ones(numel, np.float32), np.full(numel, 1e-7, np.float32)
    scale = np.float32(1e-3)
    scaled_add(a, b, scale)
    return lambda: scaled_add(a, b, scale)
