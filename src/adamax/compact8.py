r"""Adamax state in about 2 bytes per parameter (``state_format="compact8"``): 8-bit m and u below block scales.

Per parameter, with :data:`BLOCK` = 256 consecutive elements (row-major) sharing two float32 scales:

* **u** as an 8-bit code ``q`` below the block's scale ``S``: ``u = S * v(q)``, ``v(255) = 1``, code 0 is
  ``u = 0``.  The codes are *tapered* (:class:`Tapered`): within 4 octaves of the scale (``v >= 2**-4``) they
  have 5 mantissa bits, 32 codes an octave, each ``1 + 2**-5`` times its neighbour below at most (3.1%); below
  that 3 mantissa bits, 8 an octave (12.5%), down to ``v(1) = 1.25 * 2**-20 = 1.2e-6``.  The fine codes
  hold what sits near a block's largest u (89% of the u of a small character LM after 300 steps); the coarse
  ones stretch the range.  Each
  is read and rounded with a compare, a shift and an add.  The u of :mod:`adamax.compact` with fewer bits,
  keeping every guarantee stated there:

  - the decay is applied to the float32 scale, ``S <- S * b2``, rounded as float32 state rounds ``u * b2``, and
    the codes do not change, so u decays exactly and **never freezes**;
  - an element whose ``x`` (``|g| + eps`` or ``|g|``) exceeds its decayed u takes the least code whose value is
    at least ``x / S``: u rounds **up**, so the denominator is never below float32 state's from the same state
    and exceeds it by at most one code: a factor ``1 + 2**-5`` for a u within 16 times its block's scale,
    ``1 + 2**-3`` below.  A compact8 step is never larger, elementwise, than the float32 step from the same
    state;
  - a block re-bases up by whole octaves when some ``x`` exceeds its scale: ``S <- S * 2**k`` and each code
    becomes the code of its value divided by ``2**k``, rounded up (exact within a region), so no u moves down.

  **Range.**  A ``u`` more than 840,000 times smaller than its block's scale rounds up to ``v(1)`` (a smaller
  step, never a larger one).

* **m** as an 8-bit code: a sign bit (``0x80``) and a 7-bit magnitude ``q`` below the block's m scale ``Sm``,
  the block's largest ``|m|`` after the step: ``|m| = Sm * w(q)``, ``w(q)`` the float32 bits
  ``(q << 19) + OFFSET_M`` (4 mantissa bits, 16 codes an octave), ``w(127) = 1``, code 0 is ``m = 0``.  The code
  is rounded *stochastically* from the step's float32 m, so it is right on average, and m follows small
  updates (``(1 - b1)(g - m)``) that round-to-nearest would drop: ``r = |m| * (1 / Sm)`` (one reciprocal per
  block) goes up to the next code with probability equal to its distance from the code below, by 19 random
  bits (the top of :func:`adamax.compact.hashed` of the element's flat index and the step count) added to its
  float32 bits; below the smallest code, ``w(1) = 1.125 * 2**-8``, it becomes ``w(1)`` with probability
  ``r / w(1)``, else 0, so an m far below its block's largest is kept on average, with more noise.  A block whose
  largest ``|m|`` is below ``2**-126`` stores 0.

**Non-finite values.**  A NaN or infinite gradient makes its block's u scale (and m scale) NaN or infinite;
every u and m of the block is then NaN or infinite, and so are the block's params, as the element's would be
with float32 state.  Such a block's m codes are all 127.  ``skip_nonfinite=True`` skips such steps whole.

The arithmetic is float32, as :mod:`adamax.compact` computes it: the step uses this step's float32 m (before
its rounding) and the decoded u.

Bytes per element: 1 (m) + 1 (u) + 8 / 256 (two scales) = 2.031, against 8 for float32 state and 4.016 for
``"compact"``; a fused step moves 16 bytes per float32 element (p 4 + 4, g 4, m 1 + 1, u 1 + 1) instead of 28.

This module is the definition (NumPy); the fused kernels compute the same bits.  Checkpoints convert with
:func:`to_full` (exact) and :func:`from_full` (m to the nearest code, u up).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from adamax import compact
from adamax.compact import BLOCK, TINY, Codes
from adamax.spec import AdamaxConfig


class Tapered(NamedTuple):
    """u's 8-bit codes: 5 mantissa bits in the top 4 octaves below the scale, 3 below them.

    ``v(q)`` has the float32 bits ``(q << 18) + hi.offset`` for ``q >= BOUNDARY`` (``v(255) = 1``,
    ``v(BOUNDARY) = 2**-4``) and ``(q << 20) + lo.offset`` below (``v(BOUNDARY)`` is ``2**-4`` by either);
    ``v(0) = 0``.  Values are read, rounded up and moved down by octaves as :class:`adamax.compact.Codes` does,
    region by region."""

    hi: Codes
    lo: Codes
    boundary: int
    one: int
    dtype: type

    def value(self, codes: np.ndarray) -> np.ndarray:
        q = np.asarray(codes, dtype=np.uint32)
        return np.where(q >= self.boundary, self.hi.value(q), self.lo.value(q))

    def encode(self, r: np.ndarray) -> np.ndarray:
        r = np.asarray(r, dtype=_F32)
        return np.where(r > _F32(2.0**-4), self.hi.encode(r), self.lo.encode(r)).astype(self.dtype)

    def down(self, codes: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Nonzero ``codes`` of values divided by ``2**k`` (exactly, in float32), rounded up, at least code 1."""
        factor = np.ldexp(_F32(1), -np.minimum(np.asarray(k, np.int64), 200).astype(np.int32)).astype(_F32)
        return np.maximum(self.encode((self.value(codes) * factor).astype(_F32)).astype(np.int64), 1)


ONE = 255  # u's code of the block's scale: every 8-bit code is used
BOUNDARY = 127  # v(BOUNDARY) = 2**-4: finer codes above, coarser below
U8 = Tapered(
    Codes(18, ONE, 0x3F800000 - (ONE << 18), np.uint8),
    Codes(20, BOUNDARY, (123 << 23) - (BOUNDARY << 20), np.uint8),
    BOUNDARY, ONE, np.uint8,
)  # fmt: skip
SMALLEST = float(U8.value(np.array([1]))[0])  # v(1) = 1.25 * 2**-20
RATIO = 1 + 2.0**-3  # the largest ratio between neighbouring u codes' values (1 + 2**-5 in the top 4 octaves)

ONE_M = 127  # m's magnitude code of the block's largest |m|
OFFSET_M = 0x3F800000 - (ONE_M << 19)  # w(q) has the float32 bits (q << 19) + OFFSET_M
M7 = Codes(19, ONE_M, OFFSET_M, np.uint8)
SMALLEST_M = float(np.uint32((1 << 19) + OFFSET_M).view(np.float32))  # w(1) = 1.125 * 2**-8
BELOW = np.float32(2.0**19 / SMALLEST_M)  # r * BELOW against 19 random bits: P(code 1) = r / w(1) below w(1)
RANDOM_BITS = 19  # the top bits of adamax.compact.hashed that round m
SIGN = 0x80

KEYS = ("step", "exp_avg_code", "exp_avg_scale", "exp_inf_code", "exp_inf_scale")
BYTES_PER_PARAM = 2 + 8 / BLOCK

_F32 = np.float32


class Compact8State(NamedTuple):
    """One array's compact8 state."""

    step: int
    exp_avg_code: np.ndarray  # uint8, the param's shape: m's sign and magnitude code
    exp_avg_scale: np.ndarray  # float32, (blocks(size),): each block's largest |m|
    exp_inf_code: np.ndarray  # uint8, the param's shape: u's codes
    exp_inf_scale: np.ndarray  # float32, (blocks(size),): each block's u scale


def init(param: np.ndarray, rows: bool = False) -> Compact8State:
    """The state before the first step: m = 0, u = 0; ``rows``: in row blocks (:func:`adamax.compact.row_blocks`)."""
    shape = np.shape(param)
    n = compact.scales_shape(shape, rows)
    return Compact8State(0, np.zeros(shape, np.uint8), np.zeros(n, _F32), np.zeros(shape, np.uint8), np.zeros(n, _F32))


def decode_m(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """m in float32, flat: ``±Sm * w(q)``."""
    q = np.asarray(codes, dtype=np.uint8).ravel()
    magnitude = compact.decode(q & np.uint8(0x7F), compact._per_element(np.asarray(scales, _F32), q.size), M7)
    return np.where(q & np.uint8(SIGN), -magnitude, magnitude)


def m_scales(m: np.ndarray, rows: int | None = None) -> np.ndarray:
    """Each block's m scale: its largest ``|m|`` (NaN if it holds one), 0 where that is below ``2**-126``; in row
    blocks of ``m.size / rows`` elements where ``rows`` is given."""
    peak = compact._block_max(np.abs(m), rows)
    return np.where(peak < TINY, _F32(0), peak).astype(_F32)


def encode_m(m: np.ndarray, scales: np.ndarray, bits: np.ndarray | None) -> np.ndarray:
    """m's codes (flat ``m``, ``scales`` from :func:`m_scales`): ``|m| * (1 / Sm)`` rounded stochastically by
    19 random ``bits`` per element (``None``: to nearest, as a checkpoint converts), with the sign."""
    f = _F32
    size = m.size
    scale_e = compact._per_element(scales, size)
    finite = np.isfinite(scale_e)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.where(finite & (scale_e > 0), f(1) / np.where(scale_e > 0, scale_e, f(1)), f(0)).astype(f)
        r = (np.abs(m).astype(f) * inv).astype(f)
    r_bits = r.view(np.uint32).astype(np.int64)
    shift, offset = M7.shift, M7.offset
    add = np.asarray(bits, np.int64) if bits is not None else np.int64(1 << (shift - 1))
    above = np.clip((r_bits - offset + add) >> shift, 1, ONE_M)
    if bits is None:
        below = (r * f(2.0 / SMALLEST_M) >= f(1)).astype(np.int64)  # to nearest: half of w(1) and up
    else:
        below = (np.asarray(bits, np.int64).astype(f) < r * BELOW).astype(np.int64)
    q = np.where(r_bits >= offset + (1 << shift), above, below)
    signed = np.where((q > 0) & np.signbit(m), q | SIGN, q)
    return np.where(finite, signed, ONE_M).astype(np.uint8)


def update(
    param: np.ndarray, grad: np.ndarray, state: Compact8State, config: AdamaxConfig, index: np.ndarray | None = None
):
    """One Adamax step with compact8 state; returns ``(new_param, new_state)`` and modifies nothing.

    ``param`` is float16 or float32; the arithmetic is float32 and the new param is rounded back to its dtype.
    Scales of shape ``(rows, k)`` are row blocks; ``index``: the elements' flat indices in their table, which
    pick their random bits (by default ``0, 1, ...``), as :func:`adamax.compact.update` takes them.
    """
    t = int(state.step) + 1
    p, g = compact.gradient(param, grad, config)
    m = compact.moment(decode_m(state.exp_avg_code, state.exp_avg_scale), g, config)
    codes, scales, u = compact.infinity_norm(
        compact.u_input(g, config), state.exp_inf_code, state.exp_inf_scale, config, U8
    )
    p = compact.moved(p, m, u, t, config)
    m_scale = m_scales(m, compact._rows_of(state.exp_avg_scale))
    index = np.arange(m.size) if index is None else np.asarray(index).ravel()
    m_codes = encode_m(m, m_scale, compact.hashed(index, t) >> np.uint32(32 - RANDOM_BITS))
    shape = np.shape(param)
    new = Compact8State(t, m_codes.reshape(shape), m_scale, codes.reshape(shape), scales.copy())
    return p.astype(np.asarray(param).dtype).reshape(shape), new


# ----- conversions (checkpoints) -----


def to_full(state: Compact8State) -> tuple[int, np.ndarray, np.ndarray]:
    """``(step, m, u)`` in float32: the compact8 state's values, exactly."""
    codes = np.asarray(state.exp_inf_code)
    scales = compact._per_element(np.asarray(state.exp_inf_scale, dtype=_F32), codes.size).reshape(codes.shape)
    m = decode_m(state.exp_avg_code, state.exp_avg_scale).reshape(codes.shape)
    return int(state.step), m, compact.decode(codes, scales, U8)


def from_full(step: int, m: np.ndarray, u: np.ndarray, rows: bool = False) -> Compact8State:
    """Compact8 state holding float m and u: m to the nearest code below its block's largest ``|m|``, u rounded
    up to a code below its block's largest u; ``rows``: in row blocks (:func:`adamax.compact.row_blocks`)."""
    count = compact.row_blocks(np.shape(u))[0] if rows else None
    m32 = np.asarray(m, dtype=_F32).ravel()
    u32 = np.asarray(u, dtype=_F32).ravel()
    if (u32 < 0).any():
        raise ValueError("exp_inf must not be negative (it is a maximum of magnitudes): it has no compact8 form")
    scales = compact._block_max(u32, count).astype(_F32)
    scale_e = compact._per_element(scales, u32.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(u32 == 0, _F32(0), u32 / scale_e)
    m_scale = m_scales(m32, count)
    shape = np.shape(u)
    return Compact8State(
        int(step), encode_m(m32, m_scale, None).reshape(np.shape(m)), m_scale,
        compact.encode(r, U8).reshape(shape), scales,
    )  # fmt: skip


def check_state(state: Mapping[str, Any] | Compact8State, shape: tuple[int, ...], what: str) -> None:
    """Refuse a compact8 state entry that does not fit a param of ``shape``."""
    entry = state._asdict() if isinstance(state, Compact8State) else state
    arrays = (
        ("exp_avg_code", np.uint8, "param"),
        ("exp_avg_scale", np.float32, "blocks"),
        ("exp_inf_code", np.uint8, "param"),
        ("exp_inf_scale", np.float32, "blocks"),
    )
    compact.check_entry(entry, arrays, shape, what)


__all__ = ["BLOCK", "KEYS", "Compact8State", "check_state", "from_full", "init", "to_full", "update"]
