"""Compact state (:mod:`adamax.compact`) on the NumPy optimizer: which arrays its numba kernel takes, its step over
explicit lists, and the definition's step of one array."""

from __future__ import annotations

import numpy as np

from adamax import compact
from adamax.kernels import compact_kernels
from adamax.spec import AdamaxConfig

DTYPES = (np.dtype(np.float32), np.dtype(np.float16))  # compact state computes in float32


def kernel_paths(leaves: dict[str, np.ndarray], grads: dict[str, np.ndarray], fused: bool | None) -> list[str]:
    """The arrays the compact kernel updates: C-contiguous ones with gradients alike, where numba is installed."""
    kernel = compact_kernels() if fused is not False else None
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
    params: list[np.ndarray],
    grads: list[np.ndarray],
    states: list[compact.CompactState | None],
    config: AdamaxConfig,
) -> list[compact.CompactState]:
    """One kernel call per param dtype, in place on ``params`` and their state (None: a fresh one); returns the
    states after the step."""
    kernel = compact_kernels()
    states = [s if s is not None else compact.init(p) for p, s in zip(params, states)]
    out: list[compact.CompactState | None] = [None] * len(params)
    for dtype, kind in kernel.KINDS.items():
        group = [i for i, p in enumerate(params) if p.dtype == dtype]
        if not group:
            continue
        counts = np.array([int(states[i].step) + 1 for i in group], dtype=np.int64)
        columns = (
            [params[i] for i in group], [grads[i] for i in group], [states[i].exp_avg for i in group],
            [states[i].exp_inf_code for i in group], [states[i].exp_inf_scale for i in group],
        )  # fmt: skip
        addresses = tuple(np.array([a.ctypes.data for a in column], dtype=np.int64) for column in columns)
        kernel.step(kind, addresses, tuple(params[i].size for i in group), counts, config)
        for i in group:
            out[i] = states[i]._replace(step=int(states[i].step) + 1)
    return out


def update(param: np.ndarray, grad: np.ndarray, state: compact.CompactState | None, config: AdamaxConfig):
    """One array's new value and compact state by :func:`adamax.compact.update`; writes nothing."""
    return compact.update(param, grad, state if state is not None else compact.init(param), config)
