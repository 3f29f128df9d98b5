"""The fused GPU kernel: one Triton launch updates every tensor of a step.

Like :mod:`adamax.kernels.cpu`, it walks a chunk table (in the spirit of
apex's ``multi_tensor_apply``): per tensor, the addresses of p, g, m, u and
the element count; per program, one chunk of :data:`BLOCK` elements of one
tensor.  Each element is read and written once.

Params and grads may be float32, float16 or bfloat16; state is float32 (the
default for low-precision params, see below) or the params' dtype.  The math
is float32 and is cast on store.  The per-element arithmetic is
:mod:`adamax.reference`'s, operation for operation: explicit FMAs where the
reference has them, no other contraction (``enable_fp_fusion=False``), and a
correctly rounded division, so float32 results are bit-identical to the
reference and to ``torch.optim.Adamax(foreach=False)`` on the CPU.

Why float32 state for bfloat16 params: bfloat16 has 8 significant bits, and
``0.999`` rounds to ``1.0`` in it.  ``u <- max(b2 * u, |g|)`` then never
decays: after one large gradient, ``u`` stays at that value forever and every
later step is scaled down by it -- the infinity norm freezes.  (float16 keeps
0.999 apart from 1, but its 11 bits round small decays away just the same.)

Tested without a GPU under ``TRITON_INTERPRET=1`` on CPU tensors.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl

BLOCK = 1024  # elements per program
_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

NO_DECAY, COUPLED, DECOUPLED = 0, 1, 2
EPS_MAX, EPS_DENOMINATOR, EPS_NONE = 0, 1, 2


@triton.jit
def _store(ptr, x, mask, DTYPE: tl.constexpr):
    """Store float32 ``x`` as ``DTYPE``, rounding to nearest even (spelt out for bfloat16, so that
    Triton's interpreter, whose own bfloat16 cast truncates, gives the GPU's result)."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16
        rounded = tl.where(x != x, (bits >> 16) | 0x40, rounded)  # NaN stays NaN (quiet)
        tl.store(ptr, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, x.to(DTYPE), mask=mask)


@triton.jit
def _fma(a, b, c, SOFT: tl.constexpr):
    """``a * b + c`` in float32, rounded once.

    On a GPU, ``tl.fma`` is the hardware instruction.  Under Triton's interpreter it is not always one
    rounding (triton 3.8's interpreter rounds the product first), so there the sum is formed as the
    reference forms it (:mod:`adamax._exact`): the product exact in float64, the sum rounded to odd in
    float64, and one rounding to float32, which is then correct.
    """
    if SOFT:
        product = tl.cast(a, tl.float64) * tl.cast(b, tl.float64)  # scalars arrive as Python floats here
        c64 = tl.cast(c, tl.float64)
        total = product + c64
        c_part = total - product  # two-sum: total + error == product + c exactly
        error = (product - (total - c_part)) + (c64 - c_part)
        bits = total.to(tl.int64, bitcast=True)
        away = (error > 0) == (total > 0)  # the exact sum lies further from 0 than ``total``
        odd = tl.where((error != 0) & ((bits & 1) == 0), tl.where(away, bits + 1, bits - 1), bits)
        return odd.to(tl.float64, bitcast=True).to(tl.float32)
    else:
        return tl.fma(a, b, c)


@triton.jit
def _adamax_chunks(
    chunk_tensor,
    chunk_start,
    p_addr,
    g_addr,
    m_addr,
    u_addr,
    numel,
    step_sizes,
    w,
    one_minus_w,
    b2,
    eps,
    wd,
    decay,
    MAXIMIZE: tl.constexpr,
    DECAY: tl.constexpr,
    PLACEMENT: tl.constexpr,
    GUARD: tl.constexpr,
    P_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    SOFT_FMA: tl.constexpr,
):
    # One element of one step: adamax.reference's rounding, operation for operation (float32).
    pid = tl.program_id(0)
    k = tl.load(chunk_tensor + pid)
    offsets = tl.load(chunk_start + pid) + tl.arange(0, BLOCK)
    mask = offsets < tl.load(numel + k)
    p_ptr = tl.load(p_addr + k).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(g_addr + k).to(tl.pointer_type(P_DTYPE))
    m_ptr = tl.load(m_addr + k).to(tl.pointer_type(S_DTYPE))
    u_ptr = tl.load(u_addr + k).to(tl.pointer_type(S_DTYPE))
    p = tl.load(p_ptr + offsets, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offsets, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + offsets, mask=mask).to(tl.float32)
    u = tl.load(u_ptr + offsets, mask=mask).to(tl.float32)
    step = tl.load(step_sizes + k)
    if MAXIMIZE:
        g = -g
    if DECAY == 1:
        g = _fma(p, wd, g, SOFT_FMA)  # torch: grad.add(param, alpha=wd)
    if DECAY == 2:
        p = p * decay  # p * (1 - lr * wd)
    if w < 0.5:  # torch's lerp(m, g, w), w = 1 - b1, in its two FMA forms
        m = _fma(w, g - m, m, SOFT_FMA)
    else:
        m = _fma(-(g - m), one_minus_w, g, SOFT_FMA)
    if PLACEMENT == 0:
        u = tl.maximum(u * b2, tl.abs(g) + eps, propagate_nan=tl.PropagateNan.ALL)
        d = u
    else:
        u = tl.maximum(u * b2, tl.abs(g), propagate_nan=tl.PropagateNan.ALL)
        if PLACEMENT == 1:
            d = u + eps
        else:
            d = u
    change = tl.math.div_rn(step * m, d)
    if GUARD:  # u == 0 only where every gradient so far was 0, so m == 0: no step
        change = tl.where(d == 0, 0.0, change)
    _store(p_ptr + offsets, p + change, mask, P_DTYPE)
    _store(m_ptr + offsets, m, mask, S_DTYPE)
    _store(u_ptr + offsets, u, mask, S_DTYPE)


# Loaded with TRITON_INTERPRET=1 (see :func:`adamax.cli.check.interpreted_triton`), the kernel runs on the CPU
# under Triton's interpreter; its FMAs are then computed in software, exactly.
INTERPRETED = type(_adamax_chunks).__name__ == "InterpretedFunction"


@functools.lru_cache(maxsize=64)
def _chunk_table(sizes: tuple[int, ...], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    counts = [-(-n // BLOCK) for n in sizes]
    tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
    start = np.concatenate([np.arange(c, dtype=np.int64) * BLOCK for c in counts]) if tensor.size else tensor
    return (
        torch.from_numpy(tensor).to(device),
        torch.from_numpy(start).to(device),
        torch.tensor(sizes, dtype=torch.int64, device=device),
    )


def _addresses(tensors: list[torch.Tensor], device) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=device)


def _flags(config) -> dict[str, int | bool]:
    """The kernels' compile-time flags for ``config``."""
    if config.weight_decay == 0:
        decay_mode = NO_DECAY
    else:
        decay_mode = DECOUPLED if config.decoupled_weight_decay else COUPLED
    return {
        "MAXIMIZE": bool(config.maximize),
        "DECAY": decay_mode,
        "PLACEMENT": {"max": EPS_MAX, "denominator": EPS_DENOMINATOR, "none": EPS_NONE}[config.eps_placement],
        "GUARD": config.eps_placement == "none" or config.eps == 0,
    }


def _scalars(config) -> tuple[float, ...]:
    """The hyperparameters rounded to float32, as torch casts its scalars for float32 tensors."""
    w = np.float32(1 - config.beta1)
    values = (w, np.float32(1) - w, config.beta2, config.eps, config.weight_decay, 1 - config.lr * config.weight_decay)
    return tuple(float(np.float32(v)) for v in values)


def step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_infs: list[torch.Tensor],
    step_sizes: torch.Tensor,
    config,
) -> None:
    """One launch: update every ``params[k]`` in place, with its own ``step_sizes[k] = -lr / (1 - b1**t_k)``.

    All params share one dtype and device, all state another (float32, or the
    params'); every tensor is contiguous.  The caller checks.
    """
    if not params:
        return
    device = params[0].device
    sizes = tuple(p.numel() for p in params)
    chunk_tensor, chunk_start, numel = _chunk_table(sizes, str(device))
    if chunk_tensor.numel() == 0:
        return

    _adamax_chunks[(chunk_tensor.numel(),)](
        chunk_tensor,
        chunk_start,
        _addresses(params, device),
        _addresses(grads, device),
        _addresses(exp_avgs, device),
        _addresses(exp_infs, device),
        numel,
        step_sizes.to(device=device, dtype=torch.float32),
        *_scalars(config),
        **_flags(config),
        P_DTYPE=_TL[params[0].dtype],
        S_DTYPE=_TL[exp_avgs[0].dtype],
        BLOCK=BLOCK,
        SOFT_FMA=INTERPRETED,
        enable_fp_fusion=False,
    )


# ----- compact state (adamax.compact) -----

COMPACT_BLOCK = 256  # adamax.compact.BLOCK: one program per block of elements sharing a scale
CODE_OFFSET = tl.constexpr(64 << 23)  # adamax.compact.OFFSET: code q has the float32 bits (q << 13) + CODE_OFFSET
TINY = tl.constexpr(2.0**-126)  # adamax.compact.TINY: a smaller scale counts as zero


@triton.jit
def _larger(a, b):
    # (tl.max is a library function, which Triton's interpreter cannot run once triton was imported without it)
    return tl.maximum(a, b)


@triton.jit
def _block_gradient(p_ptr, g_ptr, offsets, mask, wd, decay, eps, MAXIMIZE: tl.constexpr, DECAY: tl.constexpr,
                    PLACEMENT: tl.constexpr, SOFT_FMA: tl.constexpr):  # fmt: skip
    """A block's float32 params (decoupled decay applied), its gradients as the step uses them, and ``x``, what u
    takes the maximum with (0 past the tensor's end): the compact formats' first lines."""
    p = tl.load(p_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if MAXIMIZE:
        g = -g
    if DECAY == 1:
        g = _fma(p, wd, g, SOFT_FMA)
    if DECAY == 2:
        p = p * decay
    if PLACEMENT == 0:
        x = tl.abs(g) + eps
    else:
        x = tl.abs(g)
    return p, g, tl.where(mask, x, 0.0)


@triton.jit
def _hashed(offsets, t):
    """:func:`adamax.compact.hashed` of the elements' flat indices at step ``t`` (uint32): the lowbias32 mixer."""
    h = offsets.to(tl.uint32) * 0x9E3779B1 + t * 0x85EBCA77
    h = h ^ (h >> 16)
    h = h * 0x7FEB352D
    h = h ^ (h >> 15)
    h = h * 0x846CA68B
    return h ^ (h >> 16)


@triton.jit
def _octaves(scale, peak):
    """:func:`adamax.compact.shift` and :func:`adamax.compact.scaled`: ``k`` and ``scale * 2**k`` (infinite past the
    largest float32), for a finite normal ``scale`` below a finite ``peak``."""
    s_bits = scale.to(tl.int32, bitcast=True)
    p_bits = peak.to(tl.int32, bitcast=True)
    octaves = (p_bits >> 23) - (s_bits >> 23) + ((p_bits & 0x7FFFFF) > (s_bits & 0x7FFFFF)).to(tl.int32)
    moved = s_bits + (octaves << 23)  # scale * 2**octaves, exactly
    return octaves, tl.where(moved >= 0x7F800000, float("inf"), moved.to(tl.float32, bitcast=True))


@triton.jit
def _compact_blocks(
    chunk_tensor,
    chunk_block,
    p_addr,
    g_addr,
    m_addr,
    q_addr,
    s_addr,
    numel,
    step_sizes,
    counts,
    w,
    one_minus_w,
    b2,
    eps,
    wd,
    decay,
    MAXIMIZE: tl.constexpr,
    DECAY: tl.constexpr,
    PLACEMENT: tl.constexpr,
    GUARD: tl.constexpr,
    P_DTYPE: tl.constexpr,
    SOFT_FMA: tl.constexpr,
):
    # One block of one tensor: :func:`adamax.compact.update`, operation for operation (float32).
    pid = tl.program_id(0)
    k = tl.load(chunk_tensor + pid)
    b = tl.load(chunk_block + pid)
    offsets = b * 256 + tl.arange(0, 256)
    mask = offsets < tl.load(numel + k)
    p_ptr = tl.load(p_addr + k).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(g_addr + k).to(tl.pointer_type(P_DTYPE))
    m_ptr = tl.load(m_addr + k).to(tl.pointer_type(tl.uint16))
    q_ptr = tl.load(q_addr + k).to(tl.pointer_type(tl.uint16))
    s_ptr = tl.load(s_addr + k).to(tl.pointer_type(tl.float32))
    p, g, x = _block_gradient(p_ptr, g_ptr, offsets, mask, wd, decay, eps, MAXIMIZE, DECAY, PLACEMENT, SOFT_FMA)
    # the block's largest x, compared as integers (x >= 0; a NaN's bits exceed every number's)
    peak = tl.reduce(x.to(tl.int32, bitcast=True), 0, _larger).to(tl.float32, bitcast=True)
    scale = tl.load(s_ptr + b) * b2
    q = tl.load(q_ptr + offsets, mask=mask, other=0).to(tl.int32)
    if (peak > scale) | (peak != peak) | (scale != scale):  # re-base up (adamax.compact.rebase)
        if scale < TINY:  # zero or subnormal: the block's u clear
            q = q * 0
            scale = peak
        elif (scale < float("inf")) & (peak < float("inf")):
            octaves, scale = _octaves(scale, peak)
            q = tl.where(q == 0, 0, tl.maximum(q - (octaves << 10), 1))
        else:
            scale = peak
    tl.store(s_ptr + b, scale)
    u = scale * tl.where(q == 0, 0.0, ((q << 13) + CODE_OFFSET).to(tl.float32, bitcast=True))
    need = (x > u) & mask
    r = tl.math.div_rn(x, tl.where(need, scale, 1.0))
    fresh = tl.maximum(((r.to(tl.int32, bitcast=True) + 0x1FFF) >> 13) - (CODE_OFFSET >> 13), 1)
    q = tl.where(need, tl.maximum(q, fresh), q)
    u = scale * tl.where(q == 0, 0.0, ((q << 13) + CODE_OFFSET).to(tl.float32, bitcast=True))
    m = (tl.load(m_ptr + offsets, mask=mask, other=0).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    if w < 0.5:
        m = _fma(w, g - m, m, SOFT_FMA)
    else:
        m = _fma(-(g - m), one_minus_w, g, SOFT_FMA)
    if PLACEMENT == 1:
        d = u + eps
    else:
        d = u
    change = tl.math.div_rn(tl.load(step_sizes + k) * m, d)
    if GUARD:
        change = tl.where(d == 0, 0.0, change)
    _store(p_ptr + offsets, p + change, mask, P_DTYPE)
    # m, rounded stochastically (adamax.compact.random_bits: the lowbias32 mixer of index and count)
    t = tl.load(counts + k).to(tl.uint32)
    h = _hashed(offsets, t)
    rounded = (m.to(tl.uint32, bitcast=True) + (h & 0xFFFF)) >> 16
    rounded = tl.where(m != m, 0x7FC0, rounded)
    tl.store(m_ptr + offsets, rounded.to(tl.uint16), mask=mask)
    tl.store(q_ptr + offsets, q.to(tl.uint16), mask=mask)


@functools.lru_cache(maxsize=64)
def _block_table(sizes: tuple[int, ...], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    counts = [-(-n // COMPACT_BLOCK) for n in sizes]
    tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
    block = np.concatenate([np.arange(c, dtype=np.int64) for c in counts]) if tensor.size else tensor
    return (
        torch.from_numpy(tensor).to(device),
        torch.from_numpy(block).to(device),
        torch.tensor(sizes, dtype=torch.int64, device=device),
    )


def compact_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    codes: list[torch.Tensor],
    scales: list[torch.Tensor],
    step_sizes: torch.Tensor,
    counts: torch.Tensor,
    config,
) -> None:
    """One launch over compact state (:mod:`adamax.compact`): ``exp_avgs`` bfloat16, ``codes`` uint16,
    ``scales`` float32; ``step_sizes[k] = -lr / (1 - b1**t_k)`` and ``counts[k] = t_k`` (this step's).  Params of
    one dtype (float32, float16, bfloat16) and device; every tensor contiguous.  The caller checks."""
    if not params:
        return
    device = params[0].device
    sizes = tuple(p.numel() for p in params)
    chunk_tensor, chunk_block, numel = _block_table(sizes, str(device))
    if chunk_tensor.numel() == 0:
        return

    _compact_blocks[(chunk_tensor.numel(),)](
        chunk_tensor,
        chunk_block,
        _addresses(params, device),
        _addresses(grads, device),
        _addresses(exp_avgs, device),
        _addresses(codes, device),
        _addresses(scales, device),
        numel,
        step_sizes.to(device=device, dtype=torch.float32),
        counts.to(device=device, dtype=torch.int64),
        *_scalars(config),
        **_flags(config),
        P_DTYPE=_TL[params[0].dtype],
        SOFT_FMA=INTERPRETED,
        enable_fp_fusion=False,
    )


# ----- compact8 state (adamax.compact8) -----

U8_HI = tl.constexpr(0x3F800000 - (255 << 18))  # adamax.compact8.U8: codes >= 127 have the bits (q << 18) + U8_HI
U8_LO = tl.constexpr((123 << 23) - (127 << 20))  # and codes below it (q << 20) + U8_LO
M7_OFFSET = tl.constexpr(0x3F800000 - (127 << 19))  # adamax.compact8.OFFSET_M: m's w(q) bits (q << 19) + M7_OFFSET
M7_BELOW = tl.constexpr(float(2.0**19 / (1.125 * 2.0**-8)))  # adamax.compact8.BELOW


@triton.jit
def _u8_value(q):
    """:meth:`adamax.compact8.Tapered.value` of int32 codes."""
    lower = tl.where(q == 0, 0.0, ((q << 20) + U8_LO).to(tl.float32, bitcast=True))
    return tl.where(q >= 127, ((q << 18) + U8_HI).to(tl.float32, bitcast=True), lower)


@triton.jit
def _u8_up(r):
    """:meth:`adamax.compact8.Tapered.encode` of float32 ``r`` in [0, 1], at least code 1."""
    bits = r.to(tl.int32, bitcast=True)
    upper = tl.minimum(tl.maximum(((bits + (1 << 18) - 1) >> 18) - (U8_HI >> 18), 1), 255)
    lower = tl.minimum(tl.maximum(((bits + (1 << 20) - 1) >> 20) - (U8_LO >> 20), 1), 127)
    return tl.where(r > 0.0625, upper, lower)


@triton.jit
def _compact8_blocks(
    chunk_tensor,
    chunk_block,
    p_addr,
    g_addr,
    mq_addr,
    ms_addr,
    q_addr,
    s_addr,
    numel,
    step_sizes,
    counts,
    w,
    one_minus_w,
    b2,
    eps,
    wd,
    decay,
    MAXIMIZE: tl.constexpr,
    DECAY: tl.constexpr,
    PLACEMENT: tl.constexpr,
    GUARD: tl.constexpr,
    P_DTYPE: tl.constexpr,
    SOFT_FMA: tl.constexpr,
):
    # One block of one tensor: :func:`adamax.compact8.update`, operation for operation (float32).
    pid = tl.program_id(0)
    k = tl.load(chunk_tensor + pid)
    b = tl.load(chunk_block + pid)
    offsets = b * 256 + tl.arange(0, 256)
    mask = offsets < tl.load(numel + k)
    p_ptr = tl.load(p_addr + k).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(g_addr + k).to(tl.pointer_type(P_DTYPE))
    mq_ptr = tl.load(mq_addr + k).to(tl.pointer_type(tl.uint8))
    ms_ptr = tl.load(ms_addr + k).to(tl.pointer_type(tl.float32))
    q_ptr = tl.load(q_addr + k).to(tl.pointer_type(tl.uint8))
    s_ptr = tl.load(s_addr + k).to(tl.pointer_type(tl.float32))
    p, g, x = _block_gradient(p_ptr, g_ptr, offsets, mask, wd, decay, eps, MAXIMIZE, DECAY, PLACEMENT, SOFT_FMA)
    # m: decoded below the block's old m scale, then the step's moment
    mq = tl.load(mq_ptr + offsets, mask=mask, other=0).to(tl.int32)
    magnitude = tl.load(ms_ptr + b) * tl.where(
        (mq & 0x7F) == 0, 0.0, (((mq & 0x7F) << 19) + M7_OFFSET).to(tl.float32, bitcast=True)
    )
    m = tl.where((mq & 0x80) != 0, -magnitude, magnitude)
    if w < 0.5:
        m = _fma(w, g - m, m, SOFT_FMA)
    else:
        m = _fma(-(g - m), one_minus_w, g, SOFT_FMA)
    m_peak = tl.reduce(tl.where(mask, tl.abs(m), 0.0).to(tl.int32, bitcast=True), 0, _larger)
    m_scale = m_peak.to(tl.float32, bitcast=True)
    m_scale = tl.where(m_scale < TINY, 0.0, m_scale)
    finite = (m_scale == m_scale) & (m_scale < float("inf"))
    inv = tl.where(finite & (m_scale > 0), tl.math.div_rn(1.0, tl.where(m_scale > 0, m_scale, 1.0)), 0.0)
    # u: the scale decays, a block re-bases up to cover its largest x, the codes move down by octaves
    peak = tl.reduce(x.to(tl.int32, bitcast=True), 0, _larger).to(tl.float32, bitcast=True)
    scale = tl.load(s_ptr + b) * b2
    q = tl.load(q_ptr + offsets, mask=mask, other=0).to(tl.int32)
    if (peak > scale) | (peak != peak) | (scale != scale):
        if scale < TINY:
            q = q * 0
            scale = peak
        elif (scale < float("inf")) & (peak < float("inf")):
            octaves, scale = _octaves(scale, peak)
            down = tl.minimum(octaves, 200)
            factor = tl.where(
                down <= 126,
                ((127 - down) << 23).to(tl.float32, bitcast=True),
                tl.where(down <= 149, (1 << tl.maximum(149 - down, 0)).to(tl.float32, bitcast=True), 0.0),
            )
            q = tl.where(q == 0, 0, _u8_up(_u8_value(q) * factor))
        else:
            scale = peak
    tl.store(s_ptr + b, scale)
    u = scale * _u8_value(q)
    need = (x > u) & mask
    r = tl.math.div_rn(x, tl.where(need, scale, 1.0))
    q = tl.where(need, tl.maximum(q, _u8_up(r)), q)
    u = scale * _u8_value(q)
    if PLACEMENT == 1:
        d = u + eps
    else:
        d = u
    change = tl.math.div_rn(tl.load(step_sizes + k) * m, d)
    if GUARD:
        change = tl.where(d == 0, 0.0, change)
    _store(p_ptr + offsets, p + change, mask, P_DTYPE)
    # m's codes, rounded stochastically by the top 19 bits of adamax.compact.hashed
    t = tl.load(counts + k).to(tl.uint32)
    h = _hashed(offsets, t)
    rand = (h >> 13).to(tl.int32)
    ratio = tl.abs(m) * inv
    bits = ratio.to(tl.int32, bitcast=True)
    above = tl.minimum(tl.maximum((bits - M7_OFFSET + rand) >> 19, 1), 127)
    below = (rand.to(tl.float32) < ratio * M7_BELOW).to(tl.int32)
    code = tl.where(bits >= M7_OFFSET + (1 << 19), above, below)
    code = tl.where((code > 0) & (m.to(tl.int32, bitcast=True) < 0), code | 0x80, code)
    code = tl.where(finite, code, 127)
    tl.store(ms_ptr + b, m_scale)
    tl.store(mq_ptr + offsets, code.to(tl.uint8), mask=mask)
    tl.store(q_ptr + offsets, q.to(tl.uint8), mask=mask)


def compact8_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    m_codes: list[torch.Tensor],
    m_scales: list[torch.Tensor],
    codes: list[torch.Tensor],
    scales: list[torch.Tensor],
    step_sizes: torch.Tensor,
    counts: torch.Tensor,
    config,
) -> None:
    """One launch over compact8 state (:mod:`adamax.compact8`): codes uint8, scales float32;
    ``step_sizes[k] = -lr / (1 - b1**t_k)`` and ``counts[k] = t_k`` (this step's).  Params of one dtype
    (float32, float16, bfloat16) and device; every tensor contiguous.  The caller checks."""
    if not params:
        return
    device = params[0].device
    sizes = tuple(p.numel() for p in params)
    chunk_tensor, chunk_block, numel = _block_table(sizes, str(device))
    if chunk_tensor.numel() == 0:
        return
    _compact8_blocks[(chunk_tensor.numel(),)](
        chunk_tensor,
        chunk_block,
        *(_addresses(column, device) for column in (params, grads, m_codes, m_scales, codes, scales)),
        numel,
        step_sizes.to(device=device, dtype=torch.float32),
        counts.to(device=device, dtype=torch.int64),
        *_scalars(config),
        **_flags(config),
        P_DTYPE=_TL[params[0].dtype],
        SOFT_FMA=INTERPRETED,
        enable_fp_fusion=False,
    )
