"""What touching random rows costs on this machine, without any Adamax math: the floor under a lazy step.

    .venv/bin/python benchmarks/random_rows_floor.py

10,000 random rows of three 1,000,000 x 64 float32 arrays (p, m, u) and an int64 per row, read and written
once each by a parallel numba loop, after 300 MB have streamed through the caches (as a dense step does), with
and without software prefetching some rows ahead; then the lazy-rows kernel itself on the same rows.  Each on
ordinary memory (4 KiB pages) and on memory advised for 2 MiB pages (what ``lazy_embeddings`` uses).
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from adamax import _lazy, _memory
from adamax.kernels.lazy import _prefetch, step_rows
from adamax.spec import AdamaxConfig

ROWS, WIDTH, TOUCHED = 1_000_000, 64, 10_000


@njit(parallel=True)
def touch(p, m, u, last, rows, ahead):  # pragma: no cover - compiled
    for i in prange(rows.shape[0]):
        if ahead > 0 and i + ahead < rows.shape[0]:
            later = rows[i + ahead]
            _prefetch(last, later, 0)
            for column in range(0, p.shape[1], 16):
                _prefetch(p, later, column)
                _prefetch(m, later, column)
                _prefetch(u, later, column)
        r = rows[i]
        last[r] += 1
        for e in range(p.shape[1]):
            p[r, e] += np.float32(1e-7) * m[r, e]
            m[r, e] *= np.float32(0.9)
            u[r, e] *= np.float32(0.999)


def median_ms(run, prepare, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        prepare()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def on(huge: bool, array: np.ndarray) -> np.ndarray:
    """``array`` copied onto memory advised for 2 MiB pages (``huge``), or itself."""
    if not huge:
        return array
    moved = _memory.zeros(array.shape, array.dtype)
    moved[...] = array
    return moved


def measure(huge: bool, rows: np.ndarray, values: np.ndarray, cold) -> None:
    rng = np.random.default_rng(1)
    pages = "2 MiB pages" if huge else "4 KiB pages"
    p = on(huge, rng.standard_normal((ROWS, WIDTH)).astype(np.float32))
    m, u = on(huge, np.full_like(p, 0.1)), on(huge, np.full_like(p, 1.0))
    last = on(huge, np.zeros(ROWS, np.int64))
    touch(p, m, u, last, rows, 0)
    for ahead in (0, 8):
        took = median_ms(lambda a=ahead: touch(p, m, u, last, rows, a), cold)
        print(f"{pages}: read-modify-write only, prefetch {ahead} rows ahead: {took:.2f} ms")
    clock = _lazy.Clock(AdamaxConfig(lr=1e-3), np.float32)
    for _ in range(5):
        clock.advance(*clock.step_scalars(1e-3, clock.t + 1))

    def behind_and_cold() -> None:
        last[:] = 0
        last[rows] = clock.t - 3  # each row 3 steps behind
        cold()

    def lazy_step() -> None:
        step_rows(clock, p, m, u, last, rows, values, step_size=-1e-3)

    behind_and_cold()
    lazy_step()
    took = median_ms(lazy_step, behind_and_cold)
    print(f"{pages}: lazy rows kernel (catch-up of 3 steps and the update): {took:.2f} ms")


def main() -> None:
    rng = np.random.default_rng(0)
    rows = np.unique(rng.integers(0, ROWS, TOUCHED + 100))[:TOUCHED]
    values = rng.standard_normal((len(rows), WIDTH)).astype(np.float32)
    flood = np.ones(300_000_000 // 8)

    def cold() -> None:
        flood[:] += 1.0

    for huge in (False, True):
        measure(huge, rows, values, cold)


if __name__ == "__main__":
    main()
