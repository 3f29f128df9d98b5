"""The seed's system: its loop, its gradient, its problem."""

from __future__ import annotations

import numpy as np
import pytest

from adamax import reference, textbook
from adamax.spec import AdamaxConfig


def seed_loop(data, theta, lr=1e-2, beta1=0.9, beta2=0.999, epsilon=1e-6, num_iterations=1000):
    """The seed's code, transcribed as printed."""
    mt = np.zeros(theta.shape[0])
    vt = np.zeros(theta.shape[0])
    for t in range(num_iterations):
        gradients = textbook.compute_gradients(data, theta)
        mt = beta1 * mt + (1.0 - beta1) * gradients
        vt = np.maximum(beta2 * vt, np.abs(gradients))
        mt_hat = mt / (1.0 - beta1 ** (t + 1))
        theta = theta - ((lr / (vt + epsilon)) * mt_hat)
    return theta


@pytest.mark.parametrize(
    "kwargs", [{}, {"lr": 0.05, "num_iterations": 300}, {"beta1": 0.5, "beta2": 0.9, "epsilon": 1e-3}]
)
def test_matches_the_seed_loop(kwargs):
    data = textbook.make_data(200, seed=1)
    theta = np.array([-1.0, 4.0])
    np.testing.assert_array_equal(textbook.Adamax(data, theta, **kwargs), seed_loop(data, theta, **kwargs))


def test_is_the_denominator_convention_of_the_reference():
    data = textbook.make_data(100, seed=2)
    theta, state = np.zeros(2), reference.init(np.zeros(2))
    config = AdamaxConfig(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, eps_placement="denominator")
    for _ in range(50):
        theta, state = reference.update(theta, textbook.compute_gradients(data, theta), state, config)
    np.testing.assert_allclose(textbook.Adamax(data, np.zeros(2), num_iterations=50), theta, rtol=1e-12)


def test_does_not_mutate_theta():
    theta = np.array([0.5, -0.5])
    textbook.Adamax(textbook.make_data(50), theta, num_iterations=10)
    np.testing.assert_array_equal(theta, [0.5, -0.5])


def test_gradient_is_the_derivative_of_the_loss():
    data = textbook.make_data(300, seed=3)
    theta, h = np.array([0.7, -1.3]), 1e-6
    numeric = [
        (textbook.loss_function(data, theta + h * e) - textbook.loss_function(data, theta - h * e)) / (2 * h)
        for e in np.eye(2)
    ]
    np.testing.assert_allclose(textbook.compute_gradients(data, theta), numeric, rtol=1e-7)
    assert np.allclose(textbook.compute_gradients(data, textbook.least_squares(data)), 0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_fits_the_line_within_2e_2_of_least_squares(seed):
    data = textbook.make_data(500, seed=seed)
    theta = textbook.Adamax(data, np.zeros(2))
    assert np.abs(theta - textbook.least_squares(data)).max() < 2e-2


def test_data_is_seeded():
    np.testing.assert_array_equal(textbook.make_data(10, seed=4), textbook.make_data(10, seed=4))
    assert not np.array_equal(textbook.make_data(10, seed=4), textbook.make_data(10, seed=5))
    flat = textbook.make_data(20000, slope=0.0, intercept=0.0, noise=1.0, seed=6)
    assert abs(np.corrcoef(flat.T)[0, 1]) < 0.03  # two independent N(0, 1) columns, like randn(N, 2)
    with pytest.raises(ValueError, match="at least 2 points"):
        textbook.make_data(1)


def test_trace_records_every_iteration():
    data = textbook.make_data(100, seed=5)
    seen = []
    run = textbook.trace(data, np.zeros(2), num_iterations=40, lr=0.05, on_step=lambda t, th: seen.append(t))
    assert seen == list(range(40))
    assert run.thetas.shape == (41, 2) and run.losses.shape == (41,)
    np.testing.assert_array_equal(run.theta, textbook.Adamax(data, np.zeros(2), num_iterations=40, lr=0.05))
    np.testing.assert_array_equal(run.thetas[-1], run.theta)
    assert run.losses[0] == textbook.loss_function(data, np.zeros(2))
    assert run.losses[-1] < run.losses[0]
