"""The save path: :func:`save_checkpoint` splits the state into tensors (DCP) and the rest (JSON), writes a
hidden directory, seals it with a manifest, renames it into place and moves ``latest``."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_state_dict,
)

from adamax.distributed._collectives import _agree, _barrier, _broadcast, _rank
from adamax.distributed._files import (
    _PARTIAL,
    _TENSOR,
    _TUPLE,
    FORMAT,
    KEEP,
    LATEST,
    LOCK_TIMEOUT,
    STATE,
    CheckpointError,
    _fsync_dir,
    _write_atomically,
)
from adamax.distributed._retention import _fresh_name, _lock, _newest_first, _pointer_digest, _prune, _read_pointer
from adamax.distributed._verify import _write_manifest


def _reached(point: str) -> None:
    """A named point of a save; fault-injection tests replace this to kill the process there."""


def _split(tree: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    """``tree`` as JSON, with tensors replaced by a marker and collected into ``tensors`` by path."""
    if isinstance(tree, torch.Tensor):
        tensors["/".join(path)] = tree
        return {_TENSOR: True}
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            if not isinstance(key, str) or "/" in key or key in (_TENSOR, _TUPLE):
                raise TypeError(f"cannot checkpoint the key {key!r} at {'/'.join(path)}")  # the root's keys are fixed
            out[key] = _split(value, (*path, key), tensors)
        return out
    if isinstance(tree, (list, tuple)):
        items = [_split(value, (*path, str(i)), tensors) for i, value in enumerate(tree)]
        return {_TUPLE: items} if isinstance(tree, tuple) else items
    if tree is None or isinstance(tree, (bool, int, str)) or type(tree) is float:
        return tree
    if isinstance(tree, float):  # float subclasses, such as numpy's float64
        return float(tree)
    raise TypeError(
        f"cannot checkpoint {type(tree).__name__} at {'/'.join(path)}: only tensors, numbers, strings, "
        "bools, None, lists, tuples and dicts are saved (nothing is pickled)"
    )


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer,
    *,
    keep: int | None = KEEP,
    lock_timeout: float = LOCK_TIMEOUT,
) -> Path:
    """Save model and optimizer state after ``step`` steps; a collective call on every rank.

    Returns the checkpoint's directory.  ``keep``: how many checkpoints to
    keep, the newest first (``None``: all); older ones are deleted after
    ``latest`` has moved to the new one.  ``lock_timeout``: how many seconds
    to wait for another save into ``root`` to end before refusing.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an integer >= 1 or None, got {keep!r}")
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0:
        raise ValueError(f"lock_timeout must be a number of seconds >= 0, got {lock_timeout!r}")
    root = Path(root)
    model_state, optim_state = get_state_dict(model, optimizer)
    tensors: dict[str, torch.Tensor] = {}
    error = None
    try:
        tree = _split({"model": model_state, "optim": optim_state}, (), tensors)
    except TypeError as err:
        error = str(err)
    _agree(error)  # refused on every rank before anything is written, the lock file included
    name, lock = None, None
    if _rank() == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock = _lock(root, lock_timeout)  # held until this save has pointed and pruned
            name = _fresh_name(root, step)
        except (OSError, CheckpointError) as err:
            error = f"saving into {root}: {err}"
    try:
        _agree(error)
        return _save_locked(root, _broadcast(name), step, tensors, tree, keep)
    finally:
        if lock is not None:
            lock.release()


def _save_locked(root: Path, name: str, step: int, tensors: dict, tree: Any, keep: int | None) -> Path:
    """The save once its name is chosen (rank 0 holding the root's lock): shards, seal, rename, pointer, prune."""
    partial = root / f"{_PARTIAL}{name}"
    if _rank() == 0 and partial.exists():
        shutil.rmtree(partial)  # left by a save killed before its rename (saves into this root are one at a time)
    _barrier()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
            dcp.save(tensors, checkpoint_id=str(partial))
    except (Exception, CheckpointException) as err:
        raise CheckpointError(f"saving {name}: {err}") from err
    _barrier()  # every rank's files are written
    _reached("saved")
    error = None
    if _rank() == 0:
        try:
            _write_atomically(partial / STATE, json.dumps({"format": FORMAT, "step": step, "tree": tree}))
            _write_manifest(partial)
            _reached("sealed")
            os.rename(partial, root / name)  # a directory that did not exist: no earlier checkpoint is touched
            _fsync_dir(root)
            _reached("renamed")
            try:
                previous = _read_pointer(root)
            except CheckpointError:  # an unreadable pointer is replaced, not a reason to fail the save
                previous = None
            recent = _newest_first(root, name, (previous or {}).get("recent", []))
            pointer = {"checkpoint": name, "step": step, "recent": recent[:keep] if keep is not None else recent}
            pointer["sha256"] = _pointer_digest(pointer)
            _write_atomically(root / LATEST, json.dumps(pointer))  # atomic: the old pointer or the new one
            _reached("pointed")
            if keep is not None:
                _prune(root, keep, recent)
        except (OSError, CheckpointError) as err:
            error = f"saving {name}: {err}"
    _agree(error)
    return root / name
