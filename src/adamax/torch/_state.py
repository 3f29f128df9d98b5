"""The optimizer's state mapping, which counts replacements of its entries (so a cached plan knows when it is
stale), and the making of a param's full-format entry."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor


class TrackedState(defaultdict):
    """``Optimizer.state`` that counts replacements of its entries, so a cached plan knows when it is stale."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.version = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.version += 1
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:
        self.version += 1
        return super().pop(*args)

    def popitem(self) -> Any:
        self.version += 1
        return super().popitem()

    def clear(self) -> None:
        self.version += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.version += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.version += 1  # (an insertion only where the key is missing)
        return super().setdefault(key, default)


def init_state(state: Any, p: Tensor, capturable: bool, state_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """``p``'s full-format entry in ``state``: the one there, or a new one (step 0, m = u = 0, in ``state_dtype``
    or the param's dtype; the step count on the param's device when ``capturable``, as torch keeps it)."""
    entry = state.get(p)
    if entry:
        return entry
    entry = state[p]
    if not entry:
        dtype = _torch_optimizer._get_scalar_dtype()
        entry["step"] = torch.zeros((), dtype=dtype, device=p.device if capturable else None)
        entry["exp_avg"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
        entry["exp_inf"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
    return entry
