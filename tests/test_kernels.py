"""The fused numba kernel: against the reference after every step, its wiring, and its fallbacks."""

from __future__ import annotations

import copy
import sys
import textwrap
from collections import defaultdict

import numpy as np
import pytest

from adamax import kernels, reference
from adamax.numpy import Adamax as NumpyAdamax
from tests import processes
from tests.test_conformance import CONFIGS

numba = pytest.importorskip("numba")
from adamax.kernels import cpu  # noqa: E402

# awkward sizes: empty, one, odd, a chunk boundary and a bit, and many tiny tensors mixed with large ones
SIZES = [0, 1, 4097, cpu.CHUNK, cpu.CHUNK + 1, 3 * cpu.CHUNK - 7, *([1, 2, 3, 5] * 10), 200_001]


def kernel_run(dtype, config, sizes, steps, seed=0):
    """Drive ``cpu.step`` directly and check every array against the reference after every step."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    ms, us = [np.zeros(n, dtype) for n in sizes], [np.zeros(n, dtype) for n in sizes]
    expected = [(p.copy(), reference.init(p)) for p in params]
    for t in range(1, steps + 1):
        grads = [(rng.standard_normal(n) * 10 ** rng.uniform(-3, 2)).astype(dtype) for n in sizes]
        for g in grads:
            g[:1] = 0  # u stays 0 there: "none" and eps=0 must not divide 0 by 0
        addresses = tuple(np.array([a.ctypes.data for a in col], dtype=np.int64) for col in (params, grads, ms, us))
        step_sizes = np.full(len(sizes), -(config.lr / (1 - config.beta1**t)))
        cpu.step(np.dtype(dtype), addresses, tuple(sizes), step_sizes, config, threads=2)
        for k, g in enumerate(grads):
            p_ref, s_ref = reference.update(expected[k][0], g, expected[k][1], config)
            expected[k] = (p_ref, s_ref)
            where = f"step {t}, tensor {k} of {sizes[k]} elements"
            np.testing.assert_array_equal(params[k], p_ref, err_msg=f"param, {where}")
            np.testing.assert_array_equal(ms[k], s_ref.exp_avg, err_msg=f"exp_avg, {where}")
            np.testing.assert_array_equal(us[k], s_ref.exp_inf, err_msg=f"exp_inf, {where}")


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_kernel_matches_the_reference_after_every_step(config, dtype):
    kernel_run(dtype, config, SIZES, steps=4)


def test_kernel_with_eps_zero_and_lerp_large_weight():
    from adamax.spec import AdamaxConfig

    for config in (AdamaxConfig(eps=0.0), AdamaxConfig(betas=(0.2, 0.5), eps=0.0, weight_decay=0.3)):
        kernel_run(np.float32, config, [1, 17, 5000], steps=5)


def test_kernel_with_an_eps_that_rounds_to_zero_in_float32_divides_as_torch_does():
    """eps = 1e-50 is positive, so nothing guards the division, but it is 0 in float32: where the gradient has been
    0, u = 0 and m = 0, and the step is 0 / 0, NaN, in the reference and in torch's own Adamax alike."""
    from adamax.spec import AdamaxConfig
    from adamax.torch import Adamax

    with np.errstate(invalid="ignore"):  # the reference's 0 / 0
        kernel_run(np.float32, AdamaxConfig(eps=1e-50), [1, 17, 5000], steps=3)
    params = [torch.zeros(3, requires_grad=True) for _ in range(2)]
    ours, theirs = Adamax([params[0]], eps=1e-50, fused=True), torch.optim.Adamax([params[1]], eps=1e-50)
    for opt, p in zip((ours, theirs), params):
        p.grad = torch.tensor([0.0, 1.0, -2.0])
        opt.step()
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0, equal_nan=True)
    assert params[0][0].isnan() and ours.last_step_paths == {"numba": 1}
    low = [torch.zeros(3, dtype=dtype, requires_grad=True) for dtype in (torch.bfloat16, torch.float16)]
    ours = Adamax(low, eps=1e-50, fused=True)  # the 16-bit kernel, with float32 state: eps is 0 there too
    for p in low:
        p.grad = torch.tensor([0.0, 1.0, -2.0], dtype=p.dtype)
    ours.step()
    assert all(p[0].isnan() and not p[1:].isnan().any() for p in low) and ours.last_step_paths == {"numba": 2}


def test_kernel_with_lerp_weight_exactly_one_half():
    """beta1 = 0.5: torch's lerp takes its second FMA form at weight 0.5 (``weight < 0.5`` picks the first); where
    g - m rounds, the two forms differ in the last bit, so the form chosen must be torch's."""
    from adamax.spec import AdamaxConfig

    kernel_run(np.float32, AdamaxConfig(betas=(0.5, 0.999)), [1, 17, 5000], steps=6)


@pytest.mark.parametrize("placement", ["max", "denominator", "none"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["coupled", "decoupled"])
def test_kernel_matches_the_reference_at_weight_decay_one_with_a_placement_read_from_json(placement, decoupled):
    """weight_decay = 1 exactly (a multiple of the gradient's own scale, and 1 - lr * wd for the decoupled form), and
    the placement a string parsed from a config file: equal to the literal, but not the same object."""
    import json

    from adamax.spec import AdamaxConfig

    parsed = json.loads(json.dumps(placement))
    assert parsed == placement and parsed is not placement
    config = AdamaxConfig(eps=1e-3, weight_decay=1.0, decoupled_weight_decay=decoupled, eps_placement=parsed)
    kernel_run(np.float32, config, [1, 17, 5000], steps=4)


def test_numpy_optimizer_uses_the_kernel_and_matches_the_reference():
    rng = np.random.default_rng(1)
    params = {"big": rng.standard_normal(70_000).astype(np.float32), "tiny": rng.standard_normal(3)}
    strided_holder = rng.standard_normal(20)
    params["strided"] = strided_holder[::2]  # not contiguous: takes the reference
    opt = NumpyAdamax(params, lr=0.01, weight_decay=0.1)
    grads = {k: np.ascontiguousarray(rng.standard_normal(v.shape).astype(v.dtype)) for k, v in params.items()}
    assert opt._kernel_paths(grads) == ["big", "tiny"]
    expected = {k: (v.copy(), reference.init(v)) for k, v in params.items()}
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
        opt.step(grads)
        for k in params:
            expected[k] = reference.update(expected[k][0], grads[k], expected[k][1], opt.config)
            np.testing.assert_array_equal(params[k], expected[k][0], err_msg=k)
            np.testing.assert_array_equal(opt.state[k].exp_inf, expected[k][1].exp_inf, err_msg=k)
            assert opt.state[k].step == expected[k][1].step
    np.testing.assert_array_equal(strided_holder[::2], params["strided"])


def test_numpy_fused_true_refuses_what_the_kernel_cannot_take():
    params = [np.ones(4, np.float32), np.ones(3, np.complex64)]
    opt = NumpyAdamax(params, fused=True)
    with pytest.raises(ValueError, match=r"fused=True cannot update '1'"):
        opt.step([np.ones(4, np.float32), np.ones(3, np.complex64)])
    assert not opt.state and np.all(params[0] == 1)


torch = pytest.importorskip("torch")
from adamax.spec import AdamaxConfig  # noqa: E402
from adamax.torch import Adamax  # noqa: E402


def choose(params, **options):
    """(indices of the params the kernel steps, backend of the others) for one group."""
    for p in params:
        p.grad = torch.ones_like(p) if p.grad is None else p.grad
    opt = Adamax(params, **options)
    plan = opt._plan(opt.param_groups[0])
    return [next(i for i, q in enumerate(params) if q is p) for p in plan.fused], plan.backend


def test_automatic_choice():
    dense, double = torch.zeros(8, requires_grad=True), torch.zeros(3, dtype=torch.float64, requires_grad=True)
    strided = torch.zeros(4, 4)[:, ::2].requires_grad_()
    half, complex_ = torch.zeros(4, dtype=torch.float16, requires_grad=True), torch.zeros(2, dtype=torch.complex64)
    params = [dense, double, strided, half, complex_]
    assert choose(params) == ([0, 1, 3], "forloop")  # the kernel takes what it can (float16 with float32 state)
    assert choose(params, foreach=True) == ([], "foreach")  # an explicit choice wins
    assert choose(params, foreach=False) == ([], "forloop")
    assert choose(params, fused=False) == ([], "forloop")
    assert choose(params, differentiable=True) == ([], "forloop")
    assert choose([dense, double], fused=True) == ([0, 1], "forloop")
    with pytest.raises(RuntimeError, match="fused=True cannot update param 2 of its group: a non-contiguous tensor"):
        choose(params, fused=True)


def test_a_non_contiguous_grad_falls_back():
    p = torch.zeros(4, 4, requires_grad=True)
    p.grad = torch.ones(4, 8)[:, ::2]
    assert choose([p]) == ([], "forloop")


def test_fused_true_refuses_before_changing_anything():
    a, b = torch.ones(3, requires_grad=True), torch.ones(4, dtype=torch.complex64, requires_grad=True)
    opt = Adamax([a, b], fused=True)
    a.grad, b.grad = torch.ones(3), torch.ones(4, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex64"):
        opt.step()
    assert not opt.state and torch.equal(a, torch.ones(3))
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        Adamax([a], fused=True, foreach=True)
    with pytest.raises(RuntimeError, match="does not support differentiable"):
        Adamax([a], fused=True, differentiable=True)


def test_fused_and_unfused_params_in_one_step_are_each_exact():
    torch.manual_seed(0)
    tensors = [
        torch.randn(5000),
        torch.randn(6, 6).t(),
        torch.randn(3, dtype=torch.float64),
        torch.randn(2, dtype=torch.complex64),
    ]
    ours = [t.clone().requires_grad_() for t in tensors]
    theirs = [t.clone().requires_grad_() for t in tensors]
    opt, oracle = Adamax(ours, lr=0.01, weight_decay=0.01), torch.optim.Adamax(theirs, lr=0.01, weight_decay=0.01)
    for _ in range(6):
        for a, b in zip(ours, theirs):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        oracle.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
            assert torch.equal(opt.state[a]["exp_inf"], oracle.state[b]["exp_inf"])


def test_without_numba_everything_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now fails
    monkeypatch.delitem(sys.modules, "adamax.kernels.cpu")
    monkeypatch.delattr(kernels, "cpu")
    kernels.cpu_kernels.cache_clear()
    try:
        assert kernels.cpu_kernels() is None
        p = torch.ones(5, requires_grad=True)
        opt = Adamax([p], lr=0.1)
        p.grad = torch.ones(5)
        opt.step()
        assert torch.allclose(p, torch.full((5,), 0.9))
        opt = Adamax([p], fused=True)  # triton may still serve CUDA tensors; CPU ones are refused at the step
        with pytest.raises(RuntimeError, match="no fused kernel for cpu tensors here"):
            opt.step()
        with pytest.raises(RuntimeError, match="fused=True needs numba"):
            NumpyAdamax([np.ones(2)], fused=True)
        arrays = [np.ones(3, np.float32)]
        NumpyAdamax(arrays, lr=0.1).step([np.ones(3, np.float32)])
        np.testing.assert_allclose(arrays[0], 0.9, rtol=1e-6)
    finally:
        kernels.cpu_kernels.cache_clear()
        monkeypatch.undo()
    assert kernels.cpu_kernels() is cpu


def run_python(code: str) -> str:
    result = processes.run([sys.executable, "-c", textwrap.dedent(code)])
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_no_per_step_allocation_proportional_to_n():
    """Peak resident memory over 100 fused steps of a 10M-element tensor grows by far less than one copy (40 MB)."""
    out = run_python(
        """
        import resource, numpy as np, torch
        from adamax.torch import Adamax
        from adamax.numpy import Adamax as NumpyAdamax

        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        n = 10_000_000
        p = torch.zeros(n, requires_grad=True)
        p.grad = torch.full((n,), 0.5)
        opt = Adamax([p], fused=True)
        opt.step()
        before = peak_mb()
        for _ in range(100):
            opt.step()
        torch_growth = peak_mb() - before

        arrays, grads = [np.zeros(n, np.float32)], [np.full(n, 0.5, np.float32)]
        numpy_opt = NumpyAdamax(arrays, fused=True)
        numpy_opt.step(grads)
        before = peak_mb()
        for _ in range(100):
            numpy_opt.step(grads)
        print(f"{torch_growth:.1f} {peak_mb() - before:.1f}")
        """
    )
    torch_growth, numpy_growth = map(float, out.split())
    print(f"peak RSS growth over 100 steps: torch {torch_growth} MB, numpy {numpy_growth} MB (one copy: 40 MB)")
    assert torch_growth < 4 and numpy_growth < 4


def test_the_cached_fast_path_notices_every_change():
    """After a whole-group kernel step, later steps reuse a cached plan; anything a user changes sends them back."""
    torch.manual_seed(1)
    ours = [torch.randn(300, requires_grad=True), torch.randn(7, 3, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt, oracle = Adamax(ours, lr=0.01), torch.optim.Adamax(theirs, lr=0.01)

    def step(grads=None):
        grads = grads or [torch.randn_like(p) for p in ours]
        for a, b, g in zip(ours, theirs, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        oracle.step()

    def check():
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
            for key in ("step", "exp_avg", "exp_inf"):
                assert torch.equal(opt.state[a][key], oracle.state[b][key]), key

    step()
    step()
    assert opt._plans.lookup(opt.param_groups[0], opt.state) is not None
    check()
    # a state tensor swapped for an equal copy: used, and the result still exact
    opt.state[ours[0]]["exp_avg"] = opt.state[ours[0]]["exp_avg"].clone()
    step()
    check()
    # a whole state entry replaced, with the wrong shape: refused before anything moves
    saved = opt.state[ours[1]]
    opt.state[ours[1]] = {**saved, "exp_inf": torch.zeros(2)}
    before = [p.detach().clone() for p in ours]
    ours[0].grad, ours[1].grad = torch.ones(300), torch.ones(7, 3)
    with pytest.raises(ValueError):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, before))
    opt.state[ours[1]] = saved
    step()
    check()
    # a param without a gradient, then with one again; a checkpoint reloaded mid-run
    ours[1].grad = theirs[1].grad = None
    ours[0].grad = theirs[0].grad = torch.randn(300)
    opt.step()
    oracle.step()
    check()
    opt.load_state_dict(copy.deepcopy(oracle.state_dict()))  # torch aliases loaded tensors: copy
    step()
    step()
    check()
    # the step counts live in one buffer, and the checkpoint still loads into torch as it is
    torch.optim.Adamax([p.detach().clone() for p in ours]).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("shape", [(3, 4), (6, 2)])  # sorting before and after (4, 3)
@pytest.mark.parametrize("fused", [None, True], ids=["automatic", "fused"])
def test_the_cached_fast_path_refuses_a_gradient_reshaped_behind_torchs_setter(fused, shape):
    """``p.grad.data = ...`` skips torch's shape check; the cached path must still refuse, as every other path."""
    w = torch.nn.Parameter(torch.zeros(4, 3))
    opt = Adamax([w], fused=fused)
    w.grad = torch.ones(4, 3)
    opt.step()
    opt.step()  # from here on the cached plan serves the group
    w.grad.data = torch.arange(12.0).reshape(shape)
    before, state = w.detach().clone(), copy.deepcopy(opt.state[w])
    with pytest.raises(RuntimeError, match=rf"gradient of shape \({shape[0]}, {shape[1]}\).*expected shape \(4, 3\)"):
        opt.step()
    assert torch.equal(w, before)
    assert all(torch.equal(opt.state[w][k], state[k]) for k in state)


def cached_pair(shape=(4, 6)):
    """Our optimizer, two steps in (so the cached plan serves its group), and torch's, on equal params."""
    torch.manual_seed(4)
    ours = torch.nn.Parameter(torch.randn(shape))
    theirs = torch.nn.Parameter(ours.detach().clone())
    opt, oracle = Adamax([ours], lr=0.01), torch.optim.Adamax([theirs], lr=0.01, foreach=False)
    for _ in range(2):
        g = torch.randn(shape)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        oracle.step()
    assert opt._plans.lookup(opt.param_groups[0], opt.state) is not None
    assert opt.last_step_paths == {"numba": 1}  # the cached step says which path it took, as the full plan does
    return ours, theirs, opt, oracle


def test_a_param_without_a_gradient_yet_keeps_its_group_off_the_cached_path_until_it_has_one():
    torch.manual_seed(5)
    ours = [torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(2, 3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, oracle = Adamax(ours, lr=0.01), torch.optim.Adamax(theirs, lr=0.01, foreach=False)
    for step in range(4):
        for a, b in zip(ours, theirs) if step else [(ours[0], theirs[0])]:  # the second param waits a step
            g = torch.randn(a.shape)
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        oracle.step()
        assert opt.last_step_paths == {"numba": 2 if step else 1}
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
        assert all(torch.equal(opt.state[a][key], oracle.state[b][key]) for key in ("step", "exp_avg", "exp_inf"))


STATE_EDITS = {  # each applied alike to our state and to torch's
    "del": lambda state, p: state.__delitem__(p),
    "pop": lambda state, p: state.pop(p),
    "popitem": lambda state, p: state.popitem(),
    "clear": lambda state, p: state.clear(),
    "update": lambda state, p: state.update({p: {}}),
    "assign": lambda state, p: state.__setitem__(p, {}),
}


@pytest.mark.parametrize("edit", STATE_EDITS.values(), ids=STATE_EDITS.keys())
def test_a_state_entry_removed_on_the_cached_path_starts_again_as_torchs_does(edit):
    ours, theirs, opt, oracle = cached_pair()
    edit(opt.state, ours)
    edit(oracle.state, theirs)
    for _ in range(2):
        g = torch.randn(ours.shape)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        oracle.step()
    assert torch.equal(ours, theirs)
    for key in ("step", "exp_avg", "exp_inf"):
        assert torch.equal(opt.state[ours][key], oracle.state[theirs][key]), key


@pytest.mark.parametrize("halves", [(0, 1), (1, 0)], ids=["to-a-higher-address", "to-a-lower-address"])
@pytest.mark.parametrize("key", ["exp_avg", "exp_inf"])
def test_state_moved_to_new_memory_on_the_cached_path_is_stepped_there(key, halves):
    """``tensor.data = ...`` keeps the state tensor and gives it new memory: the kernel must write there.  The
    state moves into one half of a buffer, then into the other, so the second move goes up or down in memory."""
    ours, theirs, opt, oracle = cached_pair()
    buffer = torch.empty(2, *ours.shape)
    for half in halves:
        buffer[half] = opt.state[ours][key]
        opt.state[ours][key].data = buffer[half]
        g = torch.randn(ours.shape)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        oracle.step()
        assert torch.equal(ours, theirs)
        assert torch.equal(opt.state[ours][key], oracle.state[theirs][key])
        assert opt.state[ours][key].data_ptr() == buffer[half].data_ptr()


@pytest.mark.parametrize("index", [0, -1], ids=["first", "last"])
def test_a_param_removed_from_a_cached_group_is_no_longer_stepped(index):
    torch.manual_seed(6)
    ours = [torch.nn.Parameter(torch.randn(5)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, oracle = Adamax(ours, lr=0.01), torch.optim.Adamax(theirs, lr=0.01, foreach=False)
    for step in range(4):
        if step == 2:
            opt.param_groups[0]["params"].pop(index)
            oracle.param_groups[0]["params"].pop(index)
        for a, b in zip(ours, theirs):
            g = torch.randn(a.shape)
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        oracle.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
        assert all(torch.equal(opt.state[a][key], oracle.state[b][key]) for key in ("step", "exp_avg", "exp_inf"))


def twins(n=3, seed=6):
    """Params for ours and (copies) for torch's forloop Adamax, with both optimizers."""
    torch.manual_seed(seed)
    ours = [torch.nn.Parameter(torch.randn(5)) for _ in range(n)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    return ours, theirs, Adamax(ours, lr=0.01), torch.optim.Adamax(theirs, lr=0.01, foreach=False)


def step_twins(ours, theirs, opt, oracle):
    for a, b in zip(ours, theirs):
        g = torch.randn(a.shape)
        a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    oracle.step()


def assert_twins(ours, theirs, opt, oracle):
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
        for key in ("step", "exp_avg", "exp_inf"):
            assert torch.equal(opt.state[a][key], oracle.state[b][key]), key
            assert opt.state[a][key].dtype is oracle.state[b][key].dtype, key


def test_a_param_appended_to_a_cached_group_is_stepped():
    ours, theirs, opt, oracle = twins()
    for step in range(4):
        if step == 2:
            extra = torch.nn.Parameter(torch.randn(5))
            ours.append(extra)
            theirs.append(torch.nn.Parameter(extra.detach().clone()))
            opt.param_groups[0]["params"].append(ours[-1])
            oracle.param_groups[0]["params"].append(theirs[-1])
        step_twins(ours, theirs, opt, oracle)
    assert_twins(ours, theirs, opt, oracle)


@pytest.mark.parametrize(
    ("flag", "value", "path"),
    [
        ("fused", False, "forloop"),
        ("foreach", True, "foreach"),
        ("foreach", False, "forloop"),
        ("fused", True, "numba"),
    ],
)
def test_a_flag_set_on_a_cached_group_takes_effect_at_the_next_step(flag, value, path):
    """A group's fused or foreach changed between cached steps: the next step takes the path it names."""
    ours, theirs, opt, oracle = twins()
    for step in range(4):
        if step == 2:
            opt.param_groups[0][flag] = value
        step_twins(ours, theirs, opt, oracle)
    assert opt.last_step_paths == {path: 3}
    assert_twins(ours, theirs, opt, oracle)


def test_a_group_set_back_from_differentiable_leaves_the_full_plan_as_it_came():
    ours, theirs, opt, oracle = twins()
    opt.param_groups[0]["differentiable"] = True
    for step in range(4):
        if step == 2:
            opt.param_groups[0]["differentiable"] = False
        step_twins(ours, theirs, opt, oracle)
        assert opt.last_step_paths == {"forloop" if step < 2 else "numba": 3}
    assert_twins(ours, theirs, opt, oracle)


def test_step_counts_in_float64_under_a_float64_default_dtype_stay_float64_as_torchs(monkeypatch):
    """torch makes step counts in its default dtype's precision (float64 here); the cached path keeps float32
    counts in one buffer, and must leave float64 ones alone."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, theirs, opt, oracle = twins()
        for _ in range(4):
            step_twins(ours, theirs, opt, oracle)
        assert opt.state[ours[0]]["step"].dtype is torch.float64
        assert_twins(ours, theirs, opt, oracle)
    finally:
        torch.set_default_dtype(default)


def test_a_state_dict_assigned_by_hand_between_cached_steps_is_stepped_as_torchs():
    """``opt.state = defaultdict(dict, opt.state)`` (a copy, as some training loops reset or wrap state): torch's
    step takes it, and so does ours, whose cached plan no longer applies (it used to fail after the step)."""
    ours, theirs, opt, oracle = twins()
    for step in range(5):
        if step == 2:
            opt.state = defaultdict(dict, opt.state)
            oracle.state = defaultdict(dict, oracle.state)
        step_twins(ours, theirs, opt, oracle)
    assert opt.last_step_paths == {"numba": 3}
    assert_twins(ours, theirs, opt, oracle)


def test_a_step_count_replaced_by_an_equal_tensor_between_cached_steps_counts_on():
    ours, theirs, opt, oracle = twins()
    for step in range(5):
        if step == 3:
            opt.state[ours[1]]["step"] = opt.state[ours[1]]["step"].clone()
        step_twins(ours, theirs, opt, oracle)
    assert int(opt.state[ours[1]]["step"]) == 5
    assert_twins(ours, theirs, opt, oracle)


def test_cached_groups_add_up_their_params_in_last_step_paths():
    params = [torch.nn.Parameter(torch.zeros(4)) for _ in range(4)]
    opt = Adamax([{"params": params[:1]}, {"params": params[1:]}])
    for _ in range(3):  # the second step on caches both groups
        for p in params:
            p.grad = torch.ones(4)
        opt.step()
        assert opt.last_step_paths == {"numba": 4}


def test_the_cached_fast_path_refuses_a_param_reshaped_behind_torchs_setter():
    """``p.data = ...`` with the same number of elements and another shape, after the gradient was set (so that
    the gradient keeps the old shape, which is all the kernel reads): the step refuses, changing nothing, as the
    full plan does."""
    w, _, opt, _ = cached_pair()
    w.grad = torch.ones(4, 6)
    w.data = w.detach().reshape(6, 4).clone()
    before, state = w.detach().clone(), copy.deepcopy(opt.state[w])
    with pytest.raises((ValueError, RuntimeError), match="shape"):
        opt.step()
    assert torch.equal(w, before)
    assert all(torch.equal(opt.state[w][k], state[k]) for k in state)


def test_the_cached_fast_path_steps_a_non_contiguous_gradient_as_torch_does():
    ours, theirs, opt, oracle = cached_pair()
    g = torch.randn(6, 4).t()  # the right shape, transposed memory
    assert not g.is_contiguous()
    ours.grad, theirs.grad = g.clone(), g.clone()  # clone keeps the strides
    assert not ours.grad.is_contiguous()
    opt.step()
    oracle.step()
    assert torch.equal(ours, theirs)
    for key in ("exp_avg", "exp_inf"):
        assert torch.equal(opt.state[ours][key], oracle.state[theirs][key]), key


def test_non_contiguous_state_is_stepped_as_torch_steps_it():
    """State entries swapped for non-contiguous tensors of equal values (a transposed copy, as a checkpoint tool
    might leave them): the step's result is torch's, not the kernel reading their memory in the wrong order."""
    ours, theirs, opt, oracle = cached_pair()
    for key in ("exp_avg", "exp_inf"):
        value = opt.state[ours][key]
        strided = value.t().contiguous().t()  # equal values, column-major memory
        assert not strided.is_contiguous() and torch.equal(strided, value)
        opt.state[ours][key] = strided
    g = torch.randn(4, 6)
    ours.grad, theirs.grad = g.clone(), g.clone()
    opt.step()
    oracle.step()
    assert torch.equal(ours, theirs)
    for key in ("exp_avg", "exp_inf"):
        assert torch.equal(opt.state[ours][key], oracle.state[theirs][key]), key


@pytest.mark.parametrize("key", ["step", "exp_avg", "exp_inf"])
def test_the_cached_fast_path_names_a_deleted_state_entry(key):
    w = torch.nn.Parameter(torch.zeros(5))
    opt = Adamax([w])
    for _ in range(2):
        w.grad = torch.ones(5)
        opt.step()
    del opt.state[w][key]
    with pytest.raises(ValueError, match=r"state of param 0 of its group: expected the keys"):
        opt.step()


def test_sign_of_a_zero_moment_when_one_minus_beta1_rounds_to_one():
    """The one documented difference from torch (docs/design.md): with ``1 - b1 == 1`` in the dtype and g = -0,
    torch's vectorised lerp stores -0 in its vector body and +0 in its scalar tail (where the body ends depends on
    the CPU's vector width); the reference and the kernel store +0 everywhere.  Values and params are equal."""
    from adamax.spec import AdamaxConfig

    n, betas = 100, (1e-8, 0.999)
    ours, theirs = torch.zeros(n, requires_grad=True), torch.zeros(n, requires_grad=True)
    opt, oracle = Adamax([ours], betas=betas, fused=True), torch.optim.Adamax([theirs], betas=betas)
    ours.grad, theirs.grad = torch.full((n,), -0.0), torch.full((n,), -0.0)
    opt.step()
    oracle.step()
    m, m_torch = opt.state[ours]["exp_avg"], oracle.state[theirs]["exp_avg"]
    assert torch.equal(m, m_torch)  # as values: -0 == +0
    assert torch.signbit(m_torch).any(), "torch no longer stores -0 here: the documented difference may be gone"
    assert not torch.signbit(m).any()
    _, state = reference.update(
        np.zeros(n, np.float32),
        np.full(n, -0.0, np.float32),
        reference.init(np.zeros(n, np.float32)),
        AdamaxConfig(betas=betas),
    )
    np.testing.assert_array_equal(np.signbit(state.exp_avg), np.signbit(m.numpy()))  # the kernel is the reference
    assert torch.equal(ours, theirs) and torch.equal(torch.signbit(ours), torch.signbit(theirs))


def test_16_bit_conversions_are_numpys_and_torchs():
    """float16 <-> float32 by bits against NumPy (every float16; float32 values around every float16, the
    overflow edge and subnormals), bfloat16 rounding against torch."""
    from numba import njit

    from adamax.kernels import cpu

    @njit
    def widen(bits, out):
        for i in range(bits.shape[0]):
            out[i] = cpu._f16_to_f32(bits[i])

    @njit
    def narrow(x, out, kind):
        for i in range(x.shape[0]):
            out[i] = cpu._f32_to_f16(x[i]) if kind == 2 else cpu._f32_to_bf16(x[i])

    every = np.arange(65536, dtype=np.uint16)
    wide = np.empty(65536, np.float32)
    widen(every, wide)
    expected = every.view(np.float16).astype(np.float32)
    assert np.array_equal(wide, expected, equal_nan=True)
    finite = expected[np.isfinite(expected)]
    rng = np.random.default_rng(0)
    x = np.concatenate([
        finite, np.nextafter(finite, np.float32(np.inf)), np.nextafter(finite, np.float32(-np.inf)),
        (rng.standard_normal(100_000) * 10.0 ** rng.uniform(-9, 6, 100_000)).astype(np.float32),
        np.array([65519.99, 65520, -65520, 2.0**-25, 3 * 2.0**-26, np.inf, -np.inf], np.float32),
    ]).astype(np.float32)  # fmt: skip
    half = np.empty(len(x), np.uint16)
    narrow(x, half, 2)
    with np.errstate(over="ignore"):
        assert np.array_equal(half, x.astype(np.float16).view(np.uint16))
    brain = np.empty(len(x), np.uint16)
    narrow(x, brain, 1)
    torch = pytest.importorskip("torch")
    assert np.array_equal(brain, torch.from_numpy(x).to(torch.bfloat16).view(torch.uint16).numpy())


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
@pytest.mark.parametrize("config", list(CONFIGS.values())[::3], ids=list(CONFIGS)[::3])
def test_16_bit_params_step_in_float32_and_round_on_store(kind, config):
    """bfloat16/float16 params with float32 state: the float32 reference on the widened param, then the param
    rounded to nearest, bit for bit, over steps."""
    torch = pytest.importorskip("torch")
    from adamax.kernels import cpu

    dtype = getattr(torch, kind)
    code = cpu.BF16 if kind == "bfloat16" else cpu.F16
    rng = np.random.default_rng(3)
    sizes = (3000, 1, 70_000)
    params = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(dtype) for n in sizes]
    ms, us = [np.zeros(n, np.float32) for n in sizes], [np.zeros(n, np.float32) for n in sizes]
    expected = [(p.float().numpy().copy(), reference.init(p.float().numpy())) for p in params]
    for t in range(1, 5):
        grads = [torch.from_numpy((rng.standard_normal(n) * 10 ** rng.uniform(-3, 2)).astype(np.float32)).to(dtype)
                 for n in sizes]  # fmt: skip
        columns = (
            [p.view(torch.uint16).numpy() for p in params],
            [g.view(torch.uint16).numpy() for g in grads],
            ms,
            us,
        )
        addresses = tuple(np.array([a.ctypes.data for a in column], np.int64) for column in columns)
        cpu.step16(code, addresses, sizes, np.full(3, -(config.lr / (1 - config.beta1**t))), config)
        for k, g in enumerate(grads):
            new, state = reference.update(expected[k][0], g.float().numpy(), expected[k][1], config)
            expected[k] = (torch.from_numpy(new).to(dtype).float().numpy(), state)
            assert np.array_equal(params[k].float().numpy(), expected[k][0], equal_nan=True), (t, k)
            assert np.array_equal(ms[k], state.exp_avg) and np.array_equal(us[k], state.exp_inf), (t, k)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_optimizer_steps_16_bit_cpu_params_in_the_kernel_with_float32_state(dtype):
    dtype = getattr(torch, dtype)
    config = AdamaxConfig(lr=1e-2, weight_decay=0.01)
    torch.manual_seed(0)
    p = torch.randn(5000).to(dtype).requires_grad_()
    opt = Adamax([p], lr=1e-2, weight_decay=0.01)
    expected = (p.detach().float().numpy().copy(), reference.init(p.detach().float().numpy()))
    for _ in range(5):
        p.grad = torch.randn(5000).to(dtype)
        new, state = reference.update(expected[0], p.grad.float().numpy(), expected[1], config)
        expected = (torch.from_numpy(new).to(dtype).float().numpy(), state)
        opt.step()
        assert np.array_equal(p.detach().float().numpy(), expected[0])
        assert np.array_equal(opt.state[p]["exp_avg"].numpy(), state.exp_avg)
        assert np.array_equal(opt.state[p]["exp_inf"].numpy(), state.exp_inf)
    assert opt.last_step_paths == {"numba": 1} and opt.state[p]["exp_inf"].dtype is torch.float32
    # state in the param's dtype (torch's own, from its checkpoint) is stepped by torch's ops, as torch steps it
    theirs = torch.optim.Adamax([torch.nn.Parameter(p.detach().clone())], lr=1e-2)
    theirs.param_groups[0]["params"][0].grad = p.grad.clone()
    theirs.step()
    opt.load_state_dict(theirs.state_dict())
    assert opt.state[p]["exp_avg"].dtype is dtype
    opt.step()
    assert opt.last_step_paths == {"forloop": 1}


def test_a_key_added_to_a_cached_groups_state_entry_is_refused_before_anything_moves():
    """An entry edited in place (not replaced) leaves the state mapping's version as it was: the cached plan's own
    per-param check must still send the step to the full plan, which refuses the entry."""
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(3)]
    opt = Adamax(params, lr=0.1)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones(5)
        opt.step()
    assert opt._plans.lookup(opt.param_groups[0], opt.state) is not None
    opt.state[params[1]]["extra"] = torch.zeros(())
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]
    with pytest.raises(ValueError, match="expected the keys"):
        opt.step()
    for p, (value, entry) in zip(params, before):
        assert torch.equal(p, value) and all(torch.equal(opt.state[p][k], v) for k, v in entry.items())
