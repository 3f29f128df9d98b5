"""The lazy-rows CPU kernel: bring a table's rows up to date and, in the same pass, apply this step's update.

One parallel loop over rows (numba ``prange``); per element, the catch-up of
:mod:`adamax._lazy` in float64 (closed form for "max" and "none", the exact
term-by-term sum for "denominator"), rounded once to the table's dtype, then
the dense kernel's element function (:func:`adamax.kernels.cpu._element`)
with the row's gradient.  Rows are the table's first axis; a row's elements
are contiguous.  The caller passes the :class:`adamax._lazy.Clock`'s arrays.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from adamax.kernels.cpu import EPS_MAX, EPS_NONE, _element, flags_and_hyper


@intrinsic
def _prefetch(typingctx, array, row, column):
    """Ask the CPU to start loading ``array[row, column]``'s cache line (LLVM's ``llvm.prefetch``, for writing)."""
    if not (isinstance(array, types.Array) and array.ndim in (1, 2)):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        index = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:], signature.args[1:])]
        index = index[: array_type.ndim]  # a 1-d array: the column is ignored
        pointer = cgutils.get_item_pointer(context, builder, array_type, data, index, wraparound=False)
        byte_pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte_pointer.type], ir.FunctionType(ir.VoidType(), [byte_pointer.type, i32, i32, i32])
        )
        builder.call(fn, [byte_pointer, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, row, column), codegen


AHEAD = 8  # rows ahead to prefetch: random rows are bound by memory latency, not bandwidth


@njit(inline="always")
def _catch_up(p, m, u, last, t, W, a_pow, b2_pow, A, B, D, c, eps, b2, log_b2, placement):
    """One element, last brought up to date at step ``last``, brought to step ``t`` (float64 in and out)."""
    K = t - last
    if K == 0:
        return p, m, u
    slot = last % (W + 1)
    d_sn = D[slot]
    total = 0.0
    if m != 0.0:
        if placement == EPS_NONE:
            if u > 0.0:
                total = d_sn * A[slot, K] / u
        elif placement == EPS_MAX:
            kstar = K
            if b2_pow[K] * u < eps:  # the switch to eps happens inside the gap
                kstar = 0
                if u >= eps and log_b2 < 0.0:
                    x = math.log(u / eps) / -log_b2  # >= 0; the last k with b2^k u >= eps, up to rounding
                    kstar = K if x >= K else int(x)
                if kstar > 0 and b2_pow[kstar] * u < eps:
                    kstar -= 1
                if kstar < K and b2_pow[kstar + 1] * u >= eps:
                    kstar += 1
            if u > 0.0:
                total = d_sn * A[slot, kstar] / u
            if kstar < K:
                slot2 = (last + kstar) % (W + 1)
                total += a_pow[kstar] * D[slot2] / eps * B[slot2, K - kstar]
        else:  # EPS_DENOMINATOR: no split; every term
            for k in range(1, K + 1):
                j = (last + k) % (W + 1)
                total += D[j] * c[j] * a_pow[k] / (b2_pow[k] * u + eps)
    new_u = b2_pow[K] * u
    if placement == EPS_MAX and new_u < eps:
        new_u = eps
    return d_sn * p + m * total, a_pow[K] * m, new_u


@njit(inline="always")
def _catch_up_row(pr, mr, ur, s, t, W, a_pow, b2_pow, A, B, D, c, eps, b2, log_b2, placement):
    """One row (``pr, mr, ur``: 1-d, the table's dtype), last brought up to date at step ``s``, brought to step
    ``t`` in place."""
    width = pr.shape[0]
    K = t - s
    if K > 0:
        slot = s % (W + 1)
        d_sn, a_K, b2_K, A_K = D[slot], a_pow[K], b2_pow[K], A[slot, K]
        simple = placement == EPS_NONE
        if placement == EPS_MAX:  # the common case: no element of the row reaches eps within the gap
            simple = True
            for e in range(width):
                if b2_K * np.float64(ur[e]) < eps:
                    simple = False
        if simple:  # one closed form for the whole row, a loop LLVM can vectorise
            for e in range(width):
                u64 = np.float64(ur[e])
                m64 = np.float64(mr[e])
                total = d_sn * A_K / u64 if u64 > 0.0 else 0.0
                pr[e] = d_sn * np.float64(pr[e]) + (m64 * total if m64 != 0.0 else 0.0)
                mr[e] = a_K * m64
                ur[e] = b2_K * u64
        else:
            for e in range(width):
                pr[e], mr[e], ur[e] = _catch_up(
                    np.float64(pr[e]), np.float64(mr[e]), np.float64(ur[e]),
                    s, t, W, a_pow, b2_pow, A, B, D, c, eps, b2, log_b2, placement,
                )  # fmt: skip


@njit(parallel=True, cache=True, nogil=True)
def _rows(
    p, m, u, rows, values, last, t, update, W, a_pow, b2_pow, A, B, D, c, catch, step, hyper, flags
):  # pragma: no cover - compiled
    """Rows ``rows`` of the 2-d ``p, m, u``: up to date at step ``t``, then (``update``) this step with
    ``values[i]`` as row ``rows[i]``'s gradient.  ``catch`` = [eps, b2, log(b2)] in float64."""
    eps, b2, log_b2 = catch[0], catch[1], catch[2]
    placement = flags[2]
    w, one_minus_w, b2_t, eps_t, wd, decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    maximize, decay_mode, guard = flags[0] != 0, flags[1], flags[3] != 0
    width = p.shape[1]
    line = max(1, 64 // p.itemsize)  # elements per cache line
    for i in prange(rows.shape[0]):
        if i + AHEAD < rows.shape[0]:  # start loading a later row while this one is computed
            ahead = rows[i + AHEAD]
            _prefetch(last, ahead, 0)
            for column in range(0, width, line):
                _prefetch(p, ahead, column)
                _prefetch(m, ahead, column)
                _prefetch(u, ahead, column)
        r = rows[i]
        pr, mr, ur = p[r], m[r], u[r]
        _catch_up_row(pr, mr, ur, last[r], t, W, a_pow, b2_pow, A, B, D, c, eps, b2, log_b2, placement)
        if update:
            gr = values[i]
            for e in range(width):
                pr[e], mr[e], ur[e] = _element(
                    pr[e], gr[e], mr[e], ur[e], step, w, one_minus_w, b2_t, eps_t, wd, decay,
                    maximize, decay_mode, placement, guard,
                )  # fmt: skip
        last[r] = t + 1 if update else t


@njit(cache=True, nogil=True)
def _advance(A, B, D, c_history, e_history, pow_r, pow_a, t, W, c, e):  # pragma: no cover - compiled
    n = t + 1
    slots = W + 1
    for s in range(max(0, n - W), n):
        slot = s % slots
        k = n - s
        D[slot] *= e
        A[slot, k] = A[slot, k - 1] + c * pow_r[k] / D[slot]
        B[slot, k] = B[slot, k - 1] + c * pow_a[k] / D[slot]
    new = n % slots
    A[new, :] = 0.0
    B[new, :] = 0.0
    D[new] = 1.0
    c_history[new] = c
    e_history[new] = e


def advance(clock, c: float, e: float) -> None:
    """:meth:`adamax._lazy.Clock.advance`, compiled: the same operations in the same order, so the same bits,
    without NumPy's per-call overhead on arrays of ``W`` entries."""
    _advance(clock.A, clock.B, clock.D, clock.c, clock.e, clock.pow_r, clock.pow_a, clock.t, clock.W, c, e)
    clock.t += 1


@njit(cache=True, nogil=True)
def strictly_increasing(rows):  # pragma: no cover - compiled
    """Whether ``rows`` (1-d) is strictly increasing: a sparse gradient's rows already coalesced."""
    for i in range(1, rows.shape[0]):  # noqa: SIM110 (numba compiles a plain loop)
        if rows[i] <= rows[i - 1]:
            return False
    return True


def step_rows(clock, p, m, u, last, rows, values=None, step_size=None, config=None) -> None:
    """Bring ``rows`` of the 2-d arrays ``p, m, u`` to ``clock.t``, in place, and (given ``values``) apply the
    step ``clock.t + 1`` to them with ``values`` as their gradients; ``last`` is updated.

    ``rows`` must be unique.  ``config`` gives the update's hyperparameters (``clock.config`` by default) and
    ``step_size`` its ``-lr / (1 - b1**t)``.
    """
    config = config or clock.config
    dtype = p.dtype
    flags, hyper = flags_and_hyper(config, dtype)
    update = values is not None
    if not update:
        values = np.empty((0, p.shape[1]), dtype)
    catch = np.array([clock.eps, clock.b2, math.log(clock.b2) if clock.b2 > 0 else -np.inf])
    _rows(
        p, m, u, np.ascontiguousarray(rows, dtype=np.int64), values, last, clock.t, update, clock.W,
        clock.pow_a, clock.pow_b2, clock.A, clock.B, clock.D, clock.c, catch,
        dtype.type(step_size if update else 0.0), hyper, flags,
    )  # fmt: skip
