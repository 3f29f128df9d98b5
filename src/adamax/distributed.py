"""Checkpoints for distributed training with ``torch.distributed.checkpoint`` (DCP), safe against crashes.

:func:`save_checkpoint` writes a whole DCP checkpoint into its own directory
(``step-00000008``), waits for every rank, and only then has rank 0 point
``latest`` at it, by an atomic rename.  A save interrupted part-way (a killed
rank, a full disk) leaves an orphan directory that ``latest`` never names, so
:func:`load_latest` always finds the previous good checkpoint.

Works with any model wrapper DCP understands (plain, DDP, FSDP2) and any
optimizer, ``adamax.torch.Adamax`` included; also in a single process.

>>> # inside a training loop, on every rank:
>>> # step = load_latest("ckpt", model, opt) or 0
>>> # ...
>>> # save_checkpoint("ckpt", step, model, opt)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

LATEST = "latest"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(root: str | os.PathLike, step: int, model: torch.nn.Module, optimizer) -> Path:
    """Save model and optimizer state after ``step`` steps; a collective call on every rank."""
    root = Path(root)
    path = root / f"step-{step:08d}"
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))
    _barrier()  # every rank's shard is on disk
    if _rank() == 0:
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(path.name)
        os.replace(pointer, root / LATEST)  # atomic: the old pointer or the new one, never half
    _barrier()
    return path


def latest_step(root: str | os.PathLike) -> int | None:
    """The step of the last complete checkpoint under ``root``, or None."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    return int(pointer.read_text().strip().removeprefix("step-"))


def load_latest(root: str | os.PathLike, model: torch.nn.Module, optimizer) -> int | None:
    """Load the last complete checkpoint into ``model`` and ``optimizer``; returns its step, or None."""
    step = latest_step(root)
    if step is None:
        return None
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(Path(root) / f"step-{step:08d}"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return step
