r"""Adamax state in about 2 bytes per parameter (``state_format="compact8"``): 8-bit m and u below block scales.

Per parameter, with :data:`BLOCK` = 256 consecutive elements (row-major) sharing two float32 scales:

* **u** as an 8-bit code ``q`` below the block's scale ``S``: ``u = S * v(q)``, ``v(q)`` read as the float32
  bits ``(q << 19) + OFFSET`` (4 mantissa bits, 16 codes an octave), ``v(255) = 1``, code 0 is ``u = 0``.  It is
  :mod:`adamax.compact`'s u with fewer bits, and keeps every guarantee stated there:

  - the decay is applied to the float32 scale, ``S <- S * b2``, rounded as float32 state rounds ``u * b2``, and
    the codes do not change, so u decays exactly and **never freezes**;
  - an element whose ``x`` (``|g| + eps`` or ``|g|``) exceeds its decayed u takes the least code whose value is
    at least ``x / S``: u rounds **up**, so the denominator is never below float32 state's from the same state
    and exceeds it by at most one code, a factor ``1 + 2**-4`` (6.25%); a compact8 step is never larger,
    elementwise, than the float32 step from the same state, and at most 5.9% smaller;
  - a block re-bases up by whole octaves when some ``x`` exceeds its scale (codes ``- 16 k``), so no u moves.

  **Range.**  The smallest code, ``v(1) = 1.125 * 2**-16 = 1.7e-5``, is 15.8 octaves below the scale: a ``u``
  more than 58,000 times smaller than its block's largest rounds up to it (a smaller step, never a larger one).
  Within a weight matrix's row of 256 inputs that ratio is rarely reached; an element that is always far below
  its block's peak steps more slowly than with float32 state.
* **m** as an 8-bit code: a sign bit (``0x80``) and a 7-bit magnitude ``q`` below the block's m scale ``Sm``,
  the block's largest ``|m|`` after the step: ``|m| = Sm * w(q)``, ``w(q)`` the float32 bits
  ``(q << 20) + OFFSET_M`` (3 mantissa bits, 8 codes an octave), ``w(127) = 1``, code 0 is ``m = 0``.  The code
  is rounded *stochastically* from the step's float32 m, so it is right on average, and m follows small
  updates (``(1 - b1)(g - m)``) that round-to-nearest would drop: ``|m| / Sm`` (times ``1 / Sm``, one reciprocal
  per block) goes up to the next code with probability equal to its distance from the code below, by 20 random
  bits (:func:`adamax.compact.hashed` of the element's flat index and the step count, the top 20) added to its
  float32 bits; below the smallest code, ``w(1) = 1.25 * 2**-16``, it becomes ``w(1)`` with probability
  ``r / w(1)``, else 0.  A block whose largest ``|m|`` is below ``2**-126`` stores 0.

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
from adamax.compact import BLOCK, TINY, Codes, blocks
from adamax.spec import AdamaxConfig

ONE = 255  # u's code of the block's scale: every 8-bit code is used
OFFSET = 0x3F800000 - (ONE << 19)  # v(q) has the float32 bits (q << 19) + OFFSET
U8 = Codes(19, ONE, OFFSET, np.uint8)
SMALLEST = float(np.uint32((1 << 19) + OFFSET).view(np.float32))  # v(1) = 1.125 * 2**-16
RATIO = 1 + 2.0**-4  # the largest ratio between neighbouring u codes' values

ONE_M = 127  # m's magnitude code of the block's largest |m|
OFFSET_M = 0x3F800000 - (ONE_M << 20)  # w(q) has the float32 bits (q << 20) + OFFSET_M
M7 = Codes(20, ONE_M, OFFSET_M, np.uint8)
SMALLEST_M = float(np.uint32((1 << 20) + OFFSET_M).view(np.float32))  # w(1) = 1.25 * 2**-16
BELOW = np.float32(2.0**20 / SMALLEST_M)  # r * BELOW against 20 random bits: P(code 1) = r / w(1) below w(1)
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


def init(param: np.ndarray) -> Compact8State:
    """The state before the first step: m = 0, u = 0."""
    shape, n = np.shape(param), blocks(np.size(param))
    return Compact8State(0, np.zeros(shape, np.uint8), np.zeros(n, _F32), np.zeros(shape, np.uint8), np.zeros(n, _F32))


def decode_m(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """m in float32, flat: ``±Sm * w(q)``."""
    q = np.asarray(codes, dtype=np.uint8).ravel()
    magnitude = compact.decode(q & np.uint8(0x7F), compact._per_element(np.asarray(scales, _F32), q.size), M7)
    return np.where(q & np.uint8(SIGN), -magnitude, magnitude)


def m_scales(m: np.ndarray) -> np.ndarray:
    """Each block's m scale: its largest ``|m|`` (NaN if it holds one), 0 where that is below ``2**-126``."""
    peak = compact._block_max(np.abs(m))
    return np.where(peak < TINY, _F32(0), peak).astype(_F32)


def encode_m(m: np.ndarray, scales: np.ndarray, bits: np.ndarray | None) -> np.ndarray:
    """m's codes (flat ``m``, ``scales`` from :func:`m_scales`): ``|m| * (1 / Sm)`` rounded stochastically by
    20 random ``bits`` per element (``None``: to nearest, as a checkpoint converts), with the sign."""
    f = _F32
    size = m.size
    scale_e = compact._per_element(scales, size)
    finite = np.isfinite(scale_e)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.where(finite & (scale_e > 0), f(1) / np.where(scale_e > 0, scale_e, f(1)), f(0)).astype(f)
        r = (np.abs(m).astype(f) * inv).astype(f)
    r_bits = r.view(np.uint32).astype(np.int64)
    add = np.asarray(bits, np.int64) if bits is not None else np.int64(1 << 19)
    above = np.clip((r_bits - OFFSET_M + add) >> 20, 1, ONE_M)
    if bits is None:
        below = (r * f(2.0 / SMALLEST_M) >= f(1)).astype(np.int64)  # to nearest: half of w(1) and up
    else:
        below = (np.asarray(bits, np.int64).astype(f) < r * BELOW).astype(np.int64)
    q = np.where(r_bits >= OFFSET_M + (1 << 20), above, below)
    signed = np.where((q > 0) & np.signbit(m), q | SIGN, q)
    return np.where(finite, signed, ONE_M).astype(np.uint8)


def update(param: np.ndarray, grad: np.ndarray, state: Compact8State, config: AdamaxConfig):
    """One Adamax step with compact8 state; returns ``(new_param, new_state)`` and modifies nothing.

    ``param`` is float16 or float32; the arithmetic is float32 and the new param is rounded back to its dtype.
    """
    t = int(state.step) + 1
    p, g = compact.gradient(param, grad, config)
    m = compact.moment(decode_m(state.exp_avg_code, state.exp_avg_scale), g, config)
    codes, scales, u = compact.infinity_norm(
        compact.u_input(g, config), state.exp_inf_code, state.exp_inf_scale, config, U8
    )
    p = compact.moved(p, m, u, t, config)
    m_scale = m_scales(m)
    m_codes = encode_m(m, m_scale, compact.hashed(np.arange(m.size), t) >> np.uint32(12))
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


def from_full(step: int, m: np.ndarray, u: np.ndarray) -> Compact8State:
    """Compact8 state holding float m and u: m to the nearest code below its block's largest ``|m|``, u rounded
    up to a code below its block's largest u."""
    m32 = np.asarray(m, dtype=_F32).ravel()
    u32 = np.asarray(u, dtype=_F32).ravel()
    if (u32 < 0).any():
        raise ValueError("exp_inf must not be negative (it is a maximum of magnitudes): it has no compact8 form")
    scales = compact._block_max(u32).astype(_F32)
    scale_e = compact._per_element(scales, u32.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(u32 == 0, _F32(0), u32 / scale_e)
    m_scale = m_scales(m32)
    shape = np.shape(u)
    return Compact8State(
        int(step), encode_m(m32, m_scale, None).reshape(np.shape(m)), m_scale,
        compact.encode(r, U8).reshape(shape), scales,
    )  # fmt: skip


def check_state(state: Mapping[str, Any] | Compact8State, shape: tuple[int, ...], what: str) -> None:
    """Refuse a compact8 state entry that does not fit a param of ``shape``."""
    entry = state._asdict() if isinstance(state, Compact8State) else state
    if set(entry) != set(KEYS):
        raise ValueError(f"{what} must have exactly the keys {sorted(KEYS)}, got {sorted(entry)}")
    compact.check_step_count(entry["step"], what)
    size = int(np.prod(shape, dtype=np.int64))
    for key, dtype, want in (
        ("exp_avg_code", np.uint8, shape),
        ("exp_avg_scale", np.float32, (blocks(size),)),
        ("exp_inf_code", np.uint8, shape),
        ("exp_inf_scale", np.float32, (blocks(size),)),
    ):
        value = np.asarray(entry[key])
        if value.dtype != dtype or value.shape != tuple(want):
            raise ValueError(f"{what}: {key} must be {np.dtype(dtype).name} of shape {tuple(want)}, got "
                             f"{value.dtype} of shape {value.shape}")  # fmt: skip
    for key in ("exp_avg_scale", "exp_inf_scale"):
        if (np.asarray(entry[key]) < 0).any():
            raise ValueError(f"{what}: {key} must not be negative")


__all__ = ["BLOCK", "Compact8State", "KEYS", "init", "update", "to_full", "from_full", "check_state"]
