r"""Compact Adamax state: about 4 bytes per parameter, and an infinity norm that never freezes.

``state_format="compact"`` keeps, per parameter:

* **m** in bfloat16, rounded *stochastically* from the step's float32 value:
  with round-to-nearest, an update ``(1 - b1)(g - m)`` below half an ulp of
  m would leave m where it is, step after step.  The random bits are a hash
  of the element's flat index and the step count, so every backend rounds
  alike and a run repeats bit for bit.
* **u** as a 16-bit code ``q`` below a float32 scale ``S`` shared by a block
  of ``BLOCK`` = 256 consecutive elements (row-major order): ``u = S * v(q)``,
  where ``v(q)`` is a small unsigned float with 6 exponent and 10 mantissa
  bits, read as float32 bits ``(q << 13) + OFFSET``: ``v(ONE) = 1``, each
  code ``1 + 2**-10`` times its neighbour below at most (0.1%), and ``v(1)``,
  the smallest, ``2**-63 (1 + 2**-10)``; code 0 is ``u = 0``.  A code is
  decoded and encoded with a shift and an add, no table and no logarithm,
  which is what lets the fused kernels run at memory speed.

**Why this never freezes.**  In bfloat16, ``0.999`` rounds to ``1.0``, so
bfloat16 state computes ``u <- max(u, |g|)`` and one large gradient damps
every later step (``adamax freeze`` shows it).  Here the decay is applied
to the block's float32 scale, ``S <- S * b2``, rounded as float32 state
rounds ``u * b2``, and the codes, ratios within the block, do not change.
The update ``u <- max(b2 u, x)`` (``x = |g| + eps``, or ``|g|``) then only
raises the code of an element whose ``x`` exceeds its decayed ``u``, to
:func:`encode`'s code for ``x / S``, which rounds **up** (the least code
whose value is at least the input).  So the denominator is never smaller
than float32 state's from the same state (up to float32 rounding of the
products) and exceeds it by at most one code, ``2**-10`` (0.1%): a compact
step is never larger, elementwise, than the float32 step, and at most 0.1%
smaller.

**Range.**  Codes span ``2**-63 = 1.1e-19`` below the scale, 19 decades for
any ``b2``: with ``eps = 1e-8`` every ``u`` from ``eps`` up to the block's
largest has a code while that largest is below ``9e10``; a smaller ``u``
rounds up to the smallest code (a smaller step, never a larger one).  When
some ``x`` exceeds the scale, the block is *re-based up* by a whole number
``k`` of octaves: ``S <- S * 2**k`` (the least ``k`` that covers ``x``; exact)
and every nonzero code ``q <- q - 1024 k``, so the block's values do not
move (codes pushed below the smallest stay there, rounding up).  A gradient
is never clamped to a smaller ``u``.  The largest ``u`` of a block stays
within an octave of its scale, so the range below it stays whole.  A scale
that has decayed below the smallest normal float32 (``2**-126``) counts as
zero when the block is next re-based: its ``u``, all below ``1.2e-38``, drop
to 0, as float32 state's would within a few more steps.

**Non-finite gradients.**  A NaN or infinite gradient makes its block's
scale NaN or infinite, and so every ``u`` of the block (float32 state
spoils only the element); the params of the block then go NaN, as the
element would.  ``skip_nonfinite=True`` skips such steps whole.

The step's arithmetic is float32, as :mod:`adamax.reference` computes it for
float32 params, except where it touches the state: ``u`` as above, and ``m``
stored rounded to bfloat16.  The step uses this step's float32 ``m`` (before
its rounding) and the decoded ``u``.

Bytes per element: 2 (m) + 2 (code) + 4/256 (scale) = 4.016, against 8 for
float32 state; a fused step moves 20 bytes per float32 element instead of 28.

**Row blocks.**  A lazy embedding table keeps its scales per row instead:
blocks of up to 256 elements that never straddle two rows, scales of shape
``(rows, ceil(row / 256))`` (:func:`row_blocks`), so that a row can be
brought up to date alone (:mod:`adamax._lazy_compact`).  Every function here
takes either layout and tells them apart by the scales' shape; an element's
random bits come from its flat index in both, so rows of a multiple of 256
elements are the same blocks, bit for bit.

This module is the definition (NumPy, vectorised); the fused kernels compute
the same bits.  Checkpoints convert both ways with :func:`to_full` (exact)
and :func:`from_full` (rounds m to nearest and u up).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from adamax._algorithm import step_size
from adamax._exact import fma
from adamax.spec import MAX_STEP, AdamaxConfig

BLOCK = 256  # elements sharing one scale
ZERO = 0  # the code of u = 0
ONE = 63 << 10  # the code of u = S (v = 1); larger codes are never produced
OFFSET = 64 << 23  # v(q) has the float32 bits (q << 13) + OFFSET
SMALLEST = float(np.uint32((1 << 13) + OFFSET).view(np.float32))  # v(1) = 2**-63 (1 + 2**-10)
RATIO = 1 + 2.0**-10  # the largest ratio between neighbouring codes' values
TINY = float(np.finfo(np.float32).tiny)  # 2**-126: a smaller scale counts as zero when a block is re-based
STATE_FORMATS = ("full", "compact", "compact8")  # compact8: adamax.compact8
KEYS = ("step", "exp_avg", "exp_inf_code", "exp_inf_scale")

_F32 = np.float32


class Codes(NamedTuple):
    """An unsigned code of ``u`` (or of ``|m|``) relative to a block's scale: ``v(q)`` has the float32 bits
    ``(q << shift) + offset`` (``23 - shift`` mantissa bits, ``2**(23 - shift)`` codes per octave), ``v(one) = 1``,
    code 0 is 0.  This module's u codes are :data:`U16`; :mod:`adamax.compact8` has 8-bit ones."""

    shift: int
    one: int  # the code of 1 (the block's scale)
    offset: int
    dtype: type

    @property
    def per_octave(self) -> int:
        return 1 << (23 - self.shift)

    def value(self, codes: np.ndarray) -> np.ndarray:
        """``v(q)`` of each code: float32 bits ``(q << shift) + offset``, and 0 for code 0."""
        q = np.asarray(codes, dtype=np.uint32)
        return np.where(q == 0, _F32(0), ((q << np.uint32(self.shift)) + np.uint32(self.offset)).view(_F32))

    def encode(self, r: np.ndarray) -> np.ndarray:
        """The least code whose value is at least ``r`` (float32 in [0, 1]), between 1 and ``one``; 0 for 0."""
        bits = np.asarray(r, dtype=_F32).view(np.uint32).astype(np.int64)
        q = np.clip(((bits + ((1 << self.shift) - 1)) >> self.shift) - (self.offset >> self.shift), 1, self.one)
        return np.where(bits == 0, 0, q).astype(self.dtype)

    def down(self, codes: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Nonzero ``codes`` (int64) of values divided by ``2**k``: ``k`` octaves lower, at least code 1."""
        return np.maximum(codes - k * self.per_octave, 1)


U16 = Codes(13, ONE, OFFSET, np.uint16)


class CompactState(NamedTuple):
    """One array's compact state.  ``exp_avg`` holds m's bfloat16 bits (NumPy has no bfloat16 dtype)."""

    step: int
    exp_avg: np.ndarray  # uint16, the param's shape: bfloat16 bits of m
    exp_inf_code: np.ndarray  # uint16, the param's shape: u's codes
    exp_inf_scale: np.ndarray  # float32, (blocks(size),): each block's scale


def check_state_format(state_format: Any) -> str:
    """``state_format`` if it is one of :data:`STATE_FORMATS`, else a ``ValueError`` naming them."""
    if not isinstance(state_format, str) or state_format not in STATE_FORMATS:
        raise ValueError(f"Invalid state_format: {state_format!r} (expected one of {', '.join(STATE_FORMATS)})")
    return state_format


def blocks(size: int) -> int:
    """How many scales an array of ``size`` elements has."""
    return -(-size // BLOCK)


def value(codes: np.ndarray, c: Codes = U16) -> np.ndarray:
    """``v(q)`` in float32: the code's value relative to its block's scale (``v(0) = 0``)."""
    return c.value(codes)


def encode(r: np.ndarray, c: Codes = U16) -> np.ndarray:
    """The least code ``q`` with ``v(q) >= r``, for float32 ``r`` in ``[0, 1]``: ``r`` rounded *up* to the code's
    mantissa bits (its float32 bits plus ``2**shift - 1``, cut), below ``v(1)`` to ``v(1)``; ``0`` -> 0."""
    return c.encode(r)


def decode(codes: np.ndarray, scales: np.ndarray, c: Codes = U16) -> np.ndarray:
    """``u = scale * v(code)`` in float32; ``scales`` per element (broadcast to ``codes``)."""
    return (np.asarray(scales, dtype=_F32) * value(codes, c)).astype(_F32)


def shift(scale: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """For ``2**-126 <= scale < peak``, both finite (float32): the least ``k >= 1`` with ``scale * 2**k >= peak``,
    from the float32 bits: the exponents' difference, plus one where peak's significand is the larger."""
    s = np.asarray(scale, _F32).view(np.int32).astype(np.int64)
    p = np.asarray(peak, _F32).view(np.int32).astype(np.int64)
    return (p >> 23) - (s >> 23) + ((p & 0x7FFFFF) > (s & 0x7FFFFF))


def scaled(scale: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``scale * 2**k`` for normal float32 ``scale`` and ``k >= 0``, exactly (infinity past the largest float)."""
    bits = np.asarray(scale, _F32).view(np.int32).astype(np.int64) + (np.asarray(k, np.int64) << 23)
    return np.where(bits >= 0x7F800000, _F32(np.inf), np.minimum(bits, 0x7F800000).astype(np.int32).view(_F32))


def init(param: np.ndarray, rows: bool = False) -> CompactState:
    """The state before the first step: m = 0, u = 0 (every code ``ZERO``, every scale 0); ``rows``: in row
    blocks (:func:`row_blocks`)."""
    shape = np.shape(param)
    return CompactState(
        0, np.zeros(shape, np.uint16), np.full(shape, ZERO, np.uint16), np.zeros(scales_shape(shape, rows), _F32)
    )


def row_blocks(shape: tuple[int, ...]) -> tuple[int, int]:
    """The scales' shape of an array of ``shape`` in *row blocks* (as a lazy table keeps them): ``(rows,
    blocks(row))``, ``rows = shape[0]``, no block straddling two rows; a 0-d array is one row."""
    rows = int(shape[0]) if len(shape) else 1
    size = int(np.prod(shape, dtype=np.int64))
    return rows, blocks(size // rows if rows else 0)


def scales_shape(shape: tuple[int, ...], rows: bool = False) -> tuple[int, ...]:
    """The scales' shape of an array of ``shape``: ``(blocks(size),)`` (256 consecutive elements a block), or in
    row blocks (:func:`row_blocks`)."""
    return row_blocks(shape) if rows else (blocks(int(np.prod(shape, dtype=np.int64))),)


def _per_element(values: np.ndarray, size: int) -> np.ndarray:
    """Block values repeated to their elements (flattened, ``size`` long); 2-d ``values`` are row blocks, one
    row of them per ``size / len(values)`` elements."""
    values = np.asarray(values)
    if values.ndim < 2:
        return np.repeat(values, BLOCK)[:size]
    rows = values.shape[0]
    return np.repeat(values, BLOCK, axis=1)[:, : size // rows if rows else 0].ravel()


def _block_max(x: np.ndarray, rows: int | None = None) -> np.ndarray:
    """Each block's largest element (NaN if it holds one): ``(blocks(size),)``, or ``(rows, blocks(row))`` in row
    blocks of ``x.size / rows`` elements (``rows`` given)."""
    x = np.asarray(x).ravel()
    if rows is None:
        padded = np.zeros(blocks(x.size) * BLOCK, dtype=x.dtype)
        padded[: x.size] = x
        return np.max(padded.reshape(-1, BLOCK), axis=1)
    row = x.size // rows if rows else 0
    per_row = blocks(row)
    padded = np.zeros((rows, per_row * BLOCK), dtype=x.dtype)
    padded[:, :row] = x.reshape(rows, row)
    return np.max(padded.reshape(rows, per_row, BLOCK), axis=2, initial=x.dtype.type(0))


def _rows_of(scales: np.ndarray) -> int | None:
    """The row count of row-block scales (2-d), None for consecutive blocks."""
    return np.shape(scales)[0] if np.ndim(scales) == 2 else None


def rebase(codes: np.ndarray, scales: np.ndarray, peaks: np.ndarray, c: Codes = U16) -> tuple[np.ndarray, np.ndarray]:
    """Blocks whose ``peak`` exceeds their scale (or either is not finite), re-based so that the scale covers
    the peak and no value moves; returns new ``codes`` (flat) and ``scales``.

    A finite normal scale moves up by whole octaves (:func:`shift`): ``S * 2**k``, and each nonzero code
    becomes ``c.down``'s, the code of its value ``k`` octaves lower (``- 1024 k`` for :data:`U16`, at least 1;
    rounded up for compact8's tapered codes).  A zero or subnormal scale becomes the peak, its codes 0.  A
    non-finite scale or peak becomes the peak (the block's ``u`` are then meaningless, as its params are)."""
    up = ~(peaks <= scales)
    if not up.any():
        return codes, scales
    finite = np.isfinite(scales) & np.isfinite(peaks)
    whole = up & finite & (scales >= TINY)
    k = np.where(whole, shift(np.where(whole, scales, 1), np.where(whole, peaks, 2)), 0)
    new_scales = np.where(whole, scaled(np.where(whole, scales, 1), k), np.where(up, peaks, scales)).astype(_F32)
    size = codes.size
    as_int = codes.astype(np.int64)
    moved = np.where(as_int == ZERO, ZERO, c.down(as_int, _per_element(k, size)))
    cleared = _per_element(up & (scales < TINY), size)
    codes = np.where(cleared, ZERO, moved).astype(c.dtype)
    return codes, new_scales


# ----- bfloat16 bits -----


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values, given by their uint16 bits, as float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(_F32)


def f32_to_bf16_nearest(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even bfloat16 bits (NaN stays NaN)."""
    bits = np.asarray(x, dtype=_F32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    return np.where(np.isnan(x), np.uint32(0x7FC0), rounded).astype(np.uint16)


def hashed(index: np.ndarray, step: int) -> np.ndarray:
    """32 random bits per element from its flat index and the step count: a 32-bit integer hash (the
    "lowbias32" mixer), the same in every backend."""
    with np.errstate(over="ignore"):
        x = np.asarray(index).astype(np.uint32) * np.uint32(0x9E3779B1) + np.uint32((step * 0x85EBCA77) & 0xFFFFFFFF)
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


def random_bits(index: np.ndarray, step: int) -> np.ndarray:
    """16 random bits per element: the low half of :func:`hashed`."""
    return hashed(index, step) & np.uint32(0xFFFF)


def f32_to_bf16_stochastic(x: np.ndarray, step: int, index: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bits of float32 ``x`` (flat), rounded up in magnitude with probability equal to the dropped
    fraction: the 16 dropped bits plus 16 random ones carry into the kept bits or not.  NaN stays NaN.
    ``index``: each element's flat index in its array (by default ``0, 1, ...``)."""
    x = np.asarray(x, dtype=_F32)
    bits = x.view(np.uint32)
    index = np.arange(x.size) if index is None else np.asarray(index).ravel()
    with np.errstate(over="ignore"):
        rounded = (bits + random_bits(index, step)) >> np.uint32(16)
    return np.where(np.isnan(x), np.uint32(0x7FC0), rounded).astype(np.uint16)


# ----- the step -----


def gradient(param: np.ndarray, grad: np.ndarray, config: AdamaxConfig) -> tuple[np.ndarray, np.ndarray]:
    """The step's float32 ``(p, g)``, flat: g negated for ``maximize`` and with coupled weight decay, p scaled by
    decoupled decay (a copy: nothing given is modified)."""
    f = _F32
    p = np.asarray(param, dtype=f).ravel().copy()
    g = np.asarray(grad, dtype=f).ravel()
    if config.maximize:
        g = -g
    if config.weight_decay and not config.decoupled_weight_decay:
        g = fma(p, f(config.weight_decay), g)
    elif config.weight_decay:
        p = p * f(1 - config.lr * config.weight_decay)
    return p, g


def moment(m: np.ndarray, g: np.ndarray, config: AdamaxConfig) -> np.ndarray:
    """``m + (1 - b1)(g - m)`` in float32, as the full-state step rounds it."""
    w = _F32(1 - config.beta1)
    return fma(w, g - m, m) if w < 0.5 else fma(-(g - m), _F32(1) - w, g)


def infinity_norm(
    x: np.ndarray, codes: np.ndarray, scales: np.ndarray, config: AdamaxConfig, c: Codes = U16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``u <- max(b2 u, x)`` on codes ``c`` (flat) below ``scales``: the scales decay, blocks re-base to cover
    their largest ``x``, and an element whose ``x`` exceeds its ``u`` takes ``x``'s code, rounded up.  Returns the
    new codes, scales and decoded ``u`` (per element)."""
    f = _F32
    scales = (np.asarray(scales, dtype=f) * f(config.beta2)).astype(f)
    return raised(x, codes, scales, c)


def raised(
    x: np.ndarray, codes: np.ndarray, scales: np.ndarray, c: Codes = U16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``u <- max(u, x)`` on codes ``c`` (flat) below ``scales`` (decayed already): blocks re-base to cover their
    largest ``x``, and an element whose ``x`` exceeds its ``u`` takes ``x``'s code, rounded up.  Returns the new
    codes, scales and decoded ``u`` (per element)."""
    f = _F32
    x = np.asarray(x, dtype=f).ravel()
    codes, scales = rebase(np.asarray(codes, dtype=c.dtype).ravel(), scales, _block_max(x, _rows_of(scales)), c)
    scale_e = _per_element(scales, x.size)
    u = decode(codes, scale_e, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(x == 0, f(0), x / scale_e)
    # x > u >= 0: x's code is at least 1, even where x / scale underflows to 0
    codes = np.where(x > u, np.maximum(codes, np.maximum(encode(r, c), 1)), codes).astype(c.dtype)
    return codes, scales, decode(codes, scale_e, c)


def moved(p: np.ndarray, m: np.ndarray, u: np.ndarray, t: int, config: AdamaxConfig) -> np.ndarray:
    """``p - lr / (1 - b1**t) * m / d``, ``d`` the denominator of ``u`` by the eps placement (no step where
    ``d`` is 0, which happens only where every gradient was 0)."""
    f = _F32
    denom = u + f(config.eps) if config.eps_placement == "denominator" else u
    numer = f(step_size(config.lr, config.beta1, t)) * m
    if config.eps_placement == "none" or config.eps == 0:
        return p + np.divide(numer, denom, out=np.zeros_like(numer), where=denom != 0)
    return p + numer / denom


def u_input(g: np.ndarray, config: AdamaxConfig) -> np.ndarray:
    """What ``u`` takes the maximum with: ``|g| + eps`` (eps placement ``"max"``) or ``|g|``."""
    return np.abs(g) + _F32(config.eps) if config.eps_placement == "max" else np.abs(g)


def update(
    param: np.ndarray, grad: np.ndarray, state: CompactState, config: AdamaxConfig, index: np.ndarray | None = None
):
    """One Adamax step with compact state; returns ``(new_param, new_state)`` and modifies nothing.

    ``param`` is float16 or float32 (bfloat16 params, as float32 arrays of their values, take the torch and
    kernel paths); the arithmetic is float32 and the new param is rounded back to the param's dtype.  Scales of
    shape ``(rows, k)`` are row blocks (:func:`row_blocks`).  ``index``: the elements' flat indices in their
    table, which pick their random bits (by default ``0, 1, ...``; rows taken out of a table pass theirs).
    """
    t = int(state.step) + 1
    p, g = gradient(param, grad, config)
    m = moment(bf16_to_f32(np.asarray(state.exp_avg).ravel()), g, config)
    codes, scales, u = infinity_norm(u_input(g, config), state.exp_inf_code, state.exp_inf_scale, config)
    p = moved(p, m, u, t, config)
    shape = np.shape(param)
    new_state = CompactState(t, f32_to_bf16_stochastic(m, t, index).reshape(shape), codes.reshape(shape), scales.copy())
    return p.astype(np.asarray(param).dtype).reshape(shape), new_state


# ----- conversions (checkpoints) -----


def to_full(state: CompactState) -> tuple[int, np.ndarray, np.ndarray]:
    """``(step, m, u)`` in float32: the compact state's values, exactly."""
    codes = np.asarray(state.exp_inf_code)
    scales = _per_element(np.asarray(state.exp_inf_scale, dtype=_F32), codes.size).reshape(codes.shape)
    return int(state.step), bf16_to_f32(state.exp_avg).reshape(codes.shape), decode(codes, scales)


def from_full(step: int, m: np.ndarray, u: np.ndarray, rows: bool = False) -> CompactState:
    """Compact state holding float m and u: m rounded to the nearest bfloat16, u rounded up to a code below its
    block's largest value (the block's scale); ``rows``: in row blocks (:func:`row_blocks`)."""
    m32 = np.asarray(m, dtype=_F32)
    u32 = np.asarray(u, dtype=_F32).ravel()
    if (u32 < 0).any():
        raise ValueError("exp_inf must not be negative (it is a maximum of magnitudes): it has no compact form")
    scales = _block_max(u32, row_blocks(np.shape(u))[0] if rows else None).astype(_F32)
    scale_e = _per_element(scales, u32.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(u32 == 0, _F32(0), u32 / scale_e)
    codes = encode(r).reshape(np.shape(u))
    return CompactState(int(step), f32_to_bf16_nearest(m32).reshape(np.shape(m)), codes, scales)


def check_step_count(step: Any, what: str) -> None:
    """Refuse a step count that is not a whole number in ``[0, 2**53 - 1)``."""
    number = np.asarray(step) if isinstance(step, (int, float, np.integer, np.floating, np.ndarray)) else None
    if (
        isinstance(step, bool)
        or number is None
        or number.shape != ()
        or number.dtype.kind not in "iuf"
        or not float(number).is_integer()
        or not 0 <= float(number) < MAX_STEP
    ):
        raise ValueError(f"{what}: step must be a whole number >= 0, got {step!r} (counts stop at 2**53 - 1)")


def check_entry(entry: Mapping[str, Any], arrays: tuple, shape: tuple[int, ...], what: str) -> None:
    """Refuse a compact format's entry unless it has exactly a step and ``arrays`` (``(key, dtype, "param" |
    "blocks")``: the param's shape, or one per block of it, all its scales in one layout: consecutive blocks or
    row blocks), the step a whole count and every scale (a ``"blocks"`` array) not negative."""
    keys = {"step", *(key for key, _, _ in arrays)}
    if set(entry) != keys:
        raise ValueError(f"{what} must have exactly the keys {sorted(keys)}, got {sorted(entry)}")
    check_step_count(entry["step"], what)
    first_scales = next(np.shape(entry[key]) for key, _, how in arrays if how == "blocks")
    rows = len(first_scales) == 2 and len(shape) > 0
    for key, dtype, how in arrays:
        want = tuple(shape) if how == "param" else scales_shape(tuple(shape), rows)
        value = np.asarray(entry[key])
        if value.dtype != dtype or value.shape != want:
            raise ValueError(f"{what}: {key} must be {np.dtype(dtype).name} of shape {want}, got "
                             f"{value.dtype} of shape {value.shape}")  # fmt: skip
    for key, _, how in arrays:
        if how == "blocks" and (np.asarray(entry[key]) < 0).any():
            raise ValueError(f"{what}: {key} must not be negative")


def check_state(state: Mapping[str, Any] | CompactState, shape: tuple[int, ...], what: str) -> None:
    """Refuse a compact state entry that does not fit a param of ``shape``."""
    entry = state._asdict() if isinstance(state, CompactState) else state
    check_entry(entry, (("exp_avg", np.uint16, "param"), ("exp_inf_code", np.uint16, "param"),
                        ("exp_inf_scale", np.float32, "blocks")), shape, what)  # fmt: skip
    if (np.asarray(entry["exp_inf_code"]) > ONE).any():
        raise ValueError(f"{what}: exp_inf_code holds codes above {ONE}, the largest (u = the block's scale)")
