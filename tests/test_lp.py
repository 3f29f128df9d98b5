"""The Lp-norm derivation in numbers: Lp-Adam's v^(1/p) against Adamax's u."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from adamax.cli import lp


def closed_form_norm(grads, p: float, beta2: float, t: int) -> float:
    """The paper's formula, computed independently of the recursion: (1 - b2^p)^(1/p) * (sum_k (b2^(t-k)|g_k|)^p)^(1/p).

    In log space: log-sum-exp over k, so that p = 8192 neither overflows nor underflows.
    """
    g = np.abs(np.asarray(grads[:t], dtype=np.float64))
    k = np.arange(1, t + 1)
    live = g > 0
    terms = p * ((t - k[live]) * np.log(beta2) + np.log(g[live]))
    log_sum = np.logaddexp.reduce(terms)
    return float(np.exp((np.log1p(-(beta2**p)) + log_sum) / p))


def test_the_recursion_is_the_papers_formula():
    for p in (1, 2, 7, 64, 1024, 8192):
        recursive = lp.lp_norms(lp.GRADIENTS, p)
        for t in range(1, len(lp.GRADIENTS) + 1):
            assert recursive[t - 1] == pytest.approx(closed_form_norm(lp.GRADIENTS, p, 0.999, t), rel=1e-12)


def test_p_2_without_the_root_is_adams_second_moment():
    v, expected = lp.lp_norms(lp.GRADIENTS, 2) ** 2, []
    acc = 0.0
    for g in lp.GRADIENTS:
        acc = 0.999**2 * acc + (1 - 0.999**2) * g * g
        expected.append(acc)
    np.testing.assert_allclose(v, expected, rtol=1e-12)


def test_distance_to_adamax_falls_monotonically_and_below_the_documented_bounds():
    """Computed independently with the closed form; thresholds as documented in adamax.cli.lp."""
    u = lp.infinity_norms(lp.GRADIENTS)
    distances = []
    for p in lp.POWERS:
        closed = np.array([closed_form_norm(lp.GRADIENTS, p, 0.999, t) for t in range(1, len(u) + 1)])
        live = u > 0
        distances.append(float(np.max(np.abs(closed[live] - u[live]) / u[live])))
    assert all(a > b for a, b in itertools.pairwise(distances)), distances
    assert distances[lp.POWERS.index(1024)] < 1e-3
    assert distances[lp.POWERS.index(8192)] < 1e-6
    table = lp.convergence_table()
    np.testing.assert_allclose([r.norm_distance for r in table], distances, rtol=1e-6)


def test_the_slow_factor_as_documented():
    assert np.exp(lp.log_one_minus_pow(0.999, 64) / 64) == pytest.approx(0.957, abs=1e-3)
    assert 1 - np.exp(lp.log_one_minus_pow(0.999, 8192) / 8192) < 4e-8


def test_lp_adam_steps_approach_adamax_steps_and_adam_is_p_2():
    adamax_steps = lp.steps(lp.GRADIENTS, None)
    assert np.max(np.abs(lp.steps(lp.GRADIENTS, 8192) - adamax_steps)) < 1e-6 * np.max(np.abs(adamax_steps))
    assert adamax_steps[0] == pytest.approx(-1e-2 * np.sign(lp.GRADIENTS[0]))  # the first step: -lr * sign(g)


@pytest.mark.parametrize("method", ["adam", "lp-adam", "adamax"])
def test_adaptive_methods_reach_the_rosenbrock_minimum(method):
    path = lp.trajectory(method, (-1.5, 2.0), 3000, 0.05, p=64)
    assert np.all(np.isfinite(path))
    np.testing.assert_allclose(path[-1], [1.0, 1.0], atol=2e-2)
    assert lp.rosenbrock(path[-1]) < lp.rosenbrock(path[0])
