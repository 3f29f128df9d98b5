"""The fused CPU kernel for compact state (:mod:`adamax.compact`), and low-precision params (numba).

One parallel pass, block by block (256 elements share a scale): a first loop
takes the block's gradients as the step uses them into a buffer in L1, with
the block's largest ``|g| + eps``, which decides a re-base; a second,
branch-free loop, which LLVM vectorises, updates each element.  Each
element's p, g, m and code cross memory once each way: 20 bytes per float32
element (p 4 + 4, g 4, m 2 + 2, code 2 + 2), 14 for bfloat16 and float16.
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
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

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
OFFSET, TINY = compact.OFFSET, np.float32(compact.TINY)


# ----- the codes -----


KEY_STEP = 0x9E3779B1  # an element's key is its flat index times this plus the step's term, mod 2**32


def _to32(builder, value):
    i32 = ir.IntType(32)
    width = value.type.width
    return builder.trunc(value, i32) if width > 32 else builder.zext(value, i32) if width < 32 else value


def _hash_ir(builder, key):
    """:func:`adamax.compact.hashed` from an element's key (``index * KEY_STEP + step * 0x85EBCA77`` mod 2**32) in
    32-bit LLVM integers: numba would widen them to 64 bits, whose multiplies do not vectorise well."""
    i32 = ir.IntType(32)
    x = _to32(builder, key)
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = builder.mul(builder.xor(x, builder.lshr(x, ir.Constant(i32, shift))), ir.Constant(i32, factor))
    return builder.xor(x, builder.lshr(x, ir.Constant(i32, 16)))


def _integers(*values) -> bool:
    return all(isinstance(v, types.Integer) for v in values)


def _round_ir(builder, bits, x):
    """``(bits + (x & 0xFFFF)) >> 16`` as 16 bits: a float32's bits rounded stochastically to bfloat16."""
    i32 = ir.IntType(32)
    rounded = builder.add(_to32(builder, bits), builder.and_(x, ir.Constant(i32, 0xFFFF)))
    return builder.trunc(builder.lshr(rounded, ir.Constant(i32, 16)), ir.IntType(16))


@intrinsic
def _stochastic_keyed(typingctx, bits, key):
    """``(bits + random_bits) >> 16``: :func:`adamax.compact.f32_to_bf16_stochastic` of a float32's bits (not NaN),
    with :func:`adamax.compact.random_bits` of the element whose key (:func:`_first_key`) is given."""
    if not _integers(bits, key):
        return None

    def codegen(context, builder, signature, args):
        return _round_ir(builder, args[0], _hash_ir(builder, args[1]))

    return types.uint16(bits, key), codegen


@intrinsic
def _random_top(typingctx, key):
    """The top 19 bits of :func:`adamax.compact.hashed` (as :mod:`adamax.compact8` rounds m), as an int32, from the
    element's key (:func:`_first_key`)."""
    if not _integers(key):
        return None

    def codegen(context, builder, signature, args):
        return builder.lshr(_hash_ir(builder, args[0]), ir.Constant(ir.IntType(32), 13))

    return types.int32(key), codegen


@njit(inline="always")
def _first_key(lo, mix):
    """The key of element ``lo`` (``mix``: the step's term).  A block loop steps it by :data:`KEY_STEP` as a uint32
    recurrence, which LLVM vectorises as an induction: no multiply, and no 64-bit index carried in 512-bit
    vectors (which slows every other vector op)."""
    return np.uint32((np.uint64(lo) * np.uint64(KEY_STEP) + np.uint64(mix)) & np.uint64(0xFFFFFFFF))


@njit(inline="always")
def _next_key(key):
    return np.uint32(key + np.uint32(KEY_STEP))


@njit(inline="always")
def _code_value(code, shift, offset):
    """:func:`adamax.compact.value` of one code, for the codes ``(shift, offset)``."""
    v = np.int32(np.int32(code << shift) + np.int32(offset)).view(np.float32)
    return v if code != 0 else np.float32(0)


@njit(inline="always")
def _code_up(r, shift, offset, one):
    """:func:`adamax.compact.encode` of one float32 ``r`` in (0, 1] (0 never asked for)."""
    q = np.int32(np.int32(np.int32(np.float32(r).view(np.int32) + np.int32((1 << shift) - 1)) >> shift)
                 - np.int32(offset >> shift))  # fmt: skip  # int32 throughout: int64 vectors take twice the lanes
    return min(max(q, np.int32(1)), np.int32(one))


@njit(inline="always")
def _value(code):
    """:func:`adamax.compact.value` of one code."""
    return _code_value(code, 13, OFFSET)


@njit(inline="always")
def _encode(r):
    """:func:`adamax.compact.encode` of one float32 ``r`` in (0, 1] (0 never asked for)."""
    return _code_up(r, 13, OFFSET, compact.ONE)


@njit(inline="always")
def _rebase(scale, peak):
    """:func:`adamax.compact.rebase` for one block whose peak is not covered: (new scale, how many octaves its
    codes move down, whether they clear)."""
    if scale < TINY:
        return peak, np.int32(0), True
    if math.isfinite(scale) and math.isfinite(peak):
        s, p = np.float32(scale).view(np.int32), np.float32(peak).view(np.int32)
        k = (p >> 23) - (s >> 23) + (1 if (p & 0x7FFFFF) > (s & 0x7FFFFF) else 0)
        bits = np.int64(s) + (np.int64(k) << 23)
        new = np.int32(bits).view(np.float32) if bits < 0x7F800000 else np.float32(np.inf)
        return new, np.int32(k), False
    return peak, np.int32(0), False


@njit(inline="always")
def _codes_down(q, lo, n, down, clear):  # pragma: no cover - compiled
    """A re-based block's codes ``q[lo:lo+n]``, ``down`` codes lower (``1024 k`` for ``k`` octaves), at least code 1
    (0 where the block clears or the code was 0)."""
    for j in range(lo, lo + n):
        code = np.int32(q[j])
        q[j] = np.uint16(0 if (clear or code == 0) else max(np.int32(code - down), np.int32(1)))


# ----- the step -----


@njit(inline="always")
def _gradient(p, g, i, gi_index, kind, maximize, coupled, wd):
    """Element ``i``'s gradient (``g[gi_index]``) as the step uses it: negated for ``maximize``, with coupled
    decay."""
    gi = _load(g, gi_index, kind)
    if maximize:
        gi = -gi
    if coupled:
        gi = _fma(_load(p, i, kind), wd, gi)
    return gi


@njit(inline="always")
def _moment(mi, gi, w, one_minus_w, low_w):
    """:func:`adamax.compact.moment` of one element."""
    return _fma(w, gi - mi, mi) if low_w else _fma(-(gi - mi), one_minus_w, gi)


@njit(inline="always")
def _block(
    p, g, m, q, s, b, lo, g_lo, n, gs, kind, step, mix, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize,
    coupled, low_w, guard,
):  # fmt: skip  # pragma: no cover - compiled
    """One block of :func:`_step_blocks_32`: elements ``lo ... lo + n - 1`` of ``p, m, q`` (their flat indices, which
    pick the random bits), from ``g_lo`` on in ``g``, and the scale ``s[b]``; ``kind`` is a constant where it is
    called: each kind has its own loops."""
    peak_bits = np.int32(0)
    for j in range(n):
        gi = _gradient(p, g, lo + j, g_lo + j, kind, maximize, coupled, wd)
        gs[j] = gi
        peak_bits = max(peak_bits, np.float32(abs(gi) + eps_x).view(np.int32))
    peak = np.int32(peak_bits).view(np.float32)
    scale = s[b] * b2
    if not peak <= scale:
        scale, down, clear = _rebase(scale, peak)
        _codes_down(q, lo, n, np.int32(down << 10), clear)  # rare: its own loop
    s[b] = scale
    key = _first_key(lo, mix)
    for j in range(n):
        i = lo + j
        gi = gs[j]
        x = abs(gi) + eps_x
        code = np.int32(q[i])
        code = max(code, _encode(x / scale)) if x > scale * _value(code) else code
        q[i] = np.uint16(code)
        d = scale * _value(code) + eps_d
        mi = _moment(_bf16_to_f32(m[i]), gi, w, one_minus_w, low_w)
        pi = _load(p, i, kind) * scale_p
        moved = pi + (step * mi) / d
        _store(p, i, pi if ((d == 0) & guard) else moved, kind)
        bits = np.uint32(np.float32(mi).view(np.uint32))
        m[i] = np.uint16(0x7FC0) if mi != mi else _stochastic_keyed(bits, key)
        key = _next_key(key)


@njit(inline="always")
def _scalars(hyper, flags):
    """The kernel's scalars from ``hyper`` (float32: [w, 1 - w, b2, eps, wd, 1 - lr*wd]) and ``flags``, in the form
    that keeps the element loop free of branches: a zero eps where it does not apply (``|g| + 0`` is ``|g|`` and
    ``u + 0`` is ``u``, bit for bit, as ``u >= 0``) and a param factor of 1 without decoupled decay."""
    w, one_minus_w, b2, eps, wd, decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    placement, decay_mode, zero = flags[PLACEMENT], flags[DECAY], np.float32(0)
    eps_x = eps if placement == EPS_MAX else zero
    eps_d = eps if placement == EPS_DENOMINATOR else zero
    scale_p = decay if decay_mode == DECOUPLED else np.float32(1)
    return (w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, flags[MAXIMIZE] != 0, decay_mode == COUPLED, w < 0.5,
            flags[GUARD] != 0)  # fmt: skip


@njit(inline="always")
def _chunk(
    c, like, kind, p_addr, g_addr, m_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start, chunk_stop, steps,
    counts, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard,
):  # fmt: skip  # pragma: no cover - compiled
    k = chunk_tensor[c]
    m_like = np.empty(0, np.uint16)
    p = _pointer(p_addr[k], like)
    g = _pointer(g_addr[k], like)
    m = _pointer(m_addr[k], m_like)
    q = _pointer(q_addr[k], m_like)
    s = _pointer(s_addr[k], np.empty(0, np.float32))
    size, step = sizes[k], steps[k]
    mix = np.uint32((counts[k] * 0x85EBCA77) & 0xFFFFFFFF)
    gs = np.empty(compact.BLOCK, np.float32)
    for b in range(chunk_start[c], chunk_stop[c]):
        lo = b * compact.BLOCK
        _block(p, g, m, q, s, b, lo, lo, min(compact.BLOCK, size - lo), gs, kind, step, mix, w, one_minus_w, b2,
               eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard)  # fmt: skip


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _step_blocks_32(
    p_addr, g_addr, m_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start, chunk_stop, steps, counts, hyper, flags,
):  # fmt: skip  # pragma: no cover - compiled
    """float32 params.  ``steps``: -lr/(1 - b1**t) in float32; ``counts``: each tensor's t (this step's count).

    Per block of 256 elements, two loops: the gradients as the step uses them (into a buffer in L1) and the
    block's largest ``x`` (compared as integers: ``x >= 0``, and a NaN's bits exceed every number's); then, after
    any re-base, one branch-free loop that LLVM vectorises (hence ``error_model="numpy"``: no zero-division
    check) for the code, ``u``, the moment, the param and the stored moment.  Each element's p, g, m and code
    cross memory once each way (g is read again from L1).
    """
    w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard = _scalars(hyper, flags)
    like = np.empty(0, np.float32)
    for c in prange(chunk_tensor.shape[0]):
        _chunk(c, like, F32, p_addr, g_addr, m_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start, chunk_stop,
               steps, counts, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w,
               guard)  # fmt: skip


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _step_blocks_16(
    kind, p_addr, g_addr, m_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start, chunk_stop, steps, counts, hyper,
    flags,
):  # fmt: skip  # pragma: no cover - compiled
    """:func:`_step_blocks_32` for bfloat16 (``kind=BF16``) or float16 params, by their bits."""
    w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w, guard = _scalars(hyper, flags)
    like = np.empty(0, np.uint16)
    for c in prange(chunk_tensor.shape[0]):
        if kind == BF16:
            _chunk(c, like, BF16, p_addr, g_addr, m_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start,
                   chunk_stop, steps, counts, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w,
                   guard)  # fmt: skip
        else:
            _chunk(c, like, F16, p_addr, g_addr, m_addr, q_addr, s_addr, sizes, chunk_tensor, chunk_start,
                   chunk_stop, steps, counts, w, one_minus_w, b2, eps_x, eps_d, wd, scale_p, maximize, coupled, low_w,
                   guard)  # fmt: skip


class BlockTable(NamedTuple):
    sizes: np.ndarray  # int64: each tensor's elements
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
        table = BlockTable(np.asarray(sizes, dtype=np.int64), tensor, start, stop)
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[sizes] = table
    return table


def arguments(sizes: tuple[int, ...], counts, config, threads: int | None) -> tuple[np.ndarray, ...]:
    """The kernels' arguments after the arrays' addresses: sizes, the chunk table, each tensor's step size
    (each distinct count computed once) and count, the hyperparameters and flags."""
    table = block_table(sizes)
    flags, hyper = prepare(config, np.dtype(np.float32), threads)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and (counts == counts[0]).all():  # the common case: every tensor at the same count
        steps = np.full(counts.size, step_size(config.lr, config.beta1, int(counts[0]))).astype(np.float32)
    else:
        distinct, where = np.unique(counts, return_inverse=True)
        steps = np.array([step_size(config.lr, config.beta1, int(t)) for t in distinct])[where].astype(np.float32)
    return (*table, steps, counts, hyper, flags)


def launch(step_32, step_16, kind: int, addresses: tuple, sizes: tuple[int, ...], counts, config, threads) -> None:
    """Call a compact format's float32 entry point (``kind`` :data:`F32`) or its bfloat16/float16 one with the
    arrays' addresses and :func:`arguments`; nothing for no tensors."""
    if not sizes:
        return
    arrays = (*addresses, *arguments(sizes, counts, config, threads))
    if kind == F32:
        step_32(*arrays)
    else:
        step_16(kind, *arrays)


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
    launch(_step_blocks_32, _step_blocks_16, kind, addresses, sizes, counts, config, threads)
