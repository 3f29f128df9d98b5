"""Correctly rounded fused multiply-add for NumPy arrays.

NumPy has no ``fma``, yet torch's CPU kernels compute ``lerp`` and
``add(..., alpha=)`` with fused multiply-adds.  A reference that must agree
with torch bit for bit therefore needs ``fma(a, b, c) = round(a * b + c)`` with
a single rounding.  Both routes below are exact; ``tests/test_exact.py`` checks
them against rational arithmetic.

* float16 / float32: the product of two such numbers is exact in float64, the
  sum is rounded to odd in float64 (53 >= 24 + 2 bits), and the final rounding
  to the narrow type is then correct (Boldo & Melquiond 2008, Theorem 1).
* float64: the product is split exactly (Dekker's TwoProduct), the low parts
  are summed with rounding to odd, and one round-to-nearest finishes
  (Boldo & Melquiond 2008, Algorithm 5.4).  Valid away from the subnormal
  range and for ``|a|, |b| <= MAX / (2**27 + 1)`` (about 1.3e300), where the
  split cannot overflow; optimizer states reach neither.  Beyond that, the
  result is the unfused form's.
"""

from __future__ import annotations

import numpy as np

_SPLITTER = 134217729.0  # 2**27 + 1, Veltkamp's constant for float64


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    return s, (a - a_virtual) + (b - b_virtual)


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def _two_product(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    err = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, err


def _add_round_to_odd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` in float64, rounded to odd: an inexact sum gets an odd last bit."""
    s, err = _two_sum(a, b)
    inexact_and_even = (err != 0) & ((s.view(np.uint64) & 1) == 0)
    if not inexact_and_even.any():
        return s
    toward = np.where(err > 0, np.inf, -np.inf)
    return np.where(inexact_and_even, np.nextafter(s, toward), s)


def fma(a, b, c) -> np.ndarray:
    """``a * b + c`` with one rounding, in the result dtype of ``a * b + c``.

    Scalars are cast to the array dtype first, as torch casts its Python
    scalars.  Non-finite inputs give the IEEE result of the unfused form.
    """
    dtype = np.result_type(a, b, c)
    a, b, c = (np.asarray(x, dtype=dtype) for x in (a, b, c))
    if dtype == np.float64:
        with np.errstate(over="ignore", invalid="ignore"):
            p_hi, p_lo = _two_product(a, b)
            t_hi, t_lo = _two_sum(c, p_hi)
            out = t_hi + _add_round_to_odd(t_lo, p_lo)
            plain = a * b + c
        return np.where(np.isfinite(out), out, plain).astype(dtype, copy=False)
    if dtype in (np.float32, np.float16):
        wide = [x.astype(np.float64) for x in (a, b, c)]
        with np.errstate(over="ignore", invalid="ignore"):
            out = _add_round_to_odd(wide[0] * wide[1], wide[2])
            out = np.where(np.isfinite(out), out, wide[0] * wide[1] + wide[2])
            return out.astype(dtype)
    raise TypeError(f"fma supports float16, float32 and float64, not {dtype}")
