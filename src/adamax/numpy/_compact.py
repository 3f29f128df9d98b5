"""Compact state (:mod:`adamax.compact`, :mod:`adamax.compact8`) on the NumPy optimizer: which arrays a numba
kernel takes, its step over explicit lists, and the definition's step of one array, per format."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from adamax import compact, compact8
from adamax.kernels import compact8_kernels, compact_kernels
from adamax.spec import AdamaxConfig

DTYPES = (np.dtype(np.float32), np.dtype(np.float16))  # compact state computes in float32


class CompactPath:
    """One compact format's path: its definition module and its numba kernel module's getter."""

    def __init__(self, definition: ModuleType, kernels: Callable[[], ModuleType | None]) -> None:
        self.definition = definition
        self.kernels = kernels

    def kernel_paths(
        self, leaves: dict[str, np.ndarray], grads: dict[str, np.ndarray], fused: bool | None
    ) -> list[str]:
        """The arrays the kernel updates: C-contiguous ones with gradients alike, where numba is installed."""
        kernel = self.kernels() if fused is not False else None
        if kernel is None:
            return []
        chosen = []
        for path, param in leaves.items():
            grad = grads[path]
            if param.flags.c_contiguous and grad.flags.c_contiguous and grad.dtype == param.dtype:
                chosen.append(path)
            elif fused:
                raise ValueError(f"fused=True cannot update {path!r}: the kernel takes C-contiguous arrays with "
                                 f"gradients alike")  # fmt: skip
        return chosen

    def step_fused(
        self, params: list[np.ndarray], grads: list[np.ndarray], states: list[Any | None], config: AdamaxConfig
    ) -> list[Any]:
        """One kernel call per param dtype, in place on ``params`` and their state (None: a fresh one); returns
        the states after the step."""
        kernel, definition = self.kernels(), self.definition
        states = [s if s is not None else definition.init(p) for p, s in zip(params, states)]
        out: list[Any] = [None] * len(params)
        for dtype, kind in kernel.KINDS.items():
            group = [i for i, p in enumerate(params) if p.dtype == dtype]
            if not group:
                continue
            counts = np.array([int(states[i].step) + 1 for i in group], dtype=np.int64)
            columns = [[params[i] for i in group], [grads[i] for i in group]]
            columns += [[getattr(states[i], key) for i in group] for key in definition.KEYS[1:]]
            addresses = tuple(np.array([a.ctypes.data for a in column], dtype=np.int64) for column in columns)
            kernel.step(kind, addresses, tuple(params[i].size for i in group), counts, config)
            for i in group:
                out[i] = states[i]._replace(step=int(states[i].step) + 1)
        return out

    def update(self, param: np.ndarray, grad: np.ndarray, state: Any | None, config: AdamaxConfig):
        """One array's new value and state by the definition's ``update``; writes nothing."""
        definition = self.definition
        return definition.update(param, grad, state if state is not None else definition.init(param), config)


COMPACT = CompactPath(compact, compact_kernels)
COMPACT8 = CompactPath(compact8, compact8_kernels)
DEFINITIONS = {"compact": compact, "compact8": compact8}
