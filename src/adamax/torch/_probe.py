"""The Triton kernel checked before the automatic choice trusts it: a probe, once per device, dtypes and options.

With ``fused=None`` (the default) a CUDA param is stepped by the Triton kernel wherever it can take it.  The
kernel is tested bit for bit under Triton's interpreter; a compiled build on a given GPU, driver and Triton
version is a different program.  So, the first time the automatic choice would hand the kernel params of one
(device, param dtype, state dtype, compile-time options), it first steps a small probe (a few thousand
elements in tensors of awkward sizes, zeros among the gradients, three steps, the group's own hyperparameters)
both through the kernel and through torch's own ops on the CPU (the forloop path, bit-exact with
``torch.optim.Adamax`` there and with :mod:`adamax.reference`, which the kernel reproduces by design:
no contraction, correctly rounded division, explicit FMAs), and compares every bit of params and state.
(torch's CUDA ops are compiled with contraction and differ from both by an ulp here and there, so they are
not the oracle.)  On any difference, or any error compiling or launching the kernel,
it warns once and those params are stepped with torch's ops from then on.  ``fused=True`` skips the probe: an
explicit choice of the kernel is honoured as it is.

The comparison for low-precision params: the kernel computes in float32 and rounds the param (and state kept in
a low-precision dtype) once, on store; the ops side computes the same float32 step on float32 copies and rounds
them to the stored dtypes after it.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from adamax._algorithm import adamax_update, step_size
from adamax.kernels import gpu_kernels
from adamax.spec import AdamaxConfig
from adamax.torch._ops import _TensorOps

_VERDICTS: dict[tuple, str | None] = {}  # the probe's verdict per key: None (the kernel agrees) or why not
_STEPS = 3


def triton_verdict(p: Tensor, state_dtype: torch.dtype, config: AdamaxConfig) -> str | None:
    """Why the automatic choice must not step ``p`` with the Triton kernel (None: the probe agreed)."""
    kernel = gpu_kernels()
    key = (p.device, p.dtype, state_dtype, tuple(kernel._flags(config).items()))
    if key in _VERDICTS:
        return _VERDICTS[key]
    if p.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None  # a probe cannot run inside graph capture; the warm-up steps before it ran one
    verdict = _probe(kernel, p.device, p.dtype, state_dtype, config)
    _VERDICTS[key] = verdict
    if verdict is not None:
        warnings.warn(
            f"the Triton kernel did not match torch's ops on a probe for {p.dtype} params with {state_dtype} state "
            f"on {p.device} ({verdict}); such params are stepped with torch's ops instead (fused=True forces the "
            "kernel)",
            RuntimeWarning,
            stacklevel=4,
        )
    return verdict


def _probe(kernel, device: torch.device, dtype: torch.dtype, state_dtype: torch.dtype, config) -> str | None:
    sizes = (1, 5, kernel.BLOCK + 1, 2 * kernel.BLOCK + 7)
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(n, generator=gen) for n in sizes]
    grads = []
    for t in range(_STEPS):
        step = [torch.randn(n, generator=gen) * 10.0 ** (t - 1) for n in sizes]
        for g in step:
            g[:1] = 0.0  # u stays 0 there under "none": the guard against 0/0
        grads.append(step)
    with torch.no_grad():
        try:
            params = [x.to(dtype).to(device, copy=True) for x in start]  # the kernel writes them
            ms = [torch.zeros(n, dtype=state_dtype, device=device) for n in sizes]
            us = [torch.zeros(n, dtype=state_dtype, device=device) for n in sizes]
            for t, step in enumerate(grads, start=1):
                sizes_t = torch.full((len(sizes),), step_size(config.lr, config.beta1, t), dtype=torch.float64)
                kernel.step(
                    params, [g.to(dtype).to(device, copy=True) for g in step], ms, us, sizes_t.to(device), config
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as err:  # a compile or launch error: the kernel cannot serve here
            return f"the kernel failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ops = _TensorOps(False)
        expected = [x.to(dtype).float().clone() for x in start]  # on the CPU
        exp_avgs = [torch.zeros(n) for n in sizes]
        exp_infs = [torch.zeros(n) for n in sizes]
        for t, step in enumerate(grads, start=1):
            for k, g in enumerate(step):
                g32 = g.to(dtype).float().clone()
                adamax_update(ops, expected[k], g32, exp_avgs[k], exp_infs[k], step_size(config.lr, config.beta1, t),
                              config)  # fmt: skip
                expected[k].copy_(expected[k].to(dtype).float())  # stored, as the kernel stores
                exp_avgs[k].copy_(exp_avgs[k].to(state_dtype).float())
                exp_infs[k].copy_(exp_infs[k].to(state_dtype).float())
        for k in range(len(sizes)):
            for what, got, want in (("param", params[k].cpu(), expected[k].to(dtype)),
                                    ("exp_avg", ms[k].cpu(), exp_avgs[k].to(state_dtype)),
                                    ("exp_inf", us[k].cpu(), exp_infs[k].to(state_dtype))):  # fmt: skip
                if not torch.equal(got, want):
                    wrong = int((got != want).sum())
                    return f"{what} differs in {wrong} of {got.numel()} elements of a {got.numel()}-element tensor"
    return None
