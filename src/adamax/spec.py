r"""The Adamax hyperparameters and conventions, defined once.

Adamax is Adam with the L2 norm of past gradients replaced by the infinity
norm (Kingma & Ba 2015, section 7.1).  With learning rate :math:`\alpha`,
decay rates :math:`\beta_1, \beta_2`, and :math:`m_0 = u_0 = 0`, step
:math:`t = 1, 2, \dots` on one array does::

    g <- -g                               if maximize
    g <- g + wd * p                       weight decay, coupled (L2); the default
    p <- p * (1 - lr * wd)                decoupled weight decay instead (AdamW-style)
    m <- b1 * m + (1 - b1) * g            first moment
    u <- max(b2 * u, |g| + eps)           eps_placement="max"          (torch, optax)
    u <- max(b2 * u, |g|)                 eps_placement="denominator"  (Keras, TF, the textbook)
                                          eps_placement="none"         (the paper)
    p <- p - lr / (1 - b1**t) * m / u           "max" and "none"
    p <- p - lr / (1 - b1**t) * m / (u + eps)   "denominator"

Only ``m`` is bias-corrected.  ``u`` needs no correction: it is a maximum, not
an average, so it is not biased towards its zero start (paper, section 7.1).
Where ``u == 0`` every gradient so far was 0, so ``m == 0`` too, and the step
is defined as 0 instead of 0/0.

Complex arrays are treated as pairs of real numbers, as ``torch.view_as_real``
does: ``|g|`` and the maximum act on the real and imaginary parts separately.

Step counting differs between frameworks, and each adapter keeps its own
framework's rule: the PyTorch adapter and the NumPy optimizer count per array;
the optax adapter keeps one global count.

Validation mirrors ``torch.optim.Adamax`` word for word where torch refuses a
value, and also refuses what torch lets through: non-finite numbers, strings,
``betas`` of the wrong length, and unknown ``eps_placement`` values.

>>> from adamax.spec import AdamaxConfig
>>> AdamaxConfig(lr=1e-3).betas
(0.9, 0.999)
>>> AdamaxConfig(lr=-1.0)
Traceback (most recent call last):
...
ValueError: Invalid learning rate: -1.0
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, Literal

EpsPlacement = Literal["max", "denominator", "none"]
EPS_PLACEMENTS: tuple[str, ...] = ("max", "denominator", "none")
MAX_STEP = 2**53  # step counts are refused from here on: float64 counts no further exactly, and the kernels'
# 64-bit counters and torch's float step tensors run out beyond it (a checkpoint cannot hold a real run's count)


def _real(value: Any, what: str) -> float:
    """``value`` as a float, refusing strings, bools and other non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid {what}: {value!r} (expected a real number, got {type(value).__name__})")
    return float(value)


def _at_least_zero(value: Any, what: str, torch_message: str) -> float:
    x = _real(value, what)
    if not x >= 0.0:  # also catches nan, with torch's wording
        raise ValueError(torch_message.format(x))
    if math.isinf(x):
        raise ValueError(torch_message.format(x) + f" ({what} must be finite)")
    return x


def _beta(value: Any, index: int) -> float:
    x = _real(value, f"beta parameter at index {index}")
    if not 0.0 <= x < 1.0:
        raise ValueError(f"Invalid beta parameter at index {index}: {x}")
    return x


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Invalid {name}: {value!r} (expected True or False)")
    return value


@dataclasses.dataclass(frozen=True)
class AdamaxConfig:
    """Validated Adamax hyperparameters; every backend reads this one object.

    Values are normalised on construction: numbers become Python floats and
    ``betas`` a tuple, so two configs that mean the same thing compare equal.
    """

    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    maximize: bool = False
    eps_placement: EpsPlacement = "max"

    def __post_init__(self) -> None:
        lr = _at_least_zero(self.lr, "learning rate", "Invalid learning rate: {}")
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
        betas = (_beta(betas[0], 0), _beta(betas[1], 1))
        eps = _at_least_zero(self.eps, "epsilon value", "Invalid epsilon value: {}")
        wd = _at_least_zero(self.weight_decay, "weight_decay value", "Invalid weight_decay value: {}")
        decoupled = _flag(self.decoupled_weight_decay, "decoupled_weight_decay")
        maximize = _flag(self.maximize, "maximize")
        if self.eps_placement not in EPS_PLACEMENTS:
            choices = ", ".join(map(repr, EPS_PLACEMENTS))
            raise ValueError(f"Invalid eps_placement: {self.eps_placement!r} (expected one of {choices})")
        for name, value in [
            ("lr", lr),
            ("betas", betas),
            ("eps", eps),
            ("weight_decay", wd),
            ("decoupled_weight_decay", decoupled),
            ("maximize", maximize),
        ]:
            object.__setattr__(self, name, value)

    @property
    def beta1(self) -> float:
        return self.betas[0]

    @property
    def beta2(self) -> float:
        return self.betas[1]

    def replace(self, **changes: Any) -> AdamaxConfig:
        """A copy with ``changes`` applied, validated like a new config."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values, for checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AdamaxConfig:
        """The inverse of :meth:`to_dict`; unknown keys are refused by name."""
        if not isinstance(values, Mapping):
            raise TypeError(f"hyperparameters must be a mapping, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            raise ValueError(f"unknown hyperparameters: {', '.join(map(repr, unknown))}")
        return cls(**values)
