"""Optimizer state bytes per parameter, and the peak resident memory of a short training run, per state format.

    .venv/bin/python benchmarks/state_memory.py [--params 50_000_000] [--json benchmarks/results/state-memory.json]

Each run is a fresh process: a model of ``--params`` float32 parameters (one large linear layer), 5 steps of
``adamax.torch.Adamax`` with ``state_format`` "full", "compact" or "compact8" (and torch's own Adamax for reference);
it reports the state's bytes per parameter and the process's peak RSS (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource


def run_one(name: str, params: int, queue) -> None:
    import torch

    from adamax.torch import Adamax

    makers = {
        "torch.optim.Adamax": lambda ps: torch.optim.Adamax(ps),
        "adamax.torch.Adamax (full)": lambda ps: Adamax(ps),
        "adamax.torch.Adamax (compact)": lambda ps: Adamax(ps, state_format="compact"),
        "adamax.torch.Adamax (compact8)": lambda ps: Adamax(ps, state_format="compact8"),
    }
    columns = 1000
    layer = torch.nn.Linear(params // columns, columns, bias=False)
    opt = makers[name](layer.parameters())
    x = torch.randn(8, params // columns)
    for _ in range(5):
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        opt.step()
    state = sum(t.nbytes for s in opt.state.values() for k, t in s.items() if k != "step")
    queue.put({"name": name, "params": layer.weight.numel(), "state_bytes_per_param": state / layer.weight.numel(),
               "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=50_000_000)
    parser.add_argument("--json", default="benchmarks/results/state-memory.json")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results = []
    names = ("torch.optim.Adamax", "adamax.torch.Adamax (full)", "adamax.torch.Adamax (compact)",
             "adamax.torch.Adamax (compact8)")  # fmt: skip
    for name in names:
        queue = context.Queue()
        process = context.Process(target=run_one, args=(name, args.params, queue))
        process.start()
        results.append(queue.get())
        process.join()
        r = results[-1]
        print(f"{name:32s} state {r['state_bytes_per_param']:.3f} B/param   peak RSS {r['peak_rss_MiB']:.0f} MiB")
    with open(args.json, "w") as f:
        json.dump({"params": args.params, "runs": results}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
