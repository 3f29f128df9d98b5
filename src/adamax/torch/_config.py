"""A param group's hyperparameters and flags, validated (torch's messages) and bundled as an
:class:`adamax.spec.AdamaxConfig`; the learning rates a scheduler keeps beside them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from adamax.spec import AdamaxConfig

FLAG_DEFAULTS = {
    "foreach": None,
    "maximize": False,
    "differentiable": False,
    "capturable": False,
    "fused": None,
    "decoupled_weight_decay": False,
    "eps_placement": "max",
}


def check_flags(group: Mapping[str, Any]) -> None:
    """torch's own flags must be what they say: ``fused="no"`` is not ``fused=True``."""
    for key in ("foreach", "fused"):
        value = group.get(key)
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"Invalid {key}: {value!r} (expected True, False or None)")
    for key in ("differentiable", "capturable"):
        value = group.get(key, False)
        if not isinstance(value, bool):
            raise TypeError(f"Invalid {key}: {value!r} (expected True or False)")


def config_of(group: Mapping[str, Any]) -> AdamaxConfig:
    """Validate a param group's hyperparameters (torch's messages) and flags, and bundle them."""
    check_flags(group)
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr = lr.item()
    return AdamaxConfig(
        lr=lr,
        betas=group["betas"],
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        decoupled_weight_decay=group.get("decoupled_weight_decay", False),
        maximize=group.get("maximize", False),
        eps_placement=group.get("eps_placement", "max"),
    )


def group_of(param_groups: list[dict], p: Tensor) -> dict:
    """The group that lists ``p``."""
    for group in param_groups:
        if any(q is p for q in group["params"]):
            return group
    raise ValueError("lazy_embeddings: a sparse embedding's weight is not a param of this optimizer")


SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr", "base_lr")  # what torch's and others' schedulers keep in a group


def check_schedule_keys(group: Mapping[str, Any]) -> None:
    """A loaded group's learning rates that a scheduler reads later: finite numbers >= 0, as ``lr`` must be."""
    for key in SCHEDULE_KEYS:
        if key not in group:
            continue
        value = group[key]
        if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{key!r} must be a finite number >= 0, got {group[key]!r}")
