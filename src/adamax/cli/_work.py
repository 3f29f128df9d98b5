"""Other work before each timed step, as a training loop has it: the benchmarks time a step after a fixed amount
of torch work (by default about 10 ms of float32 matmuls), the same for every method, rather than back to back.

Back to back, a step finds its code, its thread pool and its caches as the previous step left them; in training
it follows the forward and backward passes.  On this project's 2-core machine a step after an idle pause costs
1-5 ms more than the same step back to back (the idle cores must wake), so neither a pause alone nor consecutive
steps is what a training loop sees.  The amount of work is calibrated once per run (a count of matmuls, then the
same count before every timed step of every method); ``ms=0`` does none.
"""

from __future__ import annotations

import time

import numpy as np

WORK_MS = 10.0  # the default: about the forward and backward passes of a small model on this machine
SIZE = 384  # the matmuls' square size: 2 * 384**3 flops each, about 0.2 to 1 ms here


class TrainingWork:
    """``work()`` runs ``count`` matmuls of two ``SIZE`` x ``SIZE`` float32 matrices, chosen so that they take about
    ``ms`` milliseconds on this machine (measured once, at construction)."""

    def __init__(self, ms: float = WORK_MS) -> None:
        import torch

        if not (isinstance(ms, (int, float)) and ms >= 0):
            raise ValueError(f"the work before a step must be a number of milliseconds >= 0, got {ms!r}")
        gen = torch.Generator().manual_seed(0)
        self.a, self.b = torch.randn(SIZE, SIZE, generator=gen), torch.randn(SIZE, SIZE, generator=gen)
        self.out = torch.empty(SIZE, SIZE)
        self.count = 0
        self.matmul_ms = 0.0
        if ms > 0:
            for _ in range(5):  # warm: threads up, code loaded
                torch.mm(self.a, self.b, out=self.out)
            times = []
            for _ in range(21):
                start = time.perf_counter()
                torch.mm(self.a, self.b, out=self.out)
                times.append(time.perf_counter() - start)
            self.matmul_ms = float(np.median(times)) * 1e3
            self.count = max(1, round(ms / self.matmul_ms))

    def __call__(self) -> None:
        import torch

        for _ in range(self.count):
            torch.mm(self.a, self.b, out=self.out)

    def describe(self) -> dict:
        return {"matmuls": self.count, "size": SIZE, "ms": round(self.count * self.matmul_ms, 2)}

    def sentence(self) -> str:
        if not self.count:
            return "each step timed back to back with the step before it (no other work between)"
        return (
            f"each step timed after {self.count} matmuls of {SIZE}x{SIZE} float32 (about "
            f"{self.count * self.matmul_ms:.1f} ms of torch work), the same for every method"
        )
