"""The fused kernels' steps: numba on the CPU, Triton on CUDA, one call per group, dtype and device."""

from __future__ import annotations

import numpy as np
import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor

from adamax._algorithm import step_size
from adamax.kernels import cpu_kernels, gpu_kernels
from adamax.spec import AdamaxConfig
from adamax.torch._plan import _KERNEL_DTYPES, _KERNEL_FOR_DEVICE, _LOW_PRECISION, _dtensor_type

_ONE = torch.tensor(1.0)  # torch's fast form for incrementing CPU step counts


def _host_step_sizes(lr: float | Tensor, beta1: float, counts: list[float]) -> list[float]:
    """``-lr / (1 - beta1**t)`` per step count, as torch's forloop rounds it; each distinct count once."""
    by_count = {t: float(step_size(lr, beta1, t)) for t in set(counts)}
    return [by_count[t] for t in counts]


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard, which the kernels update in place (the update is elementwise), or ``t``."""
    dtensor = _dtensor_type()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


class _FusedSteps:
    """Params stepped by a fused kernel: numba's on the CPU, Triton's on CUDA."""

    def _run_fused(self, group: dict, config: AdamaxConfig, params: list[Tensor], states: list[dict | None]) -> None:
        on_triton = [_KERNEL_FOR_DEVICE[p.device.type] == "triton" for p in params]
        if any(on_triton):
            pairs = [(p, s) for p, s, t in zip(params, states, on_triton) if t]
            self._run_triton(group, config, *map(list, zip(*pairs)))
            params = [p for p, t in zip(params, on_triton) if not t]
            states = [s for s, t in zip(states, on_triton) if not t]
        if params:
            self._run_numba(group, config, params, states)

    def _run_triton(self, group: dict, config: AdamaxConfig, params: list[Tensor], states: list[dict | None]) -> None:
        """One launch per (device, param dtype, state dtype); low-precision params keep float32 state."""
        capturable = group["capturable"]
        lr = _torch_optimizer._to_scalar(group["lr"])
        states = [
            s or self._init_state(p, capturable, torch.float32 if p.dtype in _LOW_PRECISION else None)
            for p, s in zip(params, states)
        ]
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
                step_sizes = torch.tensor(_host_step_sizes(lr, config.beta1, counts), dtype=torch.float64)
            gpu_kernels().step(
                [_local(p) for p, _ in chosen],
                [_local(p.grad) for p, _ in chosen],
                [_local(s["exp_avg"]) for _, s in chosen],
                [_local(s["exp_inf"]) for _, s in chosen],
                step_sizes.to(device),
                config,
            )

    def _run_numba(self, group: dict, config: AdamaxConfig, params: list[Tensor], states: list[dict | None]) -> None:
        kernels = cpu_kernels()
        lr = _torch_optimizer._to_scalar(group["lr"])  # a tensor lr: the step size is rounded as torch's forloop does
        threads = torch.get_num_threads()
        for dtype, np_dtype in _KERNEL_DTYPES.items():
            chosen = [(p, s or self._init_state(p, False)) for p, s in zip(params, states) if p.dtype is dtype]
            if not chosen:
                continue
            steps = [s["step"] for _, s in chosen]
            torch._foreach_add_(steps, _ONE, alpha=1.0)
            counts = [t.item() for t in steps]
            step_sizes = np.array(_host_step_sizes(lr, config.beta1, counts))
            n = len(chosen)
            addresses = (
                np.fromiter((_local(p).data_ptr() for p, _ in chosen), np.int64, n),
                np.fromiter((_local(p.grad).data_ptr() for p, _ in chosen), np.int64, n),
                np.fromiter((_local(s["exp_avg"]).data_ptr() for _, s in chosen), np.int64, n),
                np.fromiter((_local(s["exp_inf"]).data_ptr() for _, s in chosen), np.int64, n),
            )
            sizes = tuple(_local(p).numel() for p, _ in chosen)
            kernels.step(np_dtype, addresses, sizes, step_sizes, config, threads=threads)
        for dtype, kind in ((torch.bfloat16, kernels.BF16), (torch.float16, kernels.F16)):
            chosen = [  # float32 state, as on the Triton path: bfloat16 state would freeze u
                (p, s or self._init_state(p, False, torch.float32)) for p, s in zip(params, states) if p.dtype is dtype
            ]
            if not chosen:
                continue
            steps = [s["step"] for _, s in chosen]
            torch._foreach_add_(steps, _ONE, alpha=1.0)
            step_sizes = np.array(_host_step_sizes(lr, config.beta1, [t.item() for t in steps]))
            addresses = tuple(
                np.array([t.data_ptr() for t in column], np.int64)
                for column in (
                    [_local(p) for p, _ in chosen], [_local(p.grad) for p, _ in chosen],
                    [_local(s["exp_avg"]) for _, s in chosen], [_local(s["exp_inf"]) for _, s in chosen],
                )
            )  # fmt: skip
            sizes = tuple(_local(p).numel() for p, _ in chosen)
            kernels.step16(kind, addresses, sizes, step_sizes, config, threads=threads)
