"""compact8 state (adamax.compact8): its codes, the guarantees its docstring states (u decays exactly, rounds up by at
most a code; m rounds stochastically, right on average), the numba kernel against the definition bit for bit,
conversions, and checkpoints of the NumPy and torch optimizers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings

from adamax import compact, compact8, reference
from adamax.cli.freeze import freeze_demo
from adamax.spec import AdamaxConfig
from tests.test_compact import states

F32 = np.float32
ULP = 2.0**-23
U8 = compact8.U8


def test_the_u_codes_increase_from_zero_to_one_fine_near_the_scale_and_coarse_below():
    v = U8.value(np.arange(256)).astype(np.float64)
    assert v[0] == 0 and v[255] == 1 and v[compact8.BOUNDARY] == 2.0**-4
    assert np.all(np.diff(v) > 0)
    ratios = v[2:] / v[1:-1]
    top = v[2:] > 2.0**-4
    assert ratios[top].max() == 1 + 2.0**-5 and ratios[~top].max() == 1 + 2.0**-3 == compact8.RATIO
    assert v[1] == compact8.SMALLEST == 1.25 * 2.0**-20


def test_encode_is_the_least_u_code_at_or_above_its_input():
    rng = np.random.default_rng(0)
    r = np.concatenate([rng.random(20000) ** 12, U8.value(np.arange(256)), [2.0**-4, 2.0**-4 * (1 + 2.0**-23)]])
    r = r.astype(F32)
    q = U8.encode(r).astype(np.int64)
    assert np.all(U8.value(q) >= r)
    lower = np.maximum(q - 1, 0)
    assert np.all((U8.value(lower) < r) | (q == 1) | (r == 0))
    assert np.array_equal(U8.encode(U8.value(np.arange(256))), np.arange(256))


@pytest.mark.parametrize("k", [1, 3, 4, 5, 17, 40, 150, 250])
def test_moving_codes_down_octaves_never_lowers_a_value_and_raises_it_by_at_most_a_code(k):
    q = np.arange(1, 256)
    moved = U8.down(q.astype(np.int64), np.full(q.size, k))
    exact = U8.value(q).astype(np.float64) * 2.0**-k
    got = U8.value(moved).astype(np.float64)
    assert np.all(moved >= 1)
    assert np.all(got >= exact)
    assert np.all((got <= exact * compact8.RATIO) | (moved == 1))


@settings(max_examples=120, deadline=None)
@given(states(compact8))
def test_a_compact8_step_is_never_larger_than_the_float32_step_from_the_same_state(case):
    """Elementwise, from the same (decoded) state: the step's m is float32 state's, bit for bit; u is at least
    float32 state's (up to float32 rounding) and at most one code above it (``1 + 2**-5`` near the block's scale,
    ``1 + 2**-3`` below), or the smallest code where float32's is below the range; so the step is never larger."""
    p, g, state, config = case
    step, m, u = compact8.to_full(state)
    full_p, full = reference.update(p, g, reference.AdamaxState(step, m, u), config)
    new_p, new = compact8.update(p, g, state, config)
    u_full = full.exp_inf.astype(np.float64)
    u_new = compact8.to_full(new)[2].astype(np.float64)
    scale = compact._per_element(new.exp_inf_scale, p.size).astype(np.float64)
    slack = 4 * ULP
    assert np.all(u_new >= u_full * (1 - slack))
    fine = u_new > scale * 2.0**-4 * (1 + 2.0**-5)
    floor = new.exp_inf_code == 1
    assert np.all((u_new <= u_full * (1 + 2.0**-5) * (1 + slack)) | ~fine | floor)
    assert np.all((u_new <= u_full * compact8.RATIO * (1 + slack)) | floor)
    assert np.all(u_full[floor] <= u_new[floor] * (1 + slack))
    assert np.array_equal(u_new == 0, u_full == 0)
    base = p * F32(1 - config.lr * config.weight_decay) if config.decoupled_weight_decay else p
    d_full = np.abs(full_p.astype(np.float64) - base)
    d_new = np.abs(new_p.astype(np.float64) - base)
    size = np.maximum(np.maximum(np.abs(base), np.abs(new_p)), d_full).astype(F32)
    ulp = 2 * np.spacing(size).astype(np.float64)
    bad = np.flatnonzero(d_new > d_full * (1 + slack) + ulp)  # u may sit a rounding below float32's (above)
    assert not len(bad), (bad, d_new[bad], d_full[bad], u_new[bad], u_full[bad])
    assert new.step == state.step + 1


def test_u_decays_exactly_through_the_scale_and_the_codes_stay():
    p = np.zeros(300, F32)
    config = AdamaxConfig(lr=1e-3)
    rng = np.random.default_rng(1)
    _, state = compact8.update(p, (rng.standard_normal(300) * 5).astype(F32), compact8.init(p), config)
    for _ in range(50):
        _, after = compact8.update(p, np.zeros(300, F32), state, config)  # x = eps: below every decayed u
        assert np.array_equal(after.exp_inf_code, state.exp_inf_code)
        assert np.array_equal(after.exp_inf_scale, (state.exp_inf_scale * F32(0.999)).astype(F32))
        state = after


def test_one_spike_does_not_freeze_compact8_state():
    shown = freeze_demo(steps=3000, spike=100.0, grad=0.01)
    assert np.all(shown["compact8"] >= shown["float32"] * (1 - 4 * ULP))
    assert np.all(shown["compact8"] <= shown["float32"] * compact8.RATIO)
    assert shown["compact8"][-1] < 5.0  # decayed twentyfold, as float32 state does
    assert shown["bfloat16"][-1] == 100.0


def test_m_rounds_stochastically_right_on_average_and_repeatably():
    """One m, its block's largest 1: the codes over 4,000 step counts average to m (within 4 standard errors of
    the rounding), for values between codes, below the smallest code and negative; the same count repeats."""
    m = np.array([1.0, 0.3, -0.3, 0.0123, 0.0041, -0.0007, 1e-5, 0.0], F32)
    scales = compact8.m_scales(m)
    draws = []
    for t in range(1, 4001):
        bits = compact.hashed(np.arange(m.size), t) >> np.uint32(32 - compact8.RANDOM_BITS)
        draws.append(compact8.decode_m(compact8.encode_m(m, scales, bits), scales))
    draws = np.array(draws, np.float64)
    spread = np.maximum(draws.std(axis=0), 1e-12) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - m) <= 4 * spread + 1e-9), (draws.mean(axis=0), m)
    assert np.all(draws[:, 0] == 1.0) and np.all(draws[:, -1] == 0.0)
    assert len(np.unique(draws[:, 1])) == 2  # two neighbouring codes
    bits = compact.hashed(np.arange(m.size), 7) >> np.uint32(13)
    again = compact8.decode_m(compact8.encode_m(m, scales, bits), scales)
    assert np.array_equal(again, draws[6])


def test_m_moves_where_rounding_to_nearest_would_stick():
    """m of 1.0 in a block whose largest is 4.0, gradients of 1.05: each step adds 0.005, under half a code (the
    codes there are 0.0625 apart), so rounding to nearest would keep m at 1.0 forever.  Rounded stochastically,
    255 such elements take the codes on either side of 1.05, and on average over elements and steps sit where
    float32 m would (a single element's m at one step is one draw of a slow process: its average is the
    property)."""
    p = np.zeros(256, F32)
    config = AdamaxConfig(lr=1e-3)
    m = np.full(256, 1.0, F32)
    m[0] = 4.0
    state = compact8.from_full(0, m, np.full(256, 4.0, F32))
    g = np.full(256, 1.05, F32)
    g[0] = 4.0
    seen = []
    for t in range(300):
        _, state = compact8.update(p, g, state, config)
        if t >= 100:
            seen.append(compact8.to_full(state)[1][1:])
    seen = np.array(seen)
    assert set(np.unique(seen)) == {F32(1.0), F32(1.0625)}
    assert float(seen.mean()) == pytest.approx(1.05, abs=0.003)


def test_conversions_are_exact_to_float32_and_round_m_to_nearest_and_u_up():
    rng = np.random.default_rng(3)
    m = (rng.standard_normal(1000) * 10.0 ** rng.uniform(-3, 1, 1000)).astype(F32)
    u = (np.abs(rng.standard_normal(1000)) * 10.0 ** rng.uniform(-4, 1, 1000)).astype(F32)
    state = compact8.from_full(5, m, u)
    step, m2, u2 = compact8.to_full(state)
    assert step == 5
    scale = compact._per_element(state.exp_inf_scale, 1000)
    floor = state.exp_inf_code == 1
    assert np.all(u2 >= u) and np.all((u2 <= u * compact8.RATIO * (1 + 4 * ULP)) | floor)
    assert np.all(u[floor] <= (scale * compact8.SMALLEST)[floor] * (1 + 4 * ULP))
    m_scale = compact._per_element(state.exp_avg_scale, 1000)
    assert np.array_equal(np.sign(m2), np.sign(m) * (m2 != 0))
    half = np.abs(m) * 2.0**-5 * (1 + 4 * ULP) + m_scale * compact8.SMALLEST_M / 2
    assert np.all(np.abs(m2 - m) <= half)
    again = compact8.from_full(*compact8.to_full(state))
    assert np.array_equal(compact8.to_full(again)[1], m2) and np.all(compact8.to_full(again)[2] >= u2)
    with pytest.raises(ValueError, match="must not be negative"):
        compact8.from_full(0, m, -u)


def test_the_state_takes_at_most_2_04_bytes_per_param():
    p = np.zeros((300, 257), F32)
    state = compact8.init(p)
    nbytes = sum(a.nbytes for a in state[1:])
    assert nbytes / p.size <= 2.04
    assert nbytes == 2 * p.size + 8 * compact.blocks(p.size)


def test_a_nan_gradient_spoils_its_block_not_the_next():
    p = np.ones(600, F32)
    g = np.full(600, 0.5, F32)
    g[10] = np.nan
    new_p, state = compact8.update(p, g, compact8.init(p), AdamaxConfig(lr=1e-2))
    assert np.isnan(new_p[:256]).all() and np.isfinite(new_p[256:]).all()
    assert np.all(state.exp_avg_code[:256] == compact8.ONE_M)


@pytest.mark.parametrize(("dtype", "beta1"), [(np.float32, 0.9), (np.float16, 0.9), (np.float32, 0.5)])
def test_the_kernel_steps_compact8_state_as_the_definition_does(dtype, beta1):
    """Three arrays in one call (unequal counts: one joins late), spikes, zeros, a NaN block, and huge and tiny
    gradients that re-base blocks by many octaves."""
    kernels = pytest.importorskip("adamax.kernels.compact8")
    rng = np.random.default_rng(4)
    sizes = [1, 700, 70_000]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    mine = [p.copy() for p in params]
    states = [compact8.init(p) for p in params]
    theirs = [compact8.init(p) for p in params]
    config = AdamaxConfig(lr=1e-2, betas=(beta1, 0.99))
    wide = 30 if dtype is np.float32 else 4
    for t in range(12):
        grads = []
        for n in sizes:
            g = rng.standard_normal(n) * 10.0 ** rng.uniform(-wide, wide) if t in (3, 8) else rng.standard_normal(n)
            g[rng.random(n) < 0.1] = 0
            if t == 6 and n > 256:
                g[300] = np.nan
            grads.append(g.astype(dtype))
        live = [0, 1, 2] if t >= 2 else [1, 2]
        with np.errstate(invalid="ignore", over="ignore"):  # the NaN block
            for i in live:
                params[i], states[i] = compact8.update(params[i], grads[i], states[i], config)
        columns = [[mine[i] for i in live], [grads[i] for i in live]]
        columns += [[getattr(theirs[i], key) for i in live] for key in compact8.KEYS[1:]]
        addresses = tuple(np.array([a.ctypes.data for a in c], dtype=np.int64) for c in columns)
        counts = np.array([theirs[i].step + 1 for i in live])
        kernels.step(kernels.KINDS[np.dtype(dtype)], addresses, tuple(sizes[i] for i in live), counts, config)
        for i in live:
            theirs[i] = theirs[i]._replace(step=theirs[i].step + 1)
            assert np.array_equal(mine[i], params[i], equal_nan=True), (t, i)
            for key in compact8.KEYS[1:]:
                assert np.array_equal(getattr(theirs[i], key), getattr(states[i], key), equal_nan=True), (t, i, key)


def test_the_numpy_optimizer_with_compact8_state_checkpoints_and_converts_every_way():
    from adamax.numpy import Adamax

    rng = np.random.default_rng(6)
    params = {"w": rng.standard_normal((40, 30)).astype(F32), "b": np.zeros(30, F32)}
    opt = Adamax(params, lr=1e-2, state_format="compact8")
    for _ in range(5):
        opt.step({k: rng.standard_normal(v.shape).astype(F32) for k, v in params.items()})
    saved = opt.state_dict()
    assert set(saved["state"]["w"]) == set(compact8.KEYS)
    twin_params = copy.deepcopy(params)
    twin = Adamax(twin_params, lr=1e-2, state_format="compact8")
    twin.load_state_dict(saved)
    grads = {k: rng.standard_normal(v.shape).astype(F32) for k, v in params.items()}
    opt.step(grads)
    twin.step(grads)
    assert all(np.array_equal(params[k], twin_params[k]) for k in params)
    for other in ("full", "compact"):
        there = Adamax(copy.deepcopy(params), lr=1e-2, state_format=other)
        there.load_state_dict(opt.state_dict())
        back = Adamax(copy.deepcopy(params), lr=1e-2, state_format="compact8")
        back.load_state_dict(there.state_dict())
        _, m, u = compact8.to_full(opt.state["w"])
        _, m_back, u_back = compact8.to_full(back.state["w"])
        assert np.all(u_back >= u) and np.allclose(m_back, m, rtol=0.07, atol=1e-3)
    bad = opt.state_dict()
    bad["state"]["b"]["exp_avg_scale"] = -bad["state"]["b"]["exp_avg_scale"] - 1
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="exp_avg_scale must not be negative"):
        opt.load_state_dict(bad)
    assert all(np.array_equal(before["state"]["w"][k], opt.state_dict()["state"]["w"][k]) for k in compact8.KEYS)


# ----- the torch optimizer -----


def _torch_model(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 300), torch.nn.Tanh(), torch.nn.Linear(300, 3))


def _trained(torch, state_format, steps=6, cls=None, **options):
    from adamax.torch import Adamax

    net = _torch_model(torch)
    opt = (cls or Adamax)(net.parameters(), lr=1e-2, state_format=state_format, **options)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(torch.randn(16, 12, generator=gen)), torch.zeros(16, 3)).backward()
        opt.step()
    return net, opt


def _continue(torch, pairs, steps=4):
    gen = torch.Generator().manual_seed(9)
    for _ in range(steps):
        x = torch.randn(16, 12, generator=gen)
        for net, opt in pairs:
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), torch.ones(16, 3)).backward()
            opt.step()


def test_a_torch_compact8_checkpoint_round_trips_exactly_through_torch_save(tmp_path):
    torch = pytest.importorskip("torch")
    from adamax.torch import AdamaxW

    net, opt = _trained(torch, "compact8", cls=AdamaxW)
    assert opt.last_step_paths == {"numba compact8": 4} or opt.last_step_paths == {"compact8": 4}
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    twin_net = copy.deepcopy(net)
    twin = AdamaxW(twin_net.parameters(), lr=1e-2, state_format="compact8")
    twin.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for p, q in zip(net.parameters(), twin_net.parameters()):
        assert set(opt.state[p]) == set(compact8.KEYS)
        for key in compact8.KEYS:
            assert torch.equal(opt.state[p][key], twin.state[q][key]), key
    _continue(torch, [(net, opt), (twin_net, twin)])
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin_net.parameters()))


def test_torch_state_dicts_convert_between_every_format_and_load_into_torch():
    torch = pytest.importorskip("torch")
    from adamax.torch import Adamax, convert_state_dict

    net, opt = _trained(torch, "compact8")
    saved = opt.state_dict()
    full = convert_state_dict(saved, "full")
    assert saved["state"][0]["exp_avg_code"].dtype is torch.uint8  # the input is not modified
    theirs = torch.optim.Adamax(copy.deepcopy(net).parameters(), lr=1e-2)
    theirs.load_state_dict(full)
    for p, q in zip(net.parameters(), theirs.param_groups[0]["params"]):
        entry = opt.state[p]
        state = compact8.Compact8State(0, *(entry[k].numpy() for k in compact8.KEYS[1:]))
        _, m, u = compact8.to_full(state)
        assert np.array_equal(theirs.state[q]["exp_avg"].numpy(), m)
        assert np.array_equal(theirs.state[q]["exp_inf"].numpy(), u)
    for other in ("compact", "full"):
        there_net = copy.deepcopy(net)
        there = Adamax(there_net.parameters(), lr=1e-2, state_format=other)
        there.load_state_dict(saved)  # converted on load
        back = convert_state_dict(there.state_dict(), "compact8")
        again = Adamax(copy.deepcopy(net).parameters(), lr=1e-2, state_format="compact8")
        again.load_state_dict(back)
        for p, q in zip(net.parameters(), again.param_groups[0]["params"]):
            assert torch.equal(again.state[q]["exp_avg_code"], opt.state[p]["exp_avg_code"]), other
        _continue(torch, [(there_net, there)])
        assert all(torch.isfinite(p).all() for p in there_net.parameters())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.update(exp_avg_scale=e["exp_avg_scale"] * 0 - 1), "'exp_avg_scale' must not be negative"),
        (lambda e: e.update(exp_inf_code=e["exp_inf_code"].to(torch_dtype("uint16"))), "'exp_inf_code' must be"),
        (lambda e: e.update(exp_avg_code=e["exp_avg_code"][:1]), "'exp_avg_code' must be"),
        (lambda e: e.pop("exp_avg_scale"), "no Adamax state|expected the keys"),
    ],
    ids=["negative scale", "wide codes", "short codes", "a key missing"],
)
def test_a_bad_torch_compact8_checkpoint_is_refused_whole(change, message):
    torch = pytest.importorskip("torch")
    from adamax.torch import Adamax

    net, opt = _trained(torch, "compact8", steps=3)
    saved = copy.deepcopy(opt.state_dict())
    change(saved["state"][2])
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises((ValueError, TypeError), match=message):
        opt.load_state_dict(saved)
    after = opt.state_dict()
    for key, entry in before["state"].items():
        assert all(torch.equal(entry[k], after["state"][key][k]) for k in compact8.KEYS)
    fresh = Adamax(copy.deepcopy(net).parameters(), lr=1e-2, state_format="full")
    with pytest.raises((ValueError, TypeError), match=message):
        fresh.load_state_dict(saved)
    assert not fresh.state


def torch_dtype(name):
    import torch

    return getattr(torch, name)


def test_a_torch_compact8_step_skips_whole_on_a_nan_and_takes_a_cached_plan_after():
    torch = pytest.importorskip("torch")
    pytest.importorskip("numba")
    net, opt = _trained(torch, "compact8", steps=3, skip_nonfinite=True)
    group = opt.param_groups[0]
    assert opt._plans.lookup(group, opt.state, "compact8") is not None
    assert opt._plans.lookup(group, opt.state, "compact") is None
    torch.nn.functional.mse_loss(net(torch.randn(4, 12)), torch.zeros(4, 3)).backward()
    net[0].weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in net.parameters()]
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


def test_torch_compact8_state_is_at_most_2_04_bytes_per_param_on_large_tensors():
    torch = pytest.importorskip("torch")
    net, opt = _trained(torch, "compact8", steps=1)
    weight = net[0].weight
    entry = opt.state[weight]
    nbytes = sum(t.nbytes for k, t in entry.items() if k != "step")
    assert nbytes / weight.numel() <= 2.04


def test_bytes_per_param_is_the_state_measured():
    p = np.zeros(256 * 40, F32)
    assert sum(a.nbytes for a in compact8.init(p)[1:]) / p.size == compact8.BYTES_PER_PARAM == 2 + 8 / 256


def test_a_block_whose_m_and_u_are_all_zero_stores_zero_scales_and_codes():
    """Gradients 0 on a whole block (eps 0, no u): its m scale and u scale stay 0 and its codes 0, in the definition
    and in conversions; the next block, live, steps."""
    p = np.ones(512, F32)
    g = np.concatenate([np.zeros(256, F32), np.full(256, 0.5, F32)])
    config = AdamaxConfig(lr=1e-2, eps=0.0, eps_placement="none")
    _, state = compact8.update(p, g, compact8.init(p), config)
    assert state.exp_avg_scale[0] == 0 and state.exp_inf_scale[0] == 0
    assert not state.exp_avg_code[:256].any() and not state.exp_inf_code[:256].any()
    assert state.exp_avg_code[256:].all() and state.exp_inf_code[256:].all()
    m = np.concatenate([np.zeros(256, F32), np.linspace(-1, 1, 256, dtype=F32)])
    u = np.concatenate([np.zeros(256, F32), np.linspace(0, 2, 256, dtype=F32)])
    converted = compact8.from_full(0, m, u)
    assert converted.exp_inf_scale[0] == 0 and converted.exp_avg_scale[0] == 0
    assert not converted.exp_inf_code[:257].any() and not converted.exp_avg_code[:256].any()  # u = 0 -> code 0
    assert np.array_equal(compact8.to_full(converted)[2] == 0, u == 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("exp_avg_scale"), "exactly the keys"),
        (lambda e: e.update(extra=np.zeros(1)), "exactly the keys"),
        (lambda e: e.update(exp_inf_code=e["exp_inf_code"].astype(np.uint16)), "exp_inf_code must be uint8"),
        (lambda e: e.update(exp_avg_scale=e["exp_avg_scale"][:1]), r"exp_avg_scale must be float32 of shape \(2,\)"),
        (lambda e: e.update(step=-2), "whole number"),
        (lambda e: e.update(exp_inf_scale=e["exp_inf_scale"] - 1), "exp_inf_scale must not be negative"),
    ],
)
def test_check_state_refuses_what_does_not_fit(change, message):
    entry = compact8.init(np.zeros(300, F32))._asdict()
    compact8.check_state(entry, (300,), "entry")
    change(entry)
    with pytest.raises(ValueError, match=message):
        compact8.check_state(entry, (300,), "entry")
