"""Host time per step: a step's fixed cost and its cost per tensor, on tensors so small that the arithmetic is
nothing (16 float32 elements each).

    .venv/bin/python benchmarks/host_time.py [--json benchmarks/results/host-time.json]

Each step timed after a fixed amount of other torch work, the same for every optimizer (``--work-ms``, by default
about 10 ms of matmuls: :mod:`adamax.cli._work`), as a training loop's forward and backward passes come before its
step; ``--work-ms 0`` times consecutive steps (no pause: a pause lets the CPU idle, and waking it costs more than
such a step).  The median of 300.  Fixed cost: the 1-tensor step; per tensor: the slope from 10 to 1,000 tensors.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from adamax.cli._work import TrainingWork
from adamax.torch import Adamax

COUNTS = (1, 10, 100, 1000)


def median_us(opt, work, repeats: int = 300) -> float:
    for _ in range(20):
        opt.step()
    times = []
    for _ in range(repeats):
        work()
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/host-time.json")
    parser.add_argument("--work-ms", type=float, default=10.0, help="ms of torch matmuls before each timed step")
    args = parser.parse_args()
    work = TrainingWork(args.work_ms)
    makers = {
        "adamax.torch.Adamax fused": lambda ps: Adamax(ps, fused=True),
        "adamax.torch.Adamax compact": lambda ps: Adamax(ps, state_format="compact"),
        "adamax.torch.Adamax compact8": lambda ps: Adamax(ps, state_format="compact8"),
        "torch.optim.Adamax foreach": lambda ps: torch.optim.Adamax(ps, foreach=True),
        "torch.optim.Adam fused": lambda ps: torch.optim.Adam(ps, fused=True),
    }
    results = {}
    for name, make in makers.items():
        per_count = {}
        for n in COUNTS:
            params = [torch.zeros(16, requires_grad=True) for _ in range(n)]
            for p in params:
                p.grad = torch.ones(16)
            per_count[n] = median_us(make(params), work)
        slope = (per_count[1000] - per_count[10]) / 990
        results[name] = {"us_by_tensors": per_count, "fixed_us": per_count[1], "us_per_tensor": slope}
        print(f"{name:30s} 1 tensor {per_count[1]:7.1f} us   per tensor {slope:5.2f} us   "
              f"1,000 tensors {per_count[1000] / 1e3:6.2f} ms")  # fmt: skip
    with open(args.json, "w") as f:
        json.dump({"threads": torch.get_num_threads(), "work_before_step": work.describe(), "results": results}, f,
                  indent=1)  # fmt: skip
    print(work.sentence())
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
