r"""Adam with an Lp norm, and its limit p -> infinity: Adamax, in numbers.

Adam scales its step by ``v_t^(1/2)`` with ``v_t = b2 v_{t-1} + (1 - b2) g_t^2``.
The paper generalises the square to any p, with the decay rate raised to p:

.. math::

    v_t = \beta_2^p v_{t-1} + (1 - \beta_2^p) |g_t|^p
        = (1 - \beta_2^p) \sum_{k=1}^{t} \beta_2^{p(t-k)} |g_k|^p ,

and steps with ``m_hat / v_t^(1/p)``.  As p grows,

.. math::

    v_t^{1/p} = (1 - \beta_2^p)^{1/p}
                \Bigl(\sum_k \bigl(\beta_2^{t-k} |g_k|\bigr)^p\Bigr)^{1/p}
    \;\longrightarrow\; \max_k \beta_2^{t-k} |g_k| = u_t ,

Adamax's infinity norm, with the recursion ``u_t = max(b2 u_{t-1}, |g_t|)``.
The sum's p-th root falls to its largest term (the others vanish as
``(ratio)^p``), and the factor ``(1 - b2^p)^(1/p)`` rises to 1 -- slowly when
``b2`` is near 1: with ``b2 = 0.999`` it is about 0.957 at p = 64, 0.9996 at
p = 1024, and within 4e-8 of 1 at p = 8192.

``|g|^p`` overflows float64 for p of a few hundred, so everything here is
computed in log space: ``log v_t = logaddexp(p log b2 + log v_{t-1},
log(1 - b2^p) + p log|g_t|)``, and ``v_t^(1/p) = exp(log v_t / p)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# The documented gradient sequence the convergence table and its test use (one coordinate, 12 steps):
# mixed signs and sizes, with its largest decayed magnitude well clear of the rest.
GRADIENTS = np.array([0.3, -1.2, 0.05, 2.0, -0.4, 0.9, 0.0, -0.6, 1.1, -0.2, 0.7, 0.35])
POWERS = [2**k for k in range(14)]  # 1 .. 8192


def log_one_minus_pow(beta: float, p: float) -> float:
    """``log(1 - beta**p)``, accurate when ``beta**p`` is near 1 or tiny."""
    return float(np.log1p(-np.exp(p * np.log(beta))))


def lp_norms(grads: np.ndarray, p: float, beta2: float = 0.999) -> np.ndarray:
    """``v_t^(1/p)`` of Lp-Adam for every step t, by the recursion, in log space."""
    log_v = -np.inf
    log_decay, log_fresh = p * np.log(beta2), log_one_minus_pow(beta2, p)
    out = []
    with np.errstate(divide="ignore"):  # log(0) = -inf is meant: a zero gradient adds nothing
        for g in np.abs(np.asarray(grads, dtype=np.float64)):
            log_v = np.logaddexp(log_decay + log_v, log_fresh + p * np.log(g))
            out.append(np.exp(log_v / p))
    return np.array(out)


def infinity_norms(grads: np.ndarray, beta2: float = 0.999) -> np.ndarray:
    """Adamax's ``u_t = max(b2 u_{t-1}, |g_t|)`` for every step t."""
    u, out = 0.0, []
    for g in np.abs(np.asarray(grads, dtype=np.float64)):
        u = max(beta2 * u, g)
        out.append(u)
    return np.array(out)


def relative_distance(grads: np.ndarray, p: float, beta2: float = 0.999) -> float:
    """The largest ``|v_t^(1/p) - u_t| / u_t`` over the steps where ``u_t > 0``."""
    lp, inf = lp_norms(grads, p, beta2), infinity_norms(grads, beta2)
    live = inf > 0
    return float(np.max(np.abs(lp[live] - inf[live]) / inf[live]))


def steps(grads: np.ndarray, p: float | None, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.999) -> np.ndarray:
    """The steps ``-lr m_hat / norm`` of Lp-Adam (``p``) or Adamax (``p=None``) on a gradient sequence."""
    norms = infinity_norms(grads, beta2) if p is None else lp_norms(grads, p, beta2)
    m, out = 0.0, []
    for t, (g, n) in enumerate(zip(grads, norms), start=1):
        m = beta1 * m + (1 - beta1) * g
        out.append(0.0 if n == 0 else -lr * m / (1 - beta1**t) / n)
    return np.array(out)


class Row(NamedTuple):
    p: int
    norm_distance: float  # max relative distance of v^(1/p) to u
    step_distance: float  # max relative distance of the steps to Adamax's
    factor: float  # (1 - b2^p)^(1/p), the part that converges slowly


def convergence_table(grads: np.ndarray = GRADIENTS, powers=POWERS, beta2: float = 0.999) -> list[Row]:
    adamax_steps = steps(grads, None, beta2=beta2)
    scale = np.max(np.abs(adamax_steps))
    rows = []
    for p in powers:
        step_distance = float(np.max(np.abs(steps(grads, p, beta2=beta2) - adamax_steps)) / scale)
        factor = float(np.exp(log_one_minus_pow(beta2, p) / p))
        rows.append(Row(p, relative_distance(grads, p, beta2), step_distance, factor))
    return rows


# --- 2-D trajectories ----------------------------------------------------------------------------------------


def rosenbrock(xy: np.ndarray) -> float:
    x, y = xy
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosenbrock_grad(xy: np.ndarray) -> np.ndarray:
    x, y = xy
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


def trajectory(
    method: str, start, iterations: int, lr: float, p: float = 2, grad: Callable = rosenbrock_grad
) -> np.ndarray:
    """Positions of ``method`` ("sgd", "adam", "lp-adam", "adamax") minimising from ``start``."""
    beta1, beta2 = 0.9, 0.999
    xy = np.array(start, dtype=np.float64)
    m = np.zeros(2)
    log_v = np.full(2, -np.inf)
    u = np.zeros(2)
    path = [xy.copy()]
    for t in range(1, iterations + 1):
        g = grad(xy)
        if method == "sgd":
            xy = xy - lr * g
        else:
            m = beta1 * m + (1 - beta1) * g
            m_hat = m / (1 - beta1**t)
            if method == "adamax":
                u = np.maximum(beta2 * u, np.abs(g))
                norm = u
            else:
                q = 2.0 if method == "adam" else p
                with np.errstate(divide="ignore"):
                    log_v = np.logaddexp(q * np.log(beta2) + log_v, log_one_minus_pow(beta2, q) + q * np.log(np.abs(g)))
                norm = np.exp(log_v / q)
                if method == "adam":  # Adam's own bias correction of v, so p = 2 is Adam exactly
                    norm = norm / np.sqrt(1 - beta2**t)
            xy = xy - lr * np.divide(m_hat, norm, out=np.zeros(2), where=norm > 0)
        path.append(xy.copy())
    return np.array(path)
