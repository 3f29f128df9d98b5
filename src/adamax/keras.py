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
step count changes (on the JAX backend inside the jitted step, through ``ops.cond``).

``state_format="compact"`` (:mod:`adamax.compact`: m in bfloat16, u as 16-bit codes below a float32 scale per
256 elements, 4.016 bytes a parameter) and ``"compact8"`` (:mod:`adamax.compact8`, 2.031 bytes) run the block
arithmetic of :mod:`adamax._blocks` in ``keras.ops`` (:class:`KerasArrays`), so they trace too: the codes,
scales and rounded m are the NumPy definitions' bits on every backend, with m by Keras's formula above and the
arithmetic in float32.  Sparse gradients (TensorFlow's ``IndexedSlices``, an ``Embedding``'s) reach
``update_step`` as they are and the ``keras.ops`` calls densify them, as in Keras's own Adamax.

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

from adamax import _blocks, compact
from adamax._algorithm import adamax_update
from adamax.spec import EPS_PLACEMENTS, AdamaxConfig

__all__ = ["Adamax", "AdamaxW", "KerasArrays", "KerasOps"]

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


class KerasArrays:
    """:class:`adamax._blocks.Arrays` in ``keras.ops``: what the compact formats' block arithmetic needs, on every
    backend (int32 only: ``shr`` masks an arithmetic shift into a logical one)."""

    where, maximum, minimum = staticmethod(ops.where), staticmethod(ops.maximum), staticmethod(ops.minimum)
    abs, isfinite, signbit = staticmethod(ops.abs), staticmethod(ops.isfinite), staticmethod(ops.signbit)
    any, bxor, shl = staticmethod(ops.any), staticmethod(ops.bitwise_xor), staticmethod(ops.left_shift)

    @staticmethod
    def max(x: Any, axis: int) -> Any:
        """The largest element along ``axis``."""
        return ops.max(x, axis=axis)

    @staticmethod
    def f32(x: Any) -> Any:
        """``x`` as float32."""
        return ops.cast(x, "float32")

    @staticmethod
    def i32(x: Any) -> Any:
        """``x`` as int32."""
        return ops.cast(x, "int32")

    @staticmethod
    def bits(x: Any) -> Any:
        """The float32 bits of ``x`` as int32."""
        return ops.view(ops.cast(x, "float32"), "int32")

    @staticmethod
    def from_bits(bits: Any) -> Any:
        """The float32 whose bits are ``bits`` (int32)."""
        return ops.view(bits, "float32")

    @staticmethod
    def shr(x: Any, n: int) -> Any:
        """``x`` shifted right by ``n`` bits, zeros in (logical)."""
        return ops.bitwise_and(ops.right_shift(x, n), (1 << (32 - n)) - 1)

    @staticmethod
    def band(x: Any, mask: int) -> Any:
        """``x & mask``."""
        return ops.bitwise_and(x, mask)

    @staticmethod
    def arange(n: int) -> Any:
        """``0 .. n - 1`` as int32."""
        return ops.arange(n, dtype="int32")

    @staticmethod
    def flat(x: Any) -> Any:
        """``x`` flattened (row-major)."""
        return ops.reshape(x, (-1,))

    @staticmethod
    def pad(x: Any, n: int) -> Any:
        """``x`` (1-d) with ``n`` zeros after it."""
        return ops.pad(x, [(0, n)]) if n else x

    @staticmethod
    def reshape(x: Any, shape: tuple[int, ...]) -> Any:
        """``x`` in ``shape``."""
        return ops.reshape(x, shape)

    @staticmethod
    def cond(pred: Any, then: Any, otherwise: Any, operand: Any) -> Any:
        """``then(operand)`` if ``pred`` else ``otherwise(operand)``, one branch run (under a trace too)."""
        return ops.cond(pred, lambda: then(operand), lambda: otherwise(operand))


_XP = KerasArrays()

# The compact formats' optimizer variables per model variable: (name, dtype, shaped like it or one per block);
# full state's are Keras's own momentum and norm.
_LAYOUTS = {
    "compact": (("momentum", "bfloat16", True), ("norm_code", "uint16", True), ("norm_scale", "float32", False)),
    "compact8": (
        ("momentum_code", "uint8", True),
        ("momentum_scale", "float32", False),
        ("norm_code", "uint8", True),
        ("norm_scale", "float32", False),
    ),
}


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
    with ``eps_placement`` (``"denominator"``, Keras's; ``"max"``, torch's and optax's; ``"none"``, the paper's),
    ``skip_nonfinite`` (a step whose gradients are not all finite changes nothing) and ``state_format``
    (``"full"``, Keras's variables; ``"compact"`` or ``"compact8"``, the module's description).

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
        compact.check_state_format(state_format)
        hyper = _checked(learning_rate, beta_1, beta_2, epsilon, eps_placement)  # before anything is built
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._hyper = hyper
        self.beta_1, self.beta_2, self.epsilon, self.eps_placement = beta_1, beta_2, epsilon, eps_placement
        self.state_format = state_format
        if not isinstance(skip_nonfinite, bool):
            raise ValueError(f"Invalid skip_nonfinite: {skip_nonfinite!r} (expected True or False)")
        self.skip_nonfinite = skip_nonfinite

    def build(self, var_list: list[Any]) -> None:
        """The state, zeros: with full state one ``momentum`` (m) and one ``norm`` (u) variable per model variable,
        as Keras's Adamax; with compact state m in bfloat16 (``momentum``), u's codes (``norm_code``, uint16) and
        one scale per 256 elements (``norm_scale``); with compact8, m's and u's 8-bit codes and scales
        (``momentum_code``, ``momentum_scale``, ``norm_code``, ``norm_scale``)."""
        if self.built:
            return
        super().build(var_list)
        if self.state_format == "full":
            self._m, self._u = self.add_optimizer_variables(var_list, ["momentum", "norm"])
            return
        layout = _LAYOUTS[self.state_format]
        self._slots: list[list[Any]] = [[] for _ in layout]
        for variable in var_list:
            for column, (suffix, dtype, like) in zip(self._slots, layout):
                if self._overwrite_variable_with_gradient(variable):
                    column.append(None)
                    continue
                column.append(
                    self.add_variable(
                        shape=tuple(variable.shape) if like else compact.scales_shape(tuple(variable.shape)),
                        dtype=dtype,
                        name=f"{variable.path.replace('/', '_')}_{suffix}",
                        layout=getattr(variable, "_layout", None) if like else None,
                    )
                )

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One Adamax step of ``variable`` (:func:`adamax._algorithm.adamax_update` over :class:`KerasOps`; compact
        state through :mod:`adamax._blocks`)."""
        index = self._get_variable_index(variable)
        if self.state_format != "full":
            self._compact_step(gradient, variable, learning_rate, [column[index] for column in self._slots])
            return
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        correction = 1 - ops.power(ops.cast(self.beta_1, dtype), t)
        m, u = self._m[index], self._u[index]
        p, new_m, new_u = adamax_update(_OPS, variable, g, m, u, (lr, correction), self._hyper)
        self.assign(m, new_m)
        self.assign(u, new_u)
        self.assign(variable, p)

    def _compact_step(self, gradient: Any, variable: Any, learning_rate: Any, slots: list[Any]) -> None:
        """A step with compact or compact8 state: float32 arithmetic, m by Keras's formula (:class:`KerasOps`),
        u's codes and scales and m's rounding as :mod:`adamax.compact` and :mod:`adamax.compact8` define them."""
        h, shape = self._hyper, tuple(variable.shape)
        g = ops.cast(gradient, "float32")
        p = ops.cast(variable, "float32")
        count = ops.cast(self.iterations + 1, "int32")
        correction = 1 - ops.power(ops.cast(self.beta_1, "float32"), ops.cast(count, "float32"))
        step = (ops.cast(learning_rate, "float32"), correction)
        guard = h.eps_placement == "none" or not h.eps > 0
        state = [ops.convert_to_tensor(slot) for slot in slots]
        if self.state_format == "compact":
            m_slot, code_slot, scale_slot = slots
            m = _OPS.moment_(ops.cast(state[0], "float32"), g, h.beta1)
            codes, scale, u = _blocks.compact_u(_XP, g, state[1], state[2], h.beta2, h.eps, h.eps_placement)
            self.assign(m_slot, ops.cast(_XP.from_bits(_blocks.stochastic_bf16(_XP, m, count)), "bfloat16"))
            self.assign(code_slot, ops.cast(codes, "uint16"))
        else:  # compact8's m lives in blocks: step on the elements, encode the blocks
            m_code_slot, m_scale_slot, code_slot, scale_slot = slots
            m_old = _blocks.decoded_m(_XP, state[0], state[1])
            blocked_m = _OPS.moment_(m_old, _blocks.blocked(_XP, g, shape), h.beta1)
            codes, scale, u = _blocks.blocked_u(_XP, g, state[2], state[3], h.beta2, h.eps, h.eps_placement, _blocks.U8)
            m, u = _blocks.unblocked(_XP, blocked_m, shape), _blocks.unblocked(_XP, u, shape)
            m_codes, m_scale = _blocks.encoded_m(_XP, blocked_m, count)
            self.assign(m_code_slot, ops.cast(_blocks.unblocked(_XP, m_codes, shape), "uint8"))
            self.assign(m_scale_slot, m_scale)
            self.assign(code_slot, ops.cast(_blocks.unblocked(_XP, codes, shape), "uint8"))
        d = ops.add(u, h.eps) if h.eps_placement == "denominator" else u
        p = _OPS.apply_step_(p, m, d, step, guard)
        self.assign(scale_slot, scale)
        self.assign(variable, ops.cast(p, variable.dtype))

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
                "state_format": self.state_format,
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
