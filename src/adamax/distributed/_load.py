"""The load path: :func:`load_latest` verifies the newest checkpoint, loads it into copies, and changes the
model and optimizer only once everything has loaded."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from adamax.distributed._collectives import _agree
from adamax.distributed._files import (
    _JSON_BYTES,
    _TENSOR,
    _TUPLE,
    _UNREADABLE,
    FORMAT,
    STATE,
    CheckpointError,
    _has_format,
    _order,
    _read_regular,
)
from adamax.distributed._retention import _read_pointer
from adamax.distributed._verify import _VerifiedReader, _verify


def _join(skeleton: Any, live: Any, path: tuple[str, ...], load: dict[str, torch.Tensor], stored: Mapping) -> Any:
    """The saved structure ``skeleton`` filled in: JSON values as they are, and for every tensor a fresh copy
    of ``live``'s tensor at the same place (its dtype, device and sharding), collected into ``load`` for DCP.

    Optimizer state the live optimizer has not created yet (its params already had gradients, so DCP did not
    initialise it) gets a plain tensor of the stored size and dtype; the optimizer's loader casts it.  A dict
    holding a marker's key must be that marker: a save never writes such keys (:func:`_split` refuses them).
    """
    key = "/".join(path)
    if isinstance(skeleton, dict) and (_TENSOR in skeleton or _TUPLE in skeleton):
        if skeleton == {_TENSOR: True}:
            if isinstance(live, torch.Tensor):
                copy = live.detach().clone()
            elif path[:2] == ("optim", "state") and isinstance(stored.get(key), dcp_metadata.TensorStorageMetadata):
                copy = torch.empty(stored[key].size, dtype=stored[key].properties.dtype)
            else:
                raise CheckpointError(f"the checkpoint has a tensor at {key}, where this model and optimizer have none")
            load[key] = copy
            return copy
        if skeleton.keys() == {_TUPLE} and isinstance(skeleton[_TUPLE], list):
            return tuple(_join_items(skeleton[_TUPLE], live, path, load, stored))
        raise CheckpointError(f"the checkpoint's structure is malformed at {key}")  # _read_state checked the root
    if isinstance(skeleton, dict):
        live_map = live if isinstance(live, Mapping) else {}
        return {k: _join(value, live_map.get(k), (*path, k), load, stored) for k, value in skeleton.items()}
    if isinstance(skeleton, list):
        return _join_items(skeleton, live, path, load, stored)
    return skeleton


def _join_items(items: list, live: Any, path: tuple[str, ...], load: dict[str, torch.Tensor], stored: Mapping) -> list:
    """:func:`_join` of a list's items, each with the live list's or tuple's item at its index (None past its end)."""
    live_items = live if isinstance(live, (list, tuple)) else ()
    return [
        _join(item, live_items[i] if i < len(live_items) else None, (*path, str(i)), load, stored)
        for i, item in enumerate(items)
    ]


def _read_state(directory: Path) -> dict:
    try:
        state = json.loads(_read_regular(directory / STATE, _JSON_BYTES))
    except _UNREADABLE as err:
        raise CheckpointError(f"{directory / STATE}: {err}") from None
    if not (_has_format(state) and isinstance(state.get("tree"), dict)):
        raise CheckpointError(f"{directory / STATE}: not a format-{FORMAT} adamax checkpoint")
    tree = state["tree"]
    if set(tree) != {"model", "optim"}:
        raise CheckpointError(f"{directory / STATE}: expected the keys 'model' and 'optim'")
    if not (isinstance(tree["optim"], dict) and set(tree["optim"]) == {"state", "param_groups"}):
        raise CheckpointError(f"{directory / STATE}: expected the optimizer's keys 'state' and 'param_groups'")
    return state


def _tensors_of(model: torch.nn.Module):
    """The model's params and buffers by name (not through ``state_dict()``, whose hooks may act)."""
    yield from model.named_parameters(remove_duplicate=False)
    yield from ((f"buffer:{k}", v) for k, v in model.named_buffers(remove_duplicate=False))


class _Snapshot:
    """What a failed load must put back: the model's values, and the optimizer's state and groups as objects."""

    def __init__(self, model: torch.nn.Module, optimizer) -> None:
        self.model = model
        self.values = {k: v.detach().clone() for k, v in _tensors_of(model)}
        self.optimizer = optimizer
        self.attributes = dict(optimizer.__dict__)
        # dicts the optimizer keeps besides its state (caches, lazy tables' bookkeeping), by content
        self.contents = {k: dict(v) for k, v in self.attributes.items() if isinstance(v, dict) and k != "state"}
        lazy = getattr(optimizer, "_lazy", None)  # adamax.torch.Adamax's lazy tables: their bookkeeping, by content
        self.tables = dict(lazy.tables) if isinstance(getattr(lazy, "tables", None), dict) else None
        self.state = optimizer.state
        self.entries = {p: (entry, dict(entry)) for p, entry in optimizer.state.items()}
        self.groups = [(group, dict(group)) for group in optimizer.param_groups]
        self.grads = [(p, p.grad) for group in optimizer.param_groups for p in group["params"]]

    def restore(self) -> None:
        opt = self.optimizer
        opt.__dict__.clear()
        opt.__dict__.update(self.attributes)
        for key, items in self.contents.items():
            opt.__dict__[key].clear()
            opt.__dict__[key].update(items)
        if self.tables is not None:
            opt._lazy.tables.clear()
            opt._lazy.tables.update(self.tables)
        plans = getattr(opt, "_plans", None)
        if plans is not None:
            plans.clear()  # a cache; rebuilt at the next step
        for p in [p for p in self.state if p not in self.entries]:
            del self.state[p]
        for p, (entry, items) in self.entries.items():
            entry.clear()
            entry.update(items)
            if self.state.get(p) is not entry:
                self.state[p] = entry
        for group, items in self.groups:
            group.clear()
            group.update(items)
        for p, grad in self.grads:
            p.grad = grad
        with torch.no_grad():
            for key, value in _tensors_of(self.model):
                value.copy_(self.values[key])
        if self.tables is not None:  # lazy tables: values and bookkeeping are as they were
            for group in opt.param_groups:
                for p in group["params"]:
                    opt._lazy.accept_write(p)


def _group_params(optim_state: Any) -> list[list[str]]:
    """The params of each param group of a flattened optimizer state dict, by name, in order of groups."""
    groups = optim_state.get("param_groups", []) if isinstance(optim_state, Mapping) else []
    return [sorted(map(str, g.get("params", []))) if isinstance(g, Mapping) else [] for g in groups]


def load_latest(root: str | os.PathLike, model: torch.nn.Module, optimizer) -> int | None:
    """Load the last complete checkpoint into ``model`` and ``optimizer``; returns its step, or None if there is none.

    A collective call on every rank.  The checkpoint is verified against its
    manifest first, then loaded into copies; the model and optimizer change
    only when all of it has loaded.  Any failure raises
    :class:`CheckpointError` and leaves them as they were.
    """
    root = Path(root)
    error, pointer, state, reader = None, None, None, None
    try:
        pointer = _read_pointer(root)
        if pointer is not None:
            directory = root / pointer["checkpoint"]
            files = _verify(directory)
            state = _read_state(directory)
            reader = _VerifiedReader(directory, files)
    except CheckpointError as err:
        error = str(err)
    _agree(error)
    if pointer is None:
        return None
    directory = root / pointer["checkpoint"]
    if hasattr(optimizer, "_lazy") and callable(getattr(optimizer, "flush", None)):
        # Lazy tables: every row brought up to date before the snapshot.  The load's own state_dict() would do it
        # in place (params, state and bookkeeping), past what a snapshot taken earlier could put back.
        optimizer.flush()
    snapshot = _Snapshot(model, optimizer)
    try:
        live_model, live_optim = get_state_dict(model, optimizer)  # a fresh optimizer's state is created here
        load: dict[str, torch.Tensor] = {}
        stored = reader.stored()
        tree = _join(state["tree"], {"model": live_model, "optim": live_optim}, (), load, stored)
        if set(tree["model"]) != set(live_model):
            missing, unexpected = (
                sorted(set(live_model) - set(tree["model"])),
                sorted(set(tree["model"]) - set(live_model)),
            )
            raise CheckpointError(f"the model's keys differ (missing {missing}, unexpected {unexpected})")
        saved_groups, live_groups = _group_params(tree["optim"]), _group_params(live_optim)
        if saved_groups != live_groups:  # DCP would load them anyway, each group's values onto whichever params
            raise CheckpointError(f"the optimizer's param groups differ: the checkpoint's hold {saved_groups}, "
                                  f"this optimizer's {live_groups}")  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(load, storage_reader=reader)
        set_optimizer_state_dict(model, optimizer, tree["optim"])
        set_model_state_dict(model, tree["model"])
    except BaseException as err:
        snapshot.restore()
        if isinstance(err, CheckpointError):
            raise
        if isinstance(err, (Exception, CheckpointException)):
            raise CheckpointError(f"loading {directory}: {err}") from err
        raise
    return _order(pointer["checkpoint"])[0]
