"""adamax.compact: the compact state's codes, its step against float32 state, and the NumPy optimizer's mode."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adamax import compact, reference
from adamax.cli.freeze import freeze_demo
from adamax.compact import ONE, RATIO, SMALLEST, ZERO
from adamax.numpy import Adamax
from adamax.spec import AdamaxConfig

F32 = np.float32
ULP = 2.0**-23  # float32 relative spacing
VALUES = compact.value(np.arange(ONE + 1))  # every code's value up to 1, increasing


def brute_encode(r: float) -> int:
    """The least code whose value is at least r, by scanning every value."""
    return int(np.flatnonzero(F32(r) <= VALUES)[0])


def test_the_codes_are_increasing_from_zero_to_one_a_tenth_of_a_percent_apart():
    assert VALUES[ZERO] == 0 and VALUES[ONE] == 1 and VALUES[1] == F32(SMALLEST)
    ratios = VALUES[2:].astype(np.float64) / VALUES[1:-1]
    assert np.all(ratios > 1) and ratios.max() == RATIO  # strictly increasing; at most 0.098% apart
    assert SMALLEST < 1.1e-19  # the range below a block's scale: 19 decades


def test_encode_is_the_least_code_at_or_above_its_input():
    rng = np.random.default_rng(0)
    rs = np.concatenate(
        [
            [0.0, 1.0, SMALLEST, SMALLEST / 2, 1e-45, np.nextafter(F32(1), F32(0)), np.nextafter(F32(SMALLEST), 1)],
            VALUES[rng.integers(1, ONE, 200)],  # exact values: their own code
            np.nextafter(VALUES[rng.integers(1, ONE, 200)], F32(2)),  # just above: one code up
            np.nextafter(VALUES[rng.integers(2, ONE, 200)], F32(0)),  # just below: their own code
            10.0 ** rng.uniform(-21, 0, 400),
        ]
    ).astype(F32)
    codes = compact.encode(rs)
    assert [int(c) for c in codes] == [brute_encode(r) for r in rs]
    values = compact.value(codes)
    assert np.all(values >= rs)  # rounded up, never down
    covered = rs >= SMALLEST
    assert np.all(values[covered] <= rs[covered] * RATIO)  # by at most one code
    assert compact.encode(F32(0)) == ZERO


def test_a_shift_is_the_least_whole_number_of_octaves_that_covers_the_peak():
    rng = np.random.default_rng(1)
    scales = (10.0 ** rng.uniform(-37, 5, 300)).astype(F32)
    peaks = (scales * 10.0 ** rng.uniform(1e-4, 30, 300)).astype(F32)
    peaks[:5] = np.nextafter(scales[:5], F32(np.inf))  # just above
    peaks[5:10] = scales[5:10] * 2  # exactly an octave
    ks = compact.shift(scales, peaks)
    for s, x, k in zip(scales, peaks, ks):
        assert np.ldexp(np.float64(s), int(k)) >= x and (k == 1 or np.ldexp(np.float64(s), int(k) - 1) < x)
    assert np.array_equal(compact.scaled(scales, ks), np.ldexp(scales.astype(np.float64), ks).astype(F32))
    assert compact.scaled(F32(2.0**127), np.array(1)) == np.inf


def test_rebasing_moves_no_value():
    rng = np.random.default_rng(2)
    codes = rng.integers(2 << 10, ONE + 1, 4 * compact.BLOCK).astype(np.uint16)  # 2 octaves up: still in range
    codes[::7] = ZERO
    codes[3] = 5  # below the range once the block moves up 2 octaves: rounds up to the smallest code
    scales = np.array([1.0, 0.0, 2.0, 1e-39], F32)
    peaks = np.array([3.0, 3.0, 1.0, 1.0], F32)  # up; up from zero; not up; up from a subnormal scale
    before = compact.decode(codes, np.repeat(scales, compact.BLOCK))
    new_codes, new_scales = compact.rebase(codes, scales, peaks)
    after = compact.decode(new_codes, np.repeat(new_scales, compact.BLOCK))
    assert new_scales.tolist() == [4.0, 3.0, 2.0, 1.0]
    moved = np.arange(compact.BLOCK) != 3
    assert np.array_equal(after[: compact.BLOCK][moved], before[: compact.BLOCK][moved])  # exactly
    assert new_codes[3] == 1
    assert np.array_equal(new_codes[512:768], codes[512:768])
    assert np.all(new_codes[256:512] == ZERO) and np.all(new_codes[768:] == ZERO)  # every u was 0 (or below 2^-126)


@st.composite
def states(draw, definition=compact):
    """A state of ``definition`` (compact, or compact8) reached by a few steps of random gradients (spikes and
    zeros included), a param, the next gradient and a config."""
    size = draw(st.integers(1, 600))
    seed = draw(st.integers(0, 2**32 - 1))
    placement = draw(st.sampled_from(["max", "denominator", "none"]))
    decay = draw(st.sampled_from([{}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decoupled_weight_decay": True}]))
    config = AdamaxConfig(
        lr=draw(st.sampled_from([1e-3, 0.1])),
        betas=(draw(st.sampled_from([0.0, 0.9, 0.6])), draw(st.sampled_from([0.0, 0.5, 0.999, 0.99999]))),
        eps=draw(st.sampled_from([1e-8, 1e-3, 0.0])) if placement != "max" else 1e-8,
        eps_placement=placement,
        maximize=draw(st.booleans()),
        **decay,
    )
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(size).astype(F32)
    state = definition.init(p)

    def gradient():
        g = rng.standard_normal(size) * 10.0 ** rng.uniform(-6, 3)
        g[rng.random(size) < 0.2] = 0.0
        return g.astype(F32)

    for _ in range(draw(st.integers(0, 6))):
        p, state = definition.update(p, gradient(), state, config)
    return p, gradient(), state, config


@settings(max_examples=120, deadline=None)
@given(states())
def test_a_compact_step_is_never_larger_than_the_float32_step_from_the_same_state(case):
    """Elementwise: the compact denominator is at least float32 state's, from the same (decoded) state, up to
    float32 rounding, and at most one code (0.1%) above it; so the step is no larger, and at most 0.1% smaller."""
    p, g, state, config = case
    step, m, u = compact.to_full(state)
    full_p, full = reference.update(p, g, reference.AdamaxState(step, m, u), config)
    new_p, new = compact.update(p, g, state, config)
    u_full, u_compact = full.exp_inf.astype(np.float64), compact.to_full(new)[2].astype(np.float64)
    slack = 4 * ULP
    assert np.all(u_compact >= u_full * (1 - slack)), np.min(u_compact / np.where(u_full > 0, u_full, 1))
    assert np.all(u_compact <= u_full * RATIO * (1 + slack))
    assert np.array_equal(u_compact == 0, u_full == 0)
    # the params: the compact step's size is the float32 step's, shrunk by the denominator's ratio (and the
    # param rounded); compare the Adamax steps (after any decoupled decay), to one ulp of the param
    base = p * F32(1 - config.lr * config.weight_decay) if config.decoupled_weight_decay else p
    d_full = np.abs(full_p.astype(np.float64) - base)
    d_compact = np.abs(new_p.astype(np.float64) - base)
    scale = np.maximum(np.maximum(np.abs(base), np.abs(new_p)), d_full).astype(F32)
    ulp = 2 * np.spacing(scale).astype(np.float64)  # the step's rounding and the sum's
    # u may sit the products' float32 rounding below float32 state's (the slack above), and the step as far above
    bad = np.flatnonzero(d_compact > d_full * (1 + slack) + ulp)
    assert not len(bad), (bad, d_compact[bad], d_full[bad], u_compact[bad], u_full[bad], p[bad], g[bad])
    assert np.all(d_compact >= d_full / RATIO * (1 - slack) - ulp)
    assert new.step == state.step + 1


def test_one_spike_does_not_freeze_compact_state_as_it_freezes_bfloat16_state():
    shown = freeze_demo(steps=3000, spike=100.0, grad=0.01)
    assert all(len(values) == 3000 for values in shown.values()) and shown["step"][[0, -1]].tolist() == [1, 3000]
    expected = 100.0 * 0.999 ** (shown["step"] - 1)  # u after the spike: pure decay, the small gradients below it
    assert np.allclose(shown["float32"][:2000], expected[:2000], rtol=1e-4)
    assert np.all(np.abs(shown["compact"] / shown["float32"] - 1) <= 1e-3)  # within the encoding's 0.1%
    assert shown["compact"][-1] < 5.0  # decayed twentyfold
    assert np.all(shown["bfloat16"] == 100.0)  # frozen: 100 * 0.999 rounds back to 100 in bfloat16


def test_the_demos_bfloat16_state_is_torchs_for_a_bfloat16_param():
    """The demo's naive bfloat16 u is what torch's own Adamax keeps for a bfloat16 param (gradients exact in
    bfloat16, and small enough that eps = 1e-8 moves u)."""
    torch = pytest.importorskip("torch")
    shown = freeze_demo(steps=30, spike=2.0**-20, grad=2.0**-26)
    p = torch.zeros(1, dtype=torch.bfloat16, requires_grad=True)
    opt = torch.optim.Adamax([p], lr=1e-3, foreach=False)
    for t in range(30):
        p.grad = torch.full((1,), 2.0**-20 if t == 0 else 2.0**-26, dtype=torch.bfloat16)
        opt.step()
        assert shown["bfloat16"][t] == float(opt.state[p]["exp_inf"][0]), t


def test_rounding_to_nearest_bfloat16_breaks_ties_to_even_as_ml_dtypes_does():
    """Every float32 halfway between two bfloat16 values, next to an even and an odd one, both signs, and the
    largest finite float32 (which rounds to infinity); ml_dtypes' bfloat16 cast is the oracle."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    high = np.array([0x3F80, 0x3F81, 0x4049, 0x404A, 0x0001, 0x7F7E, 0x7F7F, 0x8001, 0xBF80, 0xBF81], np.uint32)
    bits = np.concatenate([(high << 16) | 0x8000, (high << 16) | 0x7FFF, (high << 16) | 0x8001, high << 16])
    x = bits.view(np.float32)
    assert np.array_equal(compact.f32_to_bf16_nearest(x), x.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_stochastic_rounding_moves_m_where_rounding_to_nearest_sticks():
    """m = 1, gradients 1.001 forever: (1 - b1)(g - m) = 1e-4 is below half a bfloat16 ulp of 1 (2^-8)."""
    nearest = compact.bf16_to_f32(compact.f32_to_bf16_nearest(F32(1.0) + F32(0.1) * F32(0.001)))
    assert nearest == 1.0  # stuck at 1 whatever the gradient
    config = AdamaxConfig(lr=1e-3)
    p = np.zeros(4096, F32)
    state = compact.init(p)._replace(exp_avg=np.full(4096, 0x3F80, np.uint16))  # m = 1.0
    for _ in range(200):
        p, state = compact.update(p, np.full(4096, 1.001, F32), state, config)
    m = compact.bf16_to_f32(state.exp_avg)
    assert abs(float(m.mean()) - 1.001) < 2e-4  # unbiased on average, as float32 state (1.001) is


def test_stochastic_rounding_is_unbiased_and_repeatable():
    x = np.full(100_000, 1.0 + 2.0**-10, F32)  # a quarter of the way from one bfloat16 to the next
    rounded = compact.bf16_to_f32(compact.f32_to_bf16_stochastic(x, step=3))
    assert set(np.unique(rounded)) == {F32(1.0), F32(1.0 + 2.0**-7)}
    assert abs(float(rounded.mean()) - float(x[0])) < 2e-5
    assert np.array_equal(rounded, compact.bf16_to_f32(compact.f32_to_bf16_stochastic(x, step=3)))
    assert not np.array_equal(rounded, compact.bf16_to_f32(compact.f32_to_bf16_stochastic(x, step=4)))
    negative = compact.bf16_to_f32(compact.f32_to_bf16_stochastic(-x, step=3))
    assert np.array_equal(negative, -rounded)  # magnitudes round alike
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], F32)
    back = compact.bf16_to_f32(compact.f32_to_bf16_stochastic(specials, step=1))
    assert np.isnan(back[0]) and list(back[1:]) == [np.inf, -np.inf, 0.0, 0.0]


def test_a_nan_gradient_spoils_its_block_not_the_next():
    config = AdamaxConfig(lr=1e-2)
    p = np.ones(2 * compact.BLOCK, F32)
    g = np.ones_like(p)
    g[3] = np.nan
    new_p, _ = compact.update(p, g, compact.init(p), config)
    assert np.isnan(new_p[: compact.BLOCK]).all()
    assert np.isfinite(new_p[compact.BLOCK :]).all()


def test_after_a_nan_gradient_the_kernel_and_the_definition_keep_the_same_state():
    """A NaN gradient makes its block's scale NaN for one step, then the block is re-based on the next finite
    gradients: both implementations must leave the same codes behind, not only the same (NaN) params."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    start = rng.standard_normal(3 * compact.BLOCK).astype(F32)
    sides = [([start.copy()], fused) for fused in (True, False)]
    sides = [(params, Adamax(params, lr=1e-2, state_format="compact", fused=fused)) for params, fused in sides]
    for t in range(6):
        g = rng.standard_normal(start.shape).astype(F32)
        g[[3, 300]] = [np.nan, -np.nan] if t == 2 else g[[3, 300]]  # NaNs of both signs: m's NaN is one NaN
        for _, opt in sides:
            opt.step([g.copy()])
    (kernel_params, kernel), (params, definition) = sides
    assert np.array_equal(kernel_params[0], params[0], equal_nan=True)
    (a,), (b,) = kernel.state.values(), definition.state.values()
    assert np.isfinite(b.exp_inf_scale).all() and all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:]))


@pytest.mark.parametrize(
    ("scale", "peak", "expected"),
    [(2.0**-139, 2.0**-140, 2.0**-140), (3.0, 1.75 * 2.0**127, np.inf)],
    ids=["a subnormal scale a gradient only equals", "a re-base past the largest float32"],
)
def test_edge_scales_in_the_kernel_as_in_the_definition(scale, peak, expected):
    """A block's scale (decayed by b2 = 0.5) against a gradient's peak: a subnormal scale the peak only equals is
    not re-based (which would clear the block's codes); a re-base whose scale * 2**k passes the largest float32
    makes the scale infinite (not a NaN from the overflowing bits). Kernel and definition keep the same state."""
    pytest.importorskip("numba")
    config = dict(lr=1e-2, betas=(0.9, 0.5), eps_placement="none", state_format="compact")
    sides = [([np.zeros(3, F32)], fused) for fused in (True, False)]
    sides = [(params, Adamax(params, fused=fused, **config)) for params, fused in sides]
    codes = np.array([ONE, 3000, 0], np.uint16)
    for _, opt in sides:
        opt.step([np.zeros(3, F32)])
        (key,) = opt.state
        opt.state[key] = compact.CompactState(1, np.zeros(3, np.uint16), codes.copy(), np.array([scale], F32))
        with np.errstate(invalid="ignore", over="ignore"):
            opt.step([np.array([peak, 0.0, 0.0], F32)])
    (a,), (b,) = (opt.state.values() for _, opt in sides)
    assert b.exp_inf_scale[0] == F32(expected)
    (kernel_p,), (definition_p,) = (params for params, _ in sides)
    assert np.array_equal(kernel_p, definition_p, equal_nan=True)
    if expected < 1:
        assert kernel_p[2] == 0  # u = 0 (code 0) and no eps: the guarded step leaves it, no 0/0
        assert list(b.exp_inf_code) == [ONE, 3000, 0]
    assert all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:]))


@pytest.mark.parametrize("eps", [1e-8, 0.0, 1e-50], ids=["eps", "zero", "zero-in-float32"])
def test_zero_gradients_step_as_the_float32_reference_steps_them(eps):
    """With eps = 0 a zero gradient's element does not move; an eps that is 0 only once rounded to float32
    (1e-50) is not eps = 0, and divides 0 by 0 as the float32 reference (and torch) do."""
    config = AdamaxConfig(lr=1e-2, eps=eps)
    p, g = np.ones(4, F32), np.array([0, 1, -2, 0], F32)
    with np.errstate(invalid="ignore"):
        new, _ = compact.update(p, g, compact.init(p), config)
        expected, _ = reference.update(p, g, reference.init(p), config)
    assert np.array_equal(new, expected, equal_nan=True)


def test_conversions_to_float32_state_are_exact_and_back_round_m_to_nearest_and_u_up():
    rng = np.random.default_rng(5)
    m = rng.standard_normal((7, 100)).astype(F32)
    u = np.abs(rng.standard_normal((7, 100)) * 10.0 ** rng.uniform(-8, 3, (7, 100))).astype(F32)
    u[0, :5] = 0
    state = compact.from_full(12, m, u)
    step, m2, u2 = compact.to_full(state)
    assert step == 12 and m2.shape == m.shape and u2.shape == u.shape
    assert np.all(np.abs(m2 - m) <= np.abs(m) * 2.0**-8)  # half a bfloat16 ulp
    assert np.all(u2 >= u) and np.all(u2 <= u * RATIO * (1 + 4 * ULP))
    assert np.all(u2[0, :5] == 0)
    again = compact.from_full(*compact.to_full(state))  # exact values convert to themselves, give or take a code
    assert np.array_equal(again.exp_avg, state.exp_avg)
    assert np.all(np.abs(again.exp_inf_code.astype(int) - state.exp_inf_code) <= 1)


# ----- the NumPy optimizer -----


def regression(state_format: str, steps: int = 1500, lr: float = 1e-2) -> tuple[float, Adamax]:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((512, 300)).astype(F32)
    y = (features @ rng.standard_normal(300) + 0.1 * rng.standard_normal(512)).astype(F32)
    params = {"w": np.zeros(300, F32)}
    opt = Adamax(params, lr=lr, state_format=state_format)
    for _ in range(steps):
        opt.step({"w": (2 * features.T @ (features @ params["w"] - y) / len(y)).astype(F32)})
    return float(np.mean((features @ params["w"] - y) ** 2)), opt


def test_the_numpy_optimizer_with_compact_state_trains_as_float32_state_does():
    full, _ = regression("full")
    small, opt = regression("compact")
    assert small == pytest.approx(full, rel=0.01)
    state = opt.state["w"]
    assert isinstance(state, compact.CompactState) and state.exp_avg.dtype == np.uint16
    assert state.exp_avg.nbytes + state.exp_inf_code.nbytes + state.exp_inf_scale.nbytes == 300 * 4 + 2 * 4


def test_compact_checkpoints_round_trip_exactly_and_convert_both_ways():
    _, opt = regression("compact", steps=50)
    saved = opt.state_dict()
    again = Adamax({"w": opt.params["w"].copy()}, state_format="compact")
    again.load_state_dict(saved)
    assert all(np.array_equal(a, b) for a, b in zip(again.state["w"], opt.state["w"]))
    full = Adamax({"w": opt.params["w"].copy()}, state_format="full")
    full.load_state_dict(saved)  # compact -> full: the values exactly
    step, m, u = compact.to_full(opt.state["w"])
    assert full.state["w"].step == step and np.array_equal(full.state["w"].exp_avg, m)
    assert np.array_equal(full.state["w"].exp_inf, u)
    back = Adamax({"w": opt.params["w"].copy()}, state_format="compact")
    back.load_state_dict(full.state_dict())  # full -> compact: rounds (see the conversion test)
    assert np.array_equal(back.state["w"].exp_avg, opt.state["w"].exp_avg)
    # and the two continue alike
    g = np.random.default_rng(3).standard_normal(300).astype(F32)
    for o in (opt, again):
        o.step({"w": g})
    assert np.array_equal(opt.params["w"], again.params["w"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.update(exp_inf_scale=np.zeros(3, F32)), "exp_inf_scale must be float32 of shape"),
        (lambda e: e.update(exp_avg=e["exp_avg"].astype(np.float32)), "exp_avg must be uint16"),
        (lambda e: e.update(step=-1), "step must be a whole number"),
        (lambda e: e.update(exp_inf_scale=-e["exp_inf_scale"] - 1), "must not be negative"),
        (lambda e: e.pop("exp_inf_code"), "exactly the keys"),
    ],
)
def test_a_bad_compact_checkpoint_is_refused_whole(change, message):
    _, opt = regression("compact", steps=5)
    saved = opt.state_dict()
    change(saved["state"]["w"])
    before = [np.copy(x) for x in opt.state["w"]]
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(saved)
    assert all(np.array_equal(a, b) for a, b in zip(opt.state["w"], before))


def test_what_compact_state_cannot_take_is_refused_at_construction():
    with pytest.raises(ValueError, match="Invalid state_format"):
        Adamax([np.zeros(3, F32)], state_format="bf16")
    with pytest.raises(TypeError, match="must be float32 or float16"):
        Adamax([np.zeros(3)], state_format="compact")
    with pytest.raises(ValueError, match="lazy tables keep full state"):
        Adamax({"t": np.zeros((3, 2), F32)}, state_format="compact", lazy=["t"])


def test_float16_params_step_in_float32_and_round_once():
    rng = np.random.default_rng(6)
    p16 = rng.standard_normal(500).astype(np.float16)
    g = rng.standard_normal(500).astype(np.float16)
    new16, state16 = compact.update(p16, g, compact.init(p16), AdamaxConfig(lr=1e-2))
    new32, state32 = compact.update(p16.astype(F32), g.astype(F32), compact.init(p16), AdamaxConfig(lr=1e-2))
    assert new16.dtype == np.float16
    assert np.array_equal(new16, new32.astype(np.float16))
    assert all(np.array_equal(a, b) for a, b in zip(state16, state32))


@pytest.mark.parametrize(("dtype", "beta1"), [(np.float32, 0.9), (np.float16, 0.9), (np.float32, 0.5)])
def test_the_kernel_steps_compact_state_as_the_definition_does(dtype, beta1):
    """Bit for bit; beta1 = 0.5 puts the moment's weight 1 - beta1 on the boundary of the two lerp formulas."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(8)
    shapes = [(300, 70), (5,), (1000,), (70_001,)]  # blocks, part blocks, and two chunks of 256 blocks
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    sides = {}
    for fused in (True, False):
        params = [p.copy() for p in start]
        options = {"lr": 1e-2, "betas": (beta1, 0.999), "weight_decay": 0.01, "state_format": "compact"}
        sides[fused] = (params, Adamax(params, fused=fused, **options))
    for t in range(40):
        grads = [(rng.standard_normal(s) * (50.0 if t == 3 else 1.0)).astype(dtype) for s in shapes]
        for _, opt in sides.values():
            opt.step([g.copy() for g in grads])
    (kernel_params, kernel), (numpy_params, reference_opt) = sides[True], sides[False]
    for a, b in zip(kernel_params, numpy_params):
        assert np.array_equal(a.view(np.uint16 if dtype == np.float16 else np.uint32),
                              b.view(np.uint16 if dtype == np.float16 else np.uint32))  # fmt: skip
    for a, b in zip(kernel.state.values(), reference_opt.state.values()):
        assert a.step == b.step == 40
        assert all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:]))


def test_fused_true_refuses_what_the_compact_kernel_cannot_take():
    pytest.importorskip("numba")
    param = np.zeros((4, 6), F32)[:, ::2]  # not contiguous
    opt = Adamax([param], state_format="compact", fused=True)
    with pytest.raises(ValueError, match="fused=True cannot update"):
        opt.step([np.ones((4, 3), F32)])


def test_check_state_refuses_an_entry_with_other_keys():
    state = compact.init(np.zeros(3, F32))._asdict()
    compact.check_state(state, (3,), "entry")
    for keys in (set(state) - {"exp_inf_scale"}, {*state, "extra"}):
        with pytest.raises(ValueError, match=r"entry must have exactly the keys"):
            compact.check_state({k: state.get(k, 0) for k in keys}, (3,), "entry")


@pytest.mark.parametrize(
    ("key", "value"),
    [("exp_inf_code", np.zeros(3, np.uint8)), ("exp_avg", np.zeros(3, np.int16)), ("exp_inf_scale", np.zeros(1))],
    ids=["codes of a narrower type", "m of a signed type", "scales in float64"],
)
def test_check_state_refuses_arrays_of_any_other_dtype(key, value):
    """Narrower, signed and wider dtypes alike: a compact entry's arrays are exactly uint16, uint16 and float32."""
    state = compact.init(np.zeros(3, F32))._asdict()
    with pytest.raises(ValueError, match=rf"entry: {key} must be"):
        compact.check_state({**state, key: value}, (3,), "entry")


@pytest.mark.parametrize("size", [1, 255, 256, 257, 512, 513])
def test_an_array_has_one_scale_per_256_elements_or_part(size):
    """Blocks of 256 elements share a scale: a whole number of blocks has no extra one (the 4 bytes a param)."""
    assert compact.init(np.zeros(size, F32)).exp_inf_scale.shape == (-(-size // 256),) == (compact.blocks(size),)
    assert compact.blocks(size) == int(np.ceil(size / 256))


def test_scaling_by_a_power_of_two_is_exact_up_to_the_largest_float32_and_infinite_past_it():
    """``scaled`` against NumPy's ldexp in float32: exact for every normal result, the largest float32 included
    (a significand of all ones moved to the top exponent), and infinity past it."""
    scales = np.array([1.0, 1.5, 2.0**-126, np.uint32(0x3FFFFFFF).view(F32), np.uint32(0x00FFFFFF).view(F32)], F32)
    for k in (0, 1, 100, 127, 128, 200):
        with np.errstate(over="ignore"):
            want = np.ldexp(scales, k).astype(F32)
        assert np.array_equal(compact.scaled(scales, np.full(len(scales), k)), want), k
    assert compact.scaled(np.uint32(0x3FFFFFFF).view(F32), 127) == np.finfo(F32).max


@pytest.mark.parametrize("placement", ["max", "denominator", "none"])
def test_a_placement_read_from_a_config_file_steps_as_the_literal(placement):
    """eps_placement parsed from JSON: equal to the literal, not the same object."""
    import json

    literal, parsed = placement, json.loads(f'"{placement}"')
    assert parsed == literal and parsed is not literal
    g = np.array([0.0, 1e-3, -2.0], F32)
    outs = []
    for value in (literal, parsed):
        config = AdamaxConfig(eps=0.1, eps_placement=value)
        outs.append(compact.update(np.zeros(3, F32), g, compact.init(np.zeros(3, F32)), config))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1].exp_inf_code, outs[1][1].exp_inf_code)


def test_an_x_that_underflows_against_its_scale_still_takes_the_smallest_code():
    """In a block whose scale is 1e30, x = 1e-44 (a subnormal) gives x / scale = 0 in float32; its x is above its u
    (0), so its code is 1 (u = the smallest value, rounded up), in the definition as in the kernel."""
    p = np.zeros(4, F32)
    g = np.array([1e30, 1e-44, 0.0, 1e-40], F32)
    config = AdamaxConfig(lr=1e-2, eps=0.0)
    _, state = compact.update(p, g, compact.init(p), config)
    assert state.exp_inf_code.tolist()[1:] == [1, 0, 1]
    kernels = pytest.importorskip("adamax.kernels.compact")
    mine, theirs = p.copy(), compact.init(p)
    addresses = tuple(np.array([a.ctypes.data], dtype=np.int64) for a in (mine, g, *theirs[1:]))
    kernels.step(kernels.F32, addresses, (4,), np.array([1]), config)
    assert np.array_equal(theirs.exp_inf_code, state.exp_inf_code)


@pytest.mark.parametrize(
    "step",
    [np.array([1, 2]), np.array(2 + 0j), 1.5, np.float64(2.5), float(2**53), 2**53, -1, True, "3", None],
    ids=["two counts", "complex", "a fraction", "a NumPy fraction", "the limit (float)", "the limit", "negative",
         "a bool", "a string", "none"],
)  # fmt: skip
def test_a_step_count_that_is_not_a_whole_number_below_the_limit_is_refused(step):
    with pytest.raises(ValueError, match="step must be a whole number >= 0"):
        compact.check_step_count(step, "entry")
    for fine in (0, 7, np.int64(7), np.float32(7), 2**53 - 1, np.array(3)):
        compact.check_step_count(fine, "entry")


def test_check_state_refuses_a_scale_just_below_zero():
    state = compact.init(np.zeros(300, F32))._asdict()
    with pytest.raises(ValueError, match="entry: exp_inf_scale must not be negative"):
        compact.check_state({**state, "exp_inf_scale": np.array([0.5, -0.5], F32)}, (300,), "entry")


def test_check_state_refuses_arrays_of_another_shape():
    state = compact.init(np.zeros(300, F32))._asdict()
    for key, short in (("exp_inf_code", np.zeros(299, np.uint16)), ("exp_avg", np.zeros((300, 1), np.uint16))):
        with pytest.raises(ValueError, match=rf"entry: {key} must be uint16 of shape \(300,\)"):
            compact.check_state({**state, key: short}, (300,), "entry")
