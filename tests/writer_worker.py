"""One of two processes saving into the same checkpoint root at once, for tests/test_checkpoints.py.

    python -m tests.writer_worker --ckpt DIR --out RESULT --saves N --seed S [--keep K]

Waits for the file ``DIR.go`` (so that both writers start together), then saves ``N`` times as fast as it can
and writes the names of the checkpoints whose saves returned, with the step each holds, to ``RESULT`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adamax import distributed
from tests import checkpoint_worker as worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--saves", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=int, default=0)  # 0: keep every checkpoint
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, opt = worker.make(args.seed)
    go = Path(f"{args.ckpt}.go")
    Path(f"{args.out}.ready").touch()
    while not go.exists():
        time.sleep(0.01)
    returned = []
    for i in range(args.saves):
        worker.train_step(model, opt, i)
        step = 100 * args.seed + i  # each writer's steps its own, and some saves of one step by both (i = 0)
        path = distributed.save_checkpoint(args.ckpt, step if i else 0, model, opt, keep=args.keep or None)
        returned.append({"name": path.name, "step": step if i else 0, "seed": args.seed, "saves": i + 1})
    Path(args.out).write_text(json.dumps(returned))


if __name__ == "__main__":
    main()
