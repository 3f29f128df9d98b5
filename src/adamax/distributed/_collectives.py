"""What ranks agree on: one rank's error refuses the save or load on every rank, and rank 0's choices reach
the others.  No-ops in a single process."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from adamax.distributed._files import CheckpointError


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _agree(error: str | None) -> None:
    """Raise :class:`CheckpointError` on every rank if any rank reports an error (a collective call)."""
    errors = [error]
    if _distributed():
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if failed:
        rank, message = failed[0]
        raise CheckpointError(message if len(errors) == 1 else f"rank {rank}: {message}")


def _broadcast(value: Any) -> Any:
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
