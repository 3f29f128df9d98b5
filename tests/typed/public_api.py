"""Code as users write it against the public API, type-checked by mypy (tests/test_typing.py) through the
package's own annotations (py.typed).  Not run: only checked."""

from __future__ import annotations

from typing import Any, assert_type

import numpy as np
import optax
import torch

import adamax
import adamax.numpy
import adamax.optax
import adamax.torch
from adamax import AdamaxConfig, reference, textbook
from adamax.spec import EPS_PLACEMENTS


def torch_training_step(model: torch.nn.Module, batch: torch.Tensor) -> float:
    opt = adamax.torch.Adamax(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, state_format="compact")
    opt_w = adamax.torch.AdamaxW(model.parameters(), lr=1e-3, weight_decay=1e-2, eps_placement="denominator")
    loss = model(batch).square().mean()
    loss.backward()
    opt.step()
    opt_w.zero_grad(set_to_none=True)
    saved = opt.state_dict()
    opt.load_state_dict(saved)
    converted = adamax.torch.convert_state_dict(saved, "compact8")
    assert_type(converted, dict[str, Any])
    return float(loss)


def lazy_rows(model: torch.nn.Module) -> None:
    opt = adamax.torch.Adamax(model.parameters())
    adamax.torch.lazy_embeddings(model, opt)


def optax_step(params: dict[str, np.ndarray]) -> None:
    tx = adamax.optax.adamax(1e-3, eps_placement="max", state_format="compact")
    assert_type(tx, optax.GradientTransformation)
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    params = optax.apply_updates(params, updates)
    tx_w = adamax.optax.adamaxw(1e-3, weight_decay=1e-4)
    assert_type(tx_w, optax.GradientTransformation)


def numpy_and_reference(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    config = AdamaxConfig(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, eps_placement="none")
    state = reference.init(p)
    new_p, state = reference.update(p, g, state, config)
    assert_type(new_p, np.ndarray)
    assert_type(state.step, int)
    opt = adamax.numpy.Adamax({"w": new_p}, lr=1e-2)
    assert EPS_PLACEMENTS and adamax.EPS_PLACEMENTS
    assert opt is not None
    return new_p


def the_textbook() -> None:
    assert textbook is not None
