"""The correctly rounded fma helper against exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adamax._exact import fma


def round_to(dtype, exact: Fraction):
    """Round a rational to the nearest ``dtype`` value, ties to even."""
    guess = dtype(float(exact))
    candidates = [guess, np.nextafter(guess, dtype(np.inf)), np.nextafter(guess, dtype(-np.inf))]
    best = min(abs(Fraction(float(c)) - exact) for c in candidates)
    nearest = [c for c in candidates if abs(Fraction(float(c)) - exact) == best]
    if len(nearest) == 1:
        return nearest[0]
    bits = {8: np.uint64, 4: np.uint32, 2: np.uint16}[np.dtype(dtype).itemsize]
    return next(c for c in nearest if int(np.array(c).view(bits)) % 2 == 0)


def moderate(width):
    """Finite floats away from overflow and the subnormal range, where the emulation is proved exact."""
    limit = 2.0 ** (100 if width == 64 else 60)
    return st.floats(-limit, limit, width=width, allow_nan=False, allow_subnormal=False).filter(
        lambda x: x == 0 or abs(x) > 1 / limit
    )


@given(moderate(64), moderate(64), moderate(64))
def test_float64_fma_is_correctly_rounded(a, b, c):
    got = fma(np.float64(a), np.float64(b), np.float64(c))
    assert got == round_to(np.float64, Fraction(a) * Fraction(b) + Fraction(c))


@given(moderate(32), moderate(32), moderate(32))
def test_float32_fma_is_correctly_rounded(a, b, c):
    a32, b32, c32 = np.float32(a), np.float32(b), np.float32(c)
    got = fma(a32, b32, c32)
    assert got.dtype == np.float32
    assert got == round_to(np.float32, Fraction(float(a32)) * Fraction(float(b32)) + Fraction(float(c32)))


def exact_sum(a, b, c) -> Fraction:
    return Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))


def test_float64_fma_keeps_the_product_the_unfused_form_loses():
    # (1 + 2^-52)^2 - 1 = 2^-51 + 2^-104: the unfused product loses the 2^-104.
    x = np.float64(1 + 2**-52)
    assert fma(x, x, np.float64(-1.0)) == 2**-51 + 2**-104
    assert x * x - 1.0 == 2**-51


# Double rounding: the exact result lies just off a midpoint of the target type, by less than half an ulp of the
# intermediate, so a first rounding lands on the midpoint and the second (ties to even) goes the wrong way.


def test_float16_through_float32_would_round_twice():
    # (2^-11 (1 + 2^-10)) (1 - 2^-10) = 2^-11 - 2^-31; plus c = 1 + 2^-10 (odd): just below the midpoint
    # 1 + 2^-10 + 2^-11, which float32 (half-ulp 2^-24) would land on, and ties to even would round up.
    a, b, c = np.float16(2**-11 * (1 + 2**-10)), np.float16(1 - 2**-10), np.float16(1 + 2**-10)
    want = round_to(np.float16, exact_sum(a, b, c))
    assert want == np.float16(1 + 2**-10)
    assert np.float16(np.float32(a) * np.float32(b) + np.float32(c)) != want  # the double rounding this avoids
    assert fma(a, b, c) == want and fma(a, b, c).dtype == np.float16


def test_float32_through_plain_float64_would_round_twice():
    # (1 + 2^-18)(2^-24 - 2^-42) = 2^-24 - 2^-60, exact in float64; c = 1 + 2^-23 (odd).  The exact sum is 2^-60
    # below the midpoint 1 + 2^-23 + 2^-24; a float64 sum rounds it onto the midpoint; rounding to odd does not.
    a, b, c = np.float32(1 + 2**-18), np.float32(2**-24 - 2**-42), np.float32(1 + 2**-23)
    want = round_to(np.float32, exact_sum(a, b, c))
    assert want == np.float32(1 + 2**-23)
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) != want
    assert fma(a, b, c) == want and fma(a, b, c).dtype == np.float32


def test_float64_low_parts_rounded_to_nearest_would_round_twice():
    # a b = 2^-53 (1 + e), 0 < e < 2^-53: its high part is 2^-53, its low part just below 2^-106.  With c = 1, the
    # low parts' sum 2^-53 + (just below 2^-106) rounds to nearest onto 2^-53, and 1 + 2^-53 is a tie that rounds
    # to 1; the exact result is above the midpoint, so 1 + 2^-52.
    k = 2**20
    a, b, c = np.float64(1 + k * 2.0**-52), np.float64(2.0**-53 * (1 - (2 * k - 1) * 2.0**-53)), np.float64(1.0)
    want = round_to(np.float64, exact_sum(a, b, c))
    assert want == 1 + 2**-52
    low_sum = exact_sum(a, b, c) - 1  # what the low parts hold: t_lo + p_lo, exactly
    assert float(low_sum) == 2**-53 and low_sum > Fraction(2**-53)  # round to nearest lands on the midpoint
    assert a * b + c != want
    assert fma(a, b, c) == want


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_many_near_cancelling_sums_are_correctly_rounded(dtype):
    """c close to -a*b, or exactly minus its rounding, so the result is the product's low bits: the case an inexact
    product or a wrong split gets wrong.  Thousands at once (the hypothesis tests draw a few dozen)."""
    rng = np.random.default_rng(7)
    n = 3000
    a = (rng.uniform(0.5, 2, n) * 2.0 ** rng.integers(-8, 8, n)).astype(dtype)
    b = (rng.uniform(0.5, 2, n) * 2.0 ** rng.integers(-8, 8, n) * rng.choice([-1, 1], n)).astype(dtype)
    c = (-(a.astype(np.float64) * b) * (1 + rng.uniform(-1e-3, 1e-3, n))).astype(dtype)
    c[::2] = -(a[::2] * b[::2])  # the product rounded in dtype, negated: the result is exactly its rounding error
    got = fma(a, b, c)
    assert got.dtype == dtype
    want = [round_to(dtype, exact_sum(x, y, z)) for x, y, z in zip(a, b, c)]
    bad = [i for i in range(n) if got[i] != want[i]]
    assert not bad, [(a[i], b[i], c[i], got[i], want[i]) for i in bad[:3]]


SPECIALS = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, -2.5, 3.0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_every_combination_with_a_non_finite_input_is_the_ieee_result(dtype):
    grid = np.array(np.meshgrid(SPECIALS, SPECIALS, SPECIALS)).reshape(3, -1).astype(dtype)
    a, b, c = grid
    special = ~(np.isfinite(a) & np.isfinite(b) & np.isfinite(c))
    with np.errstate(invalid="ignore", over="ignore"):
        want = (a.astype(np.float64) * b + c).astype(dtype)  # exact for these: infinities, NaN, small integers
    got = fma(a, b, c)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got[special], want[special])
    np.testing.assert_array_equal(np.signbit(got[special]), np.signbit(want[special]))


def test_non_finite_inputs_follow_ieee():
    assert np.isnan(fma(np.float64(np.inf), np.float64(0.0), np.float64(1.0)))
    assert fma(np.float32(np.inf), np.float32(2.0), np.float32(1.0)) == np.inf
    assert np.isnan(fma(np.float64(np.nan), np.float64(1.0), np.float64(1.0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_next_to_a_midpoint_are_correctly_rounded(dtype):
    """a*b is about half an ulp of c, so the exact sum lies within an intermediate ulp or two of a midpoint of the
    target type, on either side, with either sign and either parity of c: where an intermediate rounded to
    nearest, or nudged the wrong way or at the wrong parity, lands on the midpoint (or off it) and the final
    rounding goes the wrong way."""
    rng = np.random.default_rng(11)
    n = 10000
    c = (rng.uniform(1, 2, n) * 2.0 ** rng.integers(-4, 4, n) * rng.choice([-1, 1], n)).astype(dtype)
    half_ulp = np.spacing(np.abs(c)).astype(np.float64) / 2 * rng.choice([-1, 1], n)
    a = (np.abs(half_ulp) * rng.uniform(1, 2, n)).astype(dtype)
    b = (half_ulp / a).astype(dtype)  # a*b is half an ulp of c, to within dtype's precision
    got = fma(a, b, c)
    want = np.array([round_to(dtype, exact_sum(x, y, z)) for x, y, z in zip(a, b, c)])
    naive = (a.astype(np.float64) * b + c).astype(dtype) if dtype == np.float32 else a * b + c
    assert (naive != want).sum() > n // 100  # hard cases are really drawn: double rounding gets them wrong
    bad = np.flatnonzero(got != want)
    assert not bad.size, [(a[i], b[i], c[i], got[i], want[i]) for i in bad[:3]]


def test_float64_fma_is_exact_up_to_where_its_split_would_overflow():
    # The documented range ends at |a| = MAX / (2^27 + 1); at its end the product's rounding error is still kept.
    bound = np.finfo(np.float64).max / (2**27 + 1)
    a = np.float64(bound)
    with np.errstate(over="ignore"):
        while not np.isfinite(a * (2**27 + 1)):
            a = np.nextafter(a, 0.0)
    b = np.float64(1 + 3 * 2.0**-52)
    c = -(a * b)  # the product rounded, negated: the exact result is the product's rounding error
    want = round_to(np.float64, exact_sum(a, b, c))
    assert want != 0 and a * b + c == 0
    assert fma(a, b, c) == want
