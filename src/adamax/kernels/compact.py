"""The fused CPU kernel for compact state (:mod:`adamax.compact`), and low-precision params (numba).

One parallel pass, block by block (256 elements share a scale): the block's
gradients are read twice from L1 (once for the block's largest ``|g| + eps``,
which decides a re-base, once for the update), and each element's p, g, m
and code are read and written once from memory: 20 bytes per float32 element
(p 4 + 4, g 4, m 2 + 2, code 2 + 2), 14 for bfloat16 and float16 params.
The arithmetic is float32 and follows :func:`adamax.compact.update` operation
for operation, so the results are the same bits; a bfloat16 or float16 param
is widened exactly and rounded to nearest (even) when stored, as torch rounds.

Params of one kind (float32, bfloat16, float16) go through one parallel region, however many tensors, through a
chunk table of (tensor, first block, last block).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from adamax import compact
from adamax.kernels.cpu import (
    COUPLED,
    DECAY,
    DECOUPLED,
    EPS_DENOMINATOR,
    EPS_MAX,
    GUARD,
    MAXIMIZE,
    PLACEMENT,
    _fma,
    _maximum,
    _pointer,
    flags_and_hyper,
)

F32, BF16, F16 = 0, 1, 2  # param kinds
KINDS = {np.dtype(np.float32): F32, np.dtype(np.float16): F16}  # NumPy dtypes; bfloat16 comes from torch only
BLOCKS_PER_CHUNK = 256  # 65,536 elements per work item
ZERO, FLOOR = compact.ZERO, compact.FLOOR
_LOG_RHO = math.log(compact.RHO)
_MASK = np.uint64(0xFFFFFFFF)


# ----- 16-bit floats, by their bits -----


@njit(inline="always")
def _bf16_to_f32(bits):
    return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)


@njit(inline="always")
def _f32_to_bf16(x):
    """Round to nearest even (NaN -> 0x7FC0), as torch and :func:`adamax.compact.f32_to_bf16_nearest`."""
    if x != x:
        return np.uint16(0x7FC0)
    bits = np.uint32(np.float32(x).view(np.uint32))
    return np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(inline="always")
def _f16_to_f32(bits):
    h = np.uint32(bits)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exponent = (h >> np.uint32(10)) & np.uint32(0x1F)
    mantissa = h & np.uint32(0x3FF)
    if exponent == 0:  # zero or subnormal: mantissa * 2^-24, exact in float32
        value = np.float32(mantissa) * np.float32(2.0**-24)
        return -value if sign else value
    if exponent == 31:
        return np.uint32(sign | np.uint32(0x7F800000) | (mantissa << np.uint32(13))).view(np.float32)
    return np.uint32(sign | ((exponent + np.uint32(112)) << np.uint32(23)) | (mantissa << np.uint32(13))).view(
        np.float32
    )


@njit(inline="always")
def _f32_to_f16(x):
    """Round to nearest even, as NumPy's and torch's conversions."""
    bits = np.uint32(np.float32(x).view(np.uint32))
    sign = np.uint32((bits >> np.uint32(16)) & np.uint32(0x8000))
    a = bits & np.uint32(0x7FFFFFFF)
    if a > np.uint32(0x7F800000):  # NaN
        return np.uint16(sign | np.uint32(0x7E00))
    if a >= np.uint32(0x477FF000):  # 65520 and up round to infinity
        return np.uint16(sign | np.uint32(0x7C00))
    if a < np.uint32(0x38800000):  # below 2^-14: a subnormal half, k * 2^-24, k rounded to even
        k = np.rint(np.float32(abs(np.float32(x))) * np.float32(2.0**24))
        return np.uint16(sign | np.uint32(k))
    a = a - np.uint32(0x38000000)  # exponent bias 127 -> 15
    return np.uint16(sign | ((a + np.uint32(0x0FFF) + ((a >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)))


@njit(inline="always")
def _load(p, i, kind):
    if kind == F32:
        return p[i]
    if kind == BF16:
        return _bf16_to_f32(p[i])
    return _f16_to_f32(p[i])


# ----- the codes -----


@njit(inline="always")
def _random_bits(index, step):
    """:func:`adamax.compact.random_bits` for one element (uint64 arithmetic, masked to 32 bits)."""
    x = (np.uint64(index) * np.uint64(0x9E3779B1) + np.uint64((step * 0x85EBCA77) & 0xFFFFFFFF)) & _MASK
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & _MASK
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & _MASK
    x ^= x >> np.uint64(16)
    return np.uint32(x & np.uint64(0xFFFF))


@njit(inline="always")
def _stochastic_bf16(x, index, step):
    if x != x:
        return np.uint16(0x7FC0)
    bits = np.uint32(np.float32(x).view(np.uint32))
    return np.uint16((bits + _random_bits(index, step)) >> np.uint32(16))


@njit(inline="always")
def _encode(r, table):
    """:func:`adamax.compact.encode` of one float32 ``r`` in (0, 1]: an estimate, corrected one code at a time."""
    estimate = math.floor(math.log(np.float64(r)) / _LOG_RHO)
    q = int(min(max(estimate, 0.0), float(FLOOR)))
    while q > 0 and table[q] < r:
        q -= 1
    while q < ZERO and table[q + 1] >= r:
        q += 1
    return q


@njit(inline="always")
def _shift(scale, peak, table):
    """:func:`adamax.compact.shift` for one block."""
    estimate = math.ceil(math.log(np.float64(peak) / np.float64(scale)) / -_LOG_RHO)
    k = int(min(max(estimate, 1.0), float(FLOOR)))
    while k < FLOOR and scale / table[k] < peak:
        k += 1
    while k > 1 and scale / table[k - 1] >= peak:
        k -= 1
    return k


# ----- the step -----


@njit(inline="always")
def _gradient(g, p, maximize, decay_mode, wd):
    if maximize:
        g = -g
    if decay_mode == COUPLED:
        g = _fma(p, wd, g)
    return g


@njit(parallel=True, cache=True, nogil=True)
def _step_blocks(
    like, kind, p_addr, g_addr, m_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start, chunk_stop,
    steps, counts, hyper, flags, table,
):  # fmt: skip  # pragma: no cover - compiled
    """``hyper`` in float32: [w, 1 - w, b2, eps, wd, 1 - lr*wd]; ``steps`` -lr/(1 - b1**t) in float32, ``counts``
    each tensor's t (this step's count)."""
    w, one_minus_w, b2, eps, wd, decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    maximize, decay_mode, placement, guard = flags[MAXIMIZE] != 0, flags[DECAY], flags[PLACEMENT], flags[GUARD] != 0
    block = compact.BLOCK
    m_like = np.empty(0, np.uint16)
    s_like = np.empty(0, np.float32)
    zero = np.float32(0)
    for c in prange(chunk_tensor.shape[0]):
        k = chunk_tensor[c]
        p = _pointer(p_addr[k], like)
        g = _pointer(g_addr[k], like)
        m = _pointer(m_addr[k], m_like)
        q = _pointer(q_addr[k], m_like)
        s = _pointer(s_addr[k], s_like)
        size, step, t = sizes[k], steps[k], counts[k]
        for b in range(chunk_start[c], chunk_stop[c]):
            lo = b * block
            hi = min(lo + block, size)
            # the block's largest x = |g| + eps (or |g|), NaN-propagating
            peak = zero
            for i in range(lo, hi):
                gi = _gradient(_load(g, i, kind), _load(p, i, kind), maximize, decay_mode, wd)
                x = abs(gi) + eps if placement == EPS_MAX else abs(gi)
                peak = _maximum(peak, x)
            scale = s[b] * b2
            if not peak <= scale:  # re-base up (adamax.compact.rebase)
                if scale == 0:
                    for i in range(lo, hi):
                        q[i] = ZERO
                    scale = peak
                elif math.isfinite(scale) and math.isfinite(peak) and scale > 0:
                    shift = _shift(scale, peak, table)
                    scale = scale / table[shift]
                    for i in range(lo, hi):
                        if q[i] != ZERO:
                            q[i] = min(int(q[i]) + shift, FLOOR)
                else:
                    scale = peak
            s[b] = scale
            for i in range(lo, hi):
                pi = _load(p, i, kind)
                gi = _gradient(_load(g, i, kind), pi, maximize, decay_mode, wd)
                if decay_mode == DECOUPLED:
                    pi = pi * decay
                mi = _bf16_to_f32(m[i])
                if w < 0.5:
                    mi = _fma(w, gi - mi, mi)
                else:
                    mi = _fma(-(gi - mi), one_minus_w, gi)
                x = abs(gi) + eps if placement == EPS_MAX else abs(gi)
                code = int(q[i])
                u = scale * table[code]
                if x > u:
                    fresh = _encode(x / scale, table)
                    if fresh < code:
                        code = fresh
                        q[i] = code
                    u = scale * table[code]
                d = u + eps if placement == EPS_DENOMINATOR else u
                if not (guard and d == 0):
                    pi = pi + (step * mi) / d
                if kind == F32:
                    p[i] = pi
                elif kind == BF16:
                    p[i] = _f32_to_bf16(pi)
                else:
                    p[i] = _f32_to_f16(pi)
                m[i] = _stochastic_bf16(mi, i, t)


class BlockTable(NamedTuple):
    tensor: np.ndarray  # int64: which tensor each chunk belongs to
    start: np.ndarray  # int64: its first block
    stop: np.ndarray  # int64: one past its last block


_TABLES: dict[tuple[int, ...], BlockTable] = {}


def block_table(sizes: tuple[int, ...]) -> BlockTable:
    """Split tensors of ``sizes`` elements into chunks of at most :data:`BLOCKS_PER_CHUNK` blocks (cached)."""
    table = _TABLES.get(sizes)
    if table is None:
        blocks = [compact.blocks(n) for n in sizes]
        counts = [-(-n // BLOCKS_PER_CHUNK) for n in blocks]
        tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
        start = (
            np.concatenate([np.arange(c, dtype=np.int64) * BLOCKS_PER_CHUNK for c in counts]) if tensor.size else tensor
        )
        stop = np.minimum(start + BLOCKS_PER_CHUNK, np.asarray(blocks, dtype=np.int64)[tensor])
        table = BlockTable(tensor, start, stop)
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[sizes] = table
    return table


_LIKE = {F32: np.empty(0, np.float32), BF16: np.empty(0, np.uint16), F16: np.empty(0, np.uint16)}


def step(
    kind: int,
    addresses: tuple[np.ndarray, ...],
    sizes: tuple[int, ...],
    step_sizes: np.ndarray,
    counts: np.ndarray,
    config,
    threads: int | None = None,
) -> None:
    """Update, in place, every tensor whose p, g, m (bfloat16 bits), code and scale addresses are given.

    ``kind``: :data:`F32`, :data:`BF16` or :data:`F16` (p and g alike); ``step_sizes[k] = -lr / (1 - b1**t_k)``
    in float64 and ``counts[k] = t_k``, this step's count.  Every array dense and of the right size; the caller
    guarantees it.
    """
    if not sizes:
        return
    table = block_table(sizes)
    flags, hyper = flags_and_hyper(config, np.dtype(np.float32))
    if threads is not None and threads != numba.get_num_threads():
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    steps = np.asarray(step_sizes, dtype=np.float64).astype(np.float32)
    _step_blocks(
        _LIKE[kind], kind, *addresses, np.asarray(sizes, dtype=np.int64), *table, steps,
        np.asarray(counts, dtype=np.int64), hyper, flags, compact.TABLE,
    )  # fmt: skip
