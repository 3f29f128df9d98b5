r"""The NumPy reference: Adamax on one array, as a pure ``init`` / ``update`` pair.

This module is the definition every backend is tested against.  The math is
the one in :mod:`adamax.spec`; this docstring states how it is *rounded*.

Each step, with ``t`` the new step count and every Python scalar cast to the
array's dtype before use (as torch casts its scalars)::

    g = -g                                        if maximize
    g = fma(p, wd, g)                             coupled weight decay
    p = p * (1 - lr * wd)                         decoupled weight decay
    m = fma(w, g - m, m)          if w < 0.5      w = 1 - b1; torch's lerp
    m = fma(-(g - m), 1 - w, g)   otherwise
    u = maximum(u * b2, |g| + eps)                "max"
    u = maximum(u * b2, |g|)                      "denominator", "none"
    s = -(lr / (1 - b1**t))                       in float64, then cast
    p = p + (s * m) / u                           "max", "none" (0 where u == 0)
    p = p + (s * m) / (u + eps)                   "denominator"

``fma`` rounds once (:mod:`adamax._exact`).  In this form, float32 and float64
results are bit-identical to ``torch.optim.Adamax(foreach=False)`` on the CPU
with ``eps_placement="max"``; ``tests/test_reference.py`` checks it.  The one
deliberate difference: where ``u == 0`` (possible only with ``eps == 0``),
torch produces 0/0 = NaN and this reference takes no step.

The update itself is :func:`adamax._algorithm.adamax_update`, the one copy of
the math that every backend runs; this module supplies NumPy operations with
the rounding above, and the state handling.

Complex arrays are updated as real pairs (``view_as_real``), and their state
keeps the complex dtype, as torch's does.  The one complex-specific rounding:
coupled weight decay is unfused there (``g + p * wd``), because torch applies
it in complex arithmetic before splitting into pairs.

Example:

>>> import numpy as np
>>> from adamax import reference
>>> from adamax.spec import AdamaxConfig
>>> p = np.array([1.0, -2.0])
>>> state = reference.init(p)
>>> p, state = reference.update(p, np.array([0.5, -0.5]), state, AdamaxConfig(lr=0.1, eps_placement="none"))
>>> p  # the first step is lr * sign(g): m / (1 - b1) = g and u = |g|
array([ 0.9, -1.9])
>>> state.step
1
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from adamax._algorithm import NumpyOps, adamax_update, step_size
from adamax.spec import MAX_STEP, AdamaxConfig

SUPPORTED_DTYPES = (np.float16, np.float32, np.float64, np.complex64, np.complex128)
_DEFAULT = AdamaxConfig()


class AdamaxState(NamedTuple):
    """Per-array state.  Field names follow torch's state keys."""

    step: int
    exp_avg: np.ndarray  # m, the first moment
    exp_inf: np.ndarray  # u, the exponentially weighted infinity norm


def check_dtype(dtype: np.dtype, what: str = "param") -> None:
    """Refuse dtypes Adamax cannot update (integers, bools, objects)."""
    if dtype.type not in SUPPORTED_DTYPES:
        names = ", ".join(np.dtype(t).name for t in SUPPORTED_DTYPES)
        raise TypeError(f"Adamax cannot update a {what} of dtype {dtype}; expected one of {names}")


def init(param: np.ndarray) -> AdamaxState:
    """The state before the first step: ``step = 0``, ``m = u = 0``."""
    param = np.asarray(param)
    check_dtype(param.dtype)
    return AdamaxState(0, np.zeros(param.shape, param.dtype), np.zeros(param.shape, param.dtype))


def check_like_param(what: str, arr: object, param: np.ndarray) -> None:
    """Raise unless ``arr`` is an array of ``param``'s shape and dtype; ``what`` names it in the message."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(arr).__name__}")
    if arr.shape != param.shape:
        raise ValueError(f"{what} has shape {arr.shape}, expected the param's shape {param.shape}")
    if arr.dtype != param.dtype:
        raise TypeError(f"{what} has dtype {arr.dtype}, expected the param's dtype {param.dtype}")


def check_update_args(param: np.ndarray, grad: np.ndarray, state: AdamaxState) -> None:
    """Raise if ``update`` would be given mismatched arrays.  Changes nothing."""
    check_dtype(param.dtype)
    for name, arr in (("grad", grad), ("exp_avg", state.exp_avg), ("exp_inf", state.exp_inf)):
        check_like_param(name, arr, param)
    step = state.step
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < MAX_STEP:
        raise ValueError(f"step must be a non-negative integer, got {step!r} (counts stop at 2**53 - 1)")


def update(
    param: np.ndarray, grad: np.ndarray, state: AdamaxState, config: AdamaxConfig = _DEFAULT
) -> tuple[np.ndarray, AdamaxState]:
    """One Adamax step.  Returns new arrays; the inputs are never modified."""
    param, grad = np.asarray(param), np.asarray(grad)
    check_update_args(param, grad, state)
    t = int(state.step) + 1
    ops = NumpyOps(param.dtype)
    size = step_size(config.lr, config.beta1, t)
    p, m, u = adamax_update(ops, param, grad, state.exp_avg, state.exp_inf, size, config)
    if ops.complex:
        p, m, u = (_from_real_pairs(x, param.dtype) for x in (p, m, u))
    else:
        p, m, u = (np.asarray(x, dtype=param.dtype) for x in (p, m, u))
    return p, AdamaxState(t, m, u)


def _from_real_pairs(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = np.empty(x.shape[:-1], dtype)
    out.real = x[..., 0]
    out.imag = x[..., 1]
    return out
