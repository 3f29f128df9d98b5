"""adamax._blocks, the compact formats' block arithmetic shared by the optax transforms and adamax.keras, against
the NumPy definitions (adamax.compact, adamax.compact8) function by function, on awkward inputs: NaN, infinities,
subnormals, zero and subnormal scales, every code, counts up to 2**31 - 1.  Each runs through JAX's namespace and
through ``keras.ops`` (on the JAX backend here, and on torch in a subprocess).

XLA flushes subnormal float32 to zero, in its inputs and its results (on the CPU as on GPUs), where NumPy and torch
keep them; so where a namespace flushes, the definitions are given the flushed inputs and their results are flushed
before the comparison (:func:`_flushed`).  Nothing else is allowed to differ."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adamax import _blocks, compact, compact8
from adamax.spec import AdamaxConfig
from tests import processes

OTHER_BACKEND = os.environ.get("ADAMAX_BLOCKS_OTHER_BACKEND") == "1"


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _namespaces() -> list[str]:
    names = ["jax"] if _installed("jax") and _installed("optax") and not OTHER_BACKEND else []
    return [*names, "keras"] if _installed("keras") else names


def _xp(name: str):
    if name == "jax":
        from adamax.optax import _XP

        return _XP
    from adamax.keras import _XP

    return _XP


def _np(x) -> np.ndarray:
    try:
        import keras

        return np.array(keras.ops.convert_to_numpy(x))
    except ImportError:
        return np.array(x)


def _tensor(name: str, x: np.ndarray):
    if name == "jax":
        import jax.numpy as jnp

        return jnp.asarray(x)
    import keras

    return keras.ops.convert_to_tensor(x)


NAMESPACES = _namespaces()
F32 = np.float32
TINY = F32(2.0**-126)
SIZES = [1, 255, 256, 257, 700]  # few shapes: each new one compiles every op again


def _flushes(name: str) -> bool:
    """Whether the namespace's arithmetic flushes subnormals to zero (XLA's does)."""
    xp = _xp(name)
    return bool(_np(xp.f32(_tensor(name, np.array([2.0**-126], F32))) * 0.5)[0] == 0)


def _flushed(name: str, x: np.ndarray) -> np.ndarray:
    """``x`` with its subnormals made zeros of their sign, where the namespace flushes them; else ``x``."""
    x = np.asarray(x)
    if not _flushes(name):
        return x
    return np.where(np.abs(x) < TINY, np.copysign(F32(0), x), x).astype(x.dtype)


SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 2.0**-149, -(2.0**-149), 2.0**-126, 3.0e38, 1.0, -1.0]


def floats(special: list[float] = SPECIAL):
    return st.one_of(
        st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True),
        st.floats(min_value=-(2.0**-100), max_value=2.0**-100, width=32, allow_subnormal=True),
        st.sampled_from(special),
    )


def arrays(elements, min_size: int = 1, max_size: int = 700):
    return st.lists(elements, min_size=min_size, max_size=max_size).map(lambda xs: np.array(xs, dtype=F32))


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal values, NaN where NaN, and the same sign of zero."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)
    if a.dtype.kind == "f":
        assert np.array_equal(np.signbit(a[~np.isnan(a)]), np.signbit(b[~np.isnan(b)]))


@pytest.mark.parametrize("name", NAMESPACES)
@settings(max_examples=40, deadline=None)
@given(size=st.sampled_from([1, 256, 2000]), count=st.integers(0, 2**31 - 1))
def test_hashed_is_the_definitions_hash(name, size, count):
    xp = _xp(name)
    got = _np(_blocks.hashed(xp, (size,), _tensor(name, np.int32(count))))
    assert np.array_equal(got.view(np.uint32), compact.hashed(np.arange(size), count))


@pytest.mark.parametrize("name", NAMESPACES)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), size=st.sampled_from(SIZES), count=st.integers(0, 2**31 - 1))
def test_stochastic_bfloat16_is_the_definitions_rounding(name, data, size, count):
    m = data.draw(arrays(floats(), size, size))
    xp = _xp(name)
    bits = _np(_blocks.stochastic_bf16(xp, _tensor(name, m), _tensor(name, np.int32(count))))
    want = compact.f32_to_bf16_stochastic(m, count)
    assert np.array_equal((bits.view(np.uint32) >> 16).astype(np.uint16), want)
    assert not np.any(bits & 0xFFFF)


@pytest.mark.parametrize("name", NAMESPACES)
@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    size=st.sampled_from(SIZES),
    b2=st.sampled_from([0.0, 0.5, 0.999]),
    placement=st.sampled_from(["max", "denominator", "none"]),
    eps=st.sampled_from([0.0, 1e-8, 1e-3]),
    format_=st.sampled_from(["compact", "compact8"]),
)
def test_the_u_update_is_the_definitions(name, data, size, b2, placement, eps, format_):
    """Codes, scales and decoded u after ``u <- max(b2 u, x)``, from any codes under any scales (zero, subnormal,
    the least normal, huge, infinite, NaN) and any gradient."""
    c, codes_np = (_blocks.U16, compact.U16) if format_ == "compact" else (_blocks.U8, compact8.U8)
    g = data.draw(arrays(floats(), size, size))
    codes = np.array(data.draw(st.lists(st.integers(0, codes_np.one), min_size=size, max_size=size)), codes_np.dtype)
    scale_values = [0.0, 2.0**-149, 2.0**-126, 2.0**-125, 1e-20, 1.0, 3.0e38, np.inf, np.nan]
    scale_elements = st.one_of(st.sampled_from(scale_values), st.floats(0, 2.0**100, width=32))
    scales = np.array(data.draw(st.lists(scale_elements, min_size=compact.blocks(size), max_size=compact.blocks(size))),
                      F32)  # fmt: skip
    g, scales = _flushed(name, g), _flushed(name, scales)
    xp = _xp(name)
    read = json.loads(json.dumps(placement))  # as read from a configuration: equal to the literal, not the same object
    got_codes, got_scales, got_u = _blocks.blocked_u(
        xp, _tensor(name, g), _tensor(name, codes), _tensor(name, scales), b2, eps, read, c
    )
    config = AdamaxConfig(betas=(0.9, b2), eps=eps, eps_placement=placement)
    with np.errstate(all="ignore"):
        want_codes, want_scales, want_u = compact.infinity_norm(compact.u_input(g, config), codes, scales, config,
                                                                codes_np)  # fmt: skip
    _same(_np(got_codes).ravel()[:size], want_codes.astype(np.int32))
    _same(_np(got_scales), _flushed(name, want_scales))
    _same(_np(got_u).ravel()[:size], _flushed(name, want_u))


@pytest.mark.parametrize("name", NAMESPACES)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), size=st.sampled_from(SIZES), count=st.integers(1, 2**31 - 1))
def test_compact8_m_codes_are_the_definitions(name, data, size, count):
    """m's scales and stochastic codes from any float32 m (a block's largest beside values below its smallest code,
    of either sign; NaN and infinite blocks), and their decoding from any codes under any scales."""
    m = _flushed(name, data.draw(arrays(floats([*SPECIAL, 1.0e-3, -1.0e-3, 4.4e-3, -4.4e-3]), size, size)))
    if _flushes(name):  # a block scale above 2**126 has a subnormal reciprocal, which XLA flushes (docs/design.md)
        m = np.where(np.isfinite(m) & (np.abs(m) >= 2.0**126), np.copysign(F32(2.0**125), m), m).astype(F32)
    xp = _xp(name)
    got_codes, got_scales = _blocks.encoded_m(
        xp, _blocks.blocked(xp, _tensor(name, m), (size,)), _tensor(name, np.int32(count))
    )
    with np.errstate(all="ignore"):
        scales = compact8.m_scales(m)
        random = compact.hashed(np.arange(size), count) >> np.uint32(32 - compact8.RANDOM_BITS)
        want = compact8.encode_m(m, scales, random)
    _same(_np(got_scales), scales)
    _same(_np(got_codes).ravel()[:size], want.astype(np.int32))
    codes = np.array(data.draw(st.lists(st.integers(0, 255), min_size=size, max_size=size)), np.uint8)
    decoded = _blocks.decoded_m(xp, _tensor(name, codes), _tensor(name, scales))
    with np.errstate(all="ignore"):
        _same(_np(decoded).ravel()[:size], _flushed(name, compact8.decode_m(codes, scales)))


@pytest.mark.parametrize("name", NAMESPACES)
def test_a_subnormal_scale_is_cleared_at_its_next_re_base(name):
    """A block whose decayed scale is below 2**-126 counts as zero when re-based: its codes drop to 0 (the old
    codes would otherwise now mean values near the new scale)."""
    xp = _xp(name)
    g = np.zeros(300, F32)
    g[0] = g[256] = 1.0  # both blocks re-base
    codes = np.full(300, compact.ONE, np.uint16)
    scales = np.array([2.0**-130, 2.0**-130], F32)
    got_codes, got_scales, _ = _blocks.blocked_u(
        xp, _tensor(name, g), _tensor(name, codes), _tensor(name, scales), 0.9, 0.0, "none", _blocks.U16
    )
    config = AdamaxConfig(betas=(0.9, 0.9), eps=0.0, eps_placement="none")
    want_codes, want_scales, _ = compact.infinity_norm(np.abs(g), codes, scales, config)
    assert list(want_codes[:3]) == [compact.ONE, 0, 0] and list(want_scales) == [1.0, 1.0]
    _same(_np(got_codes).ravel()[:300], want_codes.astype(np.int32))
    _same(_np(got_scales), want_scales)


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("format_", ["compact", "compact8"])
def test_every_code_reads_and_rounds_up_as_the_definition(name, format_):
    """Every code's value; the code of each value, of one ulp above it (the next code) and of one ulp below it
    (the same code), and of values under the smallest code (code 1: ``x > u`` there, so never 0); and, for
    compact8's tapered codes, every code moved down by 0 to 24 octaves."""
    c, codes_np = (_blocks.U16, compact.U16) if format_ == "compact" else (_blocks.U8, compact8.U8)
    q = np.arange(codes_np.one + 1, dtype=np.int32)
    xp = _xp(name)
    values = codes_np.value(q)
    _same(_np(c.value(xp, _tensor(name, q))), values)
    r = np.concatenate([values[1:], np.nextafter(values[1:], F32(2)), np.nextafter(values[1:], F32(0))])
    r = np.minimum(r, F32(1))  # inputs are at most 1 (x / S with x <= S)
    want = codes_np.encode(r).astype(np.int32)
    assert np.array_equal(want[: codes_np.one], q[1:])  # each code's own value reads back as it
    _same(_np(c.encode(xp, _tensor(name, r))), want)
    below = _flushed(name, np.array([values[1] / 2, 2.0**-100, 2.0**-140], F32))  # under the smallest code
    _same(_np(c.encode(xp, _tensor(name, below))), np.maximum(codes_np.encode(below).astype(np.int32), 1))
    if format_ == "compact8":
        k = np.repeat(np.arange(25, dtype=np.int32), q.size)
        moved = c.down(xp, _tensor(name, np.tile(q, 25)), _tensor(name, k))
        want = codes_np.down(np.tile(q, 25), k).astype(np.int32)
        _same(_np(moved)[np.tile(q, 25) > 0], want[np.tile(q, 25) > 0])


@pytest.mark.parametrize("name", NAMESPACES)
def test_m_blocks_at_the_edges_are_the_definitions(name):
    """compact8's m in blocks whose largest |m| is exactly 2**-126, exactly 0, a subnormal (where not flushed),
    below its smallest code of either sign, and between its two smallest codes."""
    blocks = [
        np.full(256, 0.0, F32),
        np.r_[F32(2.0**-126), np.full(255, -(2.0**-127), F32)],
        np.r_[F32(3 * 2.0**-140), np.full(255, -(2.0**-141), F32)],
        np.r_[F32(1.0), np.full(255, -(2.0**-12), F32)],
        np.r_[F32(-1.0), np.full(255, 4.6e-3, F32)],  # between the two smallest codes: 1 or 2, mostly 2
    ]
    m = _flushed(name, np.concatenate(blocks))
    xp = _xp(name)
    for count in (1, 2, 3):
        got_codes, got_scales = _blocks.encoded_m(
            xp, _blocks.blocked(xp, _tensor(name, m), (m.size,)), _tensor(name, np.int32(count))
        )
        scales = compact8.m_scales(m)
        random = compact.hashed(np.arange(m.size), count) >> np.uint32(32 - compact8.RANDOM_BITS)
        _same(_np(got_scales), scales)
        _same(_np(got_codes).ravel(), compact8.encode_m(m, scales, random).astype(np.int32))


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("format_", ["compact", "compact8"])
def test_a_peak_one_ulp_above_the_scale_re_bases_by_one_octave(name, format_):
    """The least ``k`` with ``scale * 2**k >= peak`` when the peak's significand exceeds the scale's by one ulp
    (and by more, and not at all): the last mantissa bit decides ``k``."""
    c, codes_np = (_blocks.U16, compact.U16) if format_ == "compact" else (_blocks.U8, compact8.U8)
    one_ulp = np.nextafter(F32(1), F32(2))
    odd = F32(2) * one_ulp  # a decayed scale of 1 + 2**-23 (an odd significand) and a peak of twice that
    g = np.array([one_ulp, 0.5, 0, 0, 3.0, 0.25, 0, 0, odd, 0, 0, 0], F32)
    codes = np.array([codes_np.one, codes_np.one // 2, codes_np.one, 7] * 3, codes_np.dtype)
    g, codes = np.repeat(g, 64), np.repeat(codes, 64)  # three blocks: peaks 1 + 2**-23, 3 and 2 + 2**-22
    scales = np.array([2.0, 2.0, odd], F32)
    xp = _xp(name)
    got = _blocks.blocked_u(xp, _tensor(name, g), _tensor(name, codes), _tensor(name, scales), 0.5, 0.0, "none", c)
    config = AdamaxConfig(betas=(0.9, 0.5), eps=0.0, eps_placement="none")
    want = compact.infinity_norm(np.abs(g), codes, scales, config, codes_np)
    assert list(want[1]) == [2.0, 4.0, odd]
    for a, b in zip(got, want):
        _same(_np(a).ravel()[: b.size], b.astype(np.int32) if b.dtype.kind == "u" else b)


@pytest.mark.parametrize("name", NAMESPACES)
def test_a_scale_moved_past_the_largest_float32_is_infinite_and_nan_payloads_round_to_one_nan(name):
    """A scale of 1.5 re-based to cover 3e38 passes the largest float32 (its bits would read as a NaN): it is
    infinity, as in the definition; and m's NaNs of any payload or sign are stored as the one NaN 0x7FC0."""
    xp = _xp(name)
    g = np.r_[F32(3e38), np.zeros(255, F32)]
    codes = np.full(256, 5, np.uint16)
    got = _blocks.blocked_u(xp, _tensor(name, g), _tensor(name, codes), _tensor(name, np.array([3.0], F32)), 0.5,
                            0.0, "none", _blocks.U16)  # fmt: skip
    config = AdamaxConfig(betas=(0.9, 0.5), eps=0.0, eps_placement="none")
    want = compact.infinity_norm(np.abs(g), codes, np.array([3.0], F32), config)
    assert np.isposinf(want[1][0])
    _same(_np(got[1]), want[1])
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001], np.uint32).view(F32)
    for count in (1, 7):
        bits = _np(_blocks.stochastic_bf16(xp, _tensor(name, nans), _tensor(name, np.int32(count))))
        assert np.array_equal(bits.view(np.uint32) >> 16, compact.f32_to_bf16_stochastic(nans, count))


@pytest.mark.skipif(OTHER_BACKEND, reason="already the other backend")
def test_keras_ops_on_the_torch_backend_too():
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    processes.rerun_tests(__file__, {"KERAS_BACKEND": "torch", "ADAMAX_BLOCKS_OTHER_BACKEND": "1"})
