"""Each layer that needs an optional package says which extra brings it."""

from __future__ import annotations

import importlib
import sys

import pytest

from adamax import cli

LAYERS = [
    ("adamax.torch", "torch", "torch"),
    ("adamax.distributed", "torch", "torch"),
    ("adamax.optax", "optax", "jax"),
    ("adamax.optax", "jax", "jax"),
]


@pytest.mark.parametrize(("layer", "hidden", "extra"), LAYERS, ids=[f"{a}-without-{b}" for a, b, _ in LAYERS])
def test_a_layer_without_its_package_names_the_extra(monkeypatch, layer, hidden, extra):
    monkeypatch.setitem(sys.modules, hidden, None)  # makes ``import hidden`` fail, as if not installed
    monkeypatch.delitem(sys.modules, layer, raising=False)
    with pytest.raises(ModuleNotFoundError, match=rf"{layer} needs {hidden}.*pip install 'adamax\[{extra}\]'"):
        importlib.import_module(layer)


def test_a_verb_without_its_package_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert cli.main(["compare", "--epochs", "1"]) == 1
    assert "needs sklearn, which is not installed here: pip install 'adamax[torch,data]'" in capsys.readouterr().err
