"""The fused CPU kernel: one parallel pass over every tensor of a step (numba).

Each element is read once (p, g, m, u) and written once (p, m, u): 28 bytes
per float32 element, the least any Adamax step can move.  Many tensors are
updated in one parallel region through a *chunk table*: the tensors' data
addresses, and a list of (tensor, start, stop) chunks that ``prange`` shares
among the threads, so a model of hundreds of small tensors costs one call.

The arithmetic is :func:`_element`, which follows :mod:`adamax.reference`
operation for operation (same FMAs, same casts, same order), so results are
bit-identical to the reference and to ``torch.optim.Adamax(foreach=False)``.

Only dense (contiguous) float32 and float64 arrays qualify; callers check
with :func:`qualifies` and fall back otherwise.

Threads: numba's OpenMP layer where it is available (``workqueue``
otherwise), sized per call to the caller's thread count (torch's, for the
torch adapter).  numba's and torch's OpenMP pools never run at once: the
kernel runs between torch ops.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

# Chosen before the first parallel kernel runs; an explicit NUMBA_THREADING_LAYER(_PRIORITY) wins.
# OpenMP first: its parallel regions start in ~10 us where workqueue's take ~200 us, and interleaved
# with torch's own OpenMP pool it costs less, not more (docs/design.md has the measurements).
if not {"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ):
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]

CHUNK = 1 << 16  # elements per work item: large enough to amortise, small enough to balance 2+ threads
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# flags[...] layout, shared with the callers below
MAXIMIZE, DECAY, PLACEMENT, GUARD = range(4)
NO_DECAY, COUPLED, DECOUPLED = 0, 1, 2
EPS_MAX, EPS_DENOMINATOR, EPS_NONE = 0, 1, 2


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's ``llvm.fma``), as torch's CPU kernels compute it."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [t], ir.FunctionType(t, [t, t, t]))
        return builder.call(fn, args)

    return a(a, a, a), codegen


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 ``address`` as a pointer to ``like``'s dtype."""
    if not isinstance(like, types.Array):
        return None
    pointer_type = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        llvm_pointer = context.get_value_type(pointer_type)
        return builder.inttoptr(args[0], llvm_pointer)

    return pointer_type(address, like), codegen


@njit(inline="always")
def _maximum(a, b):
    """``max`` that propagates NaN from either side, as ``torch.maximum`` and ``np.maximum`` do."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@njit(inline="always")
def _element(p, g, m, u, step, w, one_minus_w, b2, eps, wd, decay, maximize, decay_mode, placement, guard):
    """One element of one step: :mod:`adamax.reference`'s rounding, operation for operation.

    All scalars arrive already cast to the element type (a Python number here
    would promote float32 arithmetic to float64).
    """
    if maximize:
        g = -g
    if decay_mode == COUPLED:
        g = _fma(p, wd, g)  # torch: grad.add(param, alpha=wd)
    elif decay_mode == DECOUPLED:
        p = p * decay  # p * (1 - lr * wd)
    if w < 0.5:  # torch's lerp(m, g, w), w = 1 - b1, in its two FMA forms
        m = _fma(w, g - m, m)
    else:
        m = _fma(-(g - m), one_minus_w, g)
    if placement == EPS_MAX:
        u = _maximum(u * b2, abs(g) + eps)
        d = u
    else:
        u = _maximum(u * b2, abs(g))
        d = u + eps if placement == EPS_DENOMINATOR else u
    if guard and d == 0:  # u == 0 only where every gradient so far was 0, so m == 0: no step
        return p, m, u
    return p + (step * m) / d, m, u


# 16-bit params (bfloat16, float16), read and written by their bits: numba has no such dtypes on the CPU


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


F32, BF16, F16 = 0, 1, 2  # param kinds: float32, and 16-bit floats held as uint16 bits


@njit(inline="always")
def _load(p, i, kind):
    if kind == F32:
        return p[i]
    if kind == BF16:
        return _bf16_to_f32(p[i])
    return _f16_to_f32(p[i])


@njit(inline="always")
def _store(p, i, value, kind):
    if kind == F32:
        p[i] = value
    elif kind == BF16:
        p[i] = _f32_to_bf16(value)
    else:
        p[i] = _f32_to_f16(value)


@njit(parallel=True, cache=True, nogil=True)
def _step_chunks(like, p_addr, g_addr, m_addr, u_addr, chunk_tensor, chunk_start, chunk_stop, steps, hyper, flags):
    """``hyper`` and ``steps`` are in the element type: [w, 1 - w, b2, eps, wd, 1 - lr*wd] and -lr/(1 - b1**t)."""
    w, one_minus_w, b2, eps, wd, decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    maximize, decay_mode, placement, guard = flags[MAXIMIZE] != 0, flags[DECAY], flags[PLACEMENT], flags[GUARD] != 0
    for c in prange(chunk_tensor.shape[0]):
        k = chunk_tensor[c]
        p = _pointer(p_addr[k], like)
        g = _pointer(g_addr[k], like)
        m = _pointer(m_addr[k], like)
        u = _pointer(u_addr[k], like)
        step = steps[k]
        for i in range(chunk_start[c], chunk_stop[c]):
            p[i], m[i], u[i] = _element(
                p[i], g[i], m[i], u[i], step, w, one_minus_w, b2, eps, wd, decay, maximize, decay_mode, placement, guard
            )


class ChunkTable(NamedTuple):
    tensor: np.ndarray  # int64: which tensor each chunk belongs to
    start: np.ndarray  # int64: first element of the chunk
    stop: np.ndarray  # int64: one past its last element


_TABLES: dict[tuple[int, ...], ChunkTable] = {}


def chunk_table(sizes: tuple[int, ...]) -> ChunkTable:
    """Split tensors of ``sizes`` elements into chunks of at most :data:`CHUNK` (cached per size list)."""
    table = _TABLES.get(sizes)
    if table is None:
        counts = [-(-n // CHUNK) for n in sizes]
        tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
        start = np.concatenate([np.arange(c, dtype=np.int64) * CHUNK for c in counts]) if tensor.size else tensor
        stop = np.minimum(start + CHUNK, np.asarray(sizes, dtype=np.int64)[tensor])
        table = ChunkTable(tensor, start, stop)
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[sizes] = table
    return table


def flags_and_hyper(config, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The config as the kernel's flag array and its scalars, cast to ``dtype`` as torch casts them."""
    if config.weight_decay == 0:
        decay_mode = NO_DECAY
    else:
        decay_mode = DECOUPLED if config.decoupled_weight_decay else COUPLED
    placement = {"max": EPS_MAX, "denominator": EPS_DENOMINATOR, "none": EPS_NONE}[config.eps_placement]
    guard = config.eps_placement == "none" or config.eps == 0
    flags = np.array([config.maximize, decay_mode, placement, guard], dtype=np.int64)
    w = dtype.type(1 - config.beta1)
    hyper = np.array(
        [w, dtype.type(1) - w, config.beta2, config.eps, config.weight_decay, 1 - config.lr * config.weight_decay],
        dtype=dtype,
    )
    return flags, hyper


def prepare(config, dtype: np.dtype, threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Before a launch: :func:`flags_and_hyper`, and numba's thread count set to ``threads`` (if given)."""
    if threads is not None and threads != numba.get_num_threads():
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    return flags_and_hyper(config, dtype)


_LIKE = {dt: np.empty(0, dt) for dt in DTYPES}


def step(
    dtype: np.dtype,
    addresses: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    sizes: tuple[int, ...],
    step_sizes: np.ndarray,
    config,
    threads: int | None = None,
) -> None:
    """Update, in place, every tensor whose p, g, m, u data addresses are given.

    ``step_sizes[k] = -lr / (1 - b1**t_k)`` in float64 (each tensor has its own
    step count).  All four arrays of a tensor must be dense, ``dtype``, and
    ``sizes[k]`` elements long; the caller guarantees it.
    """
    if not sizes:
        return
    table = chunk_table(sizes)
    flags, hyper = prepare(config, dtype, threads)
    p_addr, g_addr, m_addr, u_addr = addresses
    steps = np.asarray(step_sizes, dtype=np.float64).astype(dtype)
    _step_chunks(_LIKE[dtype], p_addr, g_addr, m_addr, u_addr, *table, steps, hyper, flags)


def qualifies(*arrays) -> bool:
    """Whether NumPy arrays (or tensors' NumPy views) can go through the kernel as they are."""
    first = arrays[0]
    return first.dtype in DTYPES and all(
        a.dtype == first.dtype and a.shape == first.shape and a.flags.c_contiguous for a in arrays
    )


@njit(parallel=True, cache=True, nogil=True)
def _step_chunks_16(
    kind, p_addr, g_addr, m_addr, u_addr, chunk_tensor, chunk_start, chunk_stop, steps, hyper, flags
):  # pragma: no cover - compiled
    """bfloat16 or float16 params and gradients (their bits), float32 state: float32 arithmetic, the param
    rounded to nearest when stored, as the Triton kernel and torch's float32 math on the upcast param."""
    w, one_minus_w, b2, eps, wd, decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    maximize, decay_mode, placement, guard = flags[MAXIMIZE] != 0, flags[DECAY], flags[PLACEMENT], flags[GUARD] != 0
    bits = np.empty(0, np.uint16)
    f32 = np.empty(0, np.float32)
    for c in prange(chunk_tensor.shape[0]):
        k = chunk_tensor[c]
        p = _pointer(p_addr[k], bits)
        g = _pointer(g_addr[k], bits)
        m = _pointer(m_addr[k], f32)
        u = _pointer(u_addr[k], f32)
        step = steps[k]
        for i in range(chunk_start[c], chunk_stop[c]):
            new_p, m[i], u[i] = _element(
                _load(p, i, kind), _load(g, i, kind), m[i], u[i], step, w, one_minus_w, b2, eps, wd, decay,
                maximize, decay_mode, placement, guard,
            )  # fmt: skip
            _store(p, i, new_p, kind)


def step16(
    kind: int,
    addresses: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    sizes: tuple[int, ...],
    step_sizes: np.ndarray,
    config,
    threads: int | None = None,
) -> None:
    """:func:`step` for bfloat16 (``kind=BF16``) or float16 (``F16``) params and gradients with float32 state."""
    if not sizes:
        return
    table = chunk_table(sizes)
    flags, hyper = prepare(config, np.dtype(np.float32), threads)
    steps = np.asarray(step_sizes, dtype=np.float64).astype(np.float32)
    _step_chunks_16(kind, *addresses, *table, steps, hyper, flags)
