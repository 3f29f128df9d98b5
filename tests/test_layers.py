"""The package's structure as docs/design.md draws it: layers that import only downwards, no import circles, and
the optimizers as shells (torch's ``Optimizer`` and nothing mixed in).  Read from the source, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first; a module may import from its own layer or any below it, never from one above.
LAYERS = {
    "adamax": 0,  # the package's __init__: the spec's names
    "adamax.spec": 0,
    "adamax._exact": 0,
    "adamax._extras": 0,
    "adamax._memory": 0,
    "adamax._algorithm": 1,
    "adamax.reference": 1,
    "adamax.textbook": 1,
    "adamax.compact": 2,
    "adamax.compact8": 2,
    "adamax._lazy": 2,
    "adamax._lazy_compact": 2,
    "adamax._blocks": 2,
    "adamax.kernels": 3,
    "adamax.numpy": 4,
    "adamax.torch": 4,
    "adamax.optax": 4,
    "adamax.keras": 4,
    "adamax.distributed": 5,
    "adamax.cli": 6,
    "adamax.__main__": 6,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "adamax").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules that ``path`` imports anywhere in it (a function's deferred import included): for
    ``from X import Y``, ``X.Y`` where that is a module, else ``X``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in known:
            for alias in node.names:
                out.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def layer(module: str) -> int:
    prefix = module
    while prefix not in LAYERS:
        prefix = prefix.rpartition(".")[0]
        assert prefix, f"{module} is in no layer of LAYERS: give it one (and a place in docs/design.md's map)"
    return LAYERS[prefix]


def test_the_walk_finds_the_modules_and_their_imports():
    edges = graph()
    assert {"adamax.torch._optimizer", "adamax.distributed._save", "adamax.cli.bench", "adamax.numpy._rows"} <= set(
        edges
    )
    assert "adamax.torch._plan" in edges["adamax.torch._optimizer"]
    assert "adamax.torch._compact" in edges["adamax.torch._plan"]  # ``from adamax.torch import _compact``
    assert "adamax.cli.bench_sparse" in edges["adamax.cli.bench"]  # a deferred import, inside a function


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in graph().items()
        for b in sorted(targets)
        if layer(b) > layer(a)
    ]
    assert not upward


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_from_a_module_that_imports_it_back():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_library_imports_nothing_from_the_console_script():
    library = [name for name in graph() if layer(name) < LAYERS["adamax.cli"]]
    assert not [
        (name, sorted(graph()[name])) for name in library if any(t.startswith("adamax.cli") for t in graph()[name])
    ]


def test_the_optimizers_are_shells_with_nothing_mixed_in():
    torch = pytest.importorskip("torch")
    from adamax import numpy as adamax_numpy
    from adamax.torch import Adamax, AdamaxW

    assert Adamax.__mro__ == (Adamax, torch.optim.Optimizer, object)
    assert AdamaxW.__mro__ == (AdamaxW, Adamax, torch.optim.Optimizer, object)
    assert adamax_numpy.Adamax.__mro__ == (adamax_numpy.Adamax, object)
