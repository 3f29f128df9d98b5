"""Fused kernels: the same math as :mod:`adamax.reference`, in one pass over memory.

:func:`cpu_kernels` returns :mod:`adamax.kernels.cpu` (numba) and :func:`gpu_kernels`
:mod:`adamax.kernels.gpu` (Triton), or ``None`` where numba or triton
is not installed, so that callers fall back to their array-op paths.
"""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The numba CPU kernels, or ``None`` when numba cannot be imported."""
    try:
        from adamax.kernels import cpu
    except ImportError:
        return None
    return cpu


@functools.cache
def gpu_kernels() -> ModuleType | None:
    """The Triton GPU kernels, or ``None`` when triton cannot be imported."""
    try:
        from adamax.kernels import gpu
    except ImportError:
        return None
    return gpu


@functools.cache
def lazy_kernels() -> ModuleType | None:
    """The numba kernel for lazy rows, or ``None`` when numba cannot be imported."""
    try:
        from adamax.kernels import lazy
    except ImportError:
        return None
    return lazy


@functools.cache
def compact_kernels() -> ModuleType | None:
    """The numba kernel for compact state (and bfloat16/float16 params), or ``None`` without numba."""
    try:
        from adamax.kernels import compact
    except ImportError:
        return None
    return compact


@functools.cache
def compact8_kernels() -> ModuleType | None:
    """The numba kernel for compact8 state, or ``None`` without numba."""
    try:
        from adamax.kernels import compact8
    except ImportError:
        return None
    return compact8


@functools.cache
def lazy_compact_kernels() -> ModuleType | None:
    """The numba kernel for lazy rows with compact or compact8 state, or ``None`` without numba."""
    try:
        from adamax.kernels import lazy_compact
    except ImportError:
        return None
    return lazy_compact
