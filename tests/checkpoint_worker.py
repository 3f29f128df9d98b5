"""A single-process training run for tests/test_checkpoints.py, checkpointing at steps 4 and 8, killable on cue.

    python -m tests.checkpoint_worker --ckpt DIR --out RESULT --steps 10 [--resume] [--kill-at POINT@WHEN]

``--kill-at saved@8`` sends SIGKILL to the process when the save of step 8 reaches the point ``saved`` (see
``adamax.distributed._save._reached``); ``@8r`` does so in a second save of step 8, after the first has completed:
the re-save of the step that ``latest`` names.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch

from adamax import distributed
from adamax.distributed import _save  # noqa: F401  (distributed._save, its hook)
from adamax.torch import Adamax

SAVE_EVERY = 4


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    return model, Adamax(model.parameters(), lr=0.01)


def train_step(model, opt, step: int) -> None:
    gen = torch.Generator().manual_seed(500 + step)
    x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    point, _, when = args.kill_at.partition("@")
    armed = {"now": False}

    def reached(name: str) -> None:
        if armed["now"] and name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    distributed._save._reached = reached
    model, opt = make()
    start = (distributed.load_latest(args.ckpt, model, opt) or 0) if args.resume else 0
    for step in range(start, args.steps):
        train_step(model, opt, step)
        done = step + 1
        if done % SAVE_EVERY == 0:
            armed["now"] = when == str(done)
            distributed.save_checkpoint(args.ckpt, done, model, opt)
            if when == f"{done}r":
                armed["now"] = True
                distributed.save_checkpoint(args.ckpt, done, model, opt)
            armed["now"] = False
    params = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()]
    torch.save({"params": params, "state": state, "start": start}, args.out)


if __name__ == "__main__":
    main()
