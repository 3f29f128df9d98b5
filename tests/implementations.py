"""The one table of Adamax implementations under test.

Every row is driven the same way - a list of arrays (which the row owns from
then on), a config, then steps with
a list of gradients - and exposes its params and per-array state after each
step, so ``test_conformance.py`` can hold every row to the reference.
Later backends (torch, optax, kernels) join by adding a row.
"""

from __future__ import annotations

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
    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        self._params = params  # updated in place, keeping the caller's memory layout
        self._opt = adamax_numpy.Adamax(self._params, **config.to_dict())

    def step(self, grads: list[np.ndarray]) -> None:
        self._opt.step(grads)

    def params(self) -> list[np.ndarray]:
        return self._params

    def states(self) -> list[AdamaxState]:
        return [self._opt.state[str(i)] for i in range(len(self._params))]


class Implementation(NamedTuple):
    name: str
    make: Callable[[list[np.ndarray], AdamaxConfig], Stepper]
    dtypes: tuple[type, ...]  # the dtypes it promises to match the reference on, bit for bit


IMPLEMENTATIONS = [
    Implementation("numpy", NumpyStepper, (np.float32, np.float64, np.complex64, np.complex128)),
]
