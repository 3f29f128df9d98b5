"""Invalid hyperparameters, as data: each with its exception and message."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from adamax.spec import AdamaxConfig

# (kwargs, exception, message regex, does torch.optim.Adamax refuse it too?)
INVALID = [
    (dict(lr=-1.0), ValueError, r"^Invalid learning rate: -1\.0$", True),
    (dict(lr=math.nan), ValueError, r"^Invalid learning rate: nan$", True),
    (dict(lr=math.inf), ValueError, r"^Invalid learning rate: inf \(learning rate must be finite\)$", False),
    (dict(lr="0.1"), TypeError, r"^Invalid learning rate: '0\.1' \(expected a real number, got str\)$", True),
    (dict(lr=True), TypeError, r"Invalid learning rate: True", False),
    (dict(lr=None), TypeError, r"Invalid learning rate: None", True),
    (dict(eps=-1e-8), ValueError, r"^Invalid epsilon value: -1e-08$", True),
    (dict(eps=math.inf), ValueError, r"^Invalid epsilon value: inf \(epsilon value must be finite\)$", False),
    (dict(eps=math.nan), ValueError, r"^Invalid epsilon value: nan$", True),
    (dict(betas=(1.0, 0.999)), ValueError, r"^Invalid beta parameter at index 0: 1\.0$", True),
    (dict(betas=(-0.1, 0.999)), ValueError, r"^Invalid beta parameter at index 0: -0\.1$", True),
    (dict(betas=(0.9, 1.0)), ValueError, r"^Invalid beta parameter at index 1: 1\.0$", True),
    (dict(betas=(0.9, math.nan)), ValueError, r"^Invalid beta parameter at index 1: nan$", True),
    (dict(betas=(math.inf, 0.9)), ValueError, r"^Invalid beta parameter at index 0: inf$", True),
    (dict(betas=(0.9,)), ValueError, r"^Invalid betas: \(0\.9,\) \(expected a pair \(beta1, beta2\)\)$", True),
    (dict(betas=(0.9, 0.99, 0.999)), ValueError, r"Invalid betas", False),
    (dict(betas="ab"), ValueError, r"Invalid betas", True),
    (dict(betas=0.9), ValueError, r"Invalid betas", True),
    (dict(betas=("0.9", 0.99)), TypeError, r"Invalid beta parameter at index 0: '0\.9'", True),
    (dict(weight_decay=-0.1), ValueError, r"^Invalid weight_decay value: -0\.1$", True),
    (dict(weight_decay=math.inf), ValueError, r"Invalid weight_decay value: inf", False),
    (dict(maximize="yes"), TypeError, r"^Invalid maximize: 'yes' \(expected True or False\)$", False),
    (dict(decoupled_weight_decay=1), TypeError, r"Invalid decoupled_weight_decay: 1", None),
    (
        dict(eps_placement="after"),
        ValueError,
        r"^Invalid eps_placement: 'after' \(expected one of 'max', 'denominator', 'none'\)$",
        None,
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "message", "_"), INVALID, ids=lambda v: repr(v) if isinstance(v, dict) else ""
)
def test_invalid_hyperparameters_are_refused(kwargs, error, message, _):
    with pytest.raises(error, match=message):
        AdamaxConfig(**kwargs)


TORCH_ARGS = {"lr", "eps", "betas", "weight_decay", "maximize"}


@pytest.mark.parametrize(
    ("kwargs", "error", "message", "torch_refuses"), INVALID, ids=lambda v: repr(v) if isinstance(v, dict) else ""
)
def test_messages_agree_with_torch(kwargs, error, message, torch_refuses):
    """Where torch refuses a value with a ValueError, our message is torch's, word for word."""
    torch = pytest.importorskip("torch")
    if torch_refuses is None or not set(kwargs) <= TORCH_ARGS:
        pytest.skip("torch has no such argument")
    try:
        torch.optim.Adamax([torch.zeros(1, requires_grad=True)], **kwargs)
    except Exception as err:  # torch may also fail with IndexError or TypeError
        assert torch_refuses, f"torch refuses {kwargs} too ({err}); update the table"
        with pytest.raises(error) as ours:
            AdamaxConfig(**kwargs)
        if isinstance(err, ValueError) and error is ValueError:
            assert str(ours.value) == str(err)
    else:
        assert not torch_refuses, f"torch accepts {kwargs}; the table says it refuses it"


def test_values_are_normalised():
    config = AdamaxConfig(lr=np.float32(0.5), betas=[0, np.float64(0.5)], eps=0, weight_decay=1)
    assert config == AdamaxConfig(lr=0.5, betas=(0.0, 0.5), eps=0.0, weight_decay=1.0)
    assert type(config.lr) is float and type(config.betas) is tuple


def test_replace_validates_and_round_trips():
    config = AdamaxConfig(lr=0.1, eps_placement="none")
    assert config.replace(lr=0.2).lr == 0.2
    with pytest.raises(ValueError, match="Invalid learning rate"):
        config.replace(lr=-0.2)
    assert AdamaxConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=re.escape("unknown hyperparameters: 'momentum'")):
        AdamaxConfig.from_dict({**config.to_dict(), "momentum": 0.9})


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        AdamaxConfig().lr = 1.0  # type: ignore[misc]


def test_defaults_are_torchs_and_a_partial_dict_fills_in_the_rest():
    torch = pytest.importorskip("torch")
    theirs = torch.optim.Adamax([torch.zeros(1, requires_grad=True)]).defaults
    ours = AdamaxConfig()
    assert (ours.lr, ours.betas, ours.eps, ours.weight_decay) == (
        theirs["lr"], tuple(theirs["betas"]), theirs["eps"], theirs["weight_decay"],
    )  # fmt: skip
    assert AdamaxConfig.from_dict({"lr": 0.1}) == AdamaxConfig(lr=0.1)
    with pytest.raises(ValueError, match="unknown hyperparameters: 'rate'"):
        AdamaxConfig.from_dict({"lr": 0.1, "rate": 2})
