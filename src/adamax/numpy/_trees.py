"""The params and gradients the NumPy optimizer takes: a list, tuple or nested dict of arrays, flattened to
``{path: leaf}``; a lazy table's gradient is a :class:`RowGradient`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

Tree = Any  # an ndarray, or a list/tuple/dict of trees


class RowGradient(NamedTuple):
    """The gradient of a lazily stepped table (see ``lazy``): ``values[i]`` is the gradient of row ``indices[i]``;
    every other row's gradient is zero.  Repeated indices are summed."""

    indices: np.ndarray  # 1-d integers
    values: np.ndarray  # (len(indices), *table.shape[1:]), the table's dtype


def _flatten(tree: Tree, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(path, leaf), ...]`` in a fixed order; paths join keys with '/'."""
    if isinstance(tree, RowGradient):
        return [(prefix, tree)]
    if isinstance(tree, Mapping):
        out = []
        for key in tree:
            if not isinstance(key, str) or not key or "/" in key:
                raise TypeError(
                    f"dict keys must be non-empty strings without '/', got {key!r} at {prefix or 'the root'!r}"
                )
            out += _flatten(tree[key], f"{prefix}/{key}" if prefix else key)
        return out
    if isinstance(tree, Sequence) and not isinstance(tree, (str, bytes)):
        out = []
        for i, item in enumerate(tree):
            out += _flatten(item, f"{prefix}/{i}" if prefix else str(i))
        return out
    return [(prefix, tree)]
