r"""The compact formats' state arithmetic on blocks, written once over an array namespace: the optax transform
passes JAX's (:mod:`adamax.optax`), the Keras optimizer ``keras.ops`` (:mod:`adamax.keras`).

A leaf is laid out as float32 blocks, one a row (:func:`blocked`; the last padded with zeros), so each block's
scale broadcasts along its row: no repeat and no gather, which is what lets XLA fuse it.  Every function computes
the bits of the NumPy definitions in :mod:`adamax.compact` and :mod:`adamax.compact8` (``tests/test_blocks.py``
checks each on arbitrary inputs; ``tests/test_compact_optax.py`` and ``tests/test_keras.py`` check whole steps),
except that XLA flushes subnormal floats to zero (docs/design.md); only the first moment's formula is left to the
caller, which follows its library's own (optax's and Keras's differ in rounding).

Integer arithmetic is int32 throughout, since not every backend has unsigned 32-bit multiplies (torch's): a
multiply wraps alike in int32 and uint32, and :meth:`Arrays.shr` is a *logical* shift.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from adamax import compact, compact8

_KEY_INDEX = 0x9E3779B1 - (1 << 32)  # adamax.compact.hashed's constants as int32 (same bits)
_KEY_STEP = 0x85EBCA77 - (1 << 32)
_MIX1 = 0x7FEB352D
_MIX2 = 0x846CA68B - (1 << 32)


class Arrays(Protocol):
    """What this module needs of an array library: elementwise ``where``, ``maximum``, ``minimum``, ``abs``,
    ``isfinite``, ``signbit``; ``max(x, axis)`` and ``any(x)``; float32 <-> int32 casts and bit views; shifts (``shr``
    logical) and bitwise ``&`` and ``^`` on int32; ``cond`` (one branch run, under a trace too)."""

    def where(self, c: Any, a: Any, b: Any) -> Any: ...
    def maximum(self, a: Any, b: Any) -> Any: ...
    def minimum(self, a: Any, b: Any) -> Any: ...
    def abs(self, x: Any) -> Any: ...
    def isfinite(self, x: Any) -> Any: ...
    def signbit(self, x: Any) -> Any: ...
    def max(self, x: Any, axis: int) -> Any: ...
    def any(self, x: Any) -> Any: ...
    def f32(self, x: Any) -> Any: ...
    def i32(self, x: Any) -> Any: ...
    def bits(self, x: Any) -> Any: ...
    def from_bits(self, bits: Any) -> Any: ...
    def shl(self, x: Any, n: int) -> Any: ...
    def shr(self, x: Any, n: int) -> Any: ...
    def band(self, x: Any, mask: int) -> Any: ...
    def bxor(self, x: Any, y: Any) -> Any: ...
    def arange(self, n: int) -> Any: ...
    def flat(self, x: Any) -> Any: ...
    def pad(self, x: Any, n: int) -> Any: ...
    def reshape(self, x: Any, shape: tuple[int, ...]) -> Any: ...
    def cond(self, pred: Any, then: Any, otherwise: Any, operand: Any) -> Any: ...


def blocked(xp: Arrays, x: Any, shape: tuple[int, ...]) -> Any:
    """A leaf of ``shape`` as float32 (or int32) blocks of :data:`adamax.compact.BLOCK`, one a row, the last padded
    with zeros."""
    size = math.prod(shape)
    return xp.reshape(xp.pad(xp.flat(x), compact.blocks(size) * compact.BLOCK - size), (-1, compact.BLOCK))


def unblocked(xp: Arrays, x: Any, shape: tuple[int, ...]) -> Any:
    """:func:`blocked` undone: the first ``size`` elements, in ``shape``."""
    return xp.reshape(xp.flat(x)[: math.prod(shape)], shape)


class _U16:
    """:data:`adamax.compact.U16` on int32 codes."""

    def value(self, xp: Arrays, q: Any) -> Any:
        return xp.where(q == 0, 0.0, xp.from_bits(xp.shl(q, 13) + compact.OFFSET))

    def encode(self, xp: Arrays, r: Any) -> Any:
        """The least code at or above ``r`` in ``[0, 1]``, at least 1."""
        return xp.maximum(xp.shr(xp.bits(r) + 0x1FFF, 13) - (compact.OFFSET >> 13), 1)

    def down(self, xp: Arrays, q: Any, k: Any) -> Any:
        return xp.maximum(q - xp.shl(k, 10), 1)


class _U8:
    """:data:`adamax.compact8.U8` (tapered) on int32 codes."""

    hi, lo, boundary = compact8.U8.hi.offset, compact8.U8.lo.offset, compact8.BOUNDARY

    def value(self, xp: Arrays, q: Any) -> Any:
        lower = xp.where(q == 0, 0.0, xp.from_bits(xp.shl(q, 20) + self.lo))
        return xp.where(q >= self.boundary, xp.from_bits(xp.shl(q, 18) + self.hi), lower)

    def encode(self, xp: Arrays, r: Any) -> Any:
        bits = xp.bits(r)
        upper = xp.minimum(xp.maximum(xp.shr(bits + (1 << 18) - 1, 18) - (self.hi >> 18), 1), compact8.ONE)
        lower = xp.minimum(xp.maximum(xp.shr(bits + (1 << 20) - 1, 20) - (self.lo >> 20), 1), self.boundary)
        return xp.where(r > 2.0**-4, upper, lower)

    def down(self, xp: Arrays, q: Any, k: Any) -> Any:
        """The code of ``v(q) * 2**-k``, rounded up.  ``2**-k`` is built from its bits with ``k`` at most 126: any
        ``v(q) * 2**-k`` with a larger ``k`` is below ``v(1)`` (about ``2**-20``), as is ``v(q) * 2**-126``, and
        both become code 1."""
        factor = xp.from_bits(xp.shl(127 - xp.minimum(k, 126), 23))
        return self.encode(xp, self.value(xp, q) * factor)


U16, U8 = _U16(), _U8()  # the codes, passed to blocked_u as ``c``


def rebased(xp: Arrays, scale: Any, peak: Any) -> tuple[Any, Any]:
    """:func:`adamax.compact.shift` and :func:`adamax.compact.scaled`: ``k`` and ``scale * 2**k``."""
    s, p = xp.bits(scale), xp.bits(peak)
    k = xp.shr(p, 23) - xp.shr(s, 23) + xp.i32(xp.band(p, 0x7FFFFF) > xp.band(s, 0x7FFFFF))
    bits = s + xp.shl(k, 23)  # below 2**31: s < 0x7F800000 and k <= 254
    return k, xp.where(bits >= 0x7F800000, float("inf"), xp.from_bits(bits))


def hashed(xp: Arrays, shape: tuple[int, ...], count: Any) -> Any:
    """:func:`adamax.compact.hashed` (its 32 bits as int32) for elements ``0 ..`` (row-major over ``shape``, which
    may be blocks) at step ``count`` (an int32 scalar)."""
    x = xp.reshape(xp.arange(math.prod(shape)), shape) * _KEY_INDEX + xp.i32(count) * _KEY_STEP
    x = xp.bxor(x, xp.shr(x, 16)) * _MIX1
    x = xp.bxor(x, xp.shr(x, 15)) * _MIX2
    return xp.bxor(x, xp.shr(x, 16))


def stochastic_bf16(xp: Arrays, m: Any, count: Any) -> Any:
    """:func:`adamax.compact.f32_to_bf16_stochastic` of float32 ``m`` at step ``count``, as the int32 bits of a
    float32 whose low 16 bits are 0 (so its bfloat16 bits are the high half); NaN becomes ``0x7FC0``'s NaN."""
    rounded = xp.band(xp.bits(m) + xp.band(hashed(xp, tuple(m.shape), count), 0xFFFF), -0x10000)
    return xp.where(m != m, 0x7FC00000, rounded)


def blocked_u(xp: Arrays, g: Any, code: Any, scale: Any, b2: Any, eps: Any, eps_placement: str, c: Any):
    """:func:`adamax.compact.infinity_norm` for one leaf of float32 gradients ``g`` (``code``: its codes, shaped
    like it, in codes ``c``, :data:`U16` or :data:`U8`; ``scale``: its block scales): new codes and scales, and
    the decoded u, as blocks (int32 codes)."""
    shape = tuple(g.shape)
    x = blocked(xp, xp.abs(g) + eps if eps_placement == "max" else xp.abs(g), shape)
    peak = xp.max(x, 1)
    scale = scale * xp.f32(b2)
    codes = blocked(xp, xp.i32(code), shape)
    up = ~(peak <= scale)
    whole = up & xp.isfinite(scale) & xp.isfinite(peak) & (scale >= compact.TINY)
    k, moved_scale = rebased(xp, xp.where(whole, scale, 1.0), xp.where(whole, peak, 2.0))
    k = xp.where(whole, k, 0)
    new_scale = xp.where(whole, moved_scale, xp.where(up, peak, scale))
    column_k = xp.reshape(k, (-1, 1))
    if c is U16:  # a subtraction: cheaper than a branch
        moved = xp.where(codes == compact.ZERO, compact.ZERO, c.down(xp, codes, column_k))
    else:  # a re-base is rare: its arithmetic is skipped when no block of the leaf has one
        moved = xp.cond(
            xp.any(k > 0),
            lambda q: xp.where(q == compact.ZERO, compact.ZERO, c.down(xp, q, column_k)),
            lambda q: q,
            codes,
        )
    codes = xp.where(xp.reshape(up & (scale < compact.TINY), (-1, 1)), compact.ZERO, moved)
    column = xp.reshape(new_scale, (-1, 1))
    u = column * c.value(xp, codes)
    rising = x > u
    codes = xp.where(rising, xp.maximum(codes, c.encode(xp, x / xp.where(rising, column, 1.0))), codes)
    return codes, new_scale, column * c.value(xp, codes)


def compact_u(xp: Arrays, g: Any, code: Any, scale: Any, b2: Any, eps: Any, eps_placement: str):
    """The u half of :func:`adamax.compact.update` for one leaf: new int32 codes (shaped like ``g``), new scales,
    and the decoded u (shaped like ``g``)."""
    codes, new_scale, u = blocked_u(xp, g, code, scale, b2, eps, eps_placement, U16)
    shape = tuple(g.shape)
    return unblocked(xp, codes, shape), new_scale, unblocked(xp, u, shape)


def decoded_m(xp: Arrays, code: Any, scale: Any) -> Any:
    """:func:`adamax.compact8.decode_m` on blocks."""
    q = blocked(xp, xp.i32(code), tuple(code.shape))
    low = xp.band(q, 0x7F)
    w = xp.where(low == 0, 0.0, xp.from_bits(xp.shl(low, 19) + compact8.OFFSET_M))
    magnitude = xp.reshape(scale, (-1, 1)) * w
    return xp.where(xp.band(q, compact8.SIGN) != 0, -magnitude, magnitude)


def encoded_m(xp: Arrays, m: Any, count: Any) -> tuple[Any, Any]:
    """:func:`adamax.compact8.m_scales` and :func:`adamax.compact8.encode_m` (stochastic) on blocks: int32 codes
    and the new m scales."""
    magnitude = xp.abs(m)
    peak = xp.max(magnitude, 1)
    scale = xp.where(peak < compact.TINY, 0.0, peak)
    finite = xp.isfinite(scale)
    positive = scale > 0
    inv = xp.where(finite & positive, 1.0 / xp.where(positive, scale, 1.0), 0.0)
    r = magnitude * xp.reshape(inv, (-1, 1))
    bits = xp.bits(r)
    rand = xp.shr(hashed(xp, tuple(m.shape), count), 32 - compact8.RANDOM_BITS)
    above = xp.minimum(xp.maximum(xp.shr(bits - compact8.OFFSET_M + rand, 19), 1), compact8.ONE_M)
    below = xp.i32(xp.f32(rand) < r * float(compact8.BELOW))
    q = xp.where(bits >= compact8.OFFSET_M + (1 << 19), above, below)
    signed = xp.where((q > 0) & xp.signbit(m), q + compact8.SIGN, q)
    return xp.where(xp.reshape(finite, (-1, 1)), signed, compact8.ONE_M), scale
