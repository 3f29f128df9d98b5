"""Every implementation in the table against the reference, after every step.

Params and state (step, exp_avg, exp_inf) must be bit-identical to
``adamax.reference`` for every convention, dtype, and awkward shape/layout.
"""

from __future__ import annotations

import numpy as np
import pytest

from adamax.cli.check import (
    ALLOWED_ULPS_INEXACT,
    CONFIGS,
    IMPLEMENTATIONS,
    SHAPES,
    CompactReferenceStepper,
    ReferenceStepper,
    random_array,
    sparse_rows,
)

STEPS = 6
LAYOUTS = ("contiguous", "strided", "transposed")


def with_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """A copy of ``x`` with the given memory layout (0-d and 1-d arrays cannot be transposed)."""
    if layout == "strided":
        holder = np.zeros((*x.shape[:-1], 2 * x.shape[-1]) if x.ndim else (), x.dtype)
        out = holder[..., ::2] if x.ndim else holder
    elif layout == "transposed" and x.ndim >= 2:
        out = np.zeros(x.shape[::-1], x.dtype).T
    else:
        out = np.zeros_like(x)
    out[...] = x
    return out


def gradient_stream(rng: np.random.Generator, name: str, dtype):
    """Gradients of changing scale; the first element is always 0, so u stays 0 there; most of "rows"' rows 0."""
    for step in range(STEPS):
        g = sparse_rows(rng, random_array(rng, SHAPES[name], dtype, scale=10.0 ** rng.uniform(-3, 2)), name)
        if g.size:
            g.flat[0] = 0
        if step == 3 and g.size > 1:
            g.flat[1] = 0
        yield g


def assert_same(actual: np.ndarray, expected: np.ndarray, what: str, inexact: str | None = None) -> None:
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if inexact:  # a documented rounding difference: a few ulps, never more
        rtol = 64 * np.finfo(actual.dtype).eps
        np.testing.assert_allclose(
            actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max(initial=0), err_msg=what
        )
        return
    if not np.array_equal(actual, expected, equal_nan=True):
        diff = np.abs(actual.astype(complex) - expected.astype(complex))
        raise AssertionError(f"{what}: {np.count_nonzero(diff)} elements differ, max |diff| {diff.max()}")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=lambda i: i.name)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128], ids=lambda d: d.__name__)
def test_matches_reference_after_every_step(impl, config, dtype):
    if not impl.available:
        pytest.skip(f"{impl.name} is not installed")
    if dtype not in impl.dtypes:
        pytest.skip(f"{impl.name} does not promise {dtype.__name__}")
    if impl.unsupported(config):
        pytest.skip(f"{impl.name}: {impl.unsupported(config)}")
    inexact = impl.inexact(config, dtype)
    # compact state is held to its own definition (adamax.compact), bit for bit; tests/test_compact.py bounds the
    # definition against float32 state
    compact_state = impl.allowed_ulps > ALLOWED_ULPS_INEXACT
    if compact_state:
        inexact = None
    rng = np.random.default_rng(0)
    cases = [
        (name, layout) for name in SHAPES for layout in LAYOUTS if layout != "transposed" or len(SHAPES[name]) >= 2
    ]
    initial = [random_array(rng, SHAPES[name], dtype) for name, _ in cases]
    streams = [list(gradient_stream(rng, name, dtype)) for name, _ in cases]
    under_test = impl.make([with_layout(p, layout) for p, (_, layout) in zip(initial, cases)], config)
    oracle = (CompactReferenceStepper if compact_state else ReferenceStepper)([p.copy() for p in initial], config)
    for step in range(STEPS):
        grads = [stream[step] for stream in streams]
        under_test.step([with_layout(g, layout) for g, (_, layout) in zip(grads, cases)])
        oracle.step(grads)
        for (name, layout), p, s, p_ref, s_ref in zip(
            cases, under_test.params(), under_test.states(), oracle.params(), oracle.states()
        ):
            where = f"{impl.name} step {step + 1} {name}/{layout}"
            assert s.step == s_ref.step == step + 1, where
            assert_same(np.asarray(p), p_ref, f"{where} param", inexact)
            assert_same(np.asarray(s.exp_avg), s_ref.exp_avg, f"{where} exp_avg", inexact)
            assert_same(np.asarray(s.exp_inf), s_ref.exp_inf, f"{where} exp_inf", inexact)
            assert np.all(np.isfinite(p_ref)), f"{where}: the reference produced a non-finite param"
