"""Full state (m and u in the param's dtype) on the NumPy optimizer: which arrays the numba kernel takes, its
step over explicit lists, and the reference's step of one array."""

from __future__ import annotations

import numpy as np

from adamax import reference
from adamax._algorithm import step_size
from adamax.kernels import cpu_kernels
from adamax.reference import AdamaxState
from adamax.spec import AdamaxConfig


def kernel_paths(leaves: dict[str, np.ndarray], grads: dict[str, np.ndarray], skip, fused: bool | None) -> list[str]:
    """The arrays the fused kernel updates (see ``fused``), other than those in ``skip`` (lazy tables)."""
    kernels = cpu_kernels() if fused is not False else None
    if kernels is None:
        return []
    chosen = []
    for path, param in leaves.items():
        if path in skip:
            continue
        if kernels.qualifies(param, grads[path]):
            chosen.append(path)
        elif fused:
            raise ValueError(
                f"fused=True cannot update {path!r}: the kernel takes C-contiguous float32 or float64 "
                f"arrays with gradients alike, got a {param.dtype} param"
            )
    return chosen


def step_fused(
    params: list[np.ndarray], grads: list[np.ndarray], states: list[AdamaxState | None], config: AdamaxConfig
) -> list[AdamaxState]:
    """One kernel call per dtype, in place on ``params`` and their state (None: a fresh one); returns the states
    after the step."""
    kernels = cpu_kernels()
    states = [s if s is not None else reference.init(p) for p, s in zip(params, states)]
    out: list[AdamaxState | None] = [None] * len(params)
    for dtype in kernels.DTYPES:
        group = [i for i, p in enumerate(params) if p.dtype == dtype]
        if not group:
            continue
        steps = [int(states[i].step) + 1 for i in group]
        step_sizes = np.array([step_size(config.lr, config.beta1, t) for t in steps])
        arrays = (
            [params[i] for i in group],
            [grads[i] for i in group],
            [states[i].exp_avg for i in group],
            [states[i].exp_inf for i in group],
        )
        addresses = tuple(np.array([a.ctypes.data for a in column], dtype=np.int64) for column in arrays)
        kernels.step(dtype, addresses, tuple(params[i].size for i in group), step_sizes, config)
        for i, t in zip(group, steps):
            out[i] = AdamaxState(t, states[i].exp_avg, states[i].exp_inf)
    return out


def update(param: np.ndarray, grad: np.ndarray, state: AdamaxState | None, config: AdamaxConfig):
    """One array's new value and state by :func:`adamax.reference.update`; writes nothing."""
    return reference.update(param, grad, state if state is not None else reference.init(param), config)
