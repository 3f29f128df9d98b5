r"""Lazy rows with compact state (``"compact"`` or ``"compact8"``): a row catches up by a change of its scales.

A lazy table's compact state is kept in *row blocks* (:func:`adamax.compact.row_blocks`): each row's elements
are cut into blocks of up to 256 that never straddle two rows, so the scales have the shape ``(rows,
ceil(row / 256))`` and a row can be brought up to date on its own.  (A 64-wide row is one block of 64:
0.0625 bytes of u scale per element, and as much again for compact8's m scale.)

**A catch-up over ``K`` skipped steps** (the gradient was 0 in them) is what :mod:`adamax._lazy` computes,
expressed in the format:

* **u**: the scale is multiplied by ``b2^K`` (float64, rounded once to float32) and the codes stay: the exact
  decay of the ``K`` steps.  With eps placement ``"max"`` an element whose decayed u is below eps is raised to
  eps's code, rounded up, and a block whose scale fell below eps re-bases to cover it, as a step's update does
  (:func:`adamax.compact.raised`).
* **m**: compact's bfloat16 m becomes ``a^K m`` rounded stochastically once (the random bits of its flat
  index at the step count the row is brought to); compact8's m scale is multiplied by ``a^K`` (rounded once)
  and the codes stay (a scale below ``2**-126`` stores 0, as a step's does).
* **p** takes the closed form of :func:`adamax._lazy.catch_up` from the decoded ``m`` and ``u``.

Then the touched rows take the format's step (:func:`adamax.compact.update`, :func:`adamax.compact8.update`)
with their gradients, their random bits picked by their flat indices in the table.

**The bound.**  Against dense compact state of the same row blocks stepped with zero gradients, one catch-up
differs only by rounding: dense rounds the u scale (and compact8's m scale) at each of the ``K`` steps, the
catch-up once, so the scales agree to ``K + 1`` float32 roundings (and u's codes are the same, except where
``"max"`` raises some to eps: there both are eps rounded up to a code); dense re-rounds m at each step,
stochastically, the catch-up once.  ``tests/test_lazy_compact.py`` measures the difference over training
runs and states the bound.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import numpy as np

from adamax import _lazy, compact, compact8
from adamax.spec import AdamaxConfig

_F32 = np.float32


def codes_of(definition: ModuleType):
    """u's codes in a format: :data:`adamax.compact.U16` or :data:`adamax.compact8.U8`."""
    return compact8.U8 if definition is compact8 else compact.U16


def row_size(p: np.ndarray) -> int:
    """The elements in one row of a table (or of rows taken out of it)."""
    return int(np.prod(np.shape(p)[1:], dtype=np.int64))


def flat_index(rows: np.ndarray, row: int) -> np.ndarray:
    """The flat indices, in their table, of the elements of ``rows`` (``row`` elements each), row by row."""
    return (np.asarray(rows, np.int64)[:, None] * row + np.arange(row, dtype=np.int64)).ravel()


def take(state: NamedTuple, rows: np.ndarray) -> NamedTuple:
    """Rows ``rows`` of a table's state (codes and scales along their first axis), copied."""
    return state._replace(**{key: np.asarray(value)[rows] for key, value in state._asdict().items() if key != "step"})


def put(state: NamedTuple, rows: np.ndarray, new: NamedTuple) -> None:
    """Write ``new`` (rows of a state, from :func:`take`) into rows ``rows`` of ``state``'s arrays."""
    for key, value in new._asdict().items():
        if key != "step":
            getattr(state, key)[rows] = value


def catch_up(
    clock: _lazy.Clock, definition: ModuleType, p: np.ndarray, state: NamedTuple, last: np.ndarray, index: np.ndarray
) -> tuple[np.ndarray, NamedTuple]:
    """Rows ``p`` (float32, shape ``(rows, ...)``) and their compact ``state`` in row blocks, last brought up to
    date at steps ``last``, brought to ``clock.t``; ``index``: their elements' flat indices in the table.  Returns
    new arrays; nothing given is modified."""
    last = np.asarray(last, dtype=np.int64)
    K = clock.t - last
    _, m, u = definition.to_full(state)
    new_p = _lazy.catch_up(clock, p, m, u, last).p  # refuses rows older than the window
    due = (K >= 1)[:, None]  # per row (a column against the scales and the rows' elements); current rows keep all
    decayed_scales = (state.exp_inf_scale.astype(np.float64) * clock.pow_b2[K][:, None]).astype(_F32)
    scales = np.where(due, decayed_scales, state.exp_inf_scale)
    codes = state.exp_inf_code
    if clock.config.eps_placement == "max" and due.any():
        rows = due[:, 0]
        raised, raised_scales, _ = compact.raised(
            np.full(codes[rows].size, _F32(clock.eps)), codes[rows], scales[rows], codes_of(definition)
        )
        codes, scales = codes.copy(), scales.copy()
        codes[rows], scales[rows] = raised.reshape(codes[rows].shape), raised_scales
    new = state._replace(exp_inf_code=codes, exp_inf_scale=scales)
    if definition is compact8:
        m_scale = (state.exp_avg_scale.astype(np.float64) * clock.pow_a[K][:, None]).astype(_F32)
        gone = (m_scale < compact.TINY) & due
        m_codes = np.where(compact._per_element(gone, m.size).reshape(m.shape), np.uint8(0), state.exp_avg_code)
        m_scale = np.where(gone, _F32(0), np.where(due, m_scale, state.exp_avg_scale))
        return new_p, new._replace(exp_avg_code=m_codes, exp_avg_scale=m_scale)
    flat = (len(K), row_size(m))  # the rows' elements, a row of them per row
    decayed = (m.reshape(flat).astype(np.float64) * clock.pow_a[K][:, None]).astype(_F32)
    bits = compact.f32_to_bf16_stochastic(decayed.ravel(), clock.t, index).reshape(flat)
    return new_p, new._replace(exp_avg=np.where(due, bits, state.exp_avg.reshape(flat)).reshape(m.shape))


def bring_up_to_date(table: _lazy.Table, definition: ModuleType, p: np.ndarray, state: NamedTuple, rows) -> None:
    """Rows ``rows`` of a lazy table ``p`` and its compact ``state`` (arrays of the whole table) up to date, in
    place."""
    rows = table.behind(np.asarray(rows, dtype=np.int64))
    if len(rows):
        row = row_size(p)
        new_p, new = catch_up(table.clock, definition, p[rows], take(state, rows), table.last[rows],
                              flat_index(rows, row))  # fmt: skip
        p[rows] = new_p
        put(state, rows, new)
        table.last[rows] = table.clock.t


def step(
    table: _lazy.Table,
    definition: ModuleType,
    p: np.ndarray,
    state: NamedTuple,
    touched: np.ndarray,
    values: np.ndarray,
    config: AdamaxConfig,
    t: int,
    stale: np.ndarray,
) -> Callable[[], None]:
    """The table's next step, its param's ``t + 1``: rows ``touched`` (unique) brought up to date and stepped with
    ``values`` by the format's ``update``, rows ``stale`` brought up to date.  Nothing is written here; returns the
    function that writes it and moves the clock on."""
    row = row_size(p)
    clock = table.clock
    caught_p, caught = catch_up(clock, definition, p[stale], take(state, stale), table.last[stale],
                                flat_index(stale, row))  # fmt: skip
    index = flat_index(touched, row)
    rows_p, rows = catch_up(clock, definition, p[touched], take(state, touched), table.last[touched], index)
    new_p, new = definition.update(rows_p, values, rows._replace(step=t), config, index=index)
    scalars = clock.step_scalars(config.lr, t + 1)

    def commit() -> None:
        p[stale], p[touched] = caught_p, new_p
        put(state, stale, caught)
        put(state, touched, new)
        table.last[stale] = clock.t
        clock.advance(*scalars)
        table.last[touched] = clock.t

    return commit
