r"""Lazy Adamax: rows of a table brought up to date only when read, with the results of dense Adamax.

A row that no gradient touched since step ``s`` is left as it was; when it is
next read (or at step ``n``'s update) it is brought to step ``n`` in closed
form, as if it had taken ``K = n - s`` steps with a zero gradient.  With
``a = 1 - (1 - b1)`` (as the dtype rounds it), ``c_j`` the step size of step
``j`` (``-lr_j / (1 - b1^t_j)``, whatever the schedule gave it), ``e_j`` its
decoupled-decay factor ``1 - lr_j wd`` (1 without decay) and
``D(i, n) = e_{i+1} ... e_n``::

    m_n = a^K m_s
    u_n = max(b2^K u_s, eps)                    "max"            (K >= 1)
    u_n = b2^K u_s                              "denominator", "none"
    p_n = D(s, n) p_s + m_s * sum_{k=1..K} D(s+k, n) c_{s+k} a^k / d_k

with ``d_k = max(b2^k u_s, eps)`` ("max"), ``b2^k u_s + eps``
("denominator") or ``b2^k u_s`` ("none"; 0 where ``u_s = 0``, for then
``m_s = 0``).

**The sums without cancellation.**  For "none", and for "max" per element,
the sum splits at ``k*``, the last ``k`` with ``b2^k u_s >= eps``::

    sum = D(s, n) / u_s * A_s(k*)  +  a^k* D(s + k*, n) / eps * B_{s+k*}(K - k*)

    A_s(k) = sum_{i=1..k} c_{s+i} (a/b2)^i / D(s, s+i)
    B_s(k) = sum_{i=1..k} c_{s+i} a^i / D(s, s+i)

:class:`Clock` keeps ``A`` and ``B`` as prefix sums for every anchor ``s`` in
a window of the last ``W`` steps (all terms of one sign: no cancellation),
``W = ceil(60 ln 2 / -ln(a/b2))`` (399 for the default betas): a term ``W``
steps past its anchor is below 2^-60 of the first, so rows are never left
behind further than ``W`` steps (:meth:`Clock.stale` names the rows to bring
up to date before the window moves on).  The "denominator" sum has no such
split and is evaluated term by term, exactly, in ``O(K)`` per element.

Everything is computed in float64 and rounded once to the table's dtype; in
float64 the result agrees with dense Adamax step by step to about 1e-14
relative (the dense run rounds at every step, the closed form once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from adamax import reference
from adamax._algorithm import step_size
from adamax.reference import AdamaxState
from adamax.spec import AdamaxConfig

COUPLED_DECAY = (
    "coupled weight decay moves every row every step, so it cannot be lazy: "
    "pass decoupled_weight_decay=True (or weight_decay=0)"
)


def check_config(config: AdamaxConfig) -> None:
    """Refuse what cannot be lazy: coupled weight decay, and ``beta1 >= beta2``."""
    if config.weight_decay and not config.decoupled_weight_decay:
        raise ValueError(COUPLED_DECAY)
    window(config.beta1, config.beta2)


def window(beta1: float, beta2: float, dtype=np.float64) -> int:
    """How many steps a row may lag: after ``W`` steps a catch-up term is below 2^-60 of the first."""
    dtype = np.dtype(dtype).type
    a, b2 = float(dtype(1) - dtype(1 - beta1)), float(dtype(beta2))
    if a >= b2:
        raise ValueError(f"lazy Adamax needs beta1 < beta2 (a catch-up sum must converge), got {beta1}, {beta2}")
    if a == 0:
        return 1
    return max(1, math.ceil(60 * math.log(2) / -math.log(a / b2)))


class Clock:
    """The history a lazy table's rows need: for each anchor step of the last ``W``, the prefix sums above.

    Advance it once per step of the table's param (:meth:`advance`), after that step's update of the rows the
    gradient touched.  Anchor ``s`` lives in slot ``s % (W + 1)``.
    """

    def __init__(self, config: AdamaxConfig, dtype=np.float64, window_steps: int | None = None) -> None:
        check_config(config)
        self.dtype = np.dtype(dtype)
        cast = self.dtype.type
        self.config = config
        self.a = float(cast(1) - cast(1 - config.beta1))
        self.b2 = float(cast(config.beta2))
        self.eps = float(cast(config.eps))
        self.W = window_steps or window(config.beta1, config.beta2, dtype)
        k = np.arange(self.W + 1, dtype=np.float64)
        self.pow_a = self.a**k
        self.pow_b2 = self.b2**k
        self.pow_r = (self.a / self.b2) ** k if self.b2 > 0 else np.zeros_like(k)
        self.t = 0  # steps taken
        slots = self.W + 1
        self.A = np.zeros((slots, slots))
        self.B = np.zeros((slots, slots))
        self.D = np.ones(slots)  # D[slot(s)] = D(s, t)
        self.c = np.zeros(slots)  # c[slot(j)] = c_j
        self.e = np.ones(slots)  # e[slot(j)] = e_j

    def slot(self, s):
        return np.asarray(s) % (self.W + 1)

    def step_scalars(self, lr: float, step: int) -> tuple[float, float]:
        """``c`` and ``e`` of a step with learning rate ``lr`` and step count ``step``, as the dtype rounds them."""
        cast = self.dtype.type
        c = float(cast(step_size(lr, self.config.beta1, step)))
        cfg = self.config
        e = float(cast(1 - lr * cfg.weight_decay)) if cfg.weight_decay and cfg.decoupled_weight_decay else 1.0
        return c, e

    def advance(self, c: float, e: float) -> None:
        """Record step ``t + 1`` with step size ``c`` and decay factor ``e``."""
        n = self.t + 1
        anchors = np.arange(max(0, n - self.W), n)
        slots, ks = self.slot(anchors), n - anchors
        self.D[slots] *= e
        self.A[slots, ks] = self.A[slots, ks - 1] + c * self.pow_r[ks] / self.D[slots]
        self.B[slots, ks] = self.B[slots, ks - 1] + c * self.pow_a[ks] / self.D[slots]
        new = self.slot(n)
        self.A[new], self.B[new], self.D[new] = 0.0, 0.0, 1.0
        self.c[new], self.e[new] = c, e
        self.t = n

    def stale(self, last: np.ndarray, margin: int = 1) -> np.ndarray:
        """Indices of rows that must be brought up to date before the next ``margin`` steps drop their anchor."""
        return np.flatnonzero(self.t - np.asarray(last) > self.W - margin)

    def due(self, last: np.ndarray) -> np.ndarray:
        """The rows to bring up to date at this step so that none ever lags more than ``W`` steps, looking at
        ``last`` only every ``H = W // 2`` steps: then every row ``W - H`` or more steps behind.  (Between
        two such sweeps a row falls at most ``H`` further behind.)"""
        period = max(1, self.W // 2)
        if self.t % period:
            return np.empty(0, dtype=np.int64)
        return self.stale(last, margin=period)


class Rows(NamedTuple):
    p: np.ndarray
    m: np.ndarray
    u: np.ndarray


class Table:
    """A lazy table's bookkeeping: its :class:`Clock`, and per row the step it was last brought up to date at,
    both counted in the table's steps (equal to its param's step count).  The arrays (p, m, u: rows along the
    first axis) stay with their owner and are passed in."""

    def __init__(self, rows: int, config: AdamaxConfig, dtype, step: int = 0) -> None:
        self.clock = Clock(config, dtype)
        self.clock.t = step
        self.last = np.full(rows, step, dtype=np.int64)

    def recorded_with(self, config: AdamaxConfig) -> bool:
        """Whether the history holds for ``config``: lr and decoupled decay are recorded per step; the betas,
        eps and placement are the history's own."""
        old = self.clock.config
        return (old.betas, old.eps, old.eps_placement) == (config.betas, config.eps, config.eps_placement)

    def behind(self, rows: np.ndarray) -> np.ndarray:
        """Those of ``rows`` not up to date."""
        return rows[self.last[rows] != self.clock.t]

    def catch_up(self, p: np.ndarray, m: np.ndarray, u: np.ndarray, rows: np.ndarray) -> Rows:
        return catch_up(self.clock, p[rows], m[rows], u[rows], self.last[rows])

    def bring_up_to_date(self, p: np.ndarray, m: np.ndarray, u: np.ndarray, rows: np.ndarray) -> None:
        """Rows ``rows`` up to date, in place."""
        rows = self.behind(rows)
        if len(rows):
            p[rows], m[rows], u[rows] = self.catch_up(p, m, u, rows)
            self.last[rows] = self.clock.t

    def step(
        self,
        p: np.ndarray,
        m: np.ndarray,
        u: np.ndarray,
        touched: np.ndarray,
        values: np.ndarray,
        config: AdamaxConfig,
        step: int,
        stale: np.ndarray,
    ) -> Callable[[], None]:
        """Compute the table's next step, its param's ``step + 1``: rows ``touched`` (unique) brought up to date and
        updated with ``values`` as :mod:`adamax.reference` updates them, rows ``stale`` (not touched) brought up to
        date.  Nothing is written here; returns the function that writes it and moves the clock on."""
        caught = self.catch_up(p, m, u, stale)
        rows = self.catch_up(p, m, u, touched)
        new_p, state = reference.update(rows.p, values, AdamaxState(step, rows.m, rows.u), config)
        scalars = self.clock.step_scalars(config.lr, step + 1)

        def commit() -> None:
            for index, new in ((stale, caught), (touched, (new_p, state.exp_avg, state.exp_inf))):
                p[index], m[index], u[index] = new
            self.last[stale] = self.clock.t
            self.clock.advance(*scalars)
            self.last[touched] = self.clock.t

        return commit


def catch_up(clock: Clock, p: np.ndarray, m: np.ndarray, u: np.ndarray, last: np.ndarray) -> Rows:
    """Rows ``p, m, u`` (shape ``(rows, ...)``) last brought up to date at steps ``last``, brought to ``clock.t``.

    Returns new arrays in the rows' dtype; the inputs are not modified.
    """
    last = np.asarray(last, dtype=np.int64)
    n = clock.t
    K = n - last
    if (K < 0).any() or (K > clock.W).any():
        raise ValueError(f"rows must be between {n - clock.W} and {n} steps old, got {last.min()}..{last.max()}")
    shape = (-1,) + (1,) * (p.ndim - 1)
    p64, m64, u64 = (np.asarray(x, dtype=np.float64) for x in (p, m, u))
    Kb = K.reshape(shape)
    slot = clock.slot(last)
    D_sn = clock.D[slot].reshape(shape)
    placement = clock.config.eps_placement
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b2K_u = clock.pow_b2[Kb] * u64
        if placement == "max":
            u_new = np.where(Kb >= 1, np.maximum(b2K_u, clock.eps), u64)
        else:
            u_new = b2K_u
        m_new = clock.pow_a[Kb] * m64
        total = _sum(clock, placement, u64, K, last, shape)
        p_new = D_sn * p64 + np.where(m64 == 0, 0.0, m64 * total)
    dtype = np.asarray(p).dtype
    return Rows(p_new.astype(dtype), m_new.astype(dtype), u_new.astype(dtype))


def _sum(clock: Clock, placement: str, u: np.ndarray, K: np.ndarray, last: np.ndarray, shape: tuple) -> np.ndarray:
    """``sum_{k=1..K} D(s+k, n) c_{s+k} a^k / d_k`` per element (see the module docstring)."""
    W = clock.W
    slot = clock.slot(last)
    Kb = np.broadcast_to(K.reshape(shape), u.shape)
    if placement == "denominator":
        total = np.zeros(u.shape)
        for k in range(1, int(K.max(initial=0)) + 1):
            j = last + k
            live = (k <= K).reshape(shape)
            D_jn = clock.D[clock.slot(j)].reshape(shape)
            c_j = clock.c[clock.slot(j)].reshape(shape)
            term = D_jn * c_j * clock.pow_a[k] / (clock.pow_b2[k] * u + clock.eps)
            total += np.where(live, term, 0.0)
        return total
    rows = np.broadcast_to(slot.reshape(shape), u.shape)
    D_sn = clock.D[slot].reshape(shape)
    if placement == "none":
        return np.where(u > 0, D_sn * clock.A[rows, Kb] / u, 0.0)
    # "max": the last k with b2^k u >= eps, found from the logarithm and corrected by one either way
    with np.errstate(divide="ignore"):
        guess = np.floor(np.log(u / clock.eps) / -np.log(clock.b2)) if clock.b2 < 1 else np.full(u.shape, W)
    kstar = np.clip(np.nan_to_num(guess, nan=0.0, posinf=W, neginf=0.0), 0, Kb).astype(np.int64)
    above = clock.pow_b2[kstar] * u >= clock.eps
    kstar = np.where(~above & (kstar > 0), kstar - 1, kstar)
    nxt = np.minimum(kstar + 1, Kb)
    kstar = np.where((nxt > kstar) & (clock.pow_b2[nxt] * u >= clock.eps), nxt, kstar)
    first = np.where(u > 0, D_sn * clock.A[rows, kstar] / u, 0.0)
    anchor2 = np.broadcast_to(last.reshape(shape), u.shape) + kstar
    slot2 = clock.slot(anchor2)
    second = clock.pow_a[kstar] * clock.D[slot2] / clock.eps * clock.B[slot2, Kb - kstar]
    return first + np.where(Kb > kstar, second, 0.0)
