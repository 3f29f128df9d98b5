"""Lazy Adamax (adamax._lazy, and adamax.numpy.Adamax(lazy=...)): the results of dense Adamax, row by row."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adamax import _lazy, reference
from adamax.numpy import Adamax, RowGradient
from adamax.reference import AdamaxState
from adamax.spec import AdamaxConfig

ROWS, DIM = 60, 3


def scale_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference, relative to the largest magnitude of ``expected``."""
    return float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0) / max(np.abs(expected).max(), 1e-300))


def pattern(rng: np.random.Generator, step: int) -> np.ndarray:
    """Rows 0 and 1 are never touched; row 2 every step; row 3 at step 1 and then not until step 200 (far past
    the window of the small betas); the rest at random, 8% a step, with repeats."""
    rows = np.flatnonzero(rng.random(ROWS) < 0.08)
    rows = rows[(rows > 3)]
    extra = (
        [2] + ([3] if step in (1, 200) else []) + list(rng.choice(rows, size=min(2, len(rows)))) if len(rows) else [2]
    )
    return np.concatenate([rows, np.asarray(extra, dtype=np.int64)]).astype(np.int64)


CASES = {
    "default betas": dict(betas=(0.9, 0.999), eps=1e-8),
    "short window": dict(betas=(0.5, 0.9), eps=0.1),  # W = 71 steps, and the "max" split inside it
}


def run(placement, decoupled, maximize, case, dtype=np.float64, steps=260, seed=0):
    """Lazy and dense side by side; returns the worst scaled error seen at any read."""
    rng = np.random.default_rng(seed)
    kwargs = dict(
        eps_placement=placement,
        maximize=maximize,
        weight_decay=0.05 if decoupled else 0.0,
        decoupled_weight_decay=decoupled,
        **CASES[case],
    )
    start = rng.standard_normal((ROWS, DIM)).astype(dtype)
    lazy_params, dense_params = {"table": start.copy()}, {"table": start.copy()}
    lazy = Adamax(lazy_params, lr=1e-2, lazy=["table"], **kwargs)
    dense = Adamax(dense_params, lr=1e-2, fused=False, **kwargs)
    worst = 0.0
    for step in range(1, steps + 1):
        lr = 1e-2 * (1 + np.cos(step / 15)) / 2 + 1e-4  # a schedule
        lazy.config = lazy.config.replace(lr=lr)
        dense.config = dense.config.replace(lr=lr)
        rows = pattern(rng, step)
        current = lazy.rows("table", rows)  # what a forward pass reads: brought up to date first
        unique = np.unique(rows)
        worst = max(worst, scale_error(current, dense_params["table"][unique]))
        # a gradient that depends on the rows read (as a model's does), with repeated rows summed
        values = (rng.standard_normal((len(rows), DIM)) * (1 + 0.5 * np.tanh(lazy_params["table"][rows]))).astype(dtype)
        dense_grad = np.zeros_like(start)
        np.add.at(dense_grad, rows, values)
        lazy.step({"table": RowGradient(rows, values)})
        dense.step({"table": dense_grad})
        if step % 50 == 0 or step == steps:
            lazy_sd, dense_sd = lazy.state_dict(), dense.state_dict()  # state_dict brings every row up to date
            worst = max(worst, scale_error(lazy_params["table"], dense_params["table"]))
            for key in ("exp_avg", "exp_inf"):
                worst = max(worst, scale_error(lazy_sd["state"]["table"][key], dense_sd["state"]["table"][key]))
            assert lazy_sd["state"]["table"]["step"] == dense_sd["state"]["table"]["step"] == step
    return worst


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("placement", ["max", "denominator", "none"])
@pytest.mark.parametrize(("decoupled", "maximize"), [(False, False), (True, False), (False, True)])
def test_lazy_rows_equal_dense_adamax_in_float64(case, placement, decoupled, maximize):
    assert run(placement, decoupled, maximize, case) < 1e-12


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("placement", ["max", "denominator", "none"])
def test_lazy_rows_in_float32_stay_within_the_stated_bound(case, placement):
    """The dense float32 run rounds at every zero-gradient step, the closed form once (in float64): measured
    worst 1.8e-6 of the table's scale (about 15 float32 ulps) over 260 steps; the bound stated is 4e-6."""
    assert run(placement, True, False, case, dtype=np.float32) < 4e-6


def test_the_short_window_case_exercises_the_split_and_the_window():
    """The cases above must reach both halves of the "max" sum and rows older than the window."""
    clock = _lazy.Clock(AdamaxConfig(**CASES["short window"]))
    assert clock.W == 71 < 199  # row 3 waits 199 steps
    u = 1.0
    kstar = np.floor(np.log(u / clock.eps) / -np.log(clock.b2))
    assert 0 < kstar < clock.W  # gradients of order 1 switch to eps inside the window


def test_catch_up_refuses_rows_older_than_the_window():
    clock = _lazy.Clock(AdamaxConfig(betas=(0.5, 0.9)))
    for _ in range(clock.W + 2):
        clock.advance(*clock.step_scalars(0.01, clock.t + 1))
    with pytest.raises(ValueError, match=rf"between {clock.t - clock.W} and {clock.t} steps old, got 0\.\.0"):
        _lazy.catch_up(clock, np.ones((1, 2)), np.ones((1, 2)), np.ones((1, 2)), np.array([0]))


@pytest.mark.parametrize("betas", [(0.5, 0.9), (0.8, 0.99)], ids=["W = 71", "W = 196"])
def test_no_row_ever_lags_more_than_the_window(betas):
    """Rows no gradient touches, brought up to date only as the optimizers bring them: the NumPy optimizer's
    (``stale``, every step) and the torch adapter's (``due``, a sweep every H = W // 2 steps). Before every step,
    no row is more than W steps behind, which a catch-up needs (an odd and an even W); and no row is brought up
    to date before it must be: every W steps, or every other sweep."""
    clock = _lazy.Clock(AdamaxConfig(betas=betas))
    every_step, sweeps = np.zeros(7, np.int64), np.zeros(7, np.int64)
    caught = {"stale": 0, "due": 0}
    steps = 3 * clock.W + 5
    for t in range(steps):
        assert (clock.t - every_step).max() <= clock.W and (clock.t - sweeps).max() <= clock.W, t
        for name, last in (("stale", every_step), ("due", sweeps)):
            rows = clock.stale(last) if name == "stale" else clock.due(last)
            last[rows] = clock.t
            caught[name] += len(rows)
        clock.advance(*clock.step_scalars(0.01, t + 1))
    period = clock.W // 2
    assert caught == {"stale": 7 * (steps // clock.W), "due": 7 * (steps // (2 * period))}


def boundary_states(clock: _lazy.Clock) -> np.ndarray:
    """``u`` values at which a step ``k`` of the gap switches to eps (``b2^k u`` within a few ulps of eps, where the
    logarithm's guess of the last ``k`` with ``b2^k u >= eps`` is one off), and ``u = 0``."""
    us = [0.0]
    for k in range(1, clock.W + 1):
        u = clock.eps / clock.pow_b2[k]
        us += [u, *(np.nextafter(u, np.inf * side) for side in (-1, 1))]
        us.append(np.nextafter(us[-2], -np.inf))
    return np.asarray(us)


@pytest.mark.parametrize("placement", ["max", "denominator", "none"])
def test_a_catch_up_is_zero_gradient_steps_of_the_reference_at_the_switch_to_eps_and_at_u_zero(placement):
    """A row caught up over ``K`` steps lands where ``K`` reference steps with a zero gradient take it, for every
    ``u`` at which the "max" sum's split is decided by rounding, and for ``u = 0`` with ``m != 0`` (a state loaded
    from elsewhere: the reference then takes no step for "none", as its guard on a zero denominator says)."""
    try:
        from adamax.kernels import lazy as kernel
    except ImportError:  # numba missing: the reference alone
        kernel = None
    config = AdamaxConfig(lr=0.01, eps_placement=placement, **CASES["short window"])
    clock = _lazy.Clock(config)
    us = boundary_states(clock)
    guesses = np.floor(np.log(us[1:] / clock.eps) / -np.log(clock.b2))
    above = clock.pow_b2[guesses.astype(int)] * us[1:] >= clock.eps
    assert (~above).any() and (np.minimum(guesses + 1, clock.W) < clock.W).any()  # the guess is too high somewhere
    rng = np.random.default_rng(3)
    p, m = rng.standard_normal((2, len(us), 1))
    n = clock.W
    for t in range(n):
        clock.advance(*clock.step_scalars(config.lr, t + 1))
    for gap in (1, 7, clock.W // 2, clock.W):
        got = _lazy.catch_up(clock, p, m, us[:, None], np.full(len(us), n - gap))
        want_p, state = p.copy(), AdamaxState(n - gap, m.copy(), us[:, None].copy())
        for _ in range(gap):
            want_p, state = reference.update(want_p, np.zeros_like(p), state, config)
        assert scale_error(got.p, want_p) < 1e-13, gap
        np.testing.assert_allclose(got.m, state.exp_avg, rtol=1e-13, atol=0)
        np.testing.assert_allclose(got.u, state.exp_inf, rtol=1e-13, atol=0)
        if kernel is not None:  # and the kernel's catch-up, bit for bit: the same k* at every boundary
            arrays = [p.copy(), m.copy(), us[:, None].copy()]
            kernel.step_rows(clock, *arrays, np.full(len(us), n - gap), np.arange(len(us)))
            for a, b in zip(arrays, got):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(weight_decay=0.1), "coupled weight decay moves every row every step.*decoupled_weight_decay=True"),
        (dict(betas=(0.99, 0.9)), "beta1 < beta2"),
        (dict(betas=(0.9, 0.0)), "beta1 < beta2"),
        (dict(betas=(0.9, 0.9)), "beta1 < beta2"),
        (dict(lazy=["nope"]), "unknown params"),
        (dict(lazy="table"), "list of param paths"),
        (dict(lazy=["scalar"]), "'scalar' must have rows"),
    ],
)
def test_what_cannot_be_lazy_is_refused_at_construction(kwargs, message):
    options = {"lazy": ["table"], **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        Adamax({"table": np.zeros((4, 2)), "bias": np.zeros(2), "scalar": np.zeros(())}, **options)


def test_coupled_decay_set_later_is_refused_before_anything_changes():
    params = {"table": np.ones((4, 2))}
    opt = Adamax(params, lr=0.1, lazy=["table"])
    opt.step({"table": RowGradient(np.array([1]), np.ones((1, 2)))})
    opt.config = opt.config.replace(weight_decay=0.1)
    before = params["table"].copy()
    with pytest.raises(ValueError, match="decoupled_weight_decay=True"):
        opt.step({"table": RowGradient(np.array([2]), np.ones((1, 2)))})
    np.testing.assert_array_equal(params["table"], before)


BAD_GRADIENTS = {
    "a dense array for a lazy table": ({"table": np.ones((4, 2)), "bias": np.ones(2)}, TypeError, "RowGradient"),
    "a RowGradient for a dense param": (
        {"table": RowGradient(np.array([0]), np.ones((1, 2))), "bias": RowGradient(np.array([0]), np.ones((1,)))},
        TypeError,
        "which is not lazy",
    ),
    "an index out of range": (
        {"table": RowGradient(np.array([4]), np.ones((1, 2))), "bias": np.ones(2)},
        IndexError,
        r"\[0, 4\), got row 4$",
    ),
    "values of the wrong shape": (
        {"table": RowGradient(np.array([0, 1]), np.ones((1, 2))), "bias": np.ones(2)},
        ValueError,
        "shape",
    ),
    "float indices": (
        {"table": RowGradient(np.array([0.0]), np.ones((1, 2))), "bias": np.ones(2)},
        TypeError,
        "integer",
    ),
    "0-d indices": (
        {"table": RowGradient(np.array(1), np.ones((1, 2))), "bias": np.ones(2)},
        TypeError,
        "1-d integer array",
    ),
    "a negative index": (
        {"table": RowGradient(np.array([0, -1, 9]), np.ones((3, 2))), "bias": np.ones(2)},
        IndexError,
        r"\[0, 4\), got row -1$",  # the first row outside
    ),
    "an index far out of range": (
        {"table": RowGradient(np.array([0, 7]), np.ones((2, 2))), "bias": np.ones(2)},
        IndexError,
        r"\[0, 4\), got row 7$",
    ),
    "2-d indices": (
        {"table": RowGradient(np.array([[0], [1]]), np.ones((2, 2))), "bias": np.ones(2)},
        TypeError,
        "1-d integer array",
    ),
    "a bad gradient elsewhere": (
        {"table": RowGradient(np.array([0]), np.ones((1, 2))), "bias": np.ones(3)},
        ValueError,
        "shape",
    ),
}


@pytest.mark.parametrize(("grads", "error", "message"), BAD_GRADIENTS.values(), ids=BAD_GRADIENTS.keys())
def test_a_refused_lazy_step_changes_nothing(grads, error, message):
    params = {"table": np.ones((4, 2)), "bias": np.zeros(2)}
    opt = Adamax(params, lr=0.1, lazy=["table"])
    for _ in range(3):
        opt.step({"table": RowGradient(np.array([0, 2]), np.ones((2, 2))), "bias": np.ones(2)})
    before = {k: v.copy() for k, v in params.items()}
    state = {k: (s.step, s.exp_avg.copy(), s.exp_inf.copy()) for k, s in opt.state.items()}
    last = opt._lazy["table"].last.copy()
    with pytest.raises(error, match=message):
        opt.step(grads)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
        assert opt.state[k].step == state[k][0]
        np.testing.assert_array_equal(opt.state[k].exp_avg, state[k][1])
    np.testing.assert_array_equal(opt._lazy["table"].last, last)


def step_both(lazy: Adamax, dense: Adamax, rows: np.ndarray, values: np.ndarray, shape: tuple) -> None:
    """One step of a lazy table ("t") with rows ``rows``' gradients, and of its dense twin with those rows filled."""
    grad = np.zeros(shape)
    grad[rows] = values
    lazy.step({"t": RowGradient(rows, values)})
    dense.step({"t": grad})


def test_a_checkpoint_of_a_lazy_table_is_dense_adamaxs_and_resumes():
    rng = np.random.default_rng(5)
    start = rng.standard_normal((20, 4))
    lazy_params, dense_params = {"t": start.copy()}, {"t": start.copy()}
    lazy, dense = Adamax(lazy_params, lr=0.05, lazy=["t"]), Adamax(dense_params, lr=0.05)

    def step(k):
        step_both(lazy, dense, rng.choice(20, size=3, replace=False), rng.standard_normal((3, 4)), (20, 4))

    for k in range(30):
        step(k)
    saved = lazy.state_dict()
    assert scale_error(saved["state"]["t"]["exp_avg"], dense.state_dict()["state"]["t"]["exp_avg"]) < 1e-13
    resumed_params = {"t": lazy_params["t"].copy()}
    resumed = Adamax(resumed_params, lr=0.05, lazy=["t"])
    resumed.load_state_dict(saved)
    lazy = resumed
    lazy_params = resumed_params
    for k in range(30):
        step(k)
    lazy.flush()
    assert scale_error(lazy_params["t"], dense_params["t"]) < 1e-12


def test_changing_the_betas_mid_run_brings_rows_up_to_date_under_the_old_ones():
    rng = np.random.default_rng(7)
    start = rng.standard_normal((10, 2))
    lazy_params, dense_params = {"t": start.copy()}, {"t": start.copy()}
    lazy, dense = Adamax(lazy_params, lr=0.05, lazy=["t"]), Adamax(dense_params, lr=0.05)
    for k in range(40):
        if k == 20:
            for opt in (lazy, dense):
                opt.config = opt.config.replace(betas=(0.8, 0.99), eps_placement="none")
        step_both(lazy, dense, rng.choice(10, size=2, replace=False), rng.standard_normal((2, 2)), (10, 2))
    lazy.flush()
    assert scale_error(lazy_params["t"], dense_params["t"]) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_lazy_table_is_stepped_by_the_closed_form_in_its_own_dtype(dtype):
    """The NumPy optimizer's lazy table, bit for bit, is adamax._lazy.Table at the table's dtype: the catch-up's
    constants (a = 1 - (1 - b1), b2, eps) rounded as the dtype rounds them, as the kernel and torch's tables."""
    config = AdamaxConfig(lr=0.01, **CASES["short window"])
    rng = np.random.default_rng(5)
    start = rng.standard_normal((40, 3)).astype(dtype)
    params = {"table": start.copy()}
    opt = Adamax(params, lr=0.01, lazy=["table"], **CASES["short window"])
    arrays, table = [start.copy(), np.zeros_like(start), np.zeros_like(start)], _lazy.Table(40, config, dtype)
    for t in range(150):
        rows = np.unique(rng.integers(0, 40, size=4))
        values = rng.standard_normal((len(rows), 3)).astype(dtype)
        opt.step({"table": RowGradient(rows, values)})
        stale = np.setdiff1d(table.clock.stale(table.last), rows)
        table.step(*arrays, rows, values, config, t, stale)()
    np.testing.assert_array_equal(params["table"], arrays[0])
    opt.flush()
    table.bring_up_to_date(*arrays, np.arange(40))
    np.testing.assert_array_equal(params["table"], arrays[0])
    np.testing.assert_array_equal(opt.state["table"].exp_inf, arrays[2])


def test_fused_true_refuses_an_array_the_kernel_cannot_take_after_a_lazy_table():
    """The lazy table takes its own path; an array after it that the kernel cannot take is still refused."""
    params = {"table": np.zeros((4, 2), np.float32), "w": np.zeros(3, np.float16)}
    opt = Adamax(params, lazy=["table"], fused=True)
    with pytest.raises(ValueError, match="fused=True cannot update 'w'"):
        opt.step({"table": RowGradient(np.array([1]), np.ones((1, 2), np.float32)), "w": np.ones(3, np.float16)})
    assert not params["table"].any() and not params["w"].any()


def test_an_empty_gradient_still_counts_a_step():
    params = {"t": np.ones((3, 2))}
    opt = Adamax(params, lr=0.1, lazy=["t"])
    dense_params = {"t": np.ones((3, 2))}
    dense = Adamax(dense_params, lr=0.1)
    for rows in ([0], [], [], [1]):
        step_both(opt, dense, np.array(rows, dtype=np.int64), np.ones((len(rows), 2)), (3, 2))
    assert opt.state["t"].step == 4
    opt.flush()
    assert scale_error(params["t"], dense_params["t"]) < 1e-14


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("placement", ["max", "denominator", "none"])
def test_the_lazy_rows_kernel_is_the_numpy_catch_up_bit_for_bit(dtype, placement):
    """The numba kernel (catch-up and update in one pass) against adamax._lazy.Table's step (the catch-up plus
    adamax.reference), which the NumPy optimizer and the torch adapter's NumPy path run."""
    pytest.importorskip("numba")
    from adamax import reference
    from adamax.kernels import lazy as kernel

    config = AdamaxConfig(
        lr=0.01, eps_placement=placement, weight_decay=0.05, decoupled_weight_decay=True, **CASES["short window"]
    )
    rng = np.random.default_rng(0)
    start = rng.standard_normal((50, 8)).astype(dtype)
    sides = [([start.copy(), np.zeros_like(start), np.zeros_like(start)], _lazy.Table(50, config, dtype)) for _ in "ab"]
    for t in range(300):
        rows = np.unique(rng.integers(0, 50, size=5))
        values = rng.standard_normal((len(rows), 8)).astype(dtype)
        config = dataclasses.replace(config, lr=0.01 * (1 + t % 7) / 7)  # a schedule: the clock records each lr
        for (arrays, table), use_kernel in zip(sides, (False, True)):
            stale = np.setdiff1d(table.clock.stale(table.last), rows)
            table.clock.config = config
            if use_kernel:
                kernel.step_rows(table.clock, *arrays, table.last, stale)
                size = reference.step_size(config.lr, config.beta1, t + 1)
                kernel.step_rows(table.clock, *arrays, table.last, rows, values, step_size=size)
                kernel.advance(table.clock, *table.clock.step_scalars(config.lr, t + 1))
            else:
                table.step(*arrays, rows, values, config, t, stale)()
    (numpy_arrays, numpy_table), (kernel_arrays, kernel_table) = sides
    for a, b in zip(kernel_arrays, numpy_arrays):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(kernel_table.last, numpy_table.last)
    for name in ("A", "B", "D", "c", "e", "t"):  # the compiled clock is the NumPy clock, bit for bit
        np.testing.assert_array_equal(getattr(kernel_table.clock, name), getattr(numpy_table.clock, name))


def test_huge_page_arrays_are_zeros_of_the_asked_shape_and_dtype(monkeypatch):
    from adamax import _memory

    small = _memory.zeros((3, 4), np.float32)  # below the threshold: an ordinary array
    assert small.shape == (3, 4) and small.dtype == np.float32 and not small.any()
    monkeypatch.setattr(_memory, "MIN_BYTES", 0)
    big = _memory.zeros((1000, 7), np.float64)
    assert big.shape == (1000, 7) and big.dtype == np.float64 and big.flags.writeable and not big.any()
    big[:] = 1.5
    assert big.sum() == 1.5 * 7000
    if _memory.available():
        assert big.ctypes.data % _memory.HUGE_PAGE == 0


def test_a_table_of_one_dimension_has_a_row_per_element():
    """A 1-d param is a table whose rows are single numbers: lazy there equals dense too."""
    start = np.linspace(-1, 1, 12)
    lazy_params, dense_params = {"t": start.copy()}, {"t": start.copy()}
    lazy = Adamax(lazy_params, lr=0.05, lazy=["t"])
    dense = Adamax(dense_params, lr=0.05, fused=False)
    for step in range(1, 30):
        rows = np.array([step % 12, (3 * step) % 12, 5], dtype=np.int64)
        values = np.sin(np.arange(3) + step)
        dense_grad = np.zeros(12)
        np.add.at(dense_grad, rows, values)
        lazy.step({"t": RowGradient(rows, values)})
        dense.step({"t": dense_grad})
    lazy.flush()
    np.testing.assert_allclose(lazy_params["t"], dense_params["t"], rtol=1e-12, atol=1e-15)


def test_a_lazy_optimizer_loads_a_fresh_state_dict_and_then_steps_as_a_fresh_one():
    params = {"table": np.ones((4, 2))}
    opt = Adamax(params, lr=0.1, lazy=["table"])
    opt.step({"table": RowGradient(np.array([1]), np.ones((1, 2)))})
    opt.load_state_dict(Adamax({"table": np.ones((4, 2))}, lr=0.1, lazy=["table"]).state_dict())
    assert opt.state == {}
    fresh_params = {"table": params["table"].copy()}
    fresh = Adamax(fresh_params, lr=0.1, lazy=["table"])
    for k in range(6):  # rows skipped at some steps: caught up by the table's clock
        rows = np.array([k % 4, 3]) if k % 2 else np.array([1])
        for o in (opt, fresh):
            o.step({"table": RowGradient(rows, np.full((len(rows), 2), 0.5 - k))})
    np.testing.assert_array_equal(opt.rows("table", np.arange(4)), fresh.rows("table", np.arange(4)))
    ours, theirs = opt.state_dict()["state"]["table"], fresh.state_dict()["state"]["table"]
    for key in ("exp_avg", "exp_inf"):
        np.testing.assert_array_equal(ours[key], theirs[key])


@pytest.mark.parametrize("betas", [(0.5, 0.9), (0.8, 0.99)], ids=["W = 71", "W = 196"])
def test_rows_first_touched_at_every_phase_of_the_sweep_never_lag_past_the_window(betas):
    """The torch adapter's sweeps (``due``, every H = W // 2 steps) against rows last touched at every step of a
    whole window, so that some reach a sweep exactly at the lag where they fall due: none is ever more than W
    steps behind before a step, and each is caught up at the first sweep that finds it more than W - H behind."""
    clock = _lazy.Clock(AdamaxConfig(betas=betas))
    period = clock.W // 2
    phases = clock.W + 2
    last = np.zeros(phases, np.int64)
    caught_at = {}
    for t in range(phases + 2 * clock.W):
        assert (clock.t - last).max() <= clock.W, t
        due = clock.due(last)
        for row in due:
            assert clock.t - last[row] > clock.W - period, (t, row)
            if row < t:  # touched already (at step ``row``): its first catch-up after that
                caught_at.setdefault(int(row), clock.t)
        last[due] = clock.t
        touched = t if t < phases else None  # row r last touched at step r
        clock.advance(*clock.step_scalars(0.01, t + 1))
        if touched is not None:
            last[touched] = clock.t
    for row in range(phases):
        first_due = row + 1 + clock.W - period + 1  # last = row + 1; due once more than W - H behind
        expected = -(-first_due // period) * period  # the first sweep at or after it
        assert caught_at[row] == expected, row
