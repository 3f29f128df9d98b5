"""Lazy tables on the NumPy optimizer (:mod:`adamax._lazy`): a table's gradient checked and its repeated rows
summed, its bookkeeping made anew, and its step, computed before it is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from adamax import _lazy, reference
from adamax.numpy._trees import RowGradient
from adamax.reference import AdamaxState
from adamax.spec import AdamaxConfig


def coalesced(path: str, grad: Any, param: np.ndarray) -> RowGradient:
    """Check a lazy table's gradient and sum the values of repeated rows."""
    if not isinstance(grad, RowGradient):
        raise TypeError(f"gradient for lazy {path!r} must be a RowGradient(indices, values), got {type(grad).__name__}")
    indices, values = grad
    if not (isinstance(indices, np.ndarray) and indices.ndim == 1 and np.issubdtype(indices.dtype, np.integer)):
        raise TypeError(f"RowGradient for {path!r}: indices must be a 1-d integer array")
    if indices.size and (indices.min() < 0 or indices.max() >= len(param)):
        bad = int(indices[(indices < 0) | (indices >= len(param))][0])
        raise IndexError(f"RowGradient for {path!r}: indices must lie in [0, {len(param)}), got row {bad}")
    reference.check_like_param(
        f"RowGradient values for {path!r}", values, np.empty((len(indices), *param.shape[1:]), param.dtype)
    )
    unique, where = np.unique(indices, return_inverse=True)
    if len(unique) == len(indices):
        order = np.argsort(indices)
        return RowGradient(indices[order], values[order])
    summed = np.zeros((len(unique), *param.shape[1:]), param.dtype)
    np.add.at(summed, where, values)
    return RowGradient(unique, summed)


def fresh_table(param: np.ndarray, config: AdamaxConfig, step: int = 0) -> _lazy.Table:
    """A lazy table's bookkeeping, starting at ``step`` with every row up to date."""
    return _lazy.Table(len(param), config, param.dtype if param.dtype in (np.float32, np.float64) else np.float64, step)


def step(
    table: _lazy.Table, param: np.ndarray, state: AdamaxState, grad: RowGradient, config: AdamaxConfig
) -> Callable[[], AdamaxState]:
    """Compute one lazy table's step (rows the gradient touches, and rows about to fall out of the window);
    returns the function that writes it and returns the table's state after it."""
    t = int(state.step)
    stale = np.setdiff1d(table.clock.stale(table.last), grad.indices, assume_unique=True)
    write = table.step(param, state.exp_avg, state.exp_inf, grad.indices, grad.values, config, t, stale)

    def commit() -> AdamaxState:
        write()
        return AdamaxState(t + 1, state.exp_avg, state.exp_inf)

    return commit


def bring_up_to_date(table: _lazy.Table, param: np.ndarray, state: AdamaxState | None, indices: np.ndarray) -> None:
    """Rows ``indices`` of a table brought up to date, in place (a table never stepped has none behind)."""
    if state is None:
        return
    table.bring_up_to_date(param, state.exp_avg, state.exp_inf, indices)
