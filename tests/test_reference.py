"""The reference against the paper's formulas, against torch, and against itself."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from adamax import reference
from adamax.spec import EPS_PLACEMENTS, AdamaxConfig


def paper_steps(p0: float, grads: list[float], lr: float, b1: float, b2: float) -> list[float]:
    """Algorithm 2 of the paper (Adamax, no epsilon), in plain Python floats."""
    p, m, u, out = p0, 0.0, 0.0, []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        u = max(b2 * u, abs(g))
        p = p - (lr / (1 - b1**t)) * m / u
        out.append(p)
    return out


def run(config: AdamaxConfig, p0, grads):
    p = np.asarray(p0, dtype=np.float64)
    state = reference.init(p)
    history = []
    for g in grads:
        p, state = reference.update(p, np.asarray(g, dtype=np.float64), state, config)
        history.append((p, state))
    return history


def test_matches_the_papers_algorithm_by_hand():
    grads = [0.3, -1.2, 0.05, 2.0, 2.0, -0.7, 0.0, 0.4]
    config = AdamaxConfig(lr=0.01, betas=(0.9, 0.999), eps_placement="none")
    expected = paper_steps(1.5, grads, 0.01, 0.9, 0.999)
    for (p, _), want in zip(run(config, 1.5, grads), expected):
        assert float(p) == pytest.approx(want, rel=1e-15, abs=1e-15)
    # u is the running maximum of b2-decayed |g|: after 2.0 at t=4 and t=5 it is exactly 2.0
    assert float(run(config, 1.5, grads)[4][1].exp_inf) == 2.0


def test_first_step_moves_against_the_gradient_by_lr():
    # m1 / (1 - b1) = g and u1 = |g|, so the paper's first step is exactly -lr * sign(g).
    g = np.array([3.0, -0.25, 1e-4, -7e3])
    config = AdamaxConfig(lr=0.125, eps_placement="none")
    ((p, _),) = run(config, np.zeros(4), [g])
    np.testing.assert_allclose(p, -0.125 * np.sign(g), rtol=1e-15)
    # "denominator" shrinks that step by |g| / (|g| + eps); "max" by |g| / (|g| + eps) as well on step 1
    for placement in ("denominator", "max"):
        ((p, _),) = run(AdamaxConfig(lr=0.125, eps=0.5, eps_placement=placement), np.zeros(4), [g])
        np.testing.assert_allclose(p, -0.125 * g / (np.abs(g) + 0.5), rtol=1e-15)


def test_weight_decay_pulls_towards_zero():
    p0, zero = np.array([2.0, -3.0]), np.zeros(2)
    ((coupled, _),) = run(AdamaxConfig(lr=0.1, weight_decay=0.5), p0, [zero])
    assert np.all(np.abs(coupled) < np.abs(p0)) and np.all(np.sign(coupled) == np.sign(p0))
    # Decoupled: the zero gradient makes no Adamax step, leaving exactly p * (1 - lr * wd).
    ((decoupled, _),) = run(AdamaxConfig(lr=0.1, weight_decay=0.5, decoupled_weight_decay=True), p0, [zero])
    np.testing.assert_array_equal(decoupled, p0 * (1 - 0.1 * 0.5))


def test_maximize_is_descent_on_the_negated_gradient():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(5) for _ in range(4)]
    p0 = rng.standard_normal(5)
    for placement in EPS_PLACEMENTS:
        up = run(AdamaxConfig(maximize=True, weight_decay=0.01, eps_placement=placement), p0, grads)
        down = run(AdamaxConfig(weight_decay=0.01, eps_placement=placement), p0, [-g for g in grads])
        for (a, sa), (b, sb) in zip(up, down):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(sa.exp_inf, sb.exp_inf)


def test_update_is_pure():
    p, g = np.array([1.0, 2.0]), np.array([0.5, -0.5])
    state = reference.init(p)
    copies = [p.copy(), g.copy(), state.exp_avg.copy(), state.exp_inf.copy()]
    reference.update(p, g, state, AdamaxConfig(weight_decay=0.1))
    for before, after in zip(copies, [p, g, state.exp_avg, state.exp_inf]):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("placement", EPS_PLACEMENTS)
def test_zero_gradients_never_make_nan(placement):
    history = run(AdamaxConfig(eps=0.0, eps_placement=placement), np.ones(3), [np.zeros(3)] * 3)
    for p, state in history:
        np.testing.assert_array_equal(p, np.ones(3))
        np.testing.assert_array_equal(state.exp_inf, np.zeros(3))


def test_complex_is_the_real_pair_update():
    rng = np.random.default_rng(2)
    z = rng.standard_normal(4) + 1j * rng.standard_normal(4)
    gz = rng.standard_normal(4) + 1j * rng.standard_normal(4)
    config = AdamaxConfig(lr=0.1)
    pz, sz = reference.update(z, gz, reference.init(z), config)
    pairs = np.stack([z.real, z.imag], -1)
    pr, sr = reference.update(pairs, np.stack([gz.real, gz.imag], -1), reference.init(pairs), config)
    np.testing.assert_array_equal(np.stack([pz.real, pz.imag], -1), pr)
    np.testing.assert_array_equal(np.stack([sz.exp_inf.real, sz.exp_inf.imag], -1), sr.exp_inf)
    assert pz.dtype == sz.exp_avg.dtype == sz.exp_inf.dtype == np.complex128


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: reference.update(
                np.zeros(3, np.int64), np.zeros(3, np.int64), reference.AdamaxState(0, np.zeros(3), np.zeros(3))
            ),
            "dtype int64",
        ),
        (lambda: reference.init(np.zeros(2, bool)), "dtype bool"),
        (lambda: reference.update(np.zeros(3), np.zeros(2), reference.init(np.zeros(3))), "grad has shape"),
        (lambda: reference.update(np.zeros(3), np.zeros(4), reference.init(np.zeros(3))), "grad has shape"),  # larger
        (lambda: reference.update(np.zeros(3), np.zeros((3, 1)), reference.init(np.zeros(3))), "grad has shape"),
        (lambda: reference.update(np.zeros(3), np.zeros(3, np.float32), reference.init(np.zeros(3))), "grad has dtype"),
        (
            lambda: reference.update(np.zeros(3), np.zeros(3), reference.AdamaxState(-1, np.zeros(3), np.zeros(3))),
            "step must be",
        ),
    ],
)
def test_update_refuses_mismatched_arrays(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


# --- properties -------------------------------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)


@given(
    p0=hnp.arrays(np.float64, st.integers(1, 8), elements=finite),
    data=st.data(),
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.5, 0.9999),
    lr=st.floats(1e-4, 1.0),
)
def test_step_bound_and_infinity_norm(p0, data, b1, b2, lr):
    """u_t = max(b2 u_{t-1}, |g_t|) exactly, and |step_t| <= lr (1-b1)/(1-b1^t) sum_j (b1/b2)^j."""
    config = AdamaxConfig(lr=lr, betas=(b1, b2), eps_placement="none")
    p, state = p0, reference.init(p0)
    for t in range(1, 6):
        g = data.draw(hnp.arrays(np.float64, p0.shape, elements=finite))
        new_p, new_state = reference.update(p, g, state, config)
        np.testing.assert_array_equal(new_state.exp_inf, np.maximum(state.exp_inf * b2, np.abs(g)))
        bound = lr * (1 - b1) / (1 - b1**t) * sum((b1 / b2) ** j for j in range(t))
        assert np.all(np.abs(new_p - p) <= bound * (1 + 1e-9) + 1e-9 * np.abs(p))
        p, state = new_p, new_state


@given(
    g=st.floats(1e-3, 1e3) | st.floats(-1e3, -1e-3),
    steps=st.integers(1, 20),
    placement=st.sampled_from(EPS_PLACEMENTS),
)
def test_a_constant_gradient_moves_the_param_against_it(g, steps, placement):
    history = run(AdamaxConfig(lr=0.01, eps_placement=placement), 0.0, [g] * steps)
    positions = [0.0] + [float(p) for p, _ in history]
    moves = np.diff(positions)
    assert np.all(np.sign(moves) == -np.sign(g))


# --- torch as the oracle ----------------------------------------------------------------------------------------

TORCH_CONFIGS = [
    dict(lr=1e-2),
    dict(lr=5e-3, weight_decay=0.1),
    dict(lr=5e-3, weight_decay=0.1, maximize=True),
    dict(lr=2e-2, betas=(0.3, 0.9), maximize=True),  # lerp's large-weight branch
    dict(lr=1e-3, betas=(0.6, 0.99), eps=1e-4, weight_decay=1e-3),
    dict(lr=1e-3, weight_decay=1.0),  # the gradient plus the param itself
]


@pytest.mark.parametrize("kwargs", TORCH_CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128], ids=lambda d: d.__name__)
def test_bit_exact_with_torch_forloop(kwargs, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    shapes = [(), (1,), (17,), (4097,), (6, 7)]

    def draw(shape, scale=1.0):
        x = rng.standard_normal(shape) * scale
        if np.issubdtype(dtype, np.complexfloating):
            x = x + 1j * rng.standard_normal(shape) * scale
        return np.asarray(x).astype(dtype)

    ours = [draw(s) for s in shapes]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in ours]
    states = [reference.init(p) for p in ours]
    config = AdamaxConfig(**kwargs)
    opt = torch.optim.Adamax(theirs, foreach=False, **kwargs)
    for step, scale in zip(range(30), itertools.cycle([1e-3, 1.0, 50.0])):
        grads = [draw(s, scale) for s in shapes]
        for t, g in zip(theirs, grads):
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        for i, g in enumerate(grads):
            ours[i], states[i] = reference.update(ours[i], g, states[i], config)
            torch_state = opt.state[theirs[i]]
            where = f"step {step + 1}, shape {shapes[i]}"
            np.testing.assert_array_equal(ours[i], theirs[i].detach().numpy(), err_msg=f"param, {where}")
            np.testing.assert_array_equal(
                states[i].exp_avg, torch_state["exp_avg"].numpy(), err_msg=f"exp_avg, {where}"
            )
            np.testing.assert_array_equal(
                states[i].exp_inf, torch_state["exp_inf"].numpy(), err_msg=f"exp_inf, {where}"
            )
            assert states[i].step == int(torch_state["step"])
    assert not math.isnan(float(np.abs(ours[3]).sum()))


@pytest.mark.parametrize("placement", ["max", "none"])
def test_a_nan_gradient_with_eps_zero_poisons_its_param_like_torch(placement):
    """eps = 0 (or no eps) guards u == 0 against 0/0; a NaN in u is not 0 and must still poison the param, as in
    torch.  The other gradients are nonzero, so u > 0 there and torch takes the same step."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(64)
    theirs = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.Adamax([theirs], eps=0.0)
    config = AdamaxConfig(eps=0.0, eps_placement=placement)
    ours, state = p0.copy(), reference.init(p0)
    for step in range(3):
        g = rng.standard_normal(64) + 3.0
        if step == 1:
            g[[3, 40]] = np.nan
        theirs.grad = torch.from_numpy(g.copy())
        opt.step()
        ours, state = reference.update(ours, g, state, config)
        np.testing.assert_array_equal(ours, theirs.detach().numpy())
    assert np.isnan(ours[[3, 40]]).all() and not np.isnan(np.delete(ours, [3, 40])).any()
