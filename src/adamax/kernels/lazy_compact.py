"""The lazy-rows CPU kernel for compact and compact8 state (:mod:`adamax._lazy_compact`), bit for bit.

One parallel loop over rows, as :mod:`adamax.kernels.lazy`: a row behind is decoded into float32 scratch rows,
brought up to date by the float kernel's row catch-up (its param's closed form, and ``a^K m``), and its state
re-expressed: u's scales times ``b2^K`` (codes kept; ``"max"`` raises codes to eps, re-basing a block whose scale
fell below it), compact's m rounded stochastically to bfloat16, compact8's m scale times ``a^K``.  Then, given
gradients, each row block takes the dense kernel's block step (:func:`adamax.kernels.compact._block`,
:func:`adamax.kernels.compact8._block`) at its flat index in the table.  The table is 2-d, float32 and
contiguous, its scales in row blocks ``(rows, ceil(width / 256))``; the arrays are passed flat.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from adamax import compact
from adamax._algorithm import step_size
from adamax.kernels import compact8 as k8
from adamax.kernels.compact import (
    _block,
    _codes_down,
    _encode,
    _first_key,
    _next_key,
    _rebase,
    _scalars,
    _stochastic_keyed,
    _value,
)
from adamax.kernels.cpu import EPS_MAX, F32, PLACEMENT, _bf16_to_f32, _pointer, prepare
from adamax.kernels.lazy import AHEAD, _catch_up_row, _prefetch

BLOCK = compact.BLOCK
ROWS_PER_CHUNK = 64  # rows per work item, which allocates its scratch once
TINY = np.float32(compact.TINY)


@njit(inline="always")
def _prefetch_row(arrays_p, arrays_m, arrays_q, scales, last, ahead, width, per_row):  # pragma: no cover - compiled
    """Start loading row ``ahead`` of the flat p, m codes, u codes and u scales, and its ``last``."""
    _prefetch(last, ahead, 0)
    _prefetch(scales, ahead * per_row, 0)
    for column in range(0, width, 16):  # every cache line of the row
        _prefetch(arrays_p, ahead * width + column, 0)
    for column in range(0, width, 64 // arrays_m.itemsize):
        _prefetch(arrays_m, ahead * width + column, 0)
    for column in range(0, width, 64 // arrays_q.itemsize):
        _prefetch(arrays_q, ahead * width + column, 0)


@njit(inline="always")
def _raise_to_eps(q, lo, n, scale, eps, tapered):  # pragma: no cover - compiled
    """:func:`adamax.compact.raised` with ``x = eps`` for one block (codes ``q[lo:lo+n]``, decayed ``scale``):
    re-base to cover eps, then every u below eps takes eps's code, rounded up; returns the new scale.  (Values grow
    with codes: where the least code's u is at least eps, nothing changes.)"""
    least = np.int32(65535)
    for j in range(lo, lo + n):
        least = min(least, np.int32(q[j]))
    if eps <= scale and eps <= scale * (k8._u_value(least) if tapered else _value(least)):
        return scale
    if not eps <= scale:
        scale, down, clear = _rebase(scale, eps)
        if tapered:
            k8._codes_down(q, lo, n, down, clear)
        else:  # compact's codes: an octave is 1024 codes
            _codes_down(q, lo, n, np.int32(down << 10), clear)
    for j in range(lo, lo + n):
        code = np.int32(q[j])
        if tapered:
            if eps > scale * k8._u_value(code):
                q[j] = max(code, k8._u_up(eps / scale))
        elif eps > scale * _value(code):
            q[j] = max(code, _encode(eps / scale))
    return scale


@njit(inline="always")
def _catch_scalars(catch, flags, width, rows):  # pragma: no cover - compiled
    """The catch-up's scalars: eps, b2 and log(b2) in float64 (``catch``), eps in float32, the placement, the blocks
    per row and the number of rows."""
    return catch[0], catch[1], catch[2], np.float32(catch[0]), flags[PLACEMENT], -(-width // BLOCK), rows.shape[0]


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _rows_compact(
    p, values, m, q, s, width, rows, last, t, update, W, a_pow, b2_pow, A, B, D, c, catch, mix_now, step, mix_step,
    hyper, flags,
):  # fmt: skip  # pragma: no cover - compiled
    """compact state: rows ``rows`` of the flat table ``p`` (``width`` a row), its bfloat16 m bits ``m``, u codes
    ``q`` and row-block scales ``s``, brought up to date at step ``t`` and (``update``) stepped with ``values``
    (row ``i`` the gradient of ``rows[i]``)."""
    eps64, b2, log_b2, eps, placement, per_row, n_rows = _catch_scalars(catch, flags, width, rows)
    w, one_minus_w, b2_t, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard = _scalars(hyper, flags)
    # the block step through pointers, as the dense kernel takes them: no negative-index wraparound, so it vectorises
    p_at, g_at, s_at = _pointer(p.ctypes.data, p), _pointer(values.ctypes.data, values), _pointer(s.ctypes.data, s)
    m_at, q_at = _pointer(m.ctypes.data, m), _pointer(q.ctypes.data, q)
    for chunk in prange(-(-n_rows // ROWS_PER_CHUNK)):
        mr = np.empty(width, np.float32)  # scratch, once per chunk of rows
        ur = np.empty(width, np.float32)
        gs = np.empty(BLOCK, np.float32)
        for i in range(chunk * ROWS_PER_CHUNK, min(n_rows, (chunk + 1) * ROWS_PER_CHUNK)):
            if i + AHEAD < rows.shape[0]:
                _prefetch_row(p, m, q, s, last, rows[i + AHEAD], width, per_row)
            r = rows[i]
            K = t - last[r]
            if K > 0:
                first = r * width
                for b in range(per_row):
                    scale = s_at[r * per_row + b]
                    for e in range(b * BLOCK, min(width, (b + 1) * BLOCK)):
                        mr[e] = _bf16_to_f32(m_at[first + e])
                        ur[e] = scale * _value(np.int32(q_at[first + e]))
                _catch_up_row(p[first : first + width], mr, ur, last[r], t, W, a_pow, b2_pow, A, B, D, c, eps64, b2,
                              log_b2, placement)  # fmt: skip
                key = _first_key(first, mix_now)
                for e in range(width):  # mr holds a^K m in float32
                    mi = mr[e]
                    bits = np.uint32(np.float32(mi).view(np.uint32))
                    m_at[first + e] = np.uint16(0x7FC0) if mi != mi else _stochastic_keyed(bits, key)
                    key = _next_key(key)
                for b in range(per_row):
                    scale = np.float32(np.float64(s_at[r * per_row + b]) * b2_pow[K])
                    if placement == EPS_MAX:
                        lo = b * BLOCK
                        scale = _raise_to_eps(q_at, first + lo, min(BLOCK, width - lo), scale, eps, False)
                    s_at[r * per_row + b] = scale
            if update:
                for b in range(per_row):
                    lo = b * BLOCK
                    _block(p_at, g_at, m_at, q_at, s_at, r * per_row + b, r * width + lo, i * width + lo,
                           min(BLOCK, width - lo), gs, F32, step, mix_step, w, one_minus_w, b2_t, eps_x, eps_d, wd,
                           scale_p, maximize, coupled, low_w, guard)  # fmt: skip
            last[r] = t + 1 if update else t


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _rows_compact8(
    p, values, mq, ms, q, s, width, rows, last, t, update, W, a_pow, b2_pow, A, B, D, c, catch, mix_now, step,
    mix_step, hyper, flags,
):  # fmt: skip  # pragma: no cover - compiled
    """compact8 state: as :func:`_rows_compact`, with m's codes ``mq`` and row-block scales ``ms``."""
    eps64, b2, log_b2, eps, placement, per_row, n_rows = _catch_scalars(catch, flags, width, rows)
    w, one_minus_w, b2_t, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard = _scalars(hyper, flags)
    p_at, g_at, s_at = _pointer(p.ctypes.data, p), _pointer(values.ctypes.data, values), _pointer(s.ctypes.data, s)
    mq_at, ms_at, q_at = _pointer(mq.ctypes.data, mq), _pointer(ms.ctypes.data, ms), _pointer(q.ctypes.data, q)
    for chunk in prange(-(-n_rows // ROWS_PER_CHUNK)):
        mr = np.empty(width, np.float32)  # scratch, once per chunk of rows
        ur = np.empty(width, np.float32)
        gs = np.empty(BLOCK, np.float32)
        mb = np.empty(BLOCK, np.float32)
        for i in range(chunk * ROWS_PER_CHUNK, min(n_rows, (chunk + 1) * ROWS_PER_CHUNK)):
            if i + AHEAD < rows.shape[0]:
                _prefetch_row(p, mq, q, s, last, rows[i + AHEAD], width, per_row)
                _prefetch(ms, rows[i + AHEAD] * per_row, 0)
            r = rows[i]
            K = t - last[r]
            if K > 0:
                first = r * width
                for b in range(per_row):
                    scale, m_scale = s_at[r * per_row + b], ms_at[r * per_row + b]
                    for e in range(b * BLOCK, min(width, (b + 1) * BLOCK)):
                        mr[e] = k8._decode_m(mq_at[first + e], m_scale)
                        ur[e] = scale * k8._u_value(np.int32(q_at[first + e]))
                _catch_up_row(p[first : first + width], mr, ur, last[r], t, W, a_pow, b2_pow, A, B, D, c, eps64, b2,
                              log_b2, placement)  # fmt: skip
                for b in range(per_row):
                    lo = b * BLOCK
                    n = min(BLOCK, width - lo)
                    m_scale = np.float32(np.float64(ms_at[r * per_row + b]) * a_pow[K])
                    if m_scale < TINY:
                        m_scale = np.float32(0)
                        for e in range(first + lo, first + lo + n):
                            mq_at[e] = 0
                    ms_at[r * per_row + b] = m_scale
                    scale = np.float32(np.float64(s_at[r * per_row + b]) * b2_pow[K])
                    if placement == EPS_MAX:
                        scale = _raise_to_eps(q_at, first + lo, n, scale, eps, True)
                    s_at[r * per_row + b] = scale
            if update:
                for b in range(per_row):
                    lo = b * BLOCK
                    k8._block(p_at, g_at, mq_at, ms_at, q_at, s_at, r * per_row + b, r * width + lo, i * width + lo,
                              min(BLOCK, width - lo), gs, mb, F32, step, mix_step, w, one_minus_w, b2_t, eps_x,
                              eps_d, wd, scale_p, maximize, coupled, low_w, guard)  # fmt: skip
            last[r] = t + 1 if update else t


def _mix(count: int) -> np.uint32:
    """The step's term of :func:`adamax.compact.hashed`."""
    return np.uint32((count * 0x85EBCA77) & 0xFFFFFFFF)


def step_rows(clock, p, state, last, rows, values=None, config=None) -> None:
    """Bring ``rows`` of the 2-d float32 table ``p`` and its compact or compact8 ``state`` (the definition's
    NamedTuple of NumPy arrays, scales in row blocks) to ``clock.t``, in place, and (given ``values``) apply the
    step ``clock.t + 1`` to them with ``values`` as their gradients; ``last`` is updated.  ``rows`` must be
    unique; ``config`` gives the update's hyperparameters (``clock.config`` by default)."""
    config = config or clock.config
    flags, hyper = prepare(config, np.dtype(np.float32), None)
    width = p.shape[1]
    update = values is not None
    values = np.ascontiguousarray(values, np.float32) if update else np.empty((0, width), np.float32)
    t = clock.t
    size = np.float32(step_size(config.lr, config.beta1, t + 1) if update else 0.0)
    catch = np.array([clock.eps, clock.b2, math.log(clock.b2) if clock.b2 > 0 else -np.inf])
    history = (clock.W, clock.pow_a, clock.pow_b2, clock.A, clock.B, clock.D, clock.c, catch)
    common = (width, np.ascontiguousarray(rows, dtype=np.int64), last, t, update, *history, _mix(t), size,
              _mix(t + 1), hyper, flags)  # fmt: skip
    flat = [np.asarray(a).reshape(-1) for a in (p, values)]
    if hasattr(state, "exp_avg_code"):
        arrays = (state.exp_avg_code, state.exp_avg_scale, state.exp_inf_code, state.exp_inf_scale)
        _rows_compact8(*flat, *(a.reshape(-1) for a in arrays), *common)
    else:
        arrays = (state.exp_avg, state.exp_inf_code, state.exp_inf_scale)
        _rows_compact(*flat, *(a.reshape(-1) for a in arrays), *common)
