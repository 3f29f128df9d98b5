"""The Adamax update, written once over a set of array operations.

Every backend runs :func:`adamax_update`; only the operations differ.  NumPy's
(:class:`NumpyOps`, used by :mod:`adamax.reference`) return new arrays; the
torch adapter's work in place on a tensor or on a list of tensors.  Each
operation names the rounding it must have, so that all backends agree bit for
bit (see :mod:`adamax.reference` for the rounding of each line).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from adamax._exact import fma


class Ops(Protocol):
    """What :func:`adamax_update` needs.  Arguments are arrays, tensors or lists of tensors.

    Methods ending in ``_`` may overwrite their first argument and return it;
    the others must not modify their inputs (``g`` is the caller's gradient).
    """

    decay_before_real_view: bool  # complex weight decay in complex arithmetic (True) or on real pairs

    def real_view(self, xs: list[Any]) -> list[Any]: ...  # complex -> (..., 2) real pairs; others unchanged
    def neg(self, g: Any) -> Any: ...  # -g
    def add_scaled(self, g: Any, p: Any, alpha: float) -> Any: ...  # g + alpha * p, fused on reals
    def mul_(self, x: Any, s: float) -> Any: ...  # x * s
    def moment_(self, m: Any, g: Any, beta1: float) -> Any: ...  # b1 * m + (1 - b1) * g
    def abs(self, g: Any) -> Any: ...  # |g|
    def abs_plus(self, g: Any, eps: float) -> Any: ...  # |g| + eps
    def add(self, x: Any, eps: float) -> Any: ...  # x + eps
    def maximum_(self, u: Any, v: Any) -> Any: ...  # max(u, v), NaN-propagating
    def apply_step_(self, p: Any, m: Any, d: Any, s: Any, guard_zero: bool) -> Any: ...  # p + s * m / d


class Hyperparams(Protocol):
    """The fields :func:`adamax_update` reads: an :class:`AdamaxConfig`, or traced values under jit."""

    lr: Any
    beta1: Any
    beta2: Any
    eps: Any
    weight_decay: float
    decoupled_weight_decay: bool
    maximize: bool
    eps_placement: str


def adamax_update(ops: Ops, p: Any, g: Any, m: Any, u: Any, step_size: Any, c: Hyperparams) -> tuple[Any, Any, Any]:
    """One step of :mod:`adamax.spec`'s algorithm; ``step_size`` is the backend's form of ``-lr / (1 - b1**t)``."""
    if not ops.decay_before_real_view:
        p, g, m, u = ops.real_view([p, g, m, u])
    if c.maximize:
        g = ops.neg(g)
    if c.weight_decay != 0 and not c.decoupled_weight_decay:
        g = ops.add_scaled(g, p, c.weight_decay)
    if ops.decay_before_real_view:
        p, g, m, u = ops.real_view([p, g, m, u])
    if c.weight_decay != 0 and c.decoupled_weight_decay:
        p = ops.mul_(p, 1 - c.lr * c.weight_decay)
    m = ops.moment_(m, g, c.beta1)
    u = ops.mul_(u, c.beta2)
    if c.eps_placement == "max":
        u = ops.maximum_(u, ops.abs_plus(g, c.eps))
        denom = u
    else:
        u = ops.maximum_(u, ops.abs(g))
        denom = ops.add(u, c.eps) if c.eps_placement == "denominator" else u
    # u == 0 only where every gradient so far was 0 (so m == 0): no step there, not 0/0.
    eps_is_positive = isinstance(c.eps, (int, float)) and c.eps > 0  # a traced eps might be 0
    p = ops.apply_step_(p, m, denom, step_size, guard_zero=c.eps_placement == "none" or not eps_is_positive)
    return p, m, u


def step_size(lr: float, beta1: float, step: Any) -> Any:
    """``-lr / (1 - beta1**step)``, in float64 as torch computes it for a CPU step count."""
    return -(lr / (1 - beta1**step))


class NumpyOps:
    """Out-of-place NumPy operations with torch's CPU rounding (see :mod:`adamax._exact`)."""

    decay_before_real_view = True  # as torch's single-tensor path

    def __init__(self, dtype: np.dtype) -> None:
        self.complex = np.issubdtype(dtype, np.complexfloating)
        self.cast = np.zeros((), dtype).real.dtype.type  # Python scalars become this, as torch casts them

    def real_view(self, xs):
        if not self.complex:
            return xs
        return [np.stack([x.real, x.imag], axis=-1) for x in xs]

    def neg(self, g):
        return -g

    def add_scaled(self, g, p, alpha):
        if self.complex:  # torch's complex add(alpha=) multiplies, rounds, then adds
            return g + p * self.cast(alpha)
        return fma(p, self.cast(alpha), g)

    def mul_(self, x, s):
        return x * self.cast(s)

    def moment_(self, m, g, beta1):  # torch's lerp(m, g, 1 - b1), with its two FMA forms
        w = self.cast(1 - beta1)
        if w < 0.5:
            return fma(w, g - m, m)
        return fma(-(g - m), self.cast(1) - w, g)

    def abs(self, g):
        return np.abs(g)

    def abs_plus(self, g, eps):
        return np.abs(g) + self.cast(eps)

    def add(self, x, eps):
        return x + self.cast(eps)

    def maximum_(self, u, v):
        return np.maximum(u, v)

    def apply_step_(self, p, m, d, s, guard_zero):  # torch's addcdiv: p + (s * m) / d
        numer = self.cast(s) * m
        if guard_zero:
            return p + np.divide(numer, d, out=np.zeros_like(numer), where=d != 0)
        return p + numer / d
