"""The one table of Adamax implementations under test.

Every row is driven the same way - a list of arrays (which the row owns from
then on), a config, then steps with
a list of gradients - and exposes its params and per-array state after each
step, so ``test_conformance.py`` can hold every row to the reference.
Later backends (torch, optax, kernels) join by adding a row.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from adamax import numpy as adamax_numpy
from adamax import reference
from adamax.reference import AdamaxState
from adamax.spec import AdamaxConfig


class Stepper(Protocol):
    def step(self, grads: list[np.ndarray]) -> None: ...
    def params(self) -> list[np.ndarray]: ...
    def states(self) -> list[AdamaxState]: ...


class ReferenceStepper:
    """The oracle: ``reference.update`` applied array by array."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        self._params = list(params)
        self._states = [reference.init(p) for p in params]
        self._config = config

    def step(self, grads: list[np.ndarray]) -> None:
        for i, g in enumerate(grads):
            self._params[i], self._states[i] = reference.update(self._params[i], g, self._states[i], self._config)

    def params(self) -> list[np.ndarray]:
        return self._params

    def states(self) -> list[AdamaxState]:
        return self._states


class NumpyStepper:
    def __init__(self, params: list[np.ndarray], config: AdamaxConfig, fused: bool | None = None) -> None:
        self._params = params  # updated in place, keeping the caller's memory layout
        self._opt = adamax_numpy.Adamax(self._params, fused=fused, **config.to_dict())

    def step(self, grads: list[np.ndarray]) -> None:
        self._opt.step(grads)

    def params(self) -> list[np.ndarray]:
        return self._params

    def states(self) -> list[AdamaxState]:
        return [self._opt.state[str(i)] for i in range(len(self._params))]


class TorchStepper:
    """``adamax.torch.Adamax`` on tensors that share the arrays' memory (and so their layout)."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig, **backend: bool) -> None:
        import torch

        from adamax.torch import Adamax

        self._torch = torch
        self._tensors = [torch.from_numpy(p) for p in params]
        self._opt = Adamax(self._tensors, **backend, **config.to_dict())

    def step(self, grads: list[np.ndarray]) -> None:
        for t, g in zip(self._tensors, grads):
            t.grad = self._torch.from_numpy(g)
        self._opt.step()

    def params(self) -> list[np.ndarray]:
        return [t.numpy() for t in self._tensors]

    def states(self) -> list[AdamaxState]:
        out = []
        for t in self._tensors:
            s = self._opt.state[t]
            out.append(AdamaxState(int(s["step"]), s["exp_avg"].numpy(), s["exp_inf"].numpy()))
        return out


class OptaxStepper:
    """``adamax.optax.adamax`` (or ``adamaxw`` for decoupled decay), one jitted update per step."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        from adamax.optax import adamax, adamaxw

        b1, b2 = config.betas
        kwargs = dict(b1=b1, b2=b2, eps=config.eps, eps_placement=config.eps_placement)
        if config.weight_decay:
            opt = adamaxw(config.lr, weight_decay=config.weight_decay, **kwargs)
        else:
            opt = adamax(config.lr, **kwargs)
        self._dtypes = [p.dtype for p in params]
        self._params = [jnp.asarray(p) for p in params]
        self._state = opt.init(self._params)

        @jax.jit
        def step(params, state, grads):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self._step = step

    def step(self, grads: list[np.ndarray]) -> None:
        self._params, self._state = self._step(self._params, self._state, [np.asarray(g) for g in grads])

    def params(self) -> list[np.ndarray]:
        return [np.asarray(p) for p in self._params]

    def states(self) -> list[AdamaxState]:
        inner = self._state[0]
        step = int(inner.count)
        return [AdamaxState(step, np.asarray(m), np.asarray(u)) for m, u in zip(inner.m, inner.u)]


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _torch_installed() -> bool:
    return _installed("torch")


def _optax_unsupported(config: AdamaxConfig) -> str | None:
    if config.maximize:
        return "optax transforms descend; negate the gradients to ascend"
    if config.weight_decay and not config.decoupled_weight_decay:
        return "optax composes coupled decay from add_decayed_weights before the transform; not an option here"
    return None


def _foreach_complex_decay(config: AdamaxConfig, dtype: type) -> str | None:
    if np.issubdtype(dtype, np.complexfloating) and config.weight_decay and not config.decoupled_weight_decay:
        return "torch's foreach path fuses complex weight decay on real pairs; the reference follows its forloop"
    return None


class Implementation(NamedTuple):
    name: str
    make: Callable[[list[np.ndarray], AdamaxConfig], Stepper]
    dtypes: tuple[type, ...]  # the dtypes it promises to match the reference on, bit for bit
    available: bool = True
    # why, for a config and dtype, it only matches to a few ulps instead of bit for bit (None: bit for bit)
    inexact: Callable[[AdamaxConfig, type], str | None] = lambda config, dtype: None
    # why it has no such option (None: it has)
    unsupported: Callable[[AdamaxConfig], str | None] = lambda config: None


ALL_DTYPES = (np.float32, np.float64, np.complex64, np.complex128)
IMPLEMENTATIONS = [
    # automatic: the fused kernel for contiguous float32/float64 arrays (with numba), the reference otherwise
    Implementation("numpy", NumpyStepper, ALL_DTYPES),
    Implementation("numpy-unfused", lambda p, c: NumpyStepper(p, c, fused=False), ALL_DTYPES),
    Implementation("torch-automatic", TorchStepper, ALL_DTYPES, available=_torch_installed()),
    Implementation(
        "torch-forloop", lambda p, c: TorchStepper(p, c, foreach=False), ALL_DTYPES, available=_torch_installed()
    ),
    Implementation(
        "torch-foreach",
        lambda p, c: TorchStepper(p, c, foreach=True),
        ALL_DTYPES,
        available=_torch_installed(),
        inexact=_foreach_complex_decay,
    ),
    Implementation(
        "optax",
        OptaxStepper,
        (np.float32, np.complex64),  # float64 needs jax_enable_x64 (test_optax.py runs it in a subprocess)
        available=_installed("jax", "optax"),
        inexact=lambda config, dtype: "optax's rounding order: (1 - b1) g + b1 m, m_hat / u, then -lr times that",
        unsupported=_optax_unsupported,
    ),
]
