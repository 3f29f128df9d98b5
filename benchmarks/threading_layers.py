"""Fused step time under each numba threading layer, alone and interleaved with a torch foreach step.

Run once per layer:
    for l in omp workqueue; do NUMBA_THREADING_LAYER=$l python benchmarks/threading_layers.py; done
"""

import time

import numba
import numpy as np
import torch

from adamax.torch import Adamax


def median_ms(fn, rounds=100):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


rows = []
for n in (1_000, 1_000_000, 10_000_000):
    ours_p, torch_p = torch.rand(n, requires_grad=True), torch.rand(n, requires_grad=True)
    ours_p.grad, torch_p.grad = torch.rand(n), torch.rand(n)
    ours, theirs = Adamax([ours_p], fused=True), torch.optim.Adamax([torch_p], foreach=True)
    ours.step()
    theirs.step()
    fused, foreach = median_ms(ours.step), median_ms(theirs.step)
    both = median_ms(lambda ours=ours, theirs=theirs: (theirs.step(), ours.step()))
    rows.append(
        f"n={n:>10,}: fused {fused:7.3f} ms  foreach {foreach:7.3f} ms  both {both:7.3f} ms (sum {fused + foreach:.3f})"
    )
print(f"threading layer: {numba.threading_layer()}, threads: {torch.get_num_threads()}")
print("\n".join(rows))
