"""Which fused kernel can serve a tensor: the kernel per device type, the dtypes each takes, the tensor types
whose memory is their values, and a DTensor's local shard.  Facts and lookups only; nothing here steps."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from adamax.kernels import cpu_kernels, gpu_kernels

# Which fused kernel serves each device type (tests route the CPU to Triton's interpreter through this).
KERNEL_FOR_DEVICE = {"cpu": "numba", "cuda": "triton"}
KERNEL_TYPES = (Tensor, torch.nn.Parameter)  # not subclasses (DTensor and friends): the kernel reads raw memory
KERNEL_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NUMBA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # the last two with float32 state
LOW_PRECISION = (torch.float16, torch.bfloat16)  # their state is float32 on the kernels' paths


@functools.cache
def dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def kernel_loader(name: str):
    return cpu_kernels() if name == "numba" else gpu_kernels()


def local(t: Tensor) -> Tensor:
    """A DTensor's local shard, which the kernels update in place (the update is elementwise), or ``t``."""
    dtensor = dtensor_type()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def fused_state_dtype(p: Tensor) -> torch.dtype | None:
    """The dtype a fused kernel makes ``p``'s state in: float32 for low-precision params (bfloat16 state would
    freeze u), else the param's own (None)."""
    return torch.float32 if p.dtype in LOW_PRECISION else None
