r"""JAX: optax transforms interchangeable with ``optax.adamax`` and ``optax.adamaxw``.

``scale_by_adamax`` computes the direction ``m_hat / u`` and keeps its state
in a :class:`ScaleByAdamaxState` (``count``, ``m``, ``u``); :func:`adamax` and
:func:`adamaxw` chain it with ``optax.scale_by_learning_rate`` (and
``optax.add_decayed_weights``), as optax builds its own.  With the default
``eps_placement="max"`` the updates are those of ``optax.adamax``, bit for bit
in float32 and float64 on real parameters.

Differences from optax, each deliberate:

* ``eps_placement`` (:mod:`adamax.spec`) reproduces Keras/TF (``"denominator"``)
  or the paper (``"none"``).
* Invalid hyperparameters raise at construction, in :mod:`adamax.spec`'s
  words; optax accepts ``learning_rate=-1`` or ``b1=1.5`` silently.  Values
  that are traced (``optax.inject_hyperparams`` under ``jit``) cannot be
  checked and are not.
* Complex parameters are updated as pairs of real numbers, as in every other
  backend here; optax takes ``|g|`` as the complex modulus instead.

Step counting: one global ``count`` for the whole tree, as optax does.  The
PyTorch adapter counts per parameter, so a parameter that skipped steps
there gets a different bias correction than here.

>>> import jax.numpy as jnp
>>> import optax
>>> from adamax.optax import adamax
>>> opt = adamax(learning_rate=0.1)
>>> params = {"w": jnp.array([1.0, -2.0])}
>>> state = opt.init(params)
>>> updates, state = opt.update({"w": jnp.array([0.5, -0.5])}, state)
>>> optax.apply_updates(params, updates)["w"].round(4)  # the first step is lr * sign(g)
Array([ 0.9, -1.9], dtype=float32)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from adamax._extras import require

require("jax", "optax", extra="jax", what="adamax.optax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from adamax._algorithm import adamax_update  # noqa: E402
from adamax.spec import AdamaxConfig, EpsPlacement  # noqa: E402

__all__ = ["ScaleByAdamaxState", "adamax", "adamaxw", "scale_by_adamax"]


class ScaleByAdamaxState(NamedTuple):
    """State of :func:`scale_by_adamax`."""

    count: jax.Array  # int32 scalar: steps taken, one count for the whole tree
    m: optax.Updates  # first moment, shaped and typed like the params
    u: optax.Updates  # exponentially weighted infinity norm


class _Hyperparams(NamedTuple):
    """What the shared update reads; values may be traced under jit."""

    beta1: Any
    beta2: Any
    eps: Any
    eps_placement: str
    lr: Any = 0.0
    weight_decay: float = 0.0  # decay is a separate transform (adamaxw), as in optax
    decoupled_weight_decay: bool = False
    maximize: bool = False


def _concrete(value: Any, fallback: float) -> Any:
    """A value :class:`AdamaxConfig` can check: arrays become floats; traced values, ``fallback``."""
    if isinstance(value, jax.core.Tracer):
        return fallback
    if isinstance(value, (jax.Array, np.ndarray, np.generic)) and np.size(value) == 1:
        return float(np.asarray(value).reshape(()))
    return value


def _validate(*, learning_rate: Any = 2e-3, b1: Any, b2: Any, eps: Any, eps_placement: str, weight_decay: Any = 0.0):
    AdamaxConfig(
        lr=2e-3 if callable(learning_rate) else _concrete(learning_rate, 2e-3),
        betas=(_concrete(b1, 0.9), _concrete(b2, 0.999)),
        eps=_concrete(eps, 1e-8),
        weight_decay=0.0 if callable(weight_decay) else _concrete(weight_decay, 0.0),
        eps_placement=eps_placement,
    )


class _JaxOps:
    """jax.numpy operations over lists of leaves, stage by stage in optax's order.

    Emitting each stage for every leaf before the next (as optax's ``tree.map``
    calls do) gives XLA the same graph to fuse, hence optax's exact rounding.
    The transform computes a direction, not new params: ``p`` is ``None`` and
    :meth:`apply_step_` returns ``m_hat / d``; the learning rate is applied by
    a chained ``optax.scale_by_learning_rate``.
    """

    decay_before_real_view = True

    def __init__(self, beta1: Any) -> None:
        self.beta1 = beta1

    def real_view(self, lists):
        return [xs if xs is None else [_as_real_pairs(x) for x in xs] for xs in lists]

    def neg(self, gs):
        return [-g for g in gs]

    def add_scaled(self, gs, ps, alpha):
        return [g + alpha * p for g, p in zip(gs, ps)]

    def mul_(self, xs, s):
        return [s * x for x in xs]

    def moment_(self, ms, gs, beta1):  # optax.tree.update_moment, order 1
        return [(1 - beta1) * g + beta1 * m for g, m in zip(gs, ms)]

    def abs(self, gs):
        return [jnp.abs(g) for g in gs]

    def abs_plus(self, gs, eps):
        return [jnp.abs(g) + eps for g in gs]

    def add(self, xs, eps):
        return [x + eps for x in xs]

    def maximum_(self, us, vs):  # optax.tree.update_infinity_moment's argument order
        return [jnp.maximum(v, u) for u, v in zip(us, vs)]

    def apply_step_(self, p, ms, ds, count, guard_zero):
        m_hats = optax.tree.bias_correction(ms, self.beta1, count)  # optax's own (jitted) helper, for its rounding
        if not guard_zero:
            return [m_hat / d for m_hat, d in zip(m_hats, ds)]
        return [
            jnp.where(d == 0, jnp.zeros_like(m_hat), m_hat / jnp.where(d == 0, jnp.ones_like(d), d))
            for m_hat, d in zip(m_hats, ds)
        ]


def _as_real_pairs(x: jax.Array) -> jax.Array:
    return jnp.stack([x.real, x.imag], -1) if jnp.iscomplexobj(x) else x


def _from_real_pairs(x: jax.Array, like: jax.Array) -> jax.Array:
    return jax.lax.complex(x[..., 0], x[..., 1]).astype(like.dtype) if jnp.iscomplexobj(like) else x


def scale_by_adamax(
    b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, *, eps_placement: EpsPlacement = "max"
) -> optax.GradientTransformation:
    """The Adamax direction ``m_hat / u`` (:mod:`adamax.spec`), with state ``(count, m, u)``.

    Args:
        b1: decay rate of the first moment.
        b2: decay rate of the infinity norm.
        eps: see ``eps_placement``.
        eps_placement: ``"max"`` (optax, torch), ``"denominator"`` (Keras, TF) or ``"none"`` (the paper).
    """
    _validate(b1=b1, b2=b2, eps=eps, eps_placement=eps_placement)
    hyper = _Hyperparams(beta1=b1, beta2=b2, eps=eps, eps_placement=eps_placement)

    def init_fn(params: optax.Params) -> ScaleByAdamaxState:
        return ScaleByAdamaxState(
            count=jnp.zeros([], jnp.int32), m=optax.tree.zeros_like(params), u=optax.tree.zeros_like(params)
        )

    def update_fn(updates: optax.Updates, state: ScaleByAdamaxState, params: optax.Params | None = None):
        del params
        count = optax.safe_increment(state.count)

        # Leaves whose update is None (masked out) are passed over, their state kept.
        treedef = jax.tree.structure(updates, is_leaf=lambda x: x is None)
        flat_g, flat_m, flat_u = (treedef.flatten_up_to(tree) for tree in (updates, state.m, state.u))
        live = [i for i, g in enumerate(flat_g) if g is not None]
        gs, ms, us = ([flat[i] for i in live] for flat in (flat_g, flat_m, flat_u))
        directions, new_ms, new_us = adamax_update(_JaxOps(b1), None, gs, ms, us, count, hyper)
        out_d, out_m, out_u = list(flat_g), list(flat_m), list(flat_u)
        for k, i in enumerate(live):
            g = flat_g[i]
            out_d[i], out_m[i], out_u[i] = (_from_real_pairs(x[k], g) for x in (directions, new_ms, new_us))
        unflatten = treedef.unflatten
        return unflatten(out_d), ScaleByAdamaxState(count, unflatten(out_m), unflatten(out_u))

    return optax.GradientTransformation(init_fn, update_fn)


def adamax(
    learning_rate: optax.ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    eps_placement: EpsPlacement = "max",
) -> optax.GradientTransformation:
    """Adamax: ``-learning_rate * m_hat / u``; a drop-in for ``optax.adamax``.

    ``learning_rate`` is a float or an optax schedule.
    """
    _validate(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_placement=eps_placement)
    return optax.chain(
        scale_by_adamax(b1, b2, eps, eps_placement=eps_placement), optax.scale_by_learning_rate(learning_rate)
    )


def adamaxw(
    learning_rate: optax.ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    eps_placement: EpsPlacement = "max",
) -> optax.GradientTransformation:
    """Adamax with decoupled weight decay: ``-learning_rate * (m_hat / u + weight_decay * p)``.

    A drop-in for ``optax.adamaxw``; ``mask`` selects the params that decay, as there.
    """
    _validate(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_placement=eps_placement, weight_decay=weight_decay
    )
    return optax.chain(
        scale_by_adamax(b1, b2, eps, eps_placement=eps_placement),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
