"""Sparse COO gradients of lazy tables: their rows checked against the table, and coalesced for certain.

torch checks neither a hand-built sparse tensor's indices against its size (it warns at most) nor a tensor
built with ``is_coalesced=True`` for repeated or unsorted rows, so neither is trusted here: rows outside the
table are refused before anything is written, and rows are summed whenever they are not strictly increasing,
whatever the tensor says of itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from adamax.kernels import lazy_kernels


def check_rows(grad: Tensor, rows: int, where: str) -> None:
    """Refuse a sparse gradient with a row outside ``0 .. rows - 1``, naming the first such row."""
    indices = grad._indices()
    if indices.numel():
        check_lookup(indices[0], rows, where)


def check_lookup(indices: Tensor, rows: int, where: str) -> None:
    """Refuse row indices outside ``0 .. rows - 1`` (an ``IndexError`` naming the first such row)."""
    if not indices.numel():
        return
    low, high = torch.aminmax(indices.detach().reshape(-1))
    if int(low) < 0 or int(high) >= rows:
        flat = indices.detach().reshape(-1)
        bad = int(flat[(flat < 0) | (flat >= rows)][0])
        raise IndexError(f"{where}: row {bad} is outside the table's {rows} rows (0 to {rows - 1})")


def coalesced(grad: Tensor) -> Tensor:
    """``grad`` with strictly increasing rows, repeated rows summed: ``grad`` itself when its rows already are."""
    rows = grad._indices()[0]
    if strictly_increasing(rows.numpy()):
        return grad
    if grad.is_coalesced():  # a false claim, which coalesce() would believe: rebuild it without the claim
        grad = torch.sparse_coo_tensor(grad._indices(), grad._values(), grad.shape, check_invariants=False)
    return grad.coalesce()


def strictly_increasing(rows: np.ndarray) -> bool:
    kernel = lazy_kernels()
    if kernel is not None:
        return kernel.strictly_increasing(rows)
    return bool((rows[1:] > rows[:-1]).all())  # no pairs (0 or 1 rows): True
