"""Worker processes for tests/test_distributed.py: one per rank, launched with RANK, WORLD_SIZE, MASTER_ADDR/PORT.

    python -m tests.distributed_workers SCENARIO --out RESULT [options]

Each writes its results with torch.save (rank 0, unless the scenario says otherwise).  The single-process
references live here too, so both sides build the same model and data.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from adamax.torch import Adamax

WORLD = 2
GLOBAL_BATCH = 16
LR = 0.01


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 8, generator=gen), torch.randn(GLOBAL_BATCH, 4, generator=gen)


def shard(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    per_rank = GLOBAL_BATCH // WORLD
    return tensor[rank * per_rank : (rank + 1) * per_rank]


def loss_fn(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def reference_run(steps: int, **optimizer_options) -> list[torch.Tensor]:
    """One process, the same global batches, gradients averaged over the two halves as DDP averages them.

    Runs on one thread, as the workers do, so that matrix products round alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference_run(steps, **optimizer_options)
    finally:
        torch.set_num_threads(threads)


def _reference_run(steps: int, model=None, batch_of=batch, **optimizer_options) -> list[torch.Tensor]:
    model = make_model() if model is None else model
    opt = Adamax(model.parameters(), lr=LR, **optimizer_options)
    for step in range(steps):
        x, y = batch_of(step)
        halves = []
        for rank in range(WORLD):
            model.zero_grad()
            loss_fn(model, shard(x, rank), shard(y, rank)).backward()
            halves.append([p.grad.clone() for p in model.parameters()])
        for p, *grads in zip(model.parameters(), *halves):
            p.grad = grads[0] / WORLD + grads[1] / WORLD  # DDP divides each rank's gradient, then sums
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def init() -> int:
    """Join the group through a file store (no port to race for), with a timeout shorter than gloo's 30 min."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{os.environ['ADAMAX_TEST_STORE']}",
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=datetime.timedelta(seconds=600),  # a rank slow to start on a loaded machine is not a hang
    )
    return dist.get_rank()


def ddp(args) -> None:
    rank = init()
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    options = {"fused": True} if args.backend == "fused" else {"foreach": True}
    opt = Adamax(model.parameters(), lr=LR, **options)
    for step in range(args.steps):
        x, y = batch(step)
        opt.zero_grad()
        loss_fn(model, shard(x, rank), shard(y, rank)).backward()
        opt.step()
    if rank == 0:
        torch.save({"params": [p.detach() for p in model.parameters()], "paths": opt.last_step_paths}, args.out)


class TokenModel(torch.nn.Module):
    """A sparse (or dense) embedding of 2 tokens per sample and a linear head, in float64."""

    def __init__(self, sparse: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(64, 8, sparse=sparse)
        self.head = torch.nn.Linear(16, 4)
        self.double()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).flatten(1))


def token_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + step)
    tokens = torch.randint(0, 24 if step % 5 else 64, (GLOBAL_BATCH, 2), generator=gen)  # some rows rarely
    return tokens, torch.randn(GLOBAL_BATCH, 4, generator=gen, dtype=torch.float64)


def lazy_reference_run(steps: int) -> list[torch.Tensor]:
    """One process, dense embedding, each half's gradient divided by 2 and summed, as DDP does."""
    return _reference_run(steps, TokenModel(sparse=False), token_batch)


def lazy_ddp(args) -> None:
    """DDP with a sparse embedding (gloo all-reduces its sparse gradients), stepped lazily."""
    from adamax.torch import lazy_embeddings

    rank = init()
    model = torch.nn.parallel.DistributedDataParallel(TokenModel(sparse=True))
    opt = Adamax(model.parameters(), lr=LR)
    lazy_embeddings(model, opt)
    for step in range(args.steps):
        tokens, y = token_batch(step)
        opt.zero_grad()
        loss_fn(model, shard(tokens, rank), shard(y, rank)).backward()
        opt.step()
    opt.flush()
    if rank == 0:
        torch.save({"params": [p.detach() for p in model.parameters()], "paths": opt.last_step_paths}, args.out)


def zero(args) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    rank = init()
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=Adamax, lr=LR)
    for step in range(args.steps):
        x, y = batch(step)
        opt.zero_grad()
        loss_fn(model, shard(x, rank), shard(y, rank)).backward()
        opt.step()
    state_elements = sum(s[k].numel() for s in opt.optim.state.values() for k in ("exp_avg", "exp_inf"))
    result = {
        "rank": rank,
        "state_elements": state_elements,
        "param_elements": sum(p.numel() for p in model.parameters()),
        "params": [p.detach() for p in model.parameters()],
    }
    torch.save(result, f"{args.out}.{rank}")


def fsdp(args) -> None:
    from torch.distributed.fsdp import fully_shard

    rank = init()
    model = make_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = Adamax(model.parameters(), lr=LR)
    for step in range(args.steps):
        x, y = batch(step)
        opt.zero_grad()
        loss_fn(model, shard(x, rank), shard(y, rank)).backward()
        opt.step()
    params = [p.full_tensor().detach() for p in model.parameters()]
    kinds = sorted({type(p).__name__ for p in model.parameters()})
    if rank == 0:
        torch.save({"params": params, "paths": opt.last_step_paths, "param_types": kinds}, args.out)


def fsdp_checkpoint(args) -> None:
    """FSDP2: 4 steps, save, 4 more; then a fresh sharded model loads the checkpoint and takes the same 4."""
    from torch.distributed.fsdp import fully_shard

    from adamax import distributed

    rank = init()

    def sharded():
        model = make_model()
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        return model, Adamax(model.parameters(), lr=LR)

    def steps(model, opt, start):
        for step in range(start, start + 4):
            x, y = batch(step)
            opt.zero_grad()
            loss_fn(model, shard(x, rank), shard(y, rank)).backward()
            opt.step()
        return [p.full_tensor().detach() for p in model.parameters()]

    model, opt = sharded()
    steps(model, opt, 0)
    distributed.save_checkpoint(args.ckpt_dir, 4, model, opt)
    straight = steps(model, opt, 4)
    model, opt = sharded()
    start = distributed.load_latest(args.ckpt_dir, model, opt)
    resumed = steps(model, opt, start)
    if rank == 0:
        torch.save({"straight": straight, "resumed": resumed, "start": start}, args.out)


def train(args) -> None:
    """DDP training with DCP checkpoints every ``--ckpt-every`` steps; resumable, and killable on cue."""
    from adamax import distributed

    rank = init()
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = Adamax(model.parameters(), lr=LR)
    start = distributed.load_latest(args.ckpt_dir, model, opt) or 0 if args.resume else 0
    for step in range(start, args.steps):
        if rank == 1 and step == args.stall_at:
            Path(args.ckpt_dir, "stalled").touch()
            time.sleep(3600)  # the test kills us here, mid-training
        x, y = batch(step)
        opt.zero_grad()
        loss_fn(model, shard(x, rank), shard(y, rank)).backward()
        opt.step()
        if (step + 1) % args.ckpt_every == 0:
            if step + 1 == args.die_in_save_at:
                distributed._save._reached = _die_at("saved", rank, args.ckpt_dir)
            distributed.save_checkpoint(args.ckpt_dir, step + 1, model, opt)
    if rank == 0:
        torch.save({"params": [p.detach() for p in model.parameters()], "start": start}, args.out)


def refused(args) -> None:
    """A save that rank 1 cannot make (an unsaveable value in its param group): every rank must refuse it, and
    then save once rank 1's value is gone.  Each rank writes what it saw to ``--out`` + its rank."""
    from adamax import distributed

    rank = init()
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = Adamax(model.parameters(), lr=LR)
    if rank == 1:
        opt.param_groups[0]["note"] = object()
    try:
        distributed.save_checkpoint(args.ckpt_dir, 1, model, opt)
        seen = "saved"
    except distributed.CheckpointError as err:
        seen = f"refused: {err}"
    written = sorted(p.name for p in Path(args.ckpt_dir).iterdir()) if Path(args.ckpt_dir).exists() else []
    opt.param_groups[0]["note"] = object()  # now on every rank: the first rank that failed is named
    try:
        distributed.save_checkpoint(args.ckpt_dir, 1, model, opt)
        seen_by_all = "saved"
    except distributed.CheckpointError as err:
        seen_by_all = f"refused: {err}"
    opt.param_groups[0].pop("note", None)
    leftover = Path(args.ckpt_dir, f"{distributed._files._PARTIAL}step-00000001")  # as a save killed mid-way leaves it
    if rank == 0:
        leftover.mkdir(parents=True)
        (leftover / "__7_0.distcp").write_bytes(b"stale")  # a shard of a bigger world
    rmtree = shutil.rmtree

    def refuse(path, *args, **kwargs):
        raise RuntimeError(f"rank {rank} deleted {path}")

    def slowly(path, *args, **kwargs):  # the other rank looks while the directory is still there
        time.sleep(2.0)
        rmtree(path, *args, **kwargs)

    # rank 0 alone deletes it, before any rank writes there: were another rank to look and try, it would raise
    shutil.rmtree = slowly if rank == 0 else refuse
    dist.barrier()
    try:
        distributed.save_checkpoint(args.ckpt_dir, 1, model, opt)
    finally:
        shutil.rmtree = rmtree
    latest = distributed.latest_step(args.ckpt_dir)
    files = sorted(p.name for p in distributed.latest_checkpoint(args.ckpt_dir).iterdir())
    torch.save({"seen": seen, "seen_by_all": seen_by_all, "written": written, "latest": latest, "files": files,
                "leftover": leftover.exists()}, f"{args.out}{rank}")  # fmt: skip


def _die_at(point: str, rank: int, ckpt_dir: str):
    """A hook for ``adamax.distributed._save._reached``: SIGKILL this rank when a save reaches ``point``."""

    def reached(name: str) -> None:
        if name == point:
            Path(ckpt_dir, f"died-{rank}").touch()
            os.kill(os.getpid(), signal.SIGKILL)

    return reached


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["ddp", "lazy-ddp", "zero", "fsdp", "fsdp-checkpoint", "train", "refused"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--backend", default="fused")
    parser.add_argument("--ckpt-dir")
    parser.add_argument("--ckpt-every", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stall-at", type=int, default=-1)
    parser.add_argument("--die-in-save-at", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # a hang shows where it hung, in the test's output; long enough that a loaded machine is not taken for one
    faulthandler.dump_traceback_later(600, exit=True)
    faulthandler.enable()  # and a crash (a segfault, an abort) where it crashed, rather than no output at all
    try:
        scenarios = {
            "ddp": ddp,
            "lazy-ddp": lazy_ddp,
            "zero": zero,
            "fsdp": fsdp,
            "fsdp-checkpoint": fsdp_checkpoint,
            "train": train,
            "refused": refused,
        }
        scenarios[args.scenario](args)
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    # Leave without running C++ static destructors: gloo's background threads occasionally abort
    # ("terminate called without an active exception") when torn down at interpreter exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
