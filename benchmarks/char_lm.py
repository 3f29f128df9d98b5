"""Compact and compact8 optimizer state against float32 state and naive bfloat16 state on a character-level language
model.

    .venv/bin/python benchmarks/char_lm.py [--steps 2000] [--json benchmarks/results/char-lm.json] [--only compact8]

An LSTM over bytes (0.94M parameters) on the Python standard library's own source (:mod:`adamax.cli.charlm`), the
same seed and batches for each optimizer; prints the held-out loss every 100 steps and the final figures, and
writes them as JSON (with the peak resident memory of each run, measured in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
from dataclasses import asdict


def run_one(name: str, steps: int, queue) -> None:
    import torch

    from adamax.cli import charlm
    from adamax.cli.compare import Bfloat16State
    from adamax.torch import Adamax

    makers = {
        "float32 state (adamax.torch.Adamax)": lambda ps: Adamax(ps, lr=2e-3),
        "compact state (state_format='compact')": lambda ps: Adamax(ps, lr=2e-3, state_format="compact"),
        "compact8 state (state_format='compact8')": lambda ps: Adamax(ps, lr=2e-3, state_format="compact8"),
        "bfloat16 state (naive)": lambda ps: Bfloat16State(ps, lr=2e-3),
    }
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run = charlm.train(name, makers[name], steps=steps)
    result = asdict(run)
    result["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--json", default="benchmarks/results/char-lm.json")
    parser.add_argument(
        "--only", nargs="+", metavar="WORD",
        help="run only the optimizers whose names hold one of these words (float32 state always runs, to compare); "
             "the JSON keeps the other runs it holds, of the same number of steps",
    )  # fmt: skip
    args = parser.parse_args()
    names = [
        "float32 state (adamax.torch.Adamax)",
        "compact state (state_format='compact')",
        "compact8 state (state_format='compact8')",
        "bfloat16 state (naive)",
    ]
    kept = {}
    if args.only:
        names = [n for n in names if n == names[0] or any(word in n for word in args.only)]
        try:
            with open(args.json) as f:
                saved = json.load(f)
            if saved.get("steps") == args.steps:
                kept = {run["name"]: run for run in saved["runs"]}
        except FileNotFoundError:
            pass
    context = multiprocessing.get_context("spawn")  # a fresh process per run: its own peak memory
    results = []
    for name in names:
        queue = context.Queue()
        process = context.Process(target=run_one, args=(name, args.steps, queue))
        process.start()
        result = queue.get()
        process.join()
        results.append(result)
        print(
            f"{name:40s} final held-out loss {result['val_loss'][-1]:.4f}  train {result['train_loss'][-1]:.4f}  "
            f"state {result['state_bytes'] / result['params']:.2f} B/param  peak RSS {result['peak_rss_MiB']:.0f} MiB  "
            f"{result['seconds']:.0f} s",
            flush=True,
        )
    order = [n for n in (*kept, *(r["name"] for r in results))]
    fresh = {r["name"]: r for r in results}
    results = [fresh.get(n, kept.get(n)) for n in dict.fromkeys(order)]
    full = results[0]["val_loss"][-1]
    for result in results[1:]:
        print(f"{result['name']}: {100 * (result['val_loss'][-1] / full - 1):+.2f}% against float32 state")
    with open(args.json, "w") as f:
        json.dump({"steps": args.steps, "runs": results}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
