"""The correctly rounded fma helper against exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
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
    bits = np.uint64 if dtype == np.float64 else np.uint32
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


def test_hard_cases_differ_from_the_unfused_form():
    # (1 + 2^-52)^2 - 1 = 2^-51 + 2^-104: the unfused product loses the 2^-104.
    x = np.float64(1 + 2**-52)
    assert fma(x, x, np.float64(-1.0)) == 2**-51 + 2**-104
    assert x * x - 1.0 == 2**-51
    # A sum exactly between two float32 values once the f64 sum is rounded: rounding to odd keeps it right.
    one, tiny = np.float32(1.0), np.float32(2**-24)
    assert fma(one, tiny + np.float32(2**-47), one) == np.nextafter(one, np.float32(2))


def test_non_finite_inputs_follow_ieee():
    assert np.isnan(fma(np.float64(np.inf), np.float64(0.0), np.float64(1.0)))
    assert fma(np.float32(np.inf), np.float32(2.0), np.float32(1.0)) == np.inf
    assert np.isnan(fma(np.float64(np.nan), np.float64(1.0), np.float64(1.0)))
