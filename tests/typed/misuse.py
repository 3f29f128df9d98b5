"""Misuse that the annotations must catch (tests/test_typing.py expects mypy to report each line marked E)."""

from __future__ import annotations

import numpy as np
import torch

import adamax.torch
from adamax import AdamaxConfig, reference


def misuse(model: torch.nn.Module, p: np.ndarray) -> None:
    adamax.torch.Adamax(model.parameters(), lr=1e-3, eps_placement="outside")  # E: not an EpsPlacement
    adamax.torch.Adamax(model.parameters(), betas=0.9)  # E: betas is a pair
    AdamaxConfig(eps_placement="sometimes")  # E: not an EpsPlacement
    reference.update(p, p, "state")  # E: a state is an AdamaxState
