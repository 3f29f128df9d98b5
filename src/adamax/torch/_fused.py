"""The fused kernels' steps over explicit lists: numba on the CPU, Triton on CUDA, one call per dtype and device.

Every param's state exists already (the optimizer makes it, in float32 for low-precision params); every step
count advances by one."""

from __future__ import annotations

import numpy as np
import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor

from adamax._algorithm import step_size
from adamax.kernels import cpu_kernels, gpu_kernels
from adamax.spec import AdamaxConfig
from adamax.torch._devices import KERNEL_DTYPES, KERNEL_FOR_DEVICE, local

_ONE = torch.tensor(1.0)  # torch's fast form for incrementing CPU step counts


def host_step_sizes(lr: float | Tensor, beta1: float, counts: list[float]) -> list[float]:
    """``-lr / (1 - beta1**t)`` per step count, as torch's forloop rounds it; each distinct count once."""
    by_count = {t: float(step_size(lr, beta1, t)) for t in set(counts)}
    return [by_count[t] for t in counts]


def step_fused(
    params: list[Tensor], states: list[dict], config: AdamaxConfig, *, lr: float | Tensor, capturable: bool
) -> None:
    """One step of ``params`` (each with its gradient and its ``states`` entry) by the kernel of its device."""
    on_triton = [KERNEL_FOR_DEVICE[p.device.type] == "triton" for p in params]
    if any(on_triton):
        pairs = [(p, s) for p, s, t in zip(params, states, on_triton) if t]
        step_triton([p for p, _ in pairs], [s for _, s in pairs], config, lr=lr, capturable=capturable)
        params = [p for p, t in zip(params, on_triton) if not t]
        states = [s for s, t in zip(states, on_triton) if not t]
    if params:
        step_numba(params, states, config, lr=lr)


def step_triton(
    params: list[Tensor], states: list[dict], config: AdamaxConfig, *, lr: float | Tensor, capturable: bool
) -> None:
    """One launch per (device, param dtype, state dtype); low-precision params keep float32 state."""
    lr = _torch_optimizer._to_scalar(lr)
    buckets: dict[tuple, list[tuple[Tensor, dict]]] = {}
    for p, s in zip(params, states):
        buckets.setdefault((p.device, p.dtype, s["exp_avg"].dtype), []).append((p, s))
    for (device, _, _), chosen in buckets.items():
        steps = [s["step"] for _, s in chosen]
        torch._foreach_add_(steps, 1.0)
        if capturable:  # counts stay on the device: bias correction there too, in float64
            counts = torch.stack(steps).to(torch.float64)
            step_sizes = -(lr / (1 - config.beta1**counts))
        else:
            counts = [t.item() for t in steps]
            step_sizes = torch.tensor(host_step_sizes(lr, config.beta1, counts), dtype=torch.float64)
        gpu_kernels().step(
            [local(p) for p, _ in chosen],
            [local(p.grad) for p, _ in chosen],
            [local(s["exp_avg"]) for _, s in chosen],
            [local(s["exp_inf"]) for _, s in chosen],
            step_sizes.to(device),
            config,
        )


def step_numba(params: list[Tensor], states: list[dict], config: AdamaxConfig, *, lr: float | Tensor) -> None:
    """One kernel call per param dtype: float32 and float64 with state alike, bfloat16 and float16 with float32
    state."""
    kernels = cpu_kernels()
    lr = _torch_optimizer._to_scalar(lr)  # a tensor lr: the step size is rounded as torch's forloop does
    threads = torch.get_num_threads()
    for dtype, np_dtype in KERNEL_DTYPES.items():
        chosen = [(p, s) for p, s in zip(params, states) if p.dtype is dtype]
        if not chosen:
            continue
        steps = [s["step"] for _, s in chosen]
        torch._foreach_add_(steps, _ONE, alpha=1.0)
        counts = [t.item() for t in steps]
        step_sizes = np.array(host_step_sizes(lr, config.beta1, counts))
        n = len(chosen)
        addresses = (
            np.fromiter((local(p).data_ptr() for p, _ in chosen), np.int64, n),
            np.fromiter((local(p.grad).data_ptr() for p, _ in chosen), np.int64, n),
            np.fromiter((local(s["exp_avg"]).data_ptr() for _, s in chosen), np.int64, n),
            np.fromiter((local(s["exp_inf"]).data_ptr() for _, s in chosen), np.int64, n),
        )
        sizes = tuple(local(p).numel() for p, _ in chosen)
        kernels.step(np_dtype, addresses, sizes, step_sizes, config, threads=threads)
    for dtype, kind in ((torch.bfloat16, kernels.BF16), (torch.float16, kernels.F16)):
        chosen = [(p, s) for p, s in zip(params, states) if p.dtype is dtype]
        if not chosen:
            continue
        steps = [s["step"] for _, s in chosen]
        torch._foreach_add_(steps, _ONE, alpha=1.0)
        step_sizes = np.array(host_step_sizes(lr, config.beta1, [t.item() for t in steps]))
        addresses = tuple(
            np.array([t.data_ptr() for t in column], np.int64)
            for column in (
                [local(p) for p, _ in chosen], [local(p.grad) for p, _ in chosen],
                [local(s["exp_avg"]) for _, s in chosen], [local(s["exp_inf"]) for _, s in chosen],
            )
        )  # fmt: skip
        sizes = tuple(local(p).numel() for p, _ in chosen)
        kernels.step16(kind, addresses, sizes, step_sizes, config, threads=threads)
