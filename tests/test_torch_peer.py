"""torch's generic optimizer properties, run over adamax.torch.Adamax with torch's own test machinery.

The machinery is torch's (``OptimizerInfo``, ``optims``, ``instantiate_device_type_tests``,
``optim_inputs_func_adamax``, ``optim_error_inputs_func_adamax``); the tests are ours.  Every
configuration torch registers for its Adamax runs here, plus ours (eps placements, decoupled decay).

Skips, each with its reason:

* capturable configurations: ``optim_inputs_func_adamax`` registers them for CUDA only; on the CPU
  torch refuses them, and so do we (``test_torch.py::test_capturable_is_refused_on_cpu_like_torch``).
* ``test_step_is_noop_for_zero_grads`` for configurations with weight decay: the decay makes a zero
  gradient non-zero, so the step is rightly not a no-op.
* differentiable configurations: torch's generic tests step leaf params, which autograd forbids in
  a differentiable step; ``test_torch.py::test_differentiable_passes_gradcheck`` covers them.
* torch's fused, CUDA, memory-format-on-GPU and large-tensor tests: this adapter has no fused or
  GPU path yet, and the CPU is all CI has.
"""

from __future__ import annotations

import copy
import io
import math

import pytest

torch = pytest.importorskip("torch")

from torch.nn import Parameter  # noqa: E402
from torch.testing._internal.common_device_type import instantiate_device_type_tests  # noqa: E402
from torch.testing._internal.common_optimizers import (  # noqa: E402
    ErrorOptimizerInput,
    OptimizerInfo,
    OptimizerInput,
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_error_inputs_func_adamax,
    optim_inputs_func_adamax,
    optims,
)
from torch.testing._internal.common_utils import TestCase  # noqa: E402

from adamax.torch import Adamax  # noqa: E402


def adamax_inputs(device, dtype=None):
    return [
        *optim_inputs_func_adamax(device, dtype),
        OptimizerInput(params=None, kwargs={"eps_placement": "denominator"}, desc="eps in the denominator"),
        OptimizerInput(params=None, kwargs={"eps_placement": "none", "lr": 0.01}, desc="the paper's form"),
        OptimizerInput(
            params=None, kwargs={"weight_decay": 0.1, "decoupled_weight_decay": True}, desc="decoupled decay"
        ),
    ]


def _error(kwargs, error_type, regex, desc):
    return ErrorOptimizerInput(
        OptimizerInput(params=None, kwargs=kwargs, desc=desc), error_type=error_type, error_regex=regex
    )


def _refuse_duplicates(error: ErrorOptimizerInput) -> ErrorOptimizerInput:
    """torch warns about a param listed twice, then steps it twice; we refuse it (docs/design.md)."""
    if not (issubclass(error.error_type, Warning) and "duplicate parameters" in str(error.error_regex)):
        return error
    return ErrorOptimizerInput(
        error.optimizer_error_input, error_type=ValueError, error_regex="lists the same parameter more than once"
    )


def adamax_error_inputs(device, dtype):
    torch_inputs = optim_error_inputs_func_adamax(device, dtype)
    assert any("duplicate parameters" in str(e.error_regex) for e in torch_inputs), "torch's duplicate case moved"
    return [
        *map(_refuse_duplicates, torch_inputs),
        _error({"fused": "no"}, TypeError, "Invalid fused: 'no'", "a string fused"),
        _error({"lr": -1.0}, ValueError, "^Invalid learning rate: -1.0$", "negative lr"),
        _error({"lr": math.inf}, ValueError, "Invalid learning rate: inf", "infinite lr, which torch accepts"),
        _error({"eps": -1e-8}, ValueError, "^Invalid epsilon value: -1e-08$", "negative eps"),
        _error({"betas": (-0.1, 0.9)}, ValueError, "^Invalid beta parameter at index 0: -0.1$", "beta1 < 0"),
        _error({"weight_decay": -1.0}, ValueError, "^Invalid weight_decay value: -1.0$", "negative weight decay"),
        _error({"betas": (0.9,)}, ValueError, "Invalid betas", "one beta"),
        _error({"eps_placement": "after"}, ValueError, "Invalid eps_placement: 'after'", "unknown eps placement"),
        _error({"lr": "0.1"}, TypeError, "Invalid learning rate: '0.1'", "a string lr"),
    ]


ADAMAX = OptimizerInfo(
    Adamax,
    optim_inputs_func=adamax_inputs,
    optim_error_inputs_func=adamax_error_inputs,
    supported_impls=("foreach", "differentiable"),
    has_capturable_arg=True,
)


def configs(device, dtype, optim_info):
    """Every registered configuration, with torch's global foreach/differentiable variants, minus differentiable."""
    return _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info, skip=("differentiable",))


def quadratic(device, dtype, contiguous=True):
    torch.manual_seed(0)
    if contiguous:
        weight = Parameter(torch.randn(2, 3, device=device, dtype=dtype))
    else:
        weight = Parameter(torch.randn(3, 2, device=device, dtype=dtype).t())
        assert not weight.is_contiguous()
    bias = Parameter(torch.randn(2, device=device, dtype=dtype))
    x = torch.randn(3, device=device, dtype=dtype)

    def closure(opt=None):
        if opt is not None:
            opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        if opt is not None:
            loss.backward()
        return loss

    return [weight, bias], closure


class TestAdamaxPeer(TestCase):
    @optims([ADAMAX], dtypes=[torch.float32])
    def test_errors(self, device, dtype, optim_info):
        for error in optim_info.optim_error_inputs_func(device=device, dtype=dtype):
            inp = error.optimizer_error_input
            params = inp.params if inp.params is not None else [Parameter(torch.randn(2, device=device, dtype=dtype))]
            if issubclass(error.error_type, Warning):
                with self.assertWarnsRegex(error.error_type, error.error_regex):
                    optim_info.optim_cls(params, **inp.kwargs)
            else:
                with self.assertRaisesRegex(error.error_type, error.error_regex, msg=inp.desc):
                    optim_info.optim_cls(params, **inp.kwargs)

    @optims([ADAMAX], dtypes=[torch.float32, torch.float64])
    def test_loss_goes_the_right_way(self, device, dtype, optim_info):
        for contiguous in (True, False):
            for scheduler in (None, "StepLR", "ReduceLROnPlateau"):
                for inp in configs(device, dtype, optim_info):
                    params, closure = quadratic(device, dtype, contiguous)
                    opt = optim_info.optim_cls(params, **copy.deepcopy(inp.kwargs))
                    if scheduler == "StepLR":
                        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.9)
                    elif scheduler == "ReduceLROnPlateau":
                        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2)
                    initial = closure().item()
                    for _ in range(20):
                        loss = opt.step(lambda opt=opt, closure=closure: closure(opt))
                        if scheduler == "StepLR":
                            sched.step()
                        elif scheduler == "ReduceLROnPlateau":
                            sched.step(loss)
                    final = closure().item()
                    where = f"{inp.desc}, contiguous={contiguous}, scheduler={scheduler}"
                    if inp.kwargs.get("maximize"):
                        self.assertGreater(final, initial, where)
                    else:
                        self.assertLess(final, initial, where)

    @optims([ADAMAX], dtypes=[torch.complex64])
    def test_complex_equals_view_as_real(self, device, dtype, optim_info):
        for inp in configs(device, dtype, optim_info):
            torch.manual_seed(1)
            z = torch.randn(3, 4, device=device, dtype=dtype)
            complex_p = Parameter(z.clone())
            real_p = Parameter(torch.view_as_real(z.clone()))
            opt_c = optim_info.optim_cls([complex_p], **copy.deepcopy(inp.kwargs))
            opt_r = optim_info.optim_cls([real_p], **copy.deepcopy(inp.kwargs))
            for _ in range(6):
                g = torch.randn_like(z)
                complex_p.grad, real_p.grad = g.clone(), torch.view_as_real(g.clone())
                opt_c.step()
                opt_r.step()
                if inp.kwargs.get("weight_decay") and not inp.kwargs.get("foreach"):
                    # torch's one-tensor path decays complex params in complex arithmetic: rounding differs
                    self.assertEqual(torch.view_as_real(complex_p), real_p)
                else:
                    self.assertEqual(torch.view_as_real(complex_p), real_p, atol=0, rtol=0)
                self.assertEqual(torch.view_as_real(opt_c.state[complex_p]["exp_avg"]), opt_r.state[real_p]["exp_avg"])

    @optims([ADAMAX], dtypes=[torch.float32, torch.float64])
    def test_foreach_matches_forloop(self, device, dtype, optim_info):
        for inp in optim_info.optim_inputs_func(device, dtype):
            if inp.kwargs.get("capturable"):
                continue
            runs = []
            for foreach in (False, True):
                torch.manual_seed(2)
                params = [
                    Parameter(torch.randn(4, 3, device=device, dtype=dtype)),
                    Parameter(torch.zeros(0, device=device, dtype=dtype)),  # 0-size
                    Parameter(torch.randn(5, device=device, dtype=dtype)),
                    Parameter(torch.randn(2, 2, device=device, dtype=dtype).t()),
                ]
                opt = optim_info.optim_cls(params, foreach=foreach, **copy.deepcopy(inp.kwargs))
                for step in range(7):
                    for i, p in enumerate(params):
                        p.grad = None if (step == 3 and i == 2) else torch.randn_like(p)  # a None grad at one step
                    opt.step()
                runs.append((params, opt))
            (loop_params, loop_opt), (each_params, each_opt) = runs
            for p, q in zip(loop_params, each_params):
                self.assertEqual(p, q, atol=0, rtol=0, msg=inp.desc)
                for key in ("step", "exp_avg", "exp_inf"):
                    self.assertEqual(loop_opt.state[p][key], each_opt.state[q][key], atol=0, rtol=0)
            self.assertEqual(int(loop_opt.state[loop_params[2]]["step"]), 6)

    @optims([ADAMAX], dtypes=[torch.float32])
    def test_state_dict_roundtrip_is_bit_exact(self, device, dtype, optim_info):
        for inp in configs(device, dtype, optim_info):
            params, closure = quadratic(device, dtype)
            opt = optim_info.optim_cls(params, **copy.deepcopy(inp.kwargs))
            for _ in range(4):
                opt.step(lambda opt=opt, closure=closure: closure(opt))
            buffer = io.BytesIO()
            torch.save(opt.state_dict(), buffer)
            buffer.seek(0)
            clones = [Parameter(p.detach().clone()) for p in params]
            clone = optim_info.optim_cls(clones, **copy.deepcopy(inp.kwargs))
            clone.load_state_dict(torch.load(buffer, weights_only=True))
            x = torch.randn(3, device=device, dtype=dtype)
            for _ in range(4):
                for ps, o in ((params, opt), (clones, clone)):
                    o.zero_grad()
                    (ps[0].mv(x) + ps[1]).pow(2).sum().backward()
                    o.step()
            for p, q in zip(params, clones):
                self.assertEqual(p, q, atol=0, rtol=0, msg=inp.desc)

    @optims([ADAMAX], dtypes=[torch.float32])
    def test_step_is_noop_for_zero_and_none_grads(self, device, dtype, optim_info):
        for inp in configs(device, dtype, optim_info):
            p = Parameter(torch.randn(3, 2, device=device, dtype=dtype))
            before = p.detach().clone()
            opt = optim_info.optim_cls([p], **copy.deepcopy(inp.kwargs))
            opt.step()  # grad is None
            self.assertEqual(p, before, atol=0, rtol=0)
            self.assertEqual(len(opt.state), 0)
            if inp.kwargs.get("weight_decay"):
                continue  # listed in the module docstring: decay makes a zero gradient non-zero
            p.grad = torch.zeros_like(p)
            opt.step()
            self.assertEqual(p, before, atol=0, rtol=0, msg=inp.desc)

    @optims([ADAMAX], dtypes=[torch.float32])
    def test_hooks_deepcopy_and_repr(self, device, dtype, optim_info):
        params, closure = quadratic(device, dtype)
        opt = optim_info.optim_cls(params)
        seen = []
        pre = opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
        opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
        opt.step(lambda: closure(opt))
        pre.remove()
        opt.step(lambda: closure(opt))
        self.assertEqual(seen, ["pre", "post", "post"])
        clone = copy.deepcopy(opt)
        self.assertEqual(clone.state_dict(), opt.state_dict())
        self.assertIn("Adamax (", repr(opt))
        self.assertIn("eps_placement: max", repr(opt))

    @optims([ADAMAX], dtypes=[torch.float32, torch.float64])
    def test_tensor_lr(self, device, dtype, optim_info):
        for inp in configs(device, dtype, optim_info):
            if isinstance(inp.kwargs.get("lr"), torch.Tensor):
                continue
            lr = inp.kwargs.get("lr", 2e-3)
            results = []
            for as_tensor in (False, True):
                params, closure = quadratic(device, dtype)
                kwargs = {**copy.deepcopy(inp.kwargs), "lr": torch.tensor(lr) if as_tensor else lr}
                opt = optim_info.optim_cls(params, **kwargs)
                for _ in range(10):
                    opt.step(lambda opt=opt, closure=closure: closure(opt))
                results.append(params)
            for p, q in zip(*results):
                self.assertEqual(p, q, msg=inp.desc)

    @optims([ADAMAX], dtypes=[torch.float32])
    def test_per_group_lr(self, device, dtype, optim_info):
        for inp in configs(device, dtype, optim_info):
            kwargs = copy.deepcopy(inp.kwargs)
            params, closure = quadratic(device, dtype)
            grouped = optim_info.optim_cls([{"params": [params[0]], "lr": 0.05}, {"params": [params[1]]}], **kwargs)
            solo_params, solo_closure = quadratic(device, dtype)
            solos = [
                optim_info.optim_cls([solo_params[0]], **{**kwargs, "lr": 0.05}),
                optim_info.optim_cls([solo_params[1]], **kwargs),
            ]
            for _ in range(5):
                closure(grouped)
                grouped.step()
                for o in solos:
                    o.zero_grad()
                solo_closure().backward()
                for o in solos:
                    o.step()
            for p, q in zip(params, solo_params):
                self.assertEqual(p, q, atol=0, rtol=0, msg=inp.desc)


instantiate_device_type_tests(TestAdamaxPeer, globals(), only_for="cpu")
