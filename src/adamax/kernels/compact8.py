"""The fused CPU kernel for compact8 state (:mod:`adamax.compact8`): 8-bit m and u below block scales (numba).

One parallel pass, block by block (256 elements share a u scale and an m scale).  A first loop takes the
block's gradients as the step uses them and the new float32 moments into buffers in L1, with the block's largest
``x`` (which decides a re-base of u) and largest ``|m|`` (the new m scale); a second, branch-free loop updates
each element's u code, param and m code.  Each element's p, g and both codes cross memory once each way: 16 bytes
per float32 element (p 4 + 4, g 4, m 1 + 1, u 1 + 1), 10 for bfloat16 and float16.  The arithmetic follows
:func:`adamax.compact8.update` operation for operation, so the results are the same bits.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from adamax import compact, compact8
from adamax.kernels.compact import (
    _code_up,
    _code_value,
    _first_key,
    _gradient,
    _moment,
    _next_key,
    _random_top,
    _rebase,
    _scalars,
    launch,
)
from adamax.kernels.cpu import BF16, F16, F32, _load, _pointer, _store

KINDS = {np.dtype(np.float32): F32, np.dtype(np.float16): F16}
TINY = np.float32(compact.TINY)
OFFSET_M, ONE, ONE_M, BOUNDARY = compact8.OFFSET_M, compact8.ONE, compact8.ONE_M, compact8.BOUNDARY
HI, LO = compact8.U8.hi.offset, compact8.U8.lo.offset
SIXTEENTH = np.float32(2.0**-4)
BELOW = compact8.BELOW
SMALL_M_BITS = OFFSET_M + (1 << 19)  # w(1)'s bits: from there up, m's code is its bits rounded


@njit(inline="always")
def _u_value(code):
    """:meth:`adamax.compact8.Tapered.value` of one code."""
    return _code_value(code, 18, HI) if code >= BOUNDARY else _code_value(code, 20, LO)


@njit(inline="always")
def _u_up(r):
    """:meth:`adamax.compact8.Tapered.encode` of one float32 ``r`` in [0, 1], at least code 1."""
    return _code_up(r, 18, HI, ONE) if r > SIXTEENTH else _code_up(r, 20, LO, BOUNDARY)


@njit(inline="always")
def _decode_m(code, scale):
    """:func:`adamax.compact8.decode_m` of one code."""
    magnitude = scale * _code_value(np.int32(code & 0x7F), 19, OFFSET_M)
    return -magnitude if code & 0x80 else magnitude


@njit(inline="always")
def _encode_m(mi, inv, finite, key):
    """:func:`adamax.compact8.encode_m` of one float32 moment (stochastic; ``key``: the element's, as
    :func:`adamax.kernels.compact._first_key`)."""
    r = abs(mi) * inv
    bits = np.float32(r).view(np.int32)
    rand = _random_top(key)
    above = min(max(np.int32(np.int32(np.int32(bits - np.int32(OFFSET_M)) + rand) >> 19), np.int32(1)), np.int32(ONE_M))
    below = np.int32(1) if np.float32(rand) < r * BELOW else np.int32(0)
    q = above if bits >= SMALL_M_BITS else below
    signed = q | 0x80 if (q > 0 and np.float32(mi).view(np.int32) < 0) else q
    return np.uint8(signed) if finite else np.uint8(ONE_M)


@njit(inline="always")
def _codes_down(q, lo, n, down, clear):  # pragma: no cover - compiled
    """A re-based block's codes ``q[lo:lo+n]``: each the code of its value ``down`` octaves lower, rounded up (0 where
    the block clears)."""
    factor = np.float32(math.ldexp(1.0, -min(np.int64(down), 200)))
    for j in range(lo, lo + n):
        code = np.int32(q[j])
        q[j] = np.uint8(0 if (clear or code == 0) else _u_up(_u_value(code) * factor))


@njit(inline="always")
def _block(
    p, g, mq, ms, q, s, b, lo, g_lo, n, gs, mb, kind, step, mix, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p,
    maximize, coupled, low_w, guard,
):  # fmt: skip  # pragma: no cover - compiled
    """One block: elements ``lo ... lo + n - 1`` of ``p, mq, q`` (their flat indices, which pick the random bits),
    from ``g_lo`` on in ``g``, and the scales ``ms[b]``, ``s[b]``; ``kind`` is a constant where it is called."""
    peak_bits = np.int32(0)
    m_bits = np.int32(0)
    m_scale = ms[b]
    for j in range(n):
        gi = _gradient(p, g, lo + j, g_lo + j, kind, maximize, coupled, wd)
        gs[j] = gi
        peak_bits = max(peak_bits, np.float32(abs(gi) + eps_x).view(np.int32))
        mi = _moment(_decode_m(mq[lo + j], m_scale), gi, w, one_minus_w, low_w)
        mb[j] = mi
        m_bits = max(m_bits, np.float32(abs(mi)).view(np.int32))
    peak = np.int32(peak_bits).view(np.float32)
    m_peak = np.int32(m_bits).view(np.float32)
    m_scale = np.float32(0) if m_peak < TINY else m_peak
    ms[b] = m_scale
    finite = math.isfinite(m_scale)
    inv = np.float32(1) / m_scale if (finite and m_scale > 0) else np.float32(0)
    scale = s[b] * b2
    if not peak <= scale:
        scale, down, clear = _rebase(scale, peak)
        _codes_down(q, lo, n, down, clear)  # rare: its own loop
    s[b] = scale
    key = _first_key(lo, mix)
    for j in range(n):
        i = lo + j
        gi = gs[j]
        x = abs(gi) + eps_x
        code = np.int32(q[i])
        code = max(code, _u_up(x / scale)) if x > scale * _u_value(code) else code
        q[i] = np.uint8(code)
        d = scale * _u_value(code) + eps_d
        mi = mb[j]
        pi = _load(p, i, kind) * scale_p
        moved = pi + (step * mi) / d
        _store(p, i, pi if ((d == 0) & guard) else moved, kind)
        mq[i] = _encode_m(mi, inv, finite, key)
        key = _next_key(key)


@njit(inline="always")
def _chunk(
    c, like, kind, p_addr, g_addr, mq_addr, ms_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start, chunk_stop,
    steps, counts, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard,
):  # fmt: skip  # pragma: no cover - compiled
    k = chunk_tensor[c]
    codes_like, scales_like = np.empty(0, np.uint8), np.empty(0, np.float32)
    p = _pointer(p_addr[k], like)
    g = _pointer(g_addr[k], like)
    mq = _pointer(mq_addr[k], codes_like)
    ms = _pointer(ms_addr[k], scales_like)
    q = _pointer(q_addr[k], codes_like)
    s = _pointer(s_addr[k], scales_like)
    size, step = sizes[k], steps[k]
    mix = np.uint32((counts[k] * 0x85EBCA77) & 0xFFFFFFFF)
    gs = np.empty(compact.BLOCK, np.float32)
    mb = np.empty(compact.BLOCK, np.float32)
    for b in range(chunk_start[c], chunk_stop[c]):
        lo = b * compact.BLOCK
        _block(p, g, mq, ms, q, s, b, lo, lo, min(compact.BLOCK, size - lo), gs, mb, kind, step, mix, w,
               one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard)  # fmt: skip


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _step_blocks_32(
    p_addr, g_addr, mq_addr, ms_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start, chunk_stop, steps, counts,
    hyper, flags,
):  # fmt: skip  # pragma: no cover - compiled
    """float32 params; as :func:`adamax.kernels.compact._step_blocks_32`, with m's codes and scales."""
    w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard = _scalars(hyper, flags)
    like = np.empty(0, np.float32)
    for c in prange(chunk_tensor.shape[0]):
        _chunk(c, like, F32, p_addr, g_addr, mq_addr, ms_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start,
               chunk_stop, steps, counts, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w,
               guard)  # fmt: skip


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _step_blocks_16(
    kind, p_addr, g_addr, mq_addr, ms_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start, chunk_stop, steps,
    counts, hyper, flags,
):  # fmt: skip  # pragma: no cover - compiled
    """:func:`_step_blocks_32` for bfloat16 (``kind=BF16``) or float16 params, by their bits."""
    w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard = _scalars(hyper, flags)
    like = np.empty(0, np.uint16)
    for c in prange(chunk_tensor.shape[0]):
        if kind == BF16:
            _chunk(c, like, BF16, p_addr, g_addr, mq_addr, ms_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start,
                   chunk_stop, steps, counts, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w,
                   guard)  # fmt: skip
        else:
            _chunk(c, like, F16, p_addr, g_addr, mq_addr, ms_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start,
                   chunk_stop, steps, counts, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w,
                   guard)  # fmt: skip


def step(
    kind: int,
    addresses: tuple[np.ndarray, ...],
    sizes: tuple[int, ...],
    counts: np.ndarray,
    config,
    threads: int | None = None,
) -> None:
    """Update, in place, every tensor whose p, g, m code, m scale, u code and u scale addresses are given (as
    :func:`adamax.kernels.compact.step`, which this mirrors for compact8 state)."""
    launch(_step_blocks_32, _step_blocks_16, kind, addresses, sizes, counts, config, threads)
