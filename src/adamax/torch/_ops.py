"""torch's operations for the one Adamax update (:func:`adamax._algorithm.adamax_update`): one tensor at a time
(forloop) or lists of tensors (foreach), and :func:`step_ops`, the step that runs them over explicit lists."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor
from torch.optim.optimizer import Optimizer

from adamax._algorithm import adamax_update, step_size
from adamax.spec import AdamaxConfig


class _DeviceStep(NamedTuple):
    """Capturable steps keep the step size on the device, as torch's reciprocal ``(b1**t - 1) / lr``."""

    reciprocal: Any  # a tensor (forloop) or a list of tensors (foreach)


class _TensorOps:
    """One tensor at a time, in place on state and param (torch's single-tensor path)."""

    decay_before_real_view = True

    def __init__(self, differentiable: bool) -> None:
        self.differentiable = differentiable

    def real_view(self, xs):
        return [torch.view_as_real(x) if x.is_complex() else x for x in xs]

    def neg(self, g):
        return -g

    def add_scaled(self, g, p, alpha):
        return g.add(p, alpha=alpha)

    def mul_(self, x, s):
        return x.mul_(s)

    def moment_(self, m, g, beta1):
        return m.lerp_(g, 1 - beta1)

    def abs(self, g):
        return g.abs()

    def abs_plus(self, g, eps):
        return g.abs().add_(eps)

    def add(self, x, eps):
        return x.add(eps)

    def maximum_(self, u, v):
        if self.differentiable:  # maximum(out=) has no autograd formula
            return u.copy_(torch.amax(torch.stack([u, v]), 0))
        return torch.maximum(u, v, out=u)

    def apply_step_(self, p, m, d, s, guard_zero):
        if guard_zero:
            zero = d == 0
            m, d = m.masked_fill(zero, 0), d.masked_fill(zero, 1)
        if isinstance(s, _DeviceStep):
            return p.addcdiv_(m, d * s.reciprocal)
        return p.addcdiv_(m, d, value=s)


class _ForeachOps:
    """Lists of tensors on one device and dtype (torch's foreach path)."""

    decay_before_real_view = False  # torch's foreach path splits complex tensors first

    def real_view(self, lists):
        return [[torch.view_as_real(x) if x.is_complex() else x for x in xs] for xs in lists]

    def neg(self, g):
        return torch._foreach_neg(g)

    def add_scaled(self, g, p, alpha):
        return torch._foreach_add(g, p, alpha=alpha)

    def mul_(self, x, s):
        torch._foreach_mul_(x, s)
        return x

    def moment_(self, m, g, beta1):
        torch._foreach_lerp_(m, g, 1 - beta1)
        return m

    def abs(self, g):
        return torch._foreach_abs(g)

    def abs_plus(self, g, eps):
        out = torch._foreach_abs(g)
        torch._foreach_add_(out, eps)
        return out

    def add(self, x, eps):
        return torch._foreach_add(x, eps)

    def maximum_(self, u, v):
        torch._foreach_maximum_(u, v)
        return u

    def apply_step_(self, p, m, d, s, guard_zero):
        if guard_zero:
            zeros = [x == 0 for x in d]
            m = [x.masked_fill(z, 0) for x, z in zip(m, zeros)]
            d = [x.masked_fill(z, 1) for x, z in zip(d, zeros)]
        if isinstance(s, _DeviceStep):
            torch._foreach_addcdiv_(p, m, torch._foreach_mul(d, s.reciprocal))
        else:
            torch._foreach_addcdiv_(p, m, d, s)
        return p


def step_ops(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    steps: list[Tensor],
    config: AdamaxConfig,
    *,
    lr: float | Tensor,
    backend: str,
    capturable: bool,
    differentiable: bool,
) -> None:
    """One step of ``params`` with torch's own ops, in place on params and state: one tensor at a time
    (``backend="forloop"``) or by lists of one device and dtype (``"foreach"``).  ``lr`` is the group's, a float
    or a tensor; every step count advances by one first."""
    beta1 = config.beta1
    if backend == "forloop":
        ops = _TensorOps(differentiable)
        lr = _torch_optimizer._to_scalar(lr)  # a tensor lr stays a tensor here, as in torch
        for p, g, m, u, t in zip(params, grads, exp_avgs, exp_infs, steps):
            t += 1
            if capturable:
                size = _DeviceStep((beta1**t - 1) / lr)
            else:
                size = step_size(lr, beta1, _torch_optimizer._get_value(t))
            adamax_update(ops, p, g, m, u, size, config)
        return
    ops = _ForeachOps()
    lr = lr if capturable else _torch_optimizer._get_value(lr)  # ... and a float here
    buckets = Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avgs, exp_infs, steps])
    for (ps, gs, ms, us, ts), _ in buckets.values():
        if not torch.compiler.is_compiling() and ts[0].is_cpu:
            torch._foreach_add_(ts, torch.tensor(1.0, device="cpu"), alpha=1.0)  # torch's fast CPU form
        else:
            torch._foreach_add_(ts, 1)
        if capturable:
            sizes = _DeviceStep([(beta1**t - 1) / lr for t in ts])
        else:
            sizes = [step_size(lr, beta1, _torch_optimizer._get_value(t)) for t in ts]
        adamax_update(ops, ps, gs, ms, us, sizes, config)
