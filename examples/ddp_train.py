"""Train a small model with DistributedDataParallel and adamax.torch.Adamax, checkpointing with DCP.

    .venv/bin/torchrun --standalone --nproc-per-node 2 examples/ddp_train.py --steps 200 --ckpt-dir ckpt
    .venv/bin/torchrun --standalone --nproc-per-node 2 examples/ddp_train.py --steps 400 --ckpt-dir ckpt --resume

The held-out loss (on 1,024 fixed points no step trains on) falls as the model learns.  ``--resume`` with no
checkpoint in the directory says so and starts at step 0.

Each rank takes its half of every global batch; DDP averages the gradients; every rank steps the same
Adamax (the fused CPU kernel where numba is installed).  Checkpoints go through
torch.distributed.checkpoint, and `adamax.distributed` only moves 'latest' once a save is complete,
so a run killed at any point resumes from the last good one.
"""

from __future__ import annotations

import argparse
import datetime
import gc

import torch
import torch.distributed as dist

from adamax import distributed
from adamax.torch import Adamax

TEACHER = torch.linspace(-1, 1, 16).unsqueeze(1) / 2.4  # the target is a smooth function of one direction of x


def batch(seed: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16, generator=gen)
    return x, torch.sin(2 * x @ TEACHER)


def rank_batch(step: int, rank: int, world: int, per_rank: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch(step, per_rank * world)  # the same global batch on every rank, then its own slice
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    return x[rows], y[rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--ckpt-dir", default="ckpt")
    parser.add_argument("--ckpt-every", type=int, default=50)
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    args = parser.parse_args()

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    )
    opt = Adamax(model.parameters(), lr=args.lr)
    held_out = batch(-1, 1024)  # the same points throughout, never trained on
    start = 0
    if args.resume:
        loaded = distributed.load_latest(args.ckpt_dir, model, opt)
        start = loaded or 0
        if rank == 0:
            found = f"resumed from step {start}" if loaded is not None else f"no checkpoint in {args.ckpt_dir}/"
            print(found if loaded is not None else f"{found}: starting at step 0", flush=True)
    for step in range(start, args.steps):
        x, y = rank_batch(step, rank, world)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        done = step + 1
        if rank == 0 and (done % max(1, args.steps // 10) == 0 or done == args.steps):
            with torch.no_grad():
                held_out_loss = torch.nn.functional.mse_loss(model(held_out[0]), held_out[1]).item()
            print(
                f"step {done}/{args.steps}  batch loss {loss.item():.4f}  held-out loss {held_out_loss:.4f}  "
                f"paths {opt.last_step_paths}",
                flush=True,
            )
        if done % args.ckpt_every == 0 or done == args.steps:
            path = distributed.save_checkpoint(args.ckpt_dir, done, model, opt)
            if rank == 0:
                print(f"checkpoint {path.name}", flush=True)
    dist.barrier()  # every rank done before the group is torn down
    # DDP's reducer holds the process group. Freed after destroy_process_group, it would tear the group down
    # itself, holding the GIL, while gloo's threads may wait for it (a hang at exit, seen on a loaded machine):
    # free it first, so that destroy_process_group tears the group down.
    del model
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
