r"""Keras 3: :class:`Adamax` and :class:`AdamaxW`, drop-ins for ``keras.optimizers.Adamax``.

Both subclass ``keras.optimizers.Optimizer``: state through ``add_optimizer_variables`` (the same ``momentum``
and ``norm`` variables as Keras's own Adamax, so checkpoints and ``.keras`` files carry over), the update in
``update_step`` with ``keras.ops``, so it traces inside the JAX backend's jitted ``stateless_apply`` and runs on
every backend.  The update is :func:`adamax._algorithm.adamax_update`, the one written for every backend here,
over :class:`KerasOps`, whose operations round as Keras's own Adamax computes each line:

.. math::

   m &\leftarrow m + (g - m)(1 - \beta_1) \\
   u &\leftarrow \max(\beta_2 u,\ |g|) \qquad
       (\max(\beta_2 u,\ |g| + \epsilon) \text{ with } \texttt{eps\_placement="max"}) \\
   p &\leftarrow p - \frac{\mathrm{lr}\, m}{(1 - \beta_1^t)\, d}, \qquad
       d = u + \epsilon \ (\texttt{"denominator"}),\ u \ (\texttt{"max"}, \texttt{"none"})

The defaults are Keras's (``learning_rate=0.001``, ``epsilon=1e-7``, ε in the denominator, as Keras and
TensorFlow place it), so ``Adamax()`` steps exactly as ``keras.optimizers.Adamax()``, bit for bit, on the JAX
and torch backends (``tests/test_keras.py``).  Differences, each deliberate:

* ``eps_placement`` selects torch's and optax's placement (``"max"``) or the paper's (``"none"``: no ε; an
  element whose every gradient so far was 0 does not move, where 0/0 would make it NaN).
* Invalid hyperparameters raise at construction, in :mod:`adamax.spec`'s words (Keras accepts ``beta_1=1.5``).
* Weight decay is Keras's own (decoupled, applied before the step, with ``exclude_from_weight_decay``);
  :class:`AdamaxW` only makes it the default, ``weight_decay=0.004`` as ``keras.optimizers.AdamW``.

``skip_nonfinite=True`` skips a step whose gradients hold a NaN or an infinity whole: no variable, moment or
step count changes (on the JAX backend inside the jitted step, through ``ops.cond``).  Not here (yet):
``state_format="compact"`` (its block scales need a per-block maximum and integer codes that ``keras.ops`` can
express, but it is not written).  Sparse gradients (TensorFlow's
``IndexedSlices``) are densified by Keras before ``update_step``, as for its own optimizers.

Keras picks its backend when first imported, from ``KERAS_BACKEND`` (or ``~/.keras/keras.json``; TensorFlow by
default)::

    KERAS_BACKEND=jax python train.py      # or torch

    model.compile(optimizer=adamax.keras.Adamax(learning_rate=1e-3), loss="mse")
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from adamax._extras import require

if importlib.util.find_spec("keras") is None:
    require("keras", extra="keras", what="adamax.keras")
try:
    import keras
    from keras import ops
except ImportError as err:  # installed, but its backend is not (TensorFlow, Keras's default, most often)
    raise ImportError(
        f"adamax.keras: keras is installed but did not import ({err}); choose an installed backend before the "
        "first import of keras, e.g. KERAS_BACKEND=jax or KERAS_BACKEND=torch"
    ) from err

from adamax._algorithm import adamax_update
from adamax.spec import EPS_PLACEMENTS, AdamaxConfig

__all__ = ["Adamax", "AdamaxW", "KerasOps"]

_BACKEND = keras.backend.backend()  # fixed when keras was first imported


class KerasOps:
    """:class:`adamax._algorithm.Ops` in ``keras.ops``, out of place, rounding as ``keras.optimizers.Adamax`` on
    each backend (on torch, Keras's Adamax is its own ``torch._foreach`` version, whose moment is one add with
    ``alpha``: so is this one's there).

    ``apply_step_`` takes the step size as the pair ``(lr, 1 - beta_1**t)`` and computes
    ``p - (lr * m) / ((1 - beta_1**t) * d)``, Keras's order of operations.
    """

    decay_before_real_view = True

    def real_view(self, xs: list[Any]) -> list[Any]:
        """Unchanged: Keras variables are real."""
        return xs

    def neg(self, g: Any) -> Any:
        """``-g``."""
        return ops.negative(g)

    def add_scaled(self, g: Any, p: Any, alpha: float) -> Any:
        """``g + alpha * p`` (coupled weight decay; Keras's own decay is decoupled and not this)."""
        return ops.add(g, ops.multiply(p, alpha))

    def mul_(self, x: Any, s: float) -> Any:
        """``s * x``."""
        return ops.multiply(s, x)

    def moment_(self, m: Any, g: Any, beta1: float) -> Any:
        """The new first moment, in the form Keras's Adamax computes it on this backend."""
        if _BACKEND == "torch":  # Keras's torch Adamax: m * b1, then + (1 - b1) g in one add
            import torch

            return torch.add(torch.mul(ops.convert_to_tensor(m), beta1), g, alpha=1 - beta1)
        return ops.add(m, ops.multiply(ops.subtract(g, m), 1 - beta1))

    def abs(self, g: Any) -> Any:
        """``|g|``."""
        return ops.abs(g)

    def abs_plus(self, g: Any, eps: float) -> Any:
        """``|g| + eps``."""
        return ops.add(ops.abs(g), eps)

    def add(self, x: Any, eps: float) -> Any:
        """``x + eps``."""
        return ops.add(x, eps)

    def maximum_(self, u: Any, v: Any) -> Any:
        """``max(u, v)``."""
        return ops.maximum(u, v)

    def apply_step_(self, p: Any, m: Any, d: Any, s: Any, guard_zero: bool) -> Any:
        """``p - (lr * m) / ((1 - beta_1**t) * d)`` with ``s = (lr, 1 - beta_1**t)`` (no step where ``d`` is 0
        when ``guard_zero``)."""
        lr, correction = s
        if guard_zero:  # d == 0 only where every gradient so far was 0 (so m == 0): no step, not 0/0
            zero = ops.equal(d, 0)
            step = ops.divide(ops.multiply(lr, m), ops.multiply(correction, ops.where(zero, 1, d)))
            return ops.subtract(p, ops.where(zero, 0, step))
        return ops.subtract(p, ops.divide(ops.multiply(lr, m), ops.multiply(correction, d)))


_OPS = KerasOps()


@dataclass(frozen=True)
class _Hyper:
    """What :func:`adamax._algorithm.adamax_update` reads; weight decay is left to Keras's optimizer base."""

    beta1: float
    beta2: float
    eps: float
    eps_placement: str
    lr: float = 0.0
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    maximize: bool = False


def _checked(learning_rate: Any, beta_1: Any, beta_2: Any, epsilon: Any, eps_placement: Any) -> _Hyper:
    """:class:`adamax.spec.AdamaxConfig`'s checks (a schedule or callable learning rate is Keras's to check)."""
    lr = learning_rate if isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool) else 0.0
    if eps_placement not in EPS_PLACEMENTS:
        raise ValueError(f"Invalid eps_placement: {eps_placement!r} (expected one of {', '.join(EPS_PLACEMENTS)})")
    config = AdamaxConfig(lr=lr, betas=(beta_1, beta_2), eps=epsilon, eps_placement=eps_placement)
    return _Hyper(config.beta1, config.beta2, config.eps, config.eps_placement)


def _all_finite(grads: Any) -> Any:
    """Whether every gradient given (``None`` ones left out) is finite everywhere, as a boolean tensor."""
    checks = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
    return ops.all(ops.stack(checks)) if checks else ops.convert_to_tensor(True)


@keras.saving.register_keras_serializable(package="adamax")
class Adamax(keras.optimizers.Optimizer):
    """Adamax for Keras 3, a drop-in for ``keras.optimizers.Adamax`` (same arguments, defaults and variables),
    with ``eps_placement`` (``"denominator"``, Keras's; ``"max"``, torch's and optax's; ``"none"``, the paper's)
    and ``skip_nonfinite`` (a step whose gradients are not all finite changes nothing).

    Every other argument is ``keras.optimizers.Optimizer``'s: ``weight_decay``, ``clipnorm``, ``clipvalue``,
    ``global_clipnorm``, ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``, ``loss_scale_factor``,
    ``gradient_accumulation_steps``, ``name``.
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        eps_placement: str = "denominator",
        state_format: str = "full",
        skip_nonfinite: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if state_format != "full":
            raise NotImplementedError(
                f"adamax.keras keeps full state only (state_format={state_format!r} was asked); compact state is "
                "in adamax.torch and adamax.optax"
            )
        hyper = _checked(learning_rate, beta_1, beta_2, epsilon, eps_placement)  # before anything is built
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._hyper = hyper
        self.beta_1, self.beta_2, self.epsilon, self.eps_placement = beta_1, beta_2, epsilon, eps_placement
        if not isinstance(skip_nonfinite, bool):
            raise ValueError(f"Invalid skip_nonfinite: {skip_nonfinite!r} (expected True or False)")
        self.skip_nonfinite = skip_nonfinite

    def build(self, var_list: list[Any]) -> None:
        """One ``momentum`` (m) and one ``norm`` (u) variable per model variable, zeros, as Keras's Adamax."""
        if self.built:
            return
        super().build(var_list)
        self._m, self._u = self.add_optimizer_variables(var_list, ["momentum", "norm"])

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One Adamax step of ``variable`` (:func:`adamax._algorithm.adamax_update` over :class:`KerasOps`)."""
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        correction = 1 - ops.power(ops.cast(self.beta_1, dtype), t)
        index = self._get_variable_index(variable)
        m, u = self._m[index], self._u[index]
        p, new_m, new_u = adamax_update(_OPS, variable, g, m, u, (lr, correction), self._hyper)
        self.assign(m, new_m)
        self.assign(u, new_u)
        self.assign(variable, p)

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        """Keras's ``apply``; with ``skip_nonfinite``, a step whose gradients hold a NaN or an infinity changes
        nothing at all (variables, moments, step count), on the stateful path (eager, or traced by TensorFlow)."""
        if not self.skip_nonfinite or self.__dict__.get("_checked_by_stateless_apply"):
            return super().apply(grads, trainable_variables)
        finite = _all_finite(grads)
        if _BACKEND == "tensorflow":  # traced inside tf.function: a conditional, not a Python if

            def step() -> Any:
                super(Adamax, self).apply(grads, trainable_variables)
                return ops.convert_to_tensor(True)

            return ops.cond(finite, step, lambda: ops.convert_to_tensor(False))
        if bool(finite):
            return super().apply(grads, trainable_variables)
        return None

    def stateless_apply(self, optimizer_variables: Any, grads: Any, trainable_variables: Any) -> Any:
        """Keras's ``stateless_apply`` (the JAX backend's jitted step); with ``skip_nonfinite``, a step whose
        gradients are not all finite returns the variables it was given."""
        if not self.skip_nonfinite:
            return super().stateless_apply(optimizer_variables, grads, trainable_variables)
        self.__dict__["_checked_by_stateless_apply"] = True  # its apply inside need not check again (Keras's
        try:  # attribute tracking left out: a plain flag)
            return ops.cond(
                _all_finite(grads),
                lambda: super(Adamax, self).stateless_apply(optimizer_variables, grads, trainable_variables),
                lambda: (list(trainable_variables), list(optimizer_variables)),
            )
        finally:
            self.__dict__["_checked_by_stateless_apply"] = False

    def get_config(self) -> dict[str, Any]:
        """Keras's config of this optimizer, with ``beta_1``, ``beta_2``, ``epsilon`` and ``eps_placement``."""
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "eps_placement": self.eps_placement,
                "skip_nonfinite": self.skip_nonfinite,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="adamax")
class AdamaxW(Adamax):
    """:class:`Adamax` with decoupled weight decay by default (``weight_decay=0.004``, as ``keras.optimizers.AdamW``):
    Keras's base optimizer multiplies each variable by ``1 - lr * weight_decay`` before the step."""

    def __init__(self, learning_rate: Any = 0.001, weight_decay: float = 0.004, **kwargs: Any) -> None:
        if weight_decay is None:
            raise ValueError("AdamaxW needs a weight_decay (a float); use Adamax for none")
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
