r"""The textbook system: Adamax fitting a line, as the textbook section codes it.

The problem is linear regression, ``y = m * x + b``, with ``theta = [m, b]``
and ``data`` an ``(N, 2)`` array of ``[x, y]`` rows.  The loss is the mean
squared error

.. math:: L(\theta) = \frac{1}{N} \sum_i \bigl(y_i - (m x_i + b)\bigr)^2 ,

and :func:`Adamax` runs the textbook's loop line for line::

    mt = beta1 * mt + (1 - beta1) * gradients
    vt = max(beta2 * vt, |gradients|)
    mt_hat = mt / (1 - beta1 ** (t + 1))
    theta = theta - lr / (vt + epsilon) * mt_hat

This is the ``eps_placement="denominator"`` convention of :mod:`adamax.spec`.

Where the textbook is silent, these choices were made:

* ``compute_gradients`` is the exact gradient of the loss above, vectorised:
  ``dL/dm = -2/N * sum(x * r)`` and ``dL/db = -2/N * sum(r)`` with
  ``r = y - (m x + b)``.  It adds no extra scaling, so least squares is its
  fixed point.
* The data: ``x`` is standard normal and ``y = slope * x + intercept +
  noise * N(0, 1)``, seeded.  ``make_data(slope=0, intercept=0, noise=1)``
  draws two independent standard normal columns, the same distribution as
  ``np.random.randn(N, 2)``; the default line (slope 2, intercept 1) makes
  the fit visible in a plot.
* ``Adamax`` takes a keyword-only ``callback(t, theta)``, called after each
  iteration, so the loss history can be recorded without a second copy of
  the loop.  :func:`trace` uses it.

>>> data = make_data(500, seed=0)
>>> theta = Adamax(data, np.zeros(2))
>>> bool(np.abs(theta - least_squares(data)).max() < 2e-2)
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


def make_data(
    n: int = 500, *, slope: float = 2.0, intercept: float = 1.0, noise: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``n`` rows of ``[x, y]`` on the line ``y = slope * x + intercept`` plus noise."""
    if n < 2:
        raise ValueError(f"need at least 2 points to fit a line, got n={n}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    y = slope * x + intercept + noise * rng.standard_normal(n)
    return np.stack([x, y], axis=1)


def loss_function(data: np.ndarray, theta: np.ndarray) -> float:
    """Mean squared error of the line ``theta = [m, b]`` on ``data``."""
    x, y = data[:, 0], data[:, 1]
    m, b = theta
    return float(np.mean((y - (m * x + b)) ** 2))


def compute_gradients(data: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Gradient of :func:`loss_function` with respect to ``theta = [m, b]``."""
    x, y = data[:, 0], data[:, 1]
    m, b = theta
    residual = y - (m * x + b)
    return np.array([-2.0 * np.mean(x * residual), -2.0 * np.mean(residual)])


def least_squares(data: np.ndarray) -> np.ndarray:
    """The exact minimiser of :func:`loss_function`, ``[m, b]``."""
    x, y = data[:, 0], data[:, 1]
    design = np.stack([x, np.ones_like(x)], axis=1)
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    return solution


def Adamax(  # noqa: N802 - the textbook's name
    data: np.ndarray,
    theta: np.ndarray,
    lr: float = 1e-2,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-6,
    num_iterations: int = 1000,
    *,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """The textbook's Adamax, line for line.  Returns the fitted theta; ``theta`` is not modified."""
    mt = np.zeros(theta.shape[0])
    vt = np.zeros(theta.shape[0])
    for t in range(num_iterations):
        gradients = compute_gradients(data, theta)
        mt = beta1 * mt + (1.0 - beta1) * gradients
        vt = np.maximum(beta2 * vt, np.abs(gradients))
        mt_hat = mt / (1.0 - beta1 ** (t + 1))
        theta = theta - ((lr / (vt + epsilon)) * mt_hat)
        if callback is not None:
            callback(t, theta)
    return theta


class Trace(NamedTuple):
    """A recorded run: ``thetas[k]`` and ``losses[k]`` after ``k`` iterations."""

    theta: np.ndarray
    thetas: np.ndarray
    losses: np.ndarray


def trace(
    data: np.ndarray,
    theta: np.ndarray,
    *,
    on_step: Callable[[int, np.ndarray], None] | None = None,
    **hyperparams: float,
) -> Trace:
    """Run :func:`Adamax` and record theta and the loss at every iteration.

    ``hyperparams`` are :func:`Adamax`'s keywords; ``on_step`` is called after
    each iteration too (a progress bar, say).
    """
    thetas = [np.array(theta, dtype=float)]

    def record(t: int, current: np.ndarray) -> None:
        thetas.append(current)
        if on_step is not None:
            on_step(t, current)

    final = Adamax(data, theta, callback=record, **hyperparams)
    stacked = np.stack(thetas)
    losses = np.array([loss_function(data, th) for th in stacked])
    return Trace(final, stacked, losses)
