"""The Triton kernel, run on CPU tensors by Triton's interpreter (``TRITON_INTERPRET=1``).

The interpreter executes the kernel's operations with NumPy, FMAs and
correctly rounded division included, so float32 results must be bit-identical
to the reference.  A GPU run (``benchmarks/gpu_check.py``) checks the compiled
kernel against ``torch.optim.Adamax`` on CUDA.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from tests import processes

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from adamax import reference  # noqa: E402
from adamax.cli.check import interpreted_triton  # noqa: E402
from adamax.spec import AdamaxConfig  # noqa: E402
from tests.test_conformance import CONFIGS  # noqa: E402

gpu = interpreted_triton()  # the kernel, built by Triton's interpreter
SIZES = [0, 1, 1500, 3, gpu.BLOCK, gpu.BLOCK + 1, 2 * gpu.BLOCK + 7, *([2, 5] * 6)]


def step_sizes(config, t, n):
    return torch.full((n,), -(config.lr / (1 - config.beta1**t)), dtype=torch.float64)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_kernel_matches_the_reference_after_every_step(config):
    rng = np.random.default_rng(0)
    params = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in SIZES]
    ms, us = [torch.zeros(n) for n in SIZES], [torch.zeros(n) for n in SIZES]
    expected = [(p.numpy().copy(), reference.init(p.numpy())) for p in params]
    for t in range(1, 4):
        grads = [
            torch.from_numpy((rng.standard_normal(n) * 10 ** rng.uniform(-3, 2)).astype(np.float32)) for n in SIZES
        ]
        for g in grads:
            g[:1] = 0  # u stays 0 there: "none" must not divide 0 by 0
        gpu.step(params, grads, ms, us, step_sizes(config, t, len(SIZES)), config)  # one launch, all tensors
        for k, g in enumerate(grads):
            expected[k] = reference.update(expected[k][0], g.numpy(), expected[k][1], config)
            where = f"step {t}, tensor {k} ({SIZES[k]} elements)"
            np.testing.assert_array_equal(params[k].numpy(), expected[k][0], err_msg=f"param, {where}")
            np.testing.assert_array_equal(ms[k].numpy(), expected[k][1].exp_avg, err_msg=f"exp_avg, {where}")
            np.testing.assert_array_equal(us[k].numpy(), expected[k][1].exp_inf, err_msg=f"exp_inf, {where}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_params_compute_in_float32_and_round_on_store(dtype):
    """Expected: the float32 reference on the upcast param, with float32 state, then the param rounded."""
    config = AdamaxConfig(lr=0.01, weight_decay=0.01)
    rng = np.random.default_rng(1)
    p = torch.from_numpy(rng.standard_normal(3000).astype(np.float32)).to(dtype)
    m, u = torch.zeros(3000), torch.zeros(3000)  # float32 state
    state = reference.init(p.float().numpy())
    for t in range(1, 6):
        g = torch.from_numpy(rng.standard_normal(3000).astype(np.float32)).to(dtype)
        new_p, state = reference.update(p.float().numpy(), g.float().numpy(), state, config)
        gpu.step([p], [g], [m], [u], step_sizes(config, t, 1), config)
        assert torch.equal(p, torch.from_numpy(new_p).to(dtype))
        np.testing.assert_array_equal(m.numpy(), state.exp_avg)
        np.testing.assert_array_equal(u.numpy(), state.exp_inf)


def test_bfloat16_state_freezes_the_infinity_norm():
    """0.999 rounds to 1.0 in bfloat16, so u = max(b2 u, |g|) cannot decay there; in float32 it does."""
    assert torch.tensor(0.999, dtype=torch.bfloat16).item() == 1.0
    config = AdamaxConfig(lr=1e-3)
    grads = [torch.full((4,), 100.0)] + [torch.full((4,), 0.01)] * 200  # one spike, then small gradients

    def final_u(state_dtype):
        p = torch.zeros(4, dtype=torch.bfloat16)
        m, u = torch.zeros(4, dtype=state_dtype), torch.zeros(4, dtype=state_dtype)
        for t, g in enumerate(grads, start=1):
            gpu.step([p], [g.to(torch.bfloat16)], [m], [u], step_sizes(config, t, 1), config)
        return u.float()

    assert torch.all(final_u(torch.bfloat16) == 100.0)  # frozen at the spike
    decayed = final_u(torch.float32)
    # the float32 reference, on the CPU: 100 * 0.999**200
    ref_p, state = np.zeros(4, np.float32), reference.init(np.zeros(4, np.float32))
    for g in grads:
        ref_p, state = reference.update(ref_p, g.numpy(), state, config)
    np.testing.assert_array_equal(decayed.numpy(), state.exp_inf)
    assert float(decayed[0]) == pytest.approx(100 * 0.999**200, rel=1e-4)
    # the optimizers on bfloat16 params on the CPU: torch's keeps bfloat16 state and freezes; ours keeps float32
    # state (the CPU kernel), as the Triton kernel does, and decays as the reference says
    from adamax.torch import Adamax

    finals = {}
    for make in (torch.optim.Adamax, Adamax):
        p = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
        opt = make([p], lr=1e-3)
        for g in grads:
            p.grad = g.to(torch.bfloat16)
            opt.step()
        finals[make] = opt.state[p]["exp_inf"]
    assert torch.all(finals[torch.optim.Adamax] == 100.0)
    np.testing.assert_array_equal(finals[Adamax].numpy(), state.exp_inf)


@pytest.fixture
def cpu_as_triton(monkeypatch):
    """Route CPU tensors to the (interpreted) Triton kernel, as CUDA tensors are routed on a GPU machine."""
    import adamax.torch as adamax_torch

    monkeypatch.setitem(adamax_torch._KERNEL_FOR_DEVICE, "cpu", "triton")
    return adamax_torch


@pytest.mark.parametrize("options", [dict(fused=True), dict()], ids=["fused=True", "automatic"])
def test_the_optimizer_dispatches_to_triton_and_stays_exact(cpu_as_triton, options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    oracle_model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    oracle_model.load_state_dict(model.state_dict())
    opt = cpu_as_triton.Adamax(model.parameters(), lr=0.01, weight_decay=0.1, **options)
    oracle = torch.optim.Adamax(oracle_model.parameters(), lr=0.01, weight_decay=0.1, foreach=False)
    for _ in range(5):
        x, y = torch.randn(8, 6), torch.randn(8, 3)
        for m, o in ((model, opt), (oracle_model, oracle)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
        for a, b in zip(model.parameters(), oracle_model.parameters()):
            assert torch.equal(a, b)
            assert torch.equal(opt.state[a]["exp_inf"], oracle.state[b]["exp_inf"])
    assert len(opt._plan(opt.param_groups[0]).fused) == 4  # every param went through the Triton kernel
    assert not opt._plans.groups.get(id(opt.param_groups[0]))  # the cached fast path is the CPU kernel's only


def test_bfloat16_params_get_float32_state_on_the_triton_path(cpu_as_triton):
    p = torch.randn(50).to(torch.bfloat16).requires_grad_()
    opt = cpu_as_triton.Adamax([p], lr=0.01, fused=True)
    for _ in range(3):
        p.grad = torch.randn(50).to(torch.bfloat16)
        opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32 and opt.state[p]["exp_inf"].dtype == torch.float32
    assert p.dtype == torch.bfloat16 and int(opt.state[p]["step"]) == 3
    # the checkpoint loads into torch's Adamax, which casts state to the param's dtype
    torch.optim.Adamax([p.detach().clone().requires_grad_()]).load_state_dict(opt.state_dict())


def test_capturable_keeps_the_step_count_on_the_device(cpu_as_triton):
    torch.manual_seed(2)
    p = torch.randn(40, requires_grad=True)
    opt = cpu_as_triton.Adamax([p], lr=0.01, fused=True, capturable=True)
    ref_p, state = p.detach().numpy().copy(), reference.init(p.detach().numpy())
    for _ in range(4):
        g = torch.randn(40)
        p.grad = g
        opt.step()
        ref_p, state = reference.update(ref_p, g.numpy(), state, AdamaxConfig(lr=0.01))
    assert opt.state[p]["step"].device == p.device and int(opt.state[p]["step"]) == 4
    # the bias correction is computed on the device (float64): within an ulp or two of the host's
    np.testing.assert_allclose(p.detach().numpy(), ref_p, rtol=1e-6)


def test_the_prepared_gpu_check_runs_dry_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py is meant for a lent GPU; its --dry-run keeps its code honest without one."""
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "gpu_check.json"
    result = processes.run(
        [sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--dry-run", "--no-compile", "--out", str(out)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["correctness"]["max_ulps_vs_torch_default"] == 0.0  # on the CPU, torch rounds as we do
    assert report["correctness"]["bf16_state_dtype"] == "torch.float32"
    assert report["correctness"]["compact_bit_identical_to_definition_float32"] is True
    assert report["correctness"]["compact_bit_identical_to_definition_bfloat16"] is True
    assert report["correctness"]["compact_path_float32"] == {"triton compact": 3}
    assert report["correctness"]["compact8_bit_identical_to_definition_float32"] is True
    assert report["correctness"]["compact8_bit_identical_to_definition_bfloat16"] is True
    assert report["correctness"]["compact8_path_float32"] == {"triton compact8": 3}
    assert "adamax compact8 (triton)" in report["cases"]["tiny"]["timings"]
    assert set(report["cases"]) == {"tiny", "tiny list"}


def test_the_interpreted_kernels_fma_rounds_once():
    """Under the interpreter the kernel's FMAs are computed in software (triton 3.8's interpreter rounds the product
    first).  Directed cases: a*b + c lies just above a float32 midpoint, so rounding the product first, or rounding the
    sum to float64 first, lands on the midpoint and rounds to even, the wrong way."""
    from fractions import Fraction

    import triton
    import triton.language as tl

    from adamax._exact import fma
    from adamax.cli.check import _interpreting

    with _interpreting():

        @triton.jit
        def fma_kernel(a_ptr, b_ptr, c_ptr, out_ptr, n, BLOCK: tl.constexpr):  # noqa: N803
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = i < n
            a, b, c = tl.load(a_ptr + i, mask=mask), tl.load(b_ptr + i, mask=mask), tl.load(c_ptr + i, mask=mask)
            tl.store(out_ptr + i, gpu._fma(a, b, c, True), mask=mask)

    one_up = np.float32(1) + np.float32(2.0**-23)
    directed = [  # (a, b, c): a*b + c = 1 + 2^-24 + 2^-70, and its negation
        (one_up, -(np.float32(1) - np.float32(2.0**-23)) * np.float32(2.0**-24), one_up),
        (-one_up, -(np.float32(1) - np.float32(2.0**-23)) * np.float32(2.0**-24), -one_up),
    ]
    rng = np.random.default_rng(3)
    n_random = 20_000
    a = np.concatenate([[d[0] for d in directed], rng.standard_normal(n_random)]).astype(np.float32)
    b = np.concatenate([[d[1] for d in directed], rng.standard_normal(n_random)]).astype(np.float32)
    c = np.concatenate([[d[2] for d in directed], rng.standard_normal(n_random) * 1e-3]).astype(np.float32)
    out = torch.empty(len(a))
    with _interpreting():
        fma_kernel[(triton.cdiv(len(a), 1024),)](*map(torch.from_numpy, (a, b, c)), out, len(a), BLOCK=1024)
    for k in range(len(directed)):
        exact = Fraction(float(a[k])) * Fraction(float(b[k])) + Fraction(float(c[k]))
        assert out[k].item() == float(one_up if k == 0 else -one_up), exact  # the correctly rounded result
        assert np.float32(a[k] * b[k] + c[k]) != out[k].item()  # product rounded first: the wrong way
        assert np.float32(float(a[k]) * float(b[k]) + float(c[k])) != out[k].item()  # via float64: also wrong
    np.testing.assert_array_equal(out.numpy(), fma(a, b, c))
    assert (out.numpy() != a * b + c).sum() > 100, "the random cases must include sums the product's rounding changes"


COMPACT_OPTIONS = {
    "plain": {},
    "coupled-decay": {"weight_decay": 0.05},
    "decoupled-maximize": {"weight_decay": 0.05, "decoupled_weight_decay": True, "maximize": True},
    "denominator": {"eps_placement": "denominator", "eps": 1e-3},
    "none": {"eps_placement": "none", "betas": (0.5, 0.9)},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("options", COMPACT_OPTIONS.values(), ids=COMPACT_OPTIONS.keys())
def test_the_compact_kernel_is_the_definition_bit_for_bit(dtype, options):
    """Compact state (adamax.compact): one launch over tensors of whole and part blocks, of gradients of three
    magnitudes (scales below 1 included); a spike at step 3 re-bases blocks up, and a NaN at step 5 re-bases its
    block onto NaN; params, m's bits, codes and scales equal adamax.compact.update's after every step."""
    from adamax import compact

    config = AdamaxConfig(lr=1e-2, **options)
    rng = np.random.default_rng(2)
    sizes = (700, 3, 256)
    params = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(dtype) for n in sizes]
    expected = [(p.float().numpy().copy(), compact.init(p.float().numpy())) for p in params]
    ms = [torch.zeros(n, dtype=torch.uint16) for n in sizes]  # bfloat16 bits
    codes = [torch.full((n,), compact.ZERO, dtype=torch.uint16) for n in sizes]
    scales = [torch.zeros(compact.blocks(n)) for n in sizes]
    for t in range(1, 6):
        scale = 100 if t == 3 else 1
        values = [
            rng.standard_normal(n) * scale * size * (rng.random(n) > 0.1) for n, size in zip(sizes, (1e-3, 1, 10))
        ]
        if t == 5:
            values[2][7] = np.nan
        grads = [torch.from_numpy(v.astype(np.float32)).to(dtype) for v in values]
        sizes_t = torch.tensor([-(config.lr / (1 - config.beta1**t))] * len(sizes), dtype=torch.float64)
        gpu.compact_step(params, grads, ms, codes, scales, sizes_t, torch.tensor([t] * len(sizes)), config)
        for k, g in enumerate(grads):
            new, state = compact.update(expected[k][0], g.float().numpy(), expected[k][1], config)
            expected[k] = (torch.from_numpy(new).to(dtype).float().numpy(), state)
            where = f"step {t}, tensor {k}"
            np.testing.assert_array_equal(params[k].float().numpy(), expected[k][0], err_msg=f"param, {where}")
            np.testing.assert_array_equal(ms[k].numpy(), state.exp_avg, err_msg=f"m, {where}")
            np.testing.assert_array_equal(codes[k].numpy(), state.exp_inf_code, err_msg=f"codes, {where}")
            np.testing.assert_array_equal(scales[k].numpy(), state.exp_inf_scale, err_msg=f"scales, {where}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("options", COMPACT_OPTIONS.values(), ids=COMPACT_OPTIONS.keys())
def test_the_compact8_kernel_is_the_definition_bit_for_bit(dtype, options):
    """compact8 state (adamax.compact8), as the compact test: a spike at step 3 re-bases blocks up by octaves
    (tapered codes move), a huge one at step 4 by more than 126 octaves, and a NaN at step 5 spoils a block;
    params, m's codes and scales, u's codes and scales equal adamax.compact8.update's after every step."""
    from adamax import compact8

    config = AdamaxConfig(lr=1e-2, **options)
    rng = np.random.default_rng(3)
    sizes = (700, 3, 256)
    params = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(dtype) for n in sizes]
    expected = [(p.float().numpy().copy(), compact8.init(p.float().numpy())) for p in params]
    columns = [[torch.from_numpy(getattr(e[1], key).copy()) for e in expected] for key in compact8.KEYS[1:]]
    for t in range(1, 6):
        scale = {3: 100.0, 4: 1e30 if dtype is torch.float32 else 1e4}.get(t, 1.0)
        tiny = 1e-33 if dtype is torch.float32 else 1e-3
        values = [rng.standard_normal(n) * size * (rng.random(n) > 0.1) for n, size in zip(sizes, (tiny, 1, 10))]
        values[1] = values[1] * scale
        if t == 5:
            values[2][7] = np.nan
        grads = [torch.from_numpy(v.astype(np.float32)).to(dtype) for v in values]
        sizes_t = torch.tensor([-(config.lr / (1 - config.beta1**t))] * len(sizes), dtype=torch.float64)
        gpu.compact8_step(params, grads, *columns, sizes_t, torch.tensor([t] * len(sizes)), config)
        for k, g in enumerate(grads):
            with np.errstate(invalid="ignore", over="ignore"):
                new, state = compact8.update(expected[k][0], g.float().numpy(), expected[k][1], config)
            expected[k] = (torch.from_numpy(new).to(dtype).float().numpy(), state)
            where = f"step {t}, tensor {k}"
            np.testing.assert_array_equal(params[k].float().numpy(), expected[k][0], err_msg=f"param, {where}")
            for key, column in zip(compact8.KEYS[1:], columns):
                np.testing.assert_array_equal(column[k].numpy(), getattr(state, key), err_msg=f"{key}, {where}")


def test_the_optimizer_routes_compact8_state_to_triton(cpu_as_triton):
    """Every step through the optimizer's Triton route is the definition's, params and state."""
    from adamax import compact8

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3))
    opt = cpu_as_triton.Adamax(model.parameters(), lr=0.01, state_format="compact8")
    config = AdamaxConfig(lr=0.01)
    expected = [(p.detach().numpy().copy(), compact8.init(p.detach().numpy())) for p in model.parameters()]
    for _ in range(3):
        x, y = torch.randn(8, 6), torch.randn(8, 3)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        grads = [p.grad.numpy().copy() for p in model.parameters()]
        opt.step()
        for k, (p, g) in enumerate(zip(model.parameters(), grads)):
            expected[k] = compact8.update(*expected[k][:1], g, expected[k][1], config)
            assert np.array_equal(p.detach().numpy(), expected[k][0])
            for key in compact8.KEYS[1:]:
                assert np.array_equal(opt.state[p][key].numpy(), getattr(expected[k][1], key)), key
    assert opt.last_step_paths == {"triton compact8": 4}


def test_the_optimizer_routes_compact_state_to_triton(cpu_as_triton):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3))
    twin.load_state_dict(model.state_dict())
    opt = cpu_as_triton.Adamax(model.parameters(), lr=0.01, state_format="compact")
    reference_opt = cpu_as_triton.Adamax(twin.parameters(), lr=0.01, state_format="compact", fused=False)
    for _ in range(3):
        x, y = torch.randn(8, 6), torch.randn(8, 3)
        for m, o in ((model, opt), (twin, reference_opt)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    assert opt.last_step_paths == {"triton compact": 4}
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_inf_code", "exp_inf_scale"):
            assert torch.equal(opt.state[a][key], reference_opt.state[b][key])


def test_bfloat16_state_from_a_torch_checkpoint_is_stepped_on_the_triton_path(cpu_as_triton):
    """A torch checkpoint holds bfloat16 state for a bfloat16 param: the Triton kernel takes it as it is (the numba
    kernel would not, and leaves it to torch's ops)."""
    torch.manual_seed(0)
    p = torch.randn(50).to(torch.bfloat16).requires_grad_()
    q = p.detach().clone().requires_grad_()
    theirs = torch.optim.Adamax([q], lr=0.01)  # foreach None: its checkpoint leaves the choice to the optimizer
    for _ in range(2):
        q.grad = torch.randn(50).to(torch.bfloat16)
        theirs.step()
    opt = cpu_as_triton.Adamax([p], lr=0.01)
    opt.load_state_dict(theirs.state_dict())
    for _ in range(2):
        p.grad = torch.randn(50).to(torch.bfloat16)
        opt.step()
        assert opt.last_step_paths == {"triton": 1}
    assert opt.state[p]["exp_avg"].dtype is torch.bfloat16 and int(opt.state[p]["step"]) == 4


# --- the automatic choice trusts the kernel only after a probe agreed with torch's ops ---------------------------


@pytest.fixture
def fresh_verdicts(monkeypatch):
    from adamax.torch import _probe

    monkeypatch.setattr(_probe, "_VERDICTS", {})
    return _probe


def _train_beside_torch(adamax_torch, steps=4, dtype=torch.float32, **options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)
    oracle_model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)
    oracle_model.load_state_dict(model.state_dict())
    opt = adamax_torch.Adamax(model.parameters(), lr=0.01, **options)
    oracle = torch.optim.Adamax(oracle_model.parameters(), lr=0.01, foreach=False)
    for _ in range(steps):
        x, y = torch.randn(8, 6).to(dtype), torch.randn(8, 3).to(dtype)
        for m, o in ((model, opt), (oracle_model, oracle)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    return model, opt, oracle_model


def test_a_kernel_that_agrees_with_torchs_ops_on_the_probe_is_the_automatic_path(cpu_as_triton, fresh_verdicts):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the probe agreed
        model, opt, oracle_model = _train_beside_torch(cpu_as_triton)
    assert opt.last_step_paths == {"triton": 4}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), oracle_model.parameters()))
    assert list(fresh_verdicts._VERDICTS.values()) == [None]  # probed once, for float32 params on the CPU


@pytest.mark.parametrize("fault", ["wrong values", "a compile error"])
def test_a_kernel_that_disagrees_with_torchs_ops_is_left_with_one_warning(cpu_as_triton, fresh_verdicts, monkeypatch,
                                                                          fault):  # fmt: skip
    """A deliberately wrong kernel (one ulp off in one element, or failing to compile): the automatic choice
    warns once and steps with torch's ops, bit-exact with torch.optim.Adamax; fused=True still takes the kernel."""
    real_step = gpu.step

    def wrong_step(params, *args, **kwargs):
        if fault == "a compile error":
            raise RuntimeError("PassManager::run failed\n(and more lines)")
        real_step(params, *args, **kwargs)
        last = params[-1].view(-1)
        last[-1:] = torch.nextafter(last[-1:], torch.full_like(last[-1:], math.inf))

    monkeypatch.setattr(gpu, "step", wrong_step)
    with pytest.warns(RuntimeWarning, match="the Triton kernel did not match torch's ops on a probe") as caught:
        model, opt, oracle_model = _train_beside_torch(cpu_as_triton)
        _train_beside_torch(cpu_as_triton)  # a second optimizer of the same kind: no second warning
    assert len([w for w in caught if "Triton kernel" in str(w.message)]) == 1
    expected = "param differs in 1 of" if fault == "wrong values" else "the kernel failed: RuntimeError: PassManager"
    assert expected in str(caught[0].message)
    assert opt.last_step_paths == {"forloop": 4}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), oracle_model.parameters()))
    if fault == "wrong values":
        model, opt, oracle_model = _train_beside_torch(cpu_as_triton, fused=True)  # explicit: the kernel, as asked
        assert opt.last_step_paths == {"triton": 4}
        assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), oracle_model.parameters()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_the_probe_of_low_precision_params_agrees_with_float32_ops_rounded_on_store(cpu_as_triton, fresh_verdicts,
                                                                                    dtype):  # fmt: skip
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, opt, _ = _train_beside_torch(cpu_as_triton, steps=2, dtype=dtype)
    assert opt.last_step_paths == {"triton": 4}
    assert list(fresh_verdicts._VERDICTS.values()) == [None]


def _elements(kind: str, g: torch.Tensor, call: int) -> torch.Tensor:
    """Where a kernel wrong in the way ``kind`` says goes wrong, in a tensor with gradient ``g`` (flat)."""
    n = g.numel()
    if kind == "a zero gradient":
        return (g == 0).nonzero().flatten()[:1]
    if kind == "past the first block":
        return torch.arange(gpu.BLOCK, max(gpu.BLOCK, min(n, gpu.BLOCK + 1)))
    if kind == "the third step":
        return torch.arange(min(n, 1) if call == 3 else 0)
    if kind == "a gradient above 10":
        return (g.abs() > 10).nonzero().flatten()[:1]
    if kind == "a one-element tensor":
        return torch.arange(n if n == 1 else 0)
    return torch.arange(0)


def _wrong_where(kind: str, real_step):
    """A kernel wrong in one way only: the probe's data must reach every such place."""
    calls = {"n": 0}

    def step(params, grads, ms, us, step_sizes, config):
        calls["n"] += 1
        real_step(params, grads, ms, us, step_sizes, config)
        for p, g, u in zip(params, grads, us):
            flat_p, flat_g, flat_u = p.view(-1), g.view(-1), u.view(-1)
            n = flat_p.numel()
            where = _elements(kind, flat_g, calls["n"])
            if kind == "exp_inf only" and n > 1:
                flat_u[-1:] = torch.nextafter(flat_u[-1:], torch.full_like(flat_u[-1:], math.inf))
            if len(where):
                flat_p[where] = torch.nextafter(flat_p[where], torch.full_like(flat_p[where], -math.inf))

    return step


@pytest.mark.parametrize(
    "kind",
    ["a zero gradient", "past the first block", "the third step", "a gradient above 10", "a one-element tensor",
     "exp_inf only"],
)  # fmt: skip
def test_the_probe_reaches_every_kind_of_element_a_kernel_can_get_wrong(cpu_as_triton, fresh_verdicts, monkeypatch,
                                                                         kind):  # fmt: skip
    """Zero gradients (the 0/0 guard), a tensor past one program's block, the third step, large gradients, a
    one-element tensor, the state alone: a kernel one ulp off (downwards) in any of them is found."""
    monkeypatch.setattr(gpu, "step", _wrong_where(kind, gpu.step))
    p = torch.nn.Parameter(torch.ones(3))
    opt = cpu_as_triton.Adamax([p], lr=0.01)
    p.grad = torch.ones(3)
    with pytest.warns(RuntimeWarning, match=r"(param|exp_inf) differs in 1 of"):
        opt.step()
    assert opt.last_step_paths == {"forloop": 1}
