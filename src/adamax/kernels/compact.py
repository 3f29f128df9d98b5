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

import numpy as np
from numba import njit, prange

from adamax import compact
from adamax._algorithm import step_size
from adamax.kernels.cpu import (
    BF16,
    COUPLED,
    DECAY,
    DECOUPLED,
    EPS_DENOMINATOR,
    EPS_MAX,
    F16,
    F32,
    GUARD,
    MAXIMIZE,
    PLACEMENT,
    _bf16_to_f32,
    _fma,
    _load,
    _pointer,
    _store,
    prepare,
)

KINDS = {np.dtype(np.float32): F32, np.dtype(np.float16): F16}  # NumPy dtypes; bfloat16 comes from torch only
BLOCKS_PER_CHUNK = 256  # 65,536 elements per work item
SCAN = 16  # codes stepped through before a logarithm's estimate is taken
ZERO, FLOOR = compact.ZERO, compact.FLOOR
_LOG_RHO = math.log(compact.RHO)
_MASK = np.uint64(0xFFFFFFFF)


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
def _raise(code, r, table):
    """``min(code, encode(r))``: usually a few codes up from ``code`` (u decays about a code per step, and a new
    largest gradient is near it), found by stepping; far jumps take :func:`_encode`."""
    if table[code] >= r:
        return code
    c = code
    for _ in range(SCAN):
        c -= 1
        if c < 0:
            return 0
        if table[c] >= r:
            return c
    return _encode(r, table)


@njit(inline="always")
def _shift(scale, peak, table):
    """:func:`adamax.compact.shift` for one block: by stepping for a near peak, else from an estimate."""
    k = 1
    while k <= SCAN and scale / table[k] < peak:
        k += 1
    if k <= SCAN:
        return k
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


@njit
def _int_bits(x):
    return np.float32(x).view(np.int32)


@njit
def _float_of(bits):
    return np.int32(bits).view(np.float32)


@njit(parallel=True, cache=True, nogil=True)
def _step_blocks(
    like, kind, p_addr, g_addr, m_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start, chunk_stop,
    steps, counts, hyper, flags, table,
):  # fmt: skip  # pragma: no cover - compiled
    """``hyper`` in float32: [w, 1 - w, b2, eps, wd, 1 - lr*wd]; ``steps`` -lr/(1 - b1**t) in float32, ``counts``
    each tensor's t (this step's count).

    Per block, three passes over its 256 elements (in L1 after the first): the gradients as the step uses them,
    their ``x`` and the block's largest ``x`` (compared as integers, which LLVM vectorises: ``x >= 0``, and a NaN's
    bits exceed every number's); then, after any re-base, each element's ``u`` (codes that must rise are found
    one by one, the rare case); then the moment, the param and the stored moment.
    """
    w, one_minus_w, b2, eps, wd, decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    maximize, decay_mode, placement, guard = flags[MAXIMIZE] != 0, flags[DECAY], flags[PLACEMENT], flags[GUARD] != 0
    block = compact.BLOCK
    m_like = np.empty(0, np.uint16)
    s_like = np.empty(0, np.float32)
    for c in prange(chunk_tensor.shape[0]):
        k = chunk_tensor[c]
        p = _pointer(p_addr[k], like)
        g = _pointer(g_addr[k], like)
        m = _pointer(m_addr[k], m_like)
        q = _pointer(q_addr[k], m_like)
        s = _pointer(s_addr[k], s_like)
        size, step, t = sizes[k], steps[k], counts[k]
        grads = np.empty(block, np.float32)
        xs = np.empty(block, np.float32)
        us = np.empty(block, np.float32)
        for b in range(chunk_start[c], chunk_stop[c]):
            lo = b * block
            n = min(block, size - lo)
            peak_bits = np.int32(0)
            for j in range(n):
                gi = _gradient(_load(g, lo + j, kind), _load(p, lo + j, kind), maximize, decay_mode, wd)
                x = abs(gi) + eps if placement == EPS_MAX else abs(gi)
                grads[j] = gi
                xs[j] = x
                peak_bits = max(peak_bits, _int_bits(x))
            peak = _float_of(peak_bits)
            scale = s[b] * b2
            if not peak <= scale:  # re-base up (adamax.compact.rebase)
                if scale == 0:
                    for j in range(n):
                        q[lo + j] = ZERO
                    scale = peak
                elif math.isfinite(scale) and math.isfinite(peak) and scale > 0:
                    shift = _shift(scale, peak, table)
                    scale = scale / table[shift]
                    for j in range(n):
                        if q[lo + j] != ZERO:
                            q[lo + j] = min(int(q[lo + j]) + shift, FLOOR)
                else:
                    scale = peak
            s[b] = scale
            rising = False
            for j in range(n):
                u = scale * table[q[lo + j]]
                us[j] = u
                rising |= xs[j] > u
            if rising:  # an x above its u: that element's code rises to x's (rounded up)
                for j in range(n):
                    if xs[j] > us[j]:
                        code = int(q[lo + j])
                        fresh = _raise(code, xs[j] / scale, table)
                        if fresh != code:
                            q[lo + j] = fresh
                            us[j] = scale * table[fresh]
            for j in range(n):
                i = lo + j
                gi = grads[j]
                pi = _load(p, i, kind)
                if decay_mode == DECOUPLED:
                    pi = pi * decay
                mi = _bf16_to_f32(m[i])
                if w < 0.5:
                    mi = _fma(w, gi - mi, mi)
                else:
                    mi = _fma(-(gi - mi), one_minus_w, gi)
                d = us[j] + eps if placement == EPS_DENOMINATOR else us[j]
                if not (guard and d == 0):
                    pi = pi + (step * mi) / d
                _store(p, i, pi, kind)
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
    counts: np.ndarray,
    config,
    threads: int | None = None,
) -> None:
    """Update, in place, every tensor whose p, g, m (bfloat16 bits), code and scale addresses are given.

    ``kind``: :data:`F32`, :data:`BF16` or :data:`F16` (p and g alike); ``counts[k] = t_k``, this step's count
    (its step size is ``-lr / (1 - b1**t_k)``).  Every array dense and of the right size; the caller guarantees
    it.
    """
    if not sizes:
        return
    table = block_table(sizes)
    flags, hyper = prepare(config, np.dtype(np.float32), threads)
    counts = np.asarray(counts, dtype=np.int64)
    steps = np.array([step_size(config.lr, config.beta1, int(t)) for t in counts]).astype(np.float32)
    _step_blocks(
        _LIKE[kind], kind, *addresses, np.asarray(sizes, dtype=np.int64), *table, steps,
        counts, hyper, flags, compact.TABLE,
    )  # fmt: skip
