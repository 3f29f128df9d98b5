"""adamax.torch.Adamax(state_format="compact"): against the NumPy definition (adamax.compact) step by step, its
checkpoints both ways (torch.optim.Adamax included), and what it refuses."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adamax import compact, compact8  # noqa: E402
from adamax.spec import AdamaxConfig  # noqa: E402
from adamax.torch import Adamax, AdamaxW, convert_state_dict  # noqa: E402
from adamax.torch._compact import as_compact_state  # noqa: E402

F32 = np.float32
DEFINITIONS = {"compact": compact, "compact8": compact8}


def model(dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3)).to(dtype)


def batches(steps: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    for t in range(steps):
        x = torch.randn(32, 12, generator=gen).to(dtype) * (30.0 if t == 5 else 1.0)  # a spike at step 5
        yield x, torch.randn(32, 3, generator=gen).to(dtype)


def round_to(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """float32 values rounded to ``dtype`` (to nearest) and back, as storing a param rounds it."""
    return torch.from_numpy(values).to(dtype).float().numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "options",
    [{}, {"weight_decay": 0.05}, {"weight_decay": 0.05, "decoupled_weight_decay": True, "maximize": True},
     {"eps_placement": "denominator", "eps": 1e-3}, {"eps_placement": "none", "betas": (0.5, 0.9)}],
    ids=["plain", "coupled-decay", "decoupled-maximize", "denominator", "none"],
)  # fmt: skip
@pytest.mark.parametrize(("fused", "path"), [(None, "numba "), (False, "")], ids=["kernel", "numpy"])
@pytest.mark.parametrize("state_format", ["compact", "compact8"])
def test_every_step_is_the_numpy_definitions_bit_for_bit(dtype, options, fused, path, state_format):
    """Every param after every step, against the definitions; two params sit out some steps (no gradient), so one
    kernel call steps tensors whose counts differ."""
    if fused is None:
        pytest.importorskip("numba")
    definition = DEFINITIONS[state_format]
    net = model(dtype)
    opt = Adamax(net.parameters(), lr=1e-2, state_format=state_format, fused=fused, **options)
    config = AdamaxConfig(lr=1e-2, **options)
    ref = {name: p.detach().float().numpy().copy() for name, p in net.named_parameters()}
    states = {name: definition.init(p) for name, p in ref.items()}
    sits_out = {0: lambda t: t % 4 == 1, 2: lambda t: t % 3 == 1}  # by the param's index
    for t, (x, y) in enumerate(batches(25, dtype)):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        for i, p in enumerate(net.parameters()):
            if i in sits_out and sits_out[i](t):
                p.grad = None
        grads = {name: p.grad.float().numpy() for name, p in net.named_parameters() if p.grad is not None}
        opt.step()
        for name, p in net.named_parameters():
            if name not in grads:
                continue
            new_p, states[name] = definition.update(ref[name], grads[name], states[name], config)
            ref[name] = round_to(new_p, dtype)
            assert np.array_equal(p.detach().float().numpy(), ref[name]), name
            got = as_compact_state(opt.state[p], state_format)
            for key, want in zip(definition.KEYS, states[name]):
                assert np.array_equal(np.asarray(getattr(got, key)), np.asarray(want)), (name, key)
    assert opt.last_step_paths == {path + state_format: 4}


def train(state_format: str, steps: int = 300, dtype=torch.float32, lr: float = 3e-3) -> float:
    net = model(dtype)
    opt = Adamax(net.parameters(), lr=lr, state_format=state_format)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(256, 12, generator=gen).to(dtype)
    y = torch.sin(x[:, :3] * 2).to(dtype)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
    return float(torch.nn.functional.mse_loss(net(x).float(), y.float()))


def test_compact_state_trains_within_one_percent_of_float32_state():
    full, small = train("full"), train("compact")
    assert small == pytest.approx(full, rel=0.01)


def test_compact8_state_trains_between_float32_state_at_the_rate_and_at_the_rate_less_one_code():
    """Full-batch training of a small net, whose loss at 300 steps moves 5% with a 3% change of the rate: compact8's
    u rounds up by at most a code (3.1% near a block's largest u) and its m is noisy, so it lands between float32
    state at the rate and at the rate divided by ``1 + 2**-5``."""
    full, small = train("full"), train("compact8")
    slower = train("full", lr=3e-3 / (1 + 2**-5))
    assert full < small < slower


def test_the_state_takes_about_four_bytes_per_param():
    net = model()
    opt = Adamax(net.parameters(), state_format="compact")
    torch.nn.functional.mse_loss(net(torch.randn(4, 12)), torch.zeros(4, 3)).backward()
    opt.step()
    params = sum(p.numel() for p in net.parameters())
    state_bytes = sum(t.nbytes for s in opt.state.values() for k, t in s.items() if k != "step")
    assert 4 * params <= state_bytes <= 4 * params + 4 * sum(compact.blocks(p.numel()) for p in net.parameters())
    assert state_bytes / params < 4.1


def trained(state_format: str, steps: int = 20, cls=Adamax, **options):
    net = model()
    opt = cls(net.parameters(), lr=1e-2, state_format=state_format, **options)
    for x, y in batches(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return net, opt


def continue_both(pairs, steps: int = 10):
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x, y = torch.randn(32, 12, generator=gen), torch.randn(32, 3, generator=gen)
        for net, opt in pairs:
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()


def test_a_compact_checkpoint_round_trips_exactly_through_torch_save(tmp_path):
    net, opt = trained("compact", cls=AdamaxW)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    twin_net = copy.deepcopy(net)
    twin = AdamaxW(twin_net.parameters(), lr=1e-2, state_format="compact")
    twin.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for p, q in zip(net.parameters(), twin_net.parameters()):
        for key in compact.KEYS:
            assert torch.equal(opt.state[p][key], twin.state[q][key]), key
    continue_both([(net, opt), (twin_net, twin)])
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin_net.parameters()))


def test_converted_to_full_it_loads_into_torch_and_a_torch_checkpoint_resumes_compact():
    net, opt = trained("compact")
    saved = opt.state_dict()
    full = convert_state_dict(saved, "full")
    assert saved["state"][0]["exp_avg"].dtype is torch.bfloat16  # the input is not modified
    theirs = torch.optim.Adamax(copy.deepcopy(net).parameters(), lr=1e-2)
    theirs.load_state_dict(full)
    for p, q in zip(net.parameters(), theirs.param_groups[0]["params"]):
        _, m, u = compact.to_full(
            compact.CompactState(0, *(np.asarray(_numpy(opt.state[p][k])) for k in compact.KEYS[1:]))
        )
        assert np.array_equal(theirs.state[q]["exp_avg"].numpy(), m)
        assert np.array_equal(theirs.state[q]["exp_inf"].numpy(), u)
    # torch's checkpoint resumes in a compact optimizer, and the two continue within the encoding's bound
    resumed_net = copy.deepcopy(net)
    resumed = Adamax(resumed_net.parameters(), lr=1e-2, state_format="compact")
    resumed.load_state_dict(theirs.state_dict())
    torch_net = theirs.param_groups[0]["params"]
    assert torch.equal(resumed.state[resumed_net[0].weight]["exp_avg"], opt.state[net[0].weight]["exp_avg"])
    continue_both([(resumed_net, resumed)], steps=5)
    assert all(torch.isfinite(p).all() for p in resumed_net.parameters())
    assert len(torch_net) == 4


def _numpy(t):
    return t.view(torch.uint16).numpy() if t.dtype is torch.bfloat16 else t.numpy()


def test_a_full_optimizer_loads_a_compact_checkpoint_as_its_exact_values():
    net, opt = trained("compact")
    full_net = copy.deepcopy(net)
    full = Adamax(full_net.parameters(), lr=1e-2)
    full.load_state_dict(opt.state_dict())
    for p, q in zip(net.parameters(), full_net.parameters()):
        assert full.state[q]["exp_avg"].dtype is torch.float32
        assert torch.equal(full.state[q]["exp_avg"], opt.state[p]["exp_avg"].float())


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda e: e.update(exp_inf_scale=torch.zeros(3)), ValueError, "'exp_inf_scale' must be torch.float32 of"),
        (lambda e: e.update(exp_inf_code=e["exp_inf_code"].float()), ValueError, "'exp_inf_code' must be"),
        (lambda e: e.update(step=torch.tensor(2.5)), ValueError, "whole number"),
        (lambda e: e.update(step=-1), ValueError, "whole number >= 0, got -1"),
        (lambda e: e.update(exp_inf_scale=-e["exp_inf_scale"] - 1), ValueError, "must not be negative"),
        (lambda e: e.update(exp_inf_scale=e["exp_inf_scale"] * 0 - 0.5), ValueError, "must not be negative"),
        (lambda e: e.update(exp_avg=[1, 2]), TypeError, "must be a tensor"),
        (lambda e: e.pop("exp_inf_scale"), ValueError, "expected the keys"),
    ],
)
def test_a_bad_compact_checkpoint_is_refused_whole(change, error, message):
    net, opt = trained("compact", steps=3)
    saved = copy.deepcopy(opt.state_dict())
    change(saved["state"][2])  # the third param's entry: the first two are fine
    before = copy.deepcopy(opt.state_dict())
    for state_format in ("compact", "full"):
        target = Adamax(copy.deepcopy(net).parameters(), lr=1e-2, state_format=state_format)
        with pytest.raises(error, match=message):
            target.load_state_dict(saved)
        assert not target.state
    with pytest.raises(error, match=message):
        opt.load_state_dict(saved)
    after = opt.state_dict()
    for key, entry in before["state"].items():
        assert all(torch.equal(entry[k], after["state"][key][k]) for k in compact.KEYS)


def test_a_step_that_cannot_finish_writes_nothing():
    net, opt = trained("compact", steps=2)
    torch.nn.functional.mse_loss(net(torch.randn(4, 12)), torch.zeros(4, 3)).backward()
    net[2].bias.grad.data = torch.zeros(5)  # the last param's gradient has the wrong shape (torch's setter bypassed)
    before_params = [p.detach().clone() for p in net.parameters()]
    before_state = copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match="gradient of shape"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before_params))
    after = opt.state_dict()
    for key, entry in before_state["state"].items():
        assert all(torch.equal(entry[k], after["state"][key][k]) for k in compact.KEYS)


def test_what_compact_state_cannot_do_is_refused():
    with pytest.raises(ValueError, match="Invalid state_format"):
        Adamax(model().parameters(), state_format="bfloat16")
    for flag in ("differentiable", "capturable"):
        with pytest.raises(RuntimeError, match="does not support differentiable=True or capturable=True"):
            Adamax(model().parameters(), state_format="compact", **{flag: True})
    net = model(torch.float64)
    opt = Adamax(net.parameters(), state_format="compact")
    torch.nn.functional.mse_loss(net(torch.randn(4, 12).double()), torch.zeros(4, 3).double()).backward()
    with pytest.raises(TypeError, match="float32, float16 or bfloat16 tensors"):
        opt.step()
    from adamax.torch import lazy_embeddings

    table = torch.nn.Embedding(10, 3, sparse=True).double()
    with pytest.raises(TypeError, match="lazy tables with compact state are float32 CPU tensors"):
        lazy_embeddings(table, Adamax(table.parameters(), state_format="compact"))


def test_skip_nonfinite_skips_a_compact_step_whole():
    net, opt = trained("compact", steps=2, skip_nonfinite=True)
    torch.nn.functional.mse_loss(net(torch.randn(4, 12)), torch.zeros(4, 3)).backward()
    net[0].weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in net.parameters()]
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


def test_on_digits_compact_states_train_as_float32_state_and_bfloat16_state_falls_behind():
    pytest.importorskip("sklearn")
    from adamax.cli import compare

    names = ["adamax.torch.Adamax", "adamax.torch.Adamax, compact state", "adamax.torch.Adamax, compact8 state",
             "torch.optim.Adamax, bfloat16 state"]  # fmt: skip
    full, small, smaller, naive = (run.train_loss[-1] for run in compare.train_all(epochs=30, seed=0, only=names))
    assert small == pytest.approx(full, rel=0.01)
    assert smaller == pytest.approx(full, rel=0.01)
    assert naive > full * 1.05  # u frozen at its largest value: every step too small


def test_on_a_character_language_model_compact_states_match_float32_state():
    from adamax.cli import charlm
    from adamax.cli.compare import Bfloat16State

    text = charlm.corpus(300_000)
    size = {"hidden": 64, "layers": 1, "embedding": 32}
    makers = {
        "full": lambda ps: Adamax(ps, lr=3e-3),
        "compact": lambda ps: Adamax(ps, lr=3e-3, state_format="compact"),
        "compact8": lambda ps: Adamax(ps, lr=3e-3, state_format="compact8"),
        "bfloat16": lambda ps: Bfloat16State(ps, lr=3e-3),
    }
    loss = {
        name: charlm.train(name, make, steps=300, size=size, text=text).val_loss[-1] for name, make in makers.items()
    }
    assert loss["compact"] == pytest.approx(loss["full"], rel=0.01)
    assert loss["compact8"] == pytest.approx(loss["full"], rel=0.01)
    assert loss["bfloat16"] > loss["full"] * 1.005


@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "numpy"])
@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("exp_inf_code", lambda t: t.float()),
        ("exp_inf_scale", lambda t: t[:-1]),
        ("exp_avg", lambda t: t.t()),
        ("step", lambda t: int(t)),
        ("step", lambda t: t.to(torch.complex64)),
        ("step", lambda t: t.long()),
        ("step", lambda t: t.reshape(1)[:0]),
        ("step", lambda t: t.repeat(2)),
    ],
    ids=["dtype", "shape", "layout", "step a number", "step complex", "step an integer tensor", "no step", "2 steps"],
)
def test_live_compact_state_that_does_not_fit_is_refused_before_any_write(key, bad, fused):
    """A weight's state goes wrong between steps: the step names it, and nothing moves, step counts included (a
    count the kernel cannot read used to fail it after the others had advanced)."""
    net, opt = trained("compact", steps=2)
    opt.param_groups[0]["fused"] = fused
    torch.nn.functional.mse_loss(net(torch.randn(4, 12)), torch.zeros(4, 3)).backward()
    weight = net[0].weight
    opt.state[weight][key] = bad(opt.state[weight][key])
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=f"'{key}' must be"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    assert all(float(opt.state[p]["step"]) == 2 for p in net.parameters() if p is not weight)


# --- loads that a later step could not take are refused (or made fit) at the load -------------------------------


def _two_groups_stepped(state_format="compact"):
    ps = [torch.nn.Parameter(torch.linspace(-1, 1, 300).reshape(20, 15)), torch.nn.Parameter(torch.ones(3))]
    opt = Adamax([{"params": [ps[0]]}, {"params": [ps[1]]}], lr=0.01, state_format=state_format)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    return ps, opt


@pytest.mark.parametrize("state_format", ["compact", "full"])
@pytest.mark.parametrize("step", [1e19, 2.0**53, 2**63])
def test_a_step_count_no_step_can_count_is_refused_at_the_load(state_format, step):
    """A forged count of 1e19 used to load; every later step then advanced the other params' counts and raised
    OverflowError halfway.  Refused at the load, changing nothing."""
    _ps, opt = _two_groups_stepped(state_format)
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][1]["step"] = torch.tensor(float(step)) if isinstance(step, float) else step
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(
        ValueError, match=r"state of param 1: 'step' must be a whole number >= 0, got .* \(counts stop at 2\*\*53 - 1\)"
    ):
        opt.load_state_dict(saved)
    for key, entry in before["state"].items():
        assert all(torch.equal(v, opt.state_dict()["state"][key][k]) for k, v in entry.items())
    saved["state"][1]["step"] = torch.tensor(2.0**53 - 1, dtype=torch.float64)  # the largest count taken
    opt.load_state_dict(saved)


def test_a_non_contiguous_compact_checkpoint_is_loaded_into_memory_a_step_takes():
    ps, opt = _two_groups_stepped()
    saved = copy.deepcopy(opt.state_dict())
    entry = saved["state"][0]
    for key in ("exp_avg", "exp_inf_code"):  # the same values in column-major order (dense, not contiguous)
        entry[key] = entry[key].reshape(20, 15).t().contiguous().t().reshape(20, 15)
        assert not entry[key].is_contiguous()
    opt.load_state_dict(saved)
    twin_ps, twin = _two_groups_stepped()
    for p in (*ps, *twin_ps):
        p.grad = torch.full_like(p, -0.5)
    opt.step()
    twin.step()
    assert all(torch.equal(a, b) for a, b in zip(ps, twin_ps))
    assert opt.state[ps[0]]["exp_avg"].data_ptr() != saved["state"][0]["exp_avg"].data_ptr()  # not the caller's


def test_codes_above_the_largest_are_refused_at_the_load():
    _, opt = _two_groups_stepped()
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["exp_inf_code"][1, 7] = compact.ONE + 1
    with pytest.raises(ValueError, match=rf"'exp_inf_code' holds codes above {compact.ONE}"):
        opt.load_state_dict(saved)
    saved["state"][0]["exp_inf_code"][1, 7] = compact.ONE
    opt.load_state_dict(saved)


def test_a_full_entry_with_a_negative_infinity_norm_has_no_compact_form():
    _ps, full = _two_groups_stepped("full")
    saved = copy.deepcopy(full.state_dict())
    saved["state"][0]["exp_inf"][0, 3] = -1.0
    with pytest.raises(ValueError, match="exp_inf must not be negative"):
        convert_state_dict(saved, "compact")
    _, opt = _two_groups_stepped()
    with pytest.raises(ValueError, match="exp_inf must not be negative"):
        opt.load_state_dict(saved)


def test_a_key_added_to_a_live_compact_entry_is_refused_before_anything_moves():
    net, opt = trained("compact", steps=2)
    p = next(net.parameters())
    opt.state[p]["extra"] = torch.zeros(())
    before = [q.detach().clone() for q in net.parameters()]
    with pytest.raises(ValueError, match="expected the keys"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_a_compact_group_the_kernel_steps_whole_takes_a_cached_plan_that_stays_the_definition():
    """Later steps of a group the compact kernel stepped whole skip the full plan; every step, cached or not, is
    the NumPy definition's bit for bit, and anything the cache cannot vouch for goes back to the full plan."""
    pytest.importorskip("numba")
    gen = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (5, 300, 1)]
    opt = Adamax(params, lr=1e-2, state_format="compact")
    config = AdamaxConfig(lr=1e-2)
    expected = [(p.detach().numpy().copy(), compact.init(p.detach().numpy())) for p in params]
    group = opt.param_groups[0]
    for t in range(6):
        grads = [torch.randn(p.shape, generator=gen) * 10.0 ** (t % 3 - 1) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        if t == 3:  # a state tensor replaced by an equal copy: the cache no longer vouches for it
            opt.state[params[1]]["exp_inf_scale"] = opt.state[params[1]]["exp_inf_scale"].clone()
            assert opt._plans.lookup(group, opt.state, "compact") is None
        opt.step()
        assert opt.last_step_paths == {"numba compact": 3}
        for k, (p, g) in enumerate(zip(params, grads)):
            value, state = compact.update(expected[k][0], g.numpy(), expected[k][1], config)
            expected[k] = (value, state)
            np.testing.assert_array_equal(p.detach().numpy(), value)
            got = as_compact_state(opt.state[p])
            assert got.step == state.step
            for field in ("exp_avg", "exp_inf_code", "exp_inf_scale"):
                np.testing.assert_array_equal(getattr(got, field), getattr(state, field))
        assert opt._plans.lookup(group, opt.state, "compact") is not None
        assert opt._plans.lookup(group, opt.state, "full") is None  # a cached compact plan serves compact state only


def _cached_compact(sizes=(5, 5, 300), dtypes=None, seed=4, state_format="compact"):
    gen = torch.Generator().manual_seed(seed)
    dtypes = dtypes or [torch.float32] * len(sizes)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen).to(d)) for n, d in zip(sizes, dtypes)]
    opt = Adamax(params, lr=1e-2, state_format=state_format)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()
    return params, opt, gen


@pytest.mark.parametrize("state_format", ["full", "compact"])
@pytest.mark.parametrize(
    "change", ["a longer gradient through .data", "a shorter gradient through .data", "a shorter param through .data"]
)
def test_a_cached_group_whose_shapes_changed_behind_torchs_back_is_refused(change, state_format):
    """``.data`` assignments bypass torch's checks of a gradient against its param: the cache must see them."""
    pytest.importorskip("numba")
    params, opt, _ = _cached_compact(state_format=state_format)
    assert opt._plans.lookup(opt.param_groups[0], opt.state, state_format) is not None
    if change == "a longer gradient through .data":
        params[0].grad.data = torch.ones(6)
    elif change == "a shorter gradient through .data":
        params[0].grad.data = torch.ones(4)
    else:
        params[0].data = torch.zeros(4)
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]
    with pytest.raises((RuntimeError, ValueError)):
        opt.step()
    for p, (value, entry) in zip(params, before):
        assert torch.equal(p, value) and all(torch.equal(opt.state[p][k], v) for k, v in entry.items())


def test_a_cached_compact_groups_step_count_replaced_by_an_equal_tensor_still_counts():
    pytest.importorskip("numba")
    params, opt, gen = _cached_compact()
    entry = opt.state[params[1]]
    entry["step"] = entry["step"].clone()  # equal, but not the cached buffer's element
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    assert [int(opt.state[p]["step"]) for p in params] == [3, 3, 3]


@pytest.mark.parametrize(
    ("state_format", "key"),
    [("compact", k) for k in compact.KEYS[1:]] + [("compact8", k) for k in ("exp_avg_code", "exp_avg_scale",
                                                                            "exp_inf_code", "exp_inf_scale")],
)  # fmt: skip
def test_a_cached_compact_groups_entry_given_an_equal_copy_steps_the_copy(state_format, key):
    """An entry's tensor replaced by an equal clone (another object, other memory): the cached plan must see it and
    step the clone, as an optimizer built afresh from the same state would."""
    pytest.importorskip("numba")
    params, opt, gen = _cached_compact(state_format=state_format)
    twin_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin = Adamax(twin_params, lr=1e-2, state_format=state_format)
    twin.load_state_dict(opt.state_dict())
    entry = opt.state[params[2]]
    old = entry[key]
    entry[key] = old.clone()
    for p, q in zip(params, twin_params):
        p.grad = torch.randn(p.shape, generator=gen)
        q.grad = p.grad.clone()
    opt.step()
    twin.step()
    assert opt.state[params[2]][key] is not old
    for p, q in zip(params, twin_params):
        assert torch.equal(p, q)
        assert all(torch.equal(opt.state[p][k], twin.state[q][k]) for k in opt.state[p] if k != "step")
    if key != "exp_inf_scale" and key != "exp_avg_scale":
        assert not torch.equal(old, opt.state[params[2]][key])  # the clone moved on, the old tensor did not


@pytest.mark.parametrize("change", ["a key renamed", "a key added"])
def test_a_cached_compact_groups_entry_with_other_keys_is_refused_before_any_write(change):
    """An entry whose keys changed behind the cache (one renamed: the same number of keys; or one added) is not
    compact state: the step refuses it, as an uncached step would, and writes nothing."""
    pytest.importorskip("numba")
    params, opt, gen = _cached_compact()
    entry = opt.state[params[2]]
    if change == "a key renamed":
        entry["exp_inf"] = entry.pop("exp_inf_scale")
    else:
        entry["exp_inf"] = torch.zeros(300)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]
    with pytest.raises(ValueError, match="state"):
        opt.step()
    for p, (value, saved) in zip(params, before):
        assert torch.equal(p, value) and all(torch.equal(opt.state[p][k], v) for k, v in saved.items())


@pytest.mark.parametrize("key", ["exp_avg", "exp_inf_code", "exp_inf_scale"])
def test_a_cached_compact_groups_state_moved_to_other_memory_is_followed_there(key):
    """``t.data = ...`` keeps the tensor object and moves its memory: the cached addresses must notice, whichever
    way the new address lies from the old (two swaps of one tensor's memory, so one each way)."""
    pytest.importorskip("numba")
    params, opt, gen = _cached_compact()
    twin_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin = Adamax(twin_params, lr=1e-2, state_format="compact")
    twin.load_state_dict(opt.state_dict())
    for _ in range(2):
        a, b = opt.state[params[0]][key], opt.state[params[1]][key]  # the two 5-element params' state swapped
        a.data, b.data = b.data, a.data
        x, y = twin.state[twin_params[0]][key], twin.state[twin_params[1]][key]
        twin.state[twin_params[0]][key], twin.state[twin_params[1]][key] = y.clone(), x.clone()
        for p, q in zip(params, twin_params):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.step()
        twin.step()
        for p, q in zip(params, twin_params):
            assert torch.equal(p, q)
            assert all(torch.equal(opt.state[p][k], twin.state[q][k]) for k in compact.KEYS)


def test_a_compact_group_of_two_dtypes_steps_each_by_its_own_kind():
    pytest.importorskip("numba")
    dtypes = [torch.float32, torch.bfloat16, torch.float32]
    params, opt, gen = _cached_compact(dtypes=dtypes)
    alone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opts = [Adamax([q], lr=1e-2, state_format="compact") for q in alone]
    saved = opt.state_dict()["state"]
    for k, o in enumerate(opts):
        o.load_state_dict(
            {"state": {0: saved[k]}, "param_groups": [{**o.state_dict()["param_groups"][0], "params": [0]}]}
        )
    for _ in range(3):
        for p, q, o in zip(params, alone, opts):
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            q.grad = p.grad.clone()
            o.step()
        opt.step()
    for p, q in zip(params, alone):
        assert torch.equal(p, q)


def test_a_saved_step_count_is_a_single_whole_number_from_zero():
    from adamax.torch._compact import check_saved_step

    for fine in (0, 0.0, torch.tensor(0.0), torch.tensor([3.0]), 5, torch.tensor(7, dtype=torch.int64)):
        check_saved_step(fine, "entry")
    for bad in (torch.zeros(0), torch.zeros(2), torch.tensor(1 + 1j), -1, 2.5, float("nan"), True):
        with pytest.raises(ValueError, match="entry: 'step' must be"):
            check_saved_step(bad, "entry")


def test_convert_state_dict_keeps_a_state_dicts_other_keys():
    _, opt = trained("compact", steps=2)
    saved = {**opt.state_dict(), "note": {"written by": "a trainer"}}
    out = convert_state_dict(saved, "compact8")
    assert out["note"] == {"written by": "a trainer"} and out["note"] is not saved["note"]
    assert set(out["state"][0]) == set(compact8.KEYS)
