"""adamax.torch.Adamax against torch.optim.Adamax, and what it adds."""

from __future__ import annotations

import copy
import importlib
import io
import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.testing._internal.common_optimizers import optim_inputs_func_adamax  # noqa: E402

from adamax import reference  # noqa: E402
from adamax.spec import AdamaxConfig  # noqa: E402
from adamax.torch import Adamax, AdamaxW  # noqa: E402


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def batches(n, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(12, 6, generator=gen, dtype=dtype), torch.randn(12, 3, generator=gen, dtype=dtype))
        for _ in range(n)
    ]


def train(model, opt, data, every_step=None):
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if every_step is not None:
            every_step(i)


def assert_same_run(model_a, opt_a, model_b, opt_b, where=""):
    for i, (pa, pb) in enumerate(zip(model_a.parameters(), model_b.parameters())):
        assert torch.equal(pa, pb), f"param {i} {where}: max |diff| {(pa - pb).abs().max().item()}"
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert set(sa) == set(sb) == {"step", "exp_avg", "exp_inf"}
        for key in ("step", "exp_avg", "exp_inf"):
            assert torch.equal(sa[key], sb[key]), f"state {key} of param {i} {where}"


TORCH_INPUTS = [(i.desc, i.kwargs) for i in optim_inputs_func_adamax("cpu")]
TORCH_INPUTS += [("tensor lr", {"lr": torch.tensor(0.01), "weight_decay": 0.1})]
TORCH_INPUTS += [("beta1 below one half", {"betas": (0.3, 0.95)})]  # 1 - b1 is no longer 1 % b1


BACKENDS = {
    "forloop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused": dict(fused=True),
    "automatic": dict(),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("desc", "kwargs"), TORCH_INPUTS, ids=[d for d, _ in TORCH_INPUTS])
def test_bit_exact_with_torch_on_a_real_model(desc, kwargs, dtype, backend):
    """torch's own Adamax configurations, 45 steps, params and state compared after every step.

    The oracle is torch.optim.Adamax on the same path; the fused kernel replaces torch's CPU default, forloop.
    (The paths differ only for a tensor lr, which torch's forloop divides in the tensor's dtype.)"""
    if backend == "fused":
        pytest.importorskip("numba")
    ours_model, theirs_model = make_model(dtype), make_model(dtype)
    ours = Adamax(ours_model.parameters(), **BACKENDS[backend], **copy.deepcopy(kwargs))
    oracle_foreach = backend == "foreach"
    theirs = torch.optim.Adamax(theirs_model.parameters(), foreach=oracle_foreach, **copy.deepcopy(kwargs))
    data = batches(45, dtype)
    for step, (x, y) in enumerate(data):
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        assert_same_run(ours_model, ours, theirs_model, theirs, f"after step {step + 1}")


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_complex_params_are_exact_with_torch_and_equal_to_the_real_view(foreach, weight_decay):
    torch.manual_seed(3)
    z = torch.randn(5, 4, dtype=torch.complex64)
    ours_p, theirs_p = z.clone().requires_grad_(), z.clone().requires_grad_()
    pairs = torch.view_as_real(z.clone()).requires_grad_()
    ours = Adamax([ours_p], lr=0.01, weight_decay=weight_decay, foreach=foreach)
    theirs = torch.optim.Adamax([theirs_p], lr=0.01, weight_decay=weight_decay, foreach=foreach)
    real = Adamax([pairs], lr=0.01, weight_decay=weight_decay, foreach=foreach)
    for _ in range(10):
        g = torch.randn(5, 4, dtype=torch.complex64)
        ours_p.grad, theirs_p.grad, pairs.grad = g.clone(), g.clone(), torch.view_as_real(g.clone())
        for opt in (ours, theirs, real):
            opt.step()
        assert torch.equal(ours_p, theirs_p)
        assert torch.equal(ours.state[ours_p]["exp_inf"], theirs.state[theirs_p]["exp_inf"])
        if weight_decay == 0 or foreach:  # torch's forloop decays complex params in complex arithmetic
            assert torch.equal(torch.view_as_real(ours_p), pairs)
        else:
            torch.testing.assert_close(torch.view_as_real(ours_p), pairs)


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("placement", ["max", "denominator", "none"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_every_option_matches_the_reference(foreach, placement, decoupled):
    torch.manual_seed(4)
    p0 = torch.randn(33, dtype=torch.float64)
    p = p0.clone().requires_grad_()
    kwargs = dict(lr=0.02, eps=1e-3, weight_decay=0.05, decoupled_weight_decay=decoupled, eps_placement=placement)
    opt = Adamax([p], foreach=foreach, **kwargs)
    ref_p, ref_state = p0.numpy().copy(), reference.init(p0.numpy())
    for _ in range(8):
        g = torch.randn(33, dtype=torch.float64)
        g[:3] = 0  # u = 0 there without coupled decay: "none" divides 0 by 0, which the step must guard
        p.grad = g.clone()
        opt.step()
        ref_p, ref_state = reference.update(ref_p, g.numpy(), ref_state, AdamaxConfig(**kwargs))
        np.testing.assert_array_equal(p.detach().numpy(), ref_p)
        np.testing.assert_array_equal(opt.state[p]["exp_inf"].numpy(), ref_state.exp_inf)


def test_adamaxw_is_decoupled_weight_decay():
    p = torch.tensor([2.0, -4.0], requires_grad=True)
    ours, theirs = AdamaxW([p]).defaults, torch.optim.Adamax([p]).defaults
    assert all(ours[k] == theirs[k] for k in ("lr", "betas", "eps"))  # torch's defaults, but the decay
    opt = AdamaxW([p], lr=0.1, eps_placement="none")
    assert opt.defaults["weight_decay"] == 1e-2 and opt.defaults["decoupled_weight_decay"]
    p.grad = torch.zeros(2)
    opt.step()  # a zero gradient makes no Adamax step: only the decay remains
    torch.testing.assert_close(p.detach(), torch.tensor([2.0, -4.0]) * (1 - 0.1 * 1e-2), rtol=0, atol=0)


def test_eps_placement_reproduces_keras_form():
    """'denominator' is the seed's and Keras' form: m_hat / (u + eps)."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = Adamax([p], lr=0.5, eps=0.25, eps_placement="denominator")
    p.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step()
    assert p.item() == pytest.approx(-0.5 * 1.0 / (1.0 + 0.25), rel=1e-15)


# --- everything torch users rely on ------------------------------------------------------------------------------


def test_param_groups_have_their_own_lr_and_weight_decay():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = Adamax([{"params": [a]}, {"params": [b], "lr": 0.5, "weight_decay": 0.1}], lr=0.1, eps_placement="none")
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.9))  # first step: exactly lr * sign(g)
    torch.testing.assert_close(b.detach(), torch.full((3,), 0.5))
    assert opt.param_groups[1]["weight_decay"] == 0.1 and opt.param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1),
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20),
    ],
    ids=["StepLR", "ReduceLROnPlateau", "OneCycleLR"],
)
def test_schedulers_drive_it_exactly_like_torch(make_scheduler):
    runs = []
    for cls in (Adamax, torch.optim.Adamax):
        model = make_model()
        opt = cls(model.parameters(), lr=0.01)
        scheduler = make_scheduler(opt)
        lrs = []
        for x, y in batches(20):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(1.0)  # a plateau: the lr must drop
            else:
                scheduler.step()
            lrs.append(opt.param_groups[0]["lr"])
        runs.append((model, opt, lrs))
    (ours_model, ours, ours_lrs), (theirs_model, theirs, theirs_lrs) = runs
    assert ours_lrs == theirs_lrs and len(set(ours_lrs)) > 1
    assert_same_run(ours_model, ours, theirs_model, theirs)


def test_zero_size_params_and_none_grads():
    empty, used, unused = (
        torch.zeros(0, 3, requires_grad=True),
        torch.ones(2, requires_grad=True),
        torch.ones(2, requires_grad=True),
    )
    opt = Adamax([empty, used, unused], lr=0.1)
    empty.grad, used.grad = torch.zeros(0, 3), torch.ones(2)
    opt.step()
    assert unused not in opt.state, "a param without a grad gets no state"
    assert torch.equal(unused, torch.ones(2))
    assert opt.state[empty]["exp_avg"].shape == (0, 3)
    assert int(opt.state[used]["step"]) == 1


def test_frozen_layers_keep_their_state_until_unfrozen():
    ours_model, theirs_model = make_model(), make_model()
    ours, theirs = Adamax(ours_model.parameters(), lr=0.01), torch.optim.Adamax(theirs_model.parameters(), lr=0.01)
    data = batches(12)
    for step, (x, y) in enumerate(data):
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            model[0].requires_grad_(not 4 <= step < 8)  # frozen for steps 4..7
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    assert int(ours.state[ours_model[0].weight]["step"]) == 8
    assert int(ours.state[ours_model[2].weight]["step"]) == 12
    assert_same_run(ours_model, ours, theirs_model, theirs)


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_non_contiguous_params(foreach):
    base = torch.randn(8, 6)
    strided = base.clone()[:, ::2].requires_grad_()  # a non-contiguous leaf
    transposed = base.clone().t().requires_grad_()
    assert not strided.is_contiguous() and not transposed.is_contiguous()
    contiguous = [strided.detach().contiguous().requires_grad_(), transposed.detach().contiguous().requires_grad_()]
    opt = Adamax([strided, transposed], lr=0.01, foreach=foreach)
    ref = Adamax(contiguous, lr=0.01, foreach=foreach)
    for _ in range(5):
        grads = [torch.randn(8, 3), torch.randn(6, 8)]
        strided.grad, transposed.grad = grads[0].clone(), grads[1].clone()
        contiguous[0].grad, contiguous[1].grad = grads[0].clone(), grads[1].clone()
        opt.step()
        ref.step()
    assert torch.equal(strided, contiguous[0]) and torch.equal(transposed, contiguous[1])
    assert opt.state[transposed]["exp_avg"].stride() == transposed.stride()  # dense layouts are kept, as in torch


def test_hooks_run():
    p = torch.ones(2, requires_grad=True)
    opt = Adamax([p])
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd-pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd-post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load-pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    p.grad = torch.ones(2)
    opt.step()
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "sd-pre", "sd-post", "load-pre", "load-post"]


def test_deepcopy_and_repr():
    p = torch.ones(2, requires_grad=True)
    opt = Adamax([p], lr=0.01, eps_placement="none", skip_nonfinite=True)
    p.grad = torch.ones(2)
    opt.step()
    clone = copy.deepcopy(opt)
    assert clone.skip_nonfinite and clone.param_groups[0]["eps_placement"] == "none"
    assert torch.equal(next(iter(clone.state.values()))["exp_avg"], opt.state[p]["exp_avg"])
    text = repr(opt)
    assert text.startswith("Adamax (") and "eps_placement: none" in text and "lr: 0.01" in text


def test_torch_compile_of_a_training_step():
    eager_model, compiled_model = make_model(), make_model()
    eager, compiled = Adamax(eager_model.parameters(), lr=0.01), Adamax(compiled_model.parameters(), lr=0.01)

    def train_step(model, opt, x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled_step = torch.compile(train_step)
    for x, y in batches(4):
        train_step(eager_model, eager, x, y)
        compiled_step(compiled_model, compiled, x, y)
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert int(compiled.state[compiled_model[0].weight]["step"]) == 4


def test_differentiable_passes_gradcheck():
    torch.manual_seed(5)
    p0 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g0 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    m0 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    u0 = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()

    def one_step(p, g, m, u):
        p = p.clone()  # a non-leaf, so the step may write it in place under autograd
        p.grad = g
        opt = Adamax([p], lr=0.1, differentiable=True)
        opt.state[p] = {"step": torch.tensor(2.0, dtype=torch.float64), "exp_avg": m.clone(), "exp_inf": u.clone()}
        opt.step()
        return p, opt.state[p]["exp_avg"], opt.state[p]["exp_inf"]

    assert torch.autograd.gradcheck(one_step, (p0, g0, m0, u0))


def test_differentiable_refuses_foreach():
    p = torch.ones(2, requires_grad=True)
    opt = Adamax([p], differentiable=True, foreach=True)
    p.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="foreach=True does not support differentiable=True"):
        opt.step()
    assert not opt.state


@pytest.mark.parametrize("foreach", [False, True, None], ids=["forloop", "foreach", "automatic"])
def test_capturable_is_refused_on_cpu_like_torch(foreach):
    messages = []
    for cls in (Adamax, torch.optim.Adamax):
        p = torch.ones(2, requires_grad=True)
        opt = cls([p], capturable=True, foreach=foreach)
        p.grad = torch.ones(2)
        with pytest.raises(AssertionError) as err:
            opt.step()
        messages.append(str(err.value))
        assert torch.equal(p, torch.ones(2))
    assert messages[0] == messages[1]


@pytest.mark.parametrize(("cpu", "gpu"), [(True, False), (False, True), (False, False)])
def test_fused_true_is_taken_while_either_kernel_is_there(monkeypatch, cpu, gpu):
    """fused=True needs numba or triton: without triton (the common CPU install) the numba kernel steps as torch
    does; without numba, triton may still serve CUDA tensors; without both it is refused at construction."""
    optimizer = importlib.import_module("adamax.torch._optimizer")
    for name, present in (("cpu_kernels", cpu), ("gpu_kernels", gpu)):
        if not present:
            monkeypatch.setattr(optimizer, name, lambda: None)
    p = torch.ones(4, requires_grad=True)
    if not (cpu or gpu):
        with pytest.raises(RuntimeError, match=r"fused=True needs numba \(CPU\) or triton \(CUDA\)"):
            Adamax([p], fused=True)
        return
    opt, theirs = Adamax([p], lr=0.1, fused=True), torch.optim.Adamax([q := p.detach().clone()], lr=0.1)
    assert Adamax([p]).defaults["fused"] is None  # the default is taken with either
    if cpu:
        p.grad = q.grad = torch.linspace(-1, 1, 4)
        opt.step()
        theirs.step()
        assert torch.equal(p, q) and opt.last_step_paths == {"numba": 1}


def test_last_step_paths_add_up_the_params_of_every_group():
    groups = [{"params": [torch.ones(3, requires_grad=True) for _ in range(n)]} for n in (1, 1, 2)]
    paths = ((dict(foreach=True), "foreach"), (dict(foreach=False, fused=False), "forloop"), ({}, "numba"))
    for options, path in paths:
        opt = Adamax(copy.deepcopy(groups), **options)
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.ones(3)
        opt.step()
        assert opt.last_step_paths == {path: 4}


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_capturable_math_matches_torch(monkeypatch, foreach):
    """With the device check lifted, the device-side step count gives torch's capturable bits."""

    def with_cpu(supports_xla=True):
        return ["cpu", "cuda"]

    for module in ("torch.optim.optimizer", "torch.optim.adamax"):
        monkeypatch.setattr(importlib.import_module(module), "_get_capturable_supported_devices", with_cpu)
    kwargs = dict(lr=torch.tensor(0.01), weight_decay=0.9, capturable=True, foreach=foreach)
    ours_model, theirs_model = make_model(), make_model()
    ours, theirs = Adamax(ours_model.parameters(), **kwargs), torch.optim.Adamax(theirs_model.parameters(), **kwargs)
    data = batches(10)
    train(ours_model, ours, data)
    train(theirs_model, theirs, data)
    assert_same_run(ours_model, ours, theirs_model, theirs)


# --- checkpoints -----------------------------------------------------------------------------------------------


def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("save_cls", "load_cls"), [(torch.optim.Adamax, Adamax), (Adamax, torch.optim.Adamax)])
def test_checkpoints_move_both_ways(save_cls, load_cls):
    data = batches(20)
    straight_model = make_model()
    straight = torch.optim.Adamax(straight_model.parameters(), lr=0.01, weight_decay=0.01)
    train(straight_model, straight, data)

    model = make_model()
    first = save_cls(model.parameters(), lr=0.01, weight_decay=0.01)
    train(model, first, data[:10])
    second = load_cls(model.parameters())  # default hyperparameters: the checkpoint brings its own
    second.load_state_dict(roundtrip(first.state_dict()))
    assert second.param_groups[0]["lr"] == 0.01
    train(model, second, data[10:])
    assert_same_run(model, second, straight_model, straight)


def test_old_state_dicts_without_newer_flags_load():
    model = make_model()
    opt = torch.optim.Adamax(model.parameters(), lr=0.01)
    train(model, opt, batches(3))
    old = roundtrip(opt.state_dict())
    for group in old["param_groups"]:
        for key in ("foreach", "maximize", "differentiable", "capturable"):
            group.pop(key)
    for state in old["state"].values():
        state["step"] = float(state["step"])  # checkpoints from before steps were tensors
    ours = Adamax(model.parameters())
    ours.load_state_dict(old)
    group = ours.param_groups[0]
    assert group["eps_placement"] == "max" and group["decoupled_weight_decay"] is False and group["foreach"] is None
    assert all(torch.is_tensor(s["step"]) for s in ours.state.values())
    train(model, ours, batches(2))


def _trained():
    model = make_model()
    opt = Adamax(model.parameters(), lr=0.01)
    train(model, opt, batches(3))
    return model, opt


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())


def assert_unchanged(model, opt, before):
    params, state_dict = before
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)
    now = opt.state_dict()
    assert now["param_groups"] == state_dict["param_groups"]
    for key, entry in state_dict["state"].items():
        for name, value in entry.items():
            assert torch.equal(now["state"][key][name], value)
    assert set(now["state"]) == set(state_dict["state"])


def _spoil_state(sd, index, key, value):
    sd["state"][index][key] = value
    return sd


BAD_CHECKPOINTS = {
    "wrong shape": lambda sd: _spoil_state(sd, 1, "exp_inf", torch.zeros(5)),
    "complex state for a real param": lambda sd: _spoil_state(
        sd, 0, "exp_avg", torch.zeros(16, 6, dtype=torch.complex64)
    ),
    "integer state": lambda sd: _spoil_state(sd, 0, "exp_avg", torch.zeros(16, 6, dtype=torch.int64)),
    "negative step": lambda sd: _spoil_state(sd, 2, "step", torch.tensor(-1.0)),
    "nan step": lambda sd: _spoil_state(sd, 2, "step", torch.tensor(math.nan)),
    "missing key": lambda sd: (sd["state"][3].pop("exp_inf"), sd)[1],
    "extra key": lambda sd: _spoil_state(sd, 3, "max_exp_avg_sq", torch.zeros(3)),
    "unknown param": lambda sd: (sd["state"].__setitem__(17, sd["state"][0]), sd)[1],
    "invalid lr": lambda sd: (sd["param_groups"][0].__setitem__("lr", -1.0), sd)[1],
    "unknown eps_placement": lambda sd: (sd["param_groups"][0].__setitem__("eps_placement", "after"), sd)[1],
    "fractional step": lambda sd: _spoil_state(sd, 2, "step", torch.tensor(2.5)),
    "fractional step as a number": lambda sd: _spoil_state(sd, 2, "step", 2.5),
    "a step of no elements": lambda sd: _spoil_state(sd, 2, "step", torch.zeros(0)),
    "a string as fused": lambda sd: (sd["param_groups"][0].__setitem__("fused", "no"), sd)[1],
    "missing param": lambda sd: (sd["param_groups"][0]["params"].pop(), sd)[1],
    "extra group": lambda sd: (sd["param_groups"].append(dict(sd["param_groups"][0])), sd)[1],
    "no param groups": lambda sd: (sd.pop("param_groups"), sd)[1],
    "no state": lambda sd: (sd.pop("state"), sd)[1],
    "not a dict": lambda sd: list(sd.items()),
}


@pytest.mark.parametrize("spoil", BAD_CHECKPOINTS.values(), ids=BAD_CHECKPOINTS.keys())
def test_a_bad_checkpoint_is_refused_whole(spoil):
    model, opt = _trained()
    before = snapshot(model, opt)
    _, other = _trained()
    bad = spoil(copy.deepcopy(other.state_dict()))
    with pytest.raises((TypeError, ValueError)):
        opt.load_state_dict(bad)
    assert_unchanged(model, opt, before)
    train(model, opt, batches(1))  # and it still steps


def test_a_checkpoint_torch_takes_and_then_fails_on_mid_step_is_refused_here_at_load():
    """The same wrong-shaped state in the same checkpoint: torch.optim.Adamax loads it, then its next step moves
    the first params before failing on the third; ours refuses the load and its next step is a whole one."""
    theirs, ours = make_model(), make_model()
    ref = torch.optim.Adamax(theirs.parameters(), lr=0.01, foreach=False)
    opt = Adamax(ours.parameters(), lr=0.01)
    train(theirs, ref, batches(2))
    train(ours, opt, batches(2))
    bad = _spoil_state(copy.deepcopy(ref.state_dict()), 2, "exp_inf", torch.zeros(5))
    ref.load_state_dict(copy.deepcopy(bad))  # accepted
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(copy.deepcopy(bad))
    x, y = torch.randn(2, 6), torch.randn(2, 3)
    moved = {}
    for name, model, o in (("torch", theirs, ref), ("ours", ours, opt)):
        before = [p.detach().clone() for p in model.parameters()]
        o.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if name == "torch":
            with pytest.raises(RuntimeError):
                o.step()
        else:
            o.step()
        moved[name] = [not torch.equal(p, q) for p, q in zip(model.parameters(), before)]
    assert moved["torch"] == [True, True, False, False]  # half a step
    assert moved["ours"] == [True, True, True, True]  # a whole one


# --- all-or-nothing steps ---------------------------------------------------------------------------------------


def test_a_sparse_gradient_anywhere_changes_nothing():
    dense, embedding = torch.nn.Linear(3, 3), torch.nn.Embedding(10, 3, sparse=True)
    opt = Adamax([*dense.parameters(), *embedding.parameters()], lr=0.1)
    params = [*dense.parameters(), *embedding.parameters()]
    (dense(torch.ones(1, 3)).sum() + embedding(torch.tensor([1, 2])).sum()).backward()
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="Adamax does not support sparse gradients"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert not opt.state, "no state may be created by a refused step"


@pytest.mark.parametrize(
    "spoil",
    [
        lambda opt, ps: setattr(ps[1].grad, "data", torch.ones(7)),  # torch's own setter refuses this
        lambda opt, ps: (setattr(ps[1], "grad_dtype", None), setattr(ps[1], "grad", ps[1].grad.double())),
        lambda opt, ps: opt.param_groups[1].__setitem__("lr", -0.5),
        lambda opt, ps: opt.param_groups[1].__setitem__("betas", (0.9, 1.5)),
        lambda opt, ps: opt.state[ps[1]].__setitem__("exp_inf", torch.zeros(2)),
    ],
    ids=["grad shape", "grad dtype", "negative lr set mid-training", "bad beta set mid-training", "state replaced"],
)
def test_a_refused_step_changes_nothing(spoil):
    a, b = torch.ones(4, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = Adamax([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.ones(4), torch.ones(3)
    opt.step()
    spoil(opt, [a, b])
    before_a, before_state = a.detach().clone(), copy.deepcopy(opt.state[a])
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        opt.step()
    assert torch.equal(a, before_a)
    assert all(torch.equal(opt.state[a][k], before_state[k]) for k in before_state)


def test_a_state_dict_with_an_empty_entry_loads_as_in_torch():
    """Reading ``opt.state[p]`` before p has a gradient leaves an empty entry; torch saves and loads it."""
    for make_saver in (torch.optim.Adamax, Adamax):
        a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
        saver = make_saver([a, b], lr=0.1)
        a.grad = torch.ones(2)
        saver.step()
        saver.state[b]  # the read creates the empty entry
        saved = saver.state_dict()
        assert saved["state"][1] == {}
        ours_a, ours_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        ours = Adamax([ours_a, ours_b], lr=0.1)
        ours.load_state_dict(copy.deepcopy(saved))
        theirs_a, theirs_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        theirs = torch.optim.Adamax([theirs_a, theirs_b], lr=0.1)
        theirs.load_state_dict(copy.deepcopy(saved))
        for x, y in ((ours_a, theirs_a), (ours_b, theirs_b)):
            x.grad, y.grad = torch.full_like(x, -2.0), torch.full_like(y, -2.0)
        ours.step()
        theirs.step()
        assert torch.equal(ours_a, theirs_a) and torch.equal(ours_b, theirs_b)
        assert int(ours.state[ours_b]["step"]) == int(theirs.state[theirs_b]["step"]) == 1


@pytest.mark.parametrize("flag", ["fused", "foreach", "differentiable", "capturable"])
@pytest.mark.parametrize("value", ["no", 1, 0.0])
def test_flags_must_be_bools(flag, value):
    if flag in ("fused", "foreach") and value == 0.0:
        value = "yes"
    with pytest.raises(TypeError, match=f"Invalid {flag}: {value!r}"):
        Adamax([torch.zeros(2, requires_grad=True)], **{flag: value})


def test_a_string_fused_set_on_a_group_is_refused_before_anything_moves():
    w = torch.zeros(3, requires_grad=True)
    opt = Adamax([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["fused"] = "no"
    before = w.detach().clone()
    with pytest.raises(TypeError, match="Invalid fused: 'no'"):
        opt.step()
    assert torch.equal(w, before)


def test_a_param_listed_twice_in_a_group_is_refused():
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="lists the same parameter more than once"):
        Adamax([w, w])
    opt = Adamax([torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError, match="more than once"):
        opt.add_param_group({"params": (x for x in [w, w])})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": (x for x in [w])})  # a generator is still read once, as torch reads it
    assert opt.param_groups[1]["params"] == [w]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_params_are_refused_at_construction(dtype):
    with pytest.raises(TypeError, match=f"floating-point or complex tensors, got a {dtype} param"):
        Adamax([torch.zeros(3, dtype=dtype)])
    opt = Adamax([torch.zeros(3, requires_grad=True)])
    with pytest.raises(TypeError):
        opt.add_param_group({"params": [torch.zeros(3, dtype=dtype)]})
    assert len(opt.param_groups) == 1


# --- non-finite gradients -----------------------------------------------------------------------------------


def nan_batch_run(skip):
    model = make_model()
    opt = Adamax(model.parameters(), lr=0.01, skip_nonfinite=skip)
    data = batches(12)
    losses = []
    for i, (x, y) in enumerate(data):
        if i == 5:
            x = x.clone()
            x[0, 0] = math.nan
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, opt, losses


def equal_with_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_default_a_nan_gradient_propagates_like_torch(backend):
    """A NaN in one element's gradient at step 3, then finite gradients (set directly: through a model the NaN
    would reach every gradient): params and state equal torch.optim.Adamax's, NaN where torch has NaN, after every
    step, whichever path steps."""
    ours, theirs = make_model(), make_model()
    opt = Adamax(ours.parameters(), lr=0.01, **BACKENDS[backend])
    ref = torch.optim.Adamax(theirs.parameters(), lr=0.01, foreach=False)
    gen = torch.Generator().manual_seed(3)
    for t in range(6):
        grads = [torch.randn(p.shape, generator=gen) for p in ours.parameters()]
        if t == 2:
            grads[0][1, 2] = math.nan  # torch keeps this element's u NaN from here on: max(NaN, x) is NaN
        for model, o in ((ours, opt), (theirs, ref)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            o.step()
        for pa, pb in zip(ours.parameters(), theirs.parameters()):
            assert equal_with_nan(pa, pb), f"step {t}"
            for key in ("exp_avg", "exp_inf"):
                assert equal_with_nan(opt.state[pa][key], ref.state[pb][key]), f"{key}, step {t}"
    assert torch.isnan(opt.state[ours[0].weight]["exp_inf"][1, 2]) and opt.skipped_steps == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_infinite_params_and_signed_zero_gradients_step_like_torch(backend, weight_decay):
    """A param already infinite stays infinite (not NaN) without weight decay, and a -0.0 gradient keeps its sign
    through the moment: torch.optim.Adamax's values, bit for bit, on every path."""
    ours = torch.tensor([math.inf, -math.inf, 1.0, -2.0, 0.5, 3.0], requires_grad=True)
    theirs = ours.detach().clone().requires_grad_()
    opt = Adamax([ours], lr=0.01, weight_decay=weight_decay, **BACKENDS[backend])
    ref = torch.optim.Adamax([theirs], lr=0.01, weight_decay=weight_decay, foreach=False)
    for t in range(3):
        g = torch.tensor([0.5, -0.5, -0.0, 0.0, 1.0 + t, -0.0])
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        assert equal_with_nan(ours, theirs) and torch.equal(torch.signbit(ours), torch.signbit(theirs)), t
        for key in ("exp_avg", "exp_inf"):
            assert equal_with_nan(opt.state[ours][key], ref.state[theirs][key]), (key, t)
            assert torch.equal(torch.signbit(opt.state[ours][key]), torch.signbit(ref.state[theirs][key])), (key, t)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_skip_nonfinite_skips_a_step_whose_second_group_alone_is_not_finite(bad):
    model = make_model()
    opt = Adamax([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.1}], lr=0.01,
                 skip_nonfinite=True)  # fmt: skip
    train(model, opt, batches(2))
    before = snapshot(model, opt)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(torch.randn(2, 6)), torch.randn(2, 3)).backward()
    model[2].bias.grad[0] = bad
    opt.step()
    assert opt.skipped_steps == 1
    assert_unchanged(model, opt, before)


def test_skip_nonfinite_keeps_one_nan_batch_from_poisoning_training():
    model, opt, losses = nan_batch_run(skip=True)
    assert opt.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isnan(losses[5]) and all(math.isfinite(v) for i, v in enumerate(losses) if i != 5)
    assert losses[-1] < losses[0]
    assert int(opt.state[model[0].weight]["step"]) == 11  # the skipped step is not counted
    # The skipped step changed nothing: the run equals one that never saw the NaN batch.
    clean_model = make_model()
    clean = Adamax(clean_model.parameters(), lr=0.01)
    train(clean_model, clean, [b for i, b in enumerate(batches(12)) if i != 5])
    assert_same_run(model, opt, clean_model, clean)


def test_options_of_the_optimizer_survive_loading_a_checkpoint():
    """torch's load_state_dict re-initialises the optimizer from state and groups alone; skip_nonfinite, the
    skipped-step count and state_format are the optimizer's own and stay."""
    _, opt, _ = nan_batch_run(skip=True)
    opt.load_state_dict(opt.state_dict())
    assert opt.skip_nonfinite is True and opt.skipped_steps == 1 and opt.state_format == "full"
    compact = Adamax(make_model().parameters(), lr=0.01, state_format="compact")
    compact.load_state_dict(compact.state_dict())
    assert compact.state_format == "compact" and compact.skip_nonfinite is False


def test_a_pickle_without_the_optimizers_own_options_unpickles_with_their_defaults():
    """An optimizer pickled before skip_nonfinite, skipped_steps and state_format existed (here: torch's Adamax,
    pickled and read back as ours) takes their defaults, and steps as torch's."""
    model, twin = make_model(), make_model()
    theirs = torch.optim.Adamax(twin.parameters(), lr=0.01, foreach=False)
    train(twin, theirs, batches(2))
    model.load_state_dict(twin.state_dict())

    class AsOurs(pickle.Unpickler):
        def find_class(self, module, name):
            return Adamax if (module, name) == ("torch.optim.adamax", "Adamax") else super().find_class(module, name)

    ours = AsOurs(io.BytesIO(pickle.dumps(theirs))).load()
    assert type(ours) is Adamax and (ours.skip_nonfinite, ours.skipped_steps, ours.state_format) == (False, 0, "full")
    ours.param_groups[0]["params"] = list(model.parameters())  # the pickle's params are copies: point at the model
    ours.state = type(ours.state)(dict, zip(model.parameters(), ours.state.values()))
    train(model, ours, batches(2))
    train(twin, theirs, batches(2))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_a_checkpoint_without_the_later_flags_loads_with_torchs_defaults_and_steps_as_torchs():
    """State dicts saved before torch added ``foreach``, ``maximize``, ``differentiable`` and ``capturable`` (and
    ours without ``fused``, ``decoupled_weight_decay``, ``eps_placement``): each takes its default."""
    torch.manual_seed(0)
    start = torch.randn(5)
    saver = torch.optim.Adamax([torch.nn.Parameter(start.clone())], lr=0.01)
    saver.param_groups[0]["params"][0].grad = torch.randn(5)
    saver.step()
    state_dict = saver.state_dict()
    for group in state_dict["param_groups"]:
        for key in ("foreach", "maximize", "differentiable", "capturable"):
            del group[key]
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt, oracle = Adamax([ours], lr=0.01), torch.optim.Adamax([theirs], lr=0.01)
    opt.load_state_dict(copy.deepcopy(state_dict))
    oracle.load_state_dict(copy.deepcopy(state_dict))
    assert {k: opt.param_groups[0][k] for k in ("maximize", "foreach", "capturable", "differentiable")} == {
        "maximize": False, "foreach": None, "capturable": False, "differentiable": False}  # fmt: skip
    for _ in range(2):
        g = torch.randn(5)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        oracle.step()
    assert torch.equal(ours, theirs)
    assert all(torch.equal(opt.state[ours][k], oracle.state[theirs][k]) for k in ("step", "exp_avg", "exp_inf"))


def test_a_group_of_300_params_takes_the_cached_path_and_its_checkpoint_loads():
    """Lengths past CPython's small-integer cache (256): compared by value, not identity."""
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(300)]
    opt = Adamax(params, lr=0.01)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones(2)
        opt.step()
    group = opt.param_groups[0]
    assert opt._plans.lookup(group, opt.state) is not None
    again = Adamax([torch.nn.Parameter(torch.zeros(2)) for _ in range(300)], lr=0.01)
    again.load_state_dict(opt.state_dict())
    assert all(float(again.state[p]["step"]) == 3 for p in again.param_groups[0]["params"])


BAD_LIVE_STATE = {  # a state entry edited by hand between steps, and what the refusal says
    "a step of two elements": ("step", lambda p: torch.ones(2), r"'step' must be a 1-element real tensor"),
    "a boolean step": ("step", lambda p: torch.tensor(True), r"'step' must be a 1-element real tensor"),
    "a complex step": ("step", lambda p: torch.tensor(1 + 0j), r"'step' must be a 1-element real tensor"),
    "exp_avg of another shape": ("exp_avg", lambda p: torch.zeros(4), r"'exp_avg' does not match the param's shape"),
    "exp_inf of another dtype": ("exp_inf", lambda p: torch.zeros(3, dtype=torch.float64), r"'exp_inf' does not"),
    "exp_inf on another device": ("exp_inf", lambda p: torch.zeros(3, device="meta"), r"'exp_inf' does not match"),
    "exp_avg on another device": ("exp_avg", lambda p: torch.zeros(3, device="meta"), r"'exp_avg' does not match"),
}


@pytest.mark.parametrize("options", [{"fused": False, "foreach": False}, {"foreach": True}, {}], ids=str)
@pytest.mark.parametrize("bad", BAD_LIVE_STATE.values(), ids=BAD_LIVE_STATE.keys())
def test_live_state_edited_into_a_wrong_form_is_refused_before_any_param_moves(bad, options):
    """The second param's state goes wrong between steps: the step names it, and the first param stays put."""
    key, value, message = bad
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(2)]
    opt = Adamax(params, **options)
    for p in params:
        p.grad = torch.ones(3)
    opt.step()
    opt.state[params[1]][key] = value(params[1])
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=rf"state of param 1 of its group: {message}"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert float(opt.state[params[0]]["step"]) == 1  # nor its step count


@pytest.mark.parametrize("options", [{"fused": False, "foreach": False}, {}], ids=str)
def test_an_integer_step_count_steps_as_torchs_does(options):
    """A checkpoint may hold its step count as an integer tensor, which torch's loader keeps: the kernel, which
    counts in floating point, leaves such a param to torch's ops, and it steps as torch's own optimizer does."""
    params = [torch.nn.Parameter(torch.linspace(-1, 1, 3)) for _ in range(2)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opts = Adamax(params, lr=0.1, **options), torch.optim.Adamax(theirs, lr=0.1, foreach=False)
    for step in range(3):
        for opt, ps in zip(opts, (params, theirs)):
            for p in ps:
                p.grad = torch.full((3,), step - 0.5)
            opt.step()
            if step == 0:
                opt.state[ps[1]]["step"] = torch.tensor(1)
    assert all(torch.equal(p, q) for p, q in zip(params, theirs))
    assert int(opts[0].state[params[1]]["step"]) == 3


@pytest.mark.parametrize("key", ["initial_lr", "max_lr", "min_lr", "base_lr"])
@pytest.mark.parametrize("value", [math.nan, -math.inf, -0.5, "0.1", True])
def test_a_loaded_groups_scheduler_learning_rates_are_checked_as_lr_is(key, value):
    """A scheduler reads ``initial_lr`` (and its kin) from the group later: a forged NaN would reach every step's
    lr.  Refused at the load, the group unchanged; a good value loads."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adamax([p], lr=0.01)
    p.grad = torch.ones(3)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0][key] = value
    with pytest.raises(ValueError, match=rf"param group 0 of the loaded state dict: '{key}' must be a finite number"):
        opt.load_state_dict(saved)
    assert key not in opt.param_groups[0]
    saved["param_groups"][0][key] = torch.tensor(0.02)
    opt.load_state_dict(saved)
    assert float(opt.param_groups[0][key]) == pytest.approx(0.02)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_of_the_optimizer_keeps_its_options_and_its_count_of_skipped_steps(how):
    p = torch.nn.Parameter(torch.ones(300))
    state_format = "compact" if how == "deepcopy" else "full"  # plain pickle cannot hold torch's uint16 tensors
    opt = Adamax([p], lr=0.01, skip_nonfinite=True, state_format=state_format)
    for g in (torch.ones(300), torch.full((300,), math.nan), torch.full((300,), math.inf)):
        p.grad = g
        opt.step()
    assert opt.skipped_steps == 2
    if how == "deepcopy":
        clone = copy.deepcopy(opt)
    else:
        clone = pickle.loads(pickle.dumps(opt))
    assert (clone.skipped_steps, clone.skip_nonfinite, clone.state_format) == (2, True, state_format)


@pytest.mark.parametrize(
    ("param_dtype", "state_dtype"), [(torch.complex64, torch.float32), (torch.float32, torch.complex64)]
)
def test_a_checkpoint_whose_state_cannot_hold_the_params_values_is_refused(param_dtype, state_dtype):
    """Real state for a complex param (or complex for a real one) would lose half of it when torch casts it."""
    p = torch.zeros(3, dtype=param_dtype, requires_grad=True)
    opt = Adamax([p], lr=0.1)
    saved = {
        "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.ones(3, dtype=state_dtype),
                      "exp_inf": torch.ones(3, dtype=state_dtype)}},
        "param_groups": [{**{k: v for k, v in opt.param_groups[0].items() if k != "params"}, "params": [0]}],
    }  # fmt: skip
    with pytest.raises(
        TypeError, match=f"'exp_avg' has dtype {state_dtype}, which cannot hold state for {param_dtype}"
    ):
        opt.load_state_dict(saved)
    assert not opt.state
