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

from adamax import _blocks, compact, compact8  # noqa: E402
from adamax._algorithm import adamax_update  # noqa: E402
from adamax.spec import AdamaxConfig, EpsPlacement  # noqa: E402

__all__ = [
    "ScaleByAdamaxCompact8State",
    "ScaleByAdamaxCompactState",
    "ScaleByAdamaxState",
    "adamax",
    "adamaxw",
    "convert_state",
    "scale_by_adamax",
]


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
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    eps_placement: EpsPlacement = "max",
    state_format: str = "full",
) -> optax.GradientTransformation:
    """The Adamax direction ``m_hat / u`` (:mod:`adamax.spec`), with state ``(count, m, u)``.

    Args:
        b1: decay rate of the first moment.
        b2: decay rate of the infinity norm.
        eps: see ``eps_placement``.
        eps_placement: ``"max"`` (optax, torch), ``"denominator"`` (Keras, TF) or ``"none"`` (the paper).
        state_format: ``"full"`` (state like the params), ``"compact"`` (:mod:`adamax.compact`: m in
            bfloat16, u as 16-bit codes under a float32 scale per 256 elements; state
            :class:`ScaleByAdamaxCompactState`) or ``"compact8"`` (:mod:`adamax.compact8`: 8-bit m and u codes
            under float32 scales per 256 elements; :class:`ScaleByAdamaxCompact8State`); the compact formats
            take real float params.  :func:`convert_state` converts between them.
    """
    _validate(b1=b1, b2=b2, eps=eps, eps_placement=eps_placement)
    if compact.check_state_format(state_format) == "compact":
        return _scale_by_adamax_compact(b1, b2, eps, eps_placement)
    if state_format == "compact8":
        return _scale_by_adamax_compact8(b1, b2, eps, eps_placement)
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
    state_format: str = "full",
) -> optax.GradientTransformation:
    """Adamax: ``-learning_rate * m_hat / u``; a drop-in for ``optax.adamax``.

    ``learning_rate`` is a float or an optax schedule; ``state_format`` as in :func:`scale_by_adamax`.
    """
    _validate(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_placement=eps_placement)
    return optax.chain(
        scale_by_adamax(b1, b2, eps, eps_placement=eps_placement, state_format=state_format),
        optax.scale_by_learning_rate(learning_rate),
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
    state_format: str = "full",
) -> optax.GradientTransformation:
    """Adamax with decoupled weight decay: ``-learning_rate * (m_hat / u + weight_decay * p)``.

    A drop-in for ``optax.adamaxw``; ``mask`` selects the params that decay, as there.
    """
    _validate(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_placement=eps_placement, weight_decay=weight_decay
    )
    return optax.chain(
        scale_by_adamax(b1, b2, eps, eps_placement=eps_placement, state_format=state_format),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


# ----- compact state (adamax.compact) -----


class ScaleByAdamaxCompactState(NamedTuple):
    """State of :func:`scale_by_adamax` with ``state_format="compact"`` (:mod:`adamax.compact`)."""

    count: jax.Array  # int32 scalar, as in ScaleByAdamaxState
    m: optax.Updates  # first moment, bfloat16, shaped like the params
    code: optax.Updates  # u's codes, uint16, shaped like the params
    scale: optax.Updates  # float32 per leaf, one per 256 elements (row-major)


_F32 = jnp.float32


class _JaxArrays:
    """:class:`adamax._blocks.Arrays` in JAX."""

    where, maximum, minimum = staticmethod(jnp.where), staticmethod(jnp.maximum), staticmethod(jnp.minimum)
    abs, isfinite, signbit = staticmethod(jnp.abs), staticmethod(jnp.isfinite), staticmethod(jnp.signbit)
    any, flat = staticmethod(jnp.any), staticmethod(jnp.ravel)
    shr, bxor = staticmethod(jax.lax.shift_right_logical), staticmethod(jnp.bitwise_xor)

    @staticmethod
    def max(x: jax.Array, axis: int) -> jax.Array:
        return jnp.max(x, axis=axis)

    @staticmethod
    def f32(x: Any) -> jax.Array:
        return jnp.asarray(x).astype(_F32)

    @staticmethod
    def i32(x: Any) -> jax.Array:
        return jnp.asarray(x).astype(jnp.int32)

    @staticmethod
    def bits(x: jax.Array) -> jax.Array:
        return jax.lax.bitcast_convert_type(x.astype(_F32), jnp.int32)

    @staticmethod
    def from_bits(bits: jax.Array) -> jax.Array:
        return jax.lax.bitcast_convert_type(bits, _F32)

    @staticmethod
    def shl(x: jax.Array, n: Any) -> jax.Array:
        return jnp.left_shift(x, n)

    @staticmethod
    def band(x: jax.Array, mask: int) -> jax.Array:
        return jnp.bitwise_and(x, jnp.int32(mask))

    @staticmethod
    def arange(n: int) -> jax.Array:
        return jnp.arange(n, dtype=jnp.int32)

    @staticmethod
    def pad(x: jax.Array, n: int) -> jax.Array:
        return jnp.pad(x, (0, n))

    @staticmethod
    def reshape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return x.reshape(shape)

    @staticmethod
    def cond(pred: Any, then: Any, otherwise: Any, operand: Any) -> Any:
        return jax.lax.cond(pred, then, otherwise, operand)


_XP = _JaxArrays()


def _stochastic_bf16(m: jax.Array, count: jax.Array) -> jax.Array:
    """m rounded stochastically to bfloat16 (:func:`adamax._blocks.stochastic_bf16`), by its bits."""
    high = jax.lax.shift_right_logical(_blocks.stochastic_bf16(_XP, m, count), 16).astype(jnp.uint16)
    return jax.lax.bitcast_convert_type(high, jnp.bfloat16)


def _direction(m32: jax.Array, d: jax.Array, b1: Any, count: jax.Array, eps: Any, eps_placement: str) -> jax.Array:
    """``m_hat / d`` as optax computes it (0 where ``d`` is 0 and no eps guards it)."""
    m_hat = optax.tree.bias_correction(m32, b1, count)
    if eps_placement == "none" or not (isinstance(eps, (int, float)) and eps > 0):
        return jnp.where(d == 0, 0.0, m_hat / jnp.where(d == 0, 1.0, d))
    return m_hat / d


def _scale_by_adamax_compact(b1: Any, b2: Any, eps: Any, eps_placement: str) -> optax.GradientTransformation:
    def init_fn(params: optax.Params) -> ScaleByAdamaxCompactState:
        for leaf in jax.tree.leaves(params):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(f"compact state is for real float params, got a {leaf.dtype} leaf")
        return ScaleByAdamaxCompactState(
            count=jnp.zeros([], jnp.int32),
            m=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.bfloat16), params),
            code=jax.tree.map(lambda p: jnp.full(p.shape, compact.ZERO, jnp.uint16), params),
            scale=jax.tree.map(lambda p: jnp.zeros(compact.blocks(p.size), _F32), params),
        )

    def update_fn(updates: optax.Updates, state: ScaleByAdamaxCompactState, params: optax.Params | None = None):
        del params
        count = optax.safe_increment(state.count)
        treedef = jax.tree.structure(updates, is_leaf=lambda x: x is None)
        flat = [treedef.flatten_up_to(tree) for tree in (updates, state.m, state.code, state.scale)]
        out = [list(column) for column in flat]
        for i, (g, m, code, scale) in enumerate(zip(*flat)):
            if g is None:
                continue
            g32 = g.astype(_F32)
            m32 = (1 - b1) * g32 + b1 * m.astype(_F32)  # optax.tree.update_moment's form
            new_code, new_scale, u = _blocks.compact_u(_XP, g32, code, scale, b2, eps, eps_placement)
            d = u + eps if eps_placement == "denominator" else u
            out[0][i] = _direction(m32, d, b1, count, eps, eps_placement).astype(g.dtype)
            out[1][i], out[2][i], out[3][i] = _stochastic_bf16(m32, count), new_code.astype(jnp.uint16), new_scale
        unflatten = treedef.unflatten
        return unflatten(out[0]), ScaleByAdamaxCompactState(count, *(unflatten(column) for column in out[1:]))

    return optax.GradientTransformation(init_fn, update_fn)


# ----- compact8 state (adamax.compact8) -----


class ScaleByAdamaxCompact8State(NamedTuple):
    """State of :func:`scale_by_adamax` with ``state_format="compact8"`` (:mod:`adamax.compact8`)."""

    count: jax.Array  # int32 scalar, as in ScaleByAdamaxState
    m_code: optax.Updates  # m's sign and 7-bit code, uint8, shaped like the params
    m_scale: optax.Updates  # float32 per leaf, each block's largest |m|
    code: optax.Updates  # u's codes, uint8, shaped like the params
    scale: optax.Updates  # float32 per leaf, one per 256 elements (row-major)


def _scale_by_adamax_compact8(b1: Any, b2: Any, eps: Any, eps_placement: str) -> optax.GradientTransformation:
    def init_fn(params: optax.Params) -> ScaleByAdamaxCompact8State:
        for leaf in jax.tree.leaves(params):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(f"compact8 state is for real float params, got a {leaf.dtype} leaf")

        def codes():
            return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.uint8), params)

        def scales():
            return jax.tree.map(lambda p: jnp.zeros(compact.blocks(p.size), _F32), params)

        return ScaleByAdamaxCompact8State(jnp.zeros([], jnp.int32), codes(), scales(), codes(), scales())

    def update_fn(updates: optax.Updates, state: ScaleByAdamaxCompact8State, params: optax.Params | None = None):
        del params
        count = optax.safe_increment(state.count)
        treedef = jax.tree.structure(updates, is_leaf=lambda x: x is None)
        trees = (updates, state.m_code, state.m_scale, state.code, state.scale)
        flat = [treedef.flatten_up_to(tree) for tree in trees]
        out = [list(column) for column in flat]
        for i, (g, m_code, m_scale, code, scale) in enumerate(zip(*flat)):
            if g is None:
                continue
            g32 = g.astype(_F32)
            m32 = (1 - b1) * _blocks.blocked(_XP, g32, g.shape) + b1 * _blocks.decoded_m(
                _XP, m_code, m_scale
            )  # optax's form
            new_code, new_scale, u = _blocks.blocked_u(_XP, g32, code, scale, b2, eps, eps_placement, _blocks.U8)
            d = u + eps if eps_placement == "denominator" else u
            out[0][i] = _blocks.unblocked(_XP, _direction(m32, d, b1, count, eps, eps_placement), g.shape).astype(
                g.dtype
            )
            m_codes, out[2][i] = _blocks.encoded_m(_XP, m32, count)
            out[1][i] = _blocks.unblocked(_XP, m_codes, g.shape).astype(jnp.uint8)
            out[3][i], out[4][i] = _blocks.unblocked(_XP, new_code, g.shape).astype(jnp.uint8), new_scale
        unflatten = treedef.unflatten
        return unflatten(out[0]), ScaleByAdamaxCompact8State(count, *(unflatten(column) for column in out[1:]))

    return optax.GradientTransformation(init_fn, update_fn)


_STATES = {"full": ScaleByAdamaxState, "compact": ScaleByAdamaxCompactState, "compact8": ScaleByAdamaxCompact8State}


def _values(node: Any) -> tuple[Any, list[tuple[np.ndarray, np.ndarray]]]:
    """A state node's tree structure and each leaf's ``(m, u)`` in float32 (exact for every format)."""
    if isinstance(node, ScaleByAdamaxState):
        return jax.tree.structure(node.m), [
            (np.asarray(m, np.float32), np.asarray(u, np.float32))
            for m, u in zip(jax.tree.leaves(node.m), jax.tree.leaves(node.u))
        ]
    if isinstance(node, ScaleByAdamaxCompactState):
        leaves = zip(*(jax.tree.leaves(tree) for tree in (node.m, node.code, node.scale)))
        states = (compact.CompactState(0, np.asarray(m).view(np.uint16), np.asarray(q), np.asarray(s))
                  for m, q, s in leaves)  # fmt: skip
        return jax.tree.structure(node.m), [compact.to_full(state)[1:] for state in states]
    leaves = zip(*(jax.tree.leaves(tree) for tree in node[1:]))
    states = (compact8.Compact8State(0, *(np.asarray(a) for a in arrays)) for arrays in leaves)  # same order
    return jax.tree.structure(node.m_code), [compact8.to_full(state)[1:] for state in states]


def _node(count: Any, treedef: Any, values: list[tuple[np.ndarray, np.ndarray]], state_format: str) -> Any:
    """A state node in ``state_format`` holding ``values`` (rounded as the format's ``from_full`` rounds)."""
    if state_format == "full":
        return ScaleByAdamaxState(count, *(treedef.unflatten([jnp.asarray(v[i]) for v in values]) for i in (0, 1)))
    definition = compact if state_format == "compact" else compact8
    states = [definition.from_full(0, m, u) for m, u in values]
    columns = [[jnp.asarray(a) for a in arrays] for arrays in zip(*(state[1:] for state in states))]
    if state_format == "compact":
        columns[0] = [jax.lax.bitcast_convert_type(a, jnp.bfloat16) for a in columns[0]]
    if not states:
        columns = [[] for _ in definition.KEYS[1:]]
    return _STATES[state_format](count, *(treedef.unflatten(column) for column in columns))


def convert_state(state: Any, state_format: str) -> Any:
    """Every Adamax state node inside ``state`` (:class:`ScaleByAdamaxState`, :class:`ScaleByAdamaxCompactState`
    or :class:`ScaleByAdamaxCompact8State`; an optax chain's state, say) in ``state_format``: to ``"full"``
    exactly (float32 m and u), to ``"compact"`` or ``"compact8"`` with m rounded to nearest and u up to its code
    (:func:`adamax.compact.from_full`, :func:`adamax.compact8.from_full`)."""
    compact.check_state_format(state_format)
    kinds = tuple(_STATES.values())

    def convert(node: Any) -> Any:
        if not isinstance(node, kinds) or isinstance(node, _STATES[state_format]):
            return node
        treedef, values = _values(node)
        return _node(node.count, treedef, values, state_format)

    return jax.tree.map(convert, state, is_leaf=lambda node: isinstance(node, kinds))
