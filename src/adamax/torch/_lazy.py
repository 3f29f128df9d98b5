"""Lazy rows for sparse embeddings: ``lazy_embeddings(model, opt)``, the rows' catch-up, and ``opt.flush()``.

A table registered here takes sparse gradients.  A step updates only the rows
its gradient touches (and rows about to fall out of the catch-up window);
every other row keeps the value of its last update, and is brought up to
date, in closed form (:mod:`adamax._lazy`), when it is next read: by the
embedding's forward pre-hook for the rows about to be looked up, by
``opt.flush()`` for all of them, by ``opt.state_dict()`` and by the module's
``state_dict()``.  The results are dense Adamax's on the same gradients
(zeros in untouched rows), to about 1e-14 relative in float64.

The rule for users: read a lazy table only through its module, or after
``opt.flush()``.  Reading ``embedding.weight`` directly (weight tying,
evaluation code that indexes it) sees rows as they were at their last
update.  Bringing rows up to date bumps the table's version counter, so a
graph that saved the weight before a lookup changed it fails at backward;
a write to the table from outside the optimizer is detected (the same
counter) at the next step or catch-up, and refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adamax import _lazy, _lazy_compact, _memory
from adamax._algorithm import step_size
from adamax.kernels import lazy_compact_kernels, lazy_kernels
from adamax.spec import AdamaxConfig
from adamax.torch import _compact
from adamax.torch._config import config_of, group_of
from adamax.torch._sparse import check_lookup, check_rows, coalesced

_LAZY_DTYPES = (torch.float32, torch.float64)
_COMPACT_DTYPES = (torch.float32,)
_MODULES = (torch.nn.Embedding, torch.nn.EmbeddingBag)


class _Table(_lazy.Table):
    """A lazy table's bookkeeping (:class:`adamax._lazy.Table`); the table's version counter, address, shape and
    strides after the optimizer's last write, by which a write from outside is noticed; and where its state is
    kept."""

    def __init__(self, p: Tensor, config: AdamaxConfig, step: int, huge_pages: bool = False) -> None:
        super().__init__(p.shape[0], config, np.dtype(str(p.dtype).removeprefix("torch.")), step)
        self.mark(p)
        self.huge_pages = huge_pages  # the table's state (and ``last``) is kept on memory advised for huge pages
        if huge_pages:
            last = _memory.zeros(self.last.shape, self.last.dtype)
            last[:] = self.last
            self.last = last

    def mark(self, p: Tensor) -> None:
        """Record ``p`` as the optimizer last left it."""
        self.seen = _identity(p)

    def changed(self, p: Tensor) -> bool:
        """Whether ``p`` was written, replaced or reshaped since :meth:`mark` (as far as torch lets us see)."""
        return self.seen != _identity(p)

    def current(self) -> bool:
        """Whether every row is up to date: then a write from outside leaves the bookkeeping true."""
        return bool((self.last == self.clock.t).all())


def lazy_embeddings(model: torch.nn.Module, optimizer, *, huge_pages: bool = True) -> list[torch.nn.Module]:
    """Step every sparse ``nn.Embedding`` / ``nn.EmbeddingBag`` of ``model`` lazily; returns those modules.

    Each module's weight must be a param of ``optimizer`` (an :class:`adamax.torch.Adamax`), in a group with
    decoupled or no weight decay and ``beta1 < beta2``.  Each gets a forward pre-hook that brings the rows it is
    about to look up to date, and a ``state_dict`` pre-hook that brings all of them up to date.

    With ``state_format="compact"`` or ``"compact8"`` the tables' state is kept in row blocks (scales of shape
    ``(rows, ceil(width / 256))``, :mod:`adamax._lazy_compact`), so each row catches up alone; such tables are
    float32.

    ``huge_pages`` (Linux, tables of 8 MiB or more): the weight's values are moved, once, into memory advised for
    2 MiB pages (:mod:`adamax._memory`; the same ``Parameter`` object, its ``.data`` replaced), and its state is
    kept there, which saves most of the page walks of a step over scattered rows.  A tensor that shared the
    weight's old memory (a ``.numpy()`` view, say) no longer does; pass ``huge_pages=False`` to keep it.
    """
    tables = getattr(optimizer, "_lazy", None)
    if not isinstance(tables, LazyTables):
        raise TypeError(f"lazy_embeddings needs an adamax.torch.Adamax, got {type(optimizer).__name__}")
    modules = [m for m in model.modules() if isinstance(m, _MODULES) and m.sparse]
    if not modules:
        raise ValueError("the model has no nn.Embedding or nn.EmbeddingBag with sparse=True")
    if tables.tables and tables.state_format != optimizer.state_format:
        raise ValueError("the optimizer's state_format changed since its tables were registered")
    tables.state_format = optimizer.state_format
    configs = []
    for module in modules:  # check every one before registering any
        configs.append(config_of(group_of(optimizer.param_groups, module.weight)))
        tables.check_eligible(module.weight, configs[-1])
    for module, config in zip(modules, configs):
        weight = module.weight
        tables.register(weight, optimizer.state.get(weight), config, huge_pages)
        if id(module) in tables.hooked:  # a second call: already hooked
            continue
        tables.hooked.add(id(module))
        module.register_forward_pre_hook(_make_lookup_hook(optimizer))
        module.register_forward_hook(_make_renorm_hook(tables))
        module.register_state_dict_pre_hook(lambda module, prefix, keep_vars, opt=optimizer: opt.flush())
    return modules


def _make_renorm_hook(tables: LazyTables):
    """``max_norm`` makes the module rescale, in place, the rows it has just looked up, which the pre-hook had
    brought up to date: a write the bookkeeping may accept."""

    def accept_renorm(module: torch.nn.Module, args: tuple, output: Tensor) -> None:
        if module.max_norm is not None:
            tables.accept_write(module.weight)

    return accept_renorm


def _make_lookup_hook(optimizer):
    def bring_rows_up_to_date(module: torch.nn.Module, args: tuple) -> None:
        indices = args[0] if args else None
        if isinstance(indices, Tensor):
            rows = torch.unique(indices.detach())
            check_lookup(rows, module.weight.shape[0], f"a lookup in {type(module).__name__}")
            weight = module.weight
            optimizer._lazy.bring_up_to_date(weight, optimizer.state.get(weight), rows.cpu().numpy())

    return bring_rows_up_to_date


class LazyTables:
    """An optimizer's lazy tables, their one owner: registration, the step of their touched rows, and bringing
    rows up to date.  Every method is given the table's param, its state entry (None or empty before its first
    step) and, where it needs them, the group's hyperparameters; it writes the param, that entry and the table's
    bookkeeping, nothing else."""

    def __init__(self) -> None:
        self.tables: dict[Tensor, _Table] = {}
        self.hooked: set[int] = set()  # ids of the modules lazy_embeddings hooked
        self.state_format = "full"  # the optimizer's, set by lazy_embeddings

    @property
    def layout(self) -> _compact.Layout | None:
        """The tables' compact format (their state in row blocks), or None for full state."""
        return _compact.LAYOUTS.get(self.state_format)

    def check_eligible(self, p: Tensor, config: AdamaxConfig) -> None:
        if self.layout is not None and (p.dtype not in _COMPACT_DTYPES or p.device.type != "cpu"):
            raise TypeError(f"lazy tables with {self.state_format} state are float32 CPU tensors, got {p.dtype} "
                            f"on {p.device}")  # fmt: skip
        if p.dtype not in _LAZY_DTYPES or p.device.type != "cpu":
            raise TypeError(f"lazy tables are float32 or float64 CPU tensors, got {p.dtype} on {p.device}")
        _lazy.check_config(config)  # refuses coupled weight decay and beta1 >= beta2

    def register(self, p: Tensor, state: dict | None, config: AdamaxConfig, huge_pages: bool = False) -> None:
        if p in self.tables:
            return
        if huge_pages:
            with torch.no_grad():
                p.data = _on_huge_pages(p.data)
        self.restart(p, state, config, huge_pages)

    def restart(self, p: Tensor, state: dict | None, config: AdamaxConfig, huge_pages: bool | None = None) -> None:
        """``p``'s bookkeeping anew, at its step count, every row up to date; its state moved to huge pages where
        the table keeps them (``huge_pages``; by default as before)."""
        if huge_pages is None:
            huge_pages = self.tables[p].huge_pages if p in self.tables else False
        self.tables[p] = _Table(p, config, int(state["step"]) if state else 0, huge_pages)
        if self.layout is not None and state and not _compact.in_row_blocks(state):
            state.update(_in_row_blocks(p, state, self.state_format))  # consecutive blocks: a dense step's, a load's
        if huge_pages and state:
            for key in self.state_keys():
                state[key] = _on_huge_pages(state[key])

    def state_keys(self) -> tuple[str, ...]:
        """The keys of a table's state tensors in the tables' format."""
        return ("exp_avg", "exp_inf") if self.layout is None else tuple(key for key, _, _ in self.layout.tensors)

    def for_step(self, p: Tensor, state: dict, config: AdamaxConfig) -> _Table:
        """``p``'s bookkeeping under ``config``; when the betas, eps or placement changed, every row is brought up
        to date under the old ones first (no row's value changes, only where it is stored)."""
        table = self.checked(p, state, config)
        if not table.recorded_with(config):
            self.bring_up_to_date(p, state, np.arange(p.shape[0]))
            table = self.tables[p] = _Table(p, config, table.clock.t, table.huge_pages)
        table.clock.config = config
        return table

    def accept_write(self, p: Tensor) -> None:
        table = self.tables.get(p)
        if table is not None:
            table.mark(p)

    def checked(self, p: Tensor, state: dict | None, config: AdamaxConfig | None = None) -> _Table:
        """``p``'s bookkeeping, after a write from outside the optimizer: accepted while every row is up to
        date, refused (before anything is written) while some are behind or when the state no longer fits.  A
        table never stepped gets fresh bookkeeping under ``config`` (by default the one it has)."""
        table = self.tables[p]
        if not table.changed(p):
            return table
        shaped = state and state["exp_inf_code" if "exp_inf_code" in state else "exp_avg"]
        if state and tuple(shaped.shape) != tuple(p.shape):
            raise RuntimeError(
                f"a lazily stepped embedding was replaced by one of shape {tuple(p.shape)}; its state has shape "
                f"{tuple(shaped.shape)} (load a state dict that fits it, or build a new optimizer)"
            )
        if not table.current():
            raise RuntimeError(
                "a lazily stepped embedding was written outside the optimizer while some of its rows were "
                "behind; its rows' bookkeeping no longer holds (call opt.flush() before writing to it)"
            )
        if not state:  # never stepped: the bookkeeping anew, for the table as it is now (its shape, dtype)
            self.restart(p, state, config if config is not None else table.clock.config)
            return self.tables[p]
        table.mark(p)
        return table

    def bring_up_to_date(self, p: Tensor, state: dict | None, rows: np.ndarray) -> None:
        if p not in self.tables or not state:
            return  # never stepped: nothing is stale
        table = self.checked(p, state)
        rows = table.behind(rows)
        if not len(rows):
            return
        layout = self.layout
        kernel = _kernel_for(p, state) if layout is None else None
        if layout is not None:
            self.check_compact(p, state, "state of a lazy table")
            arrays = _compact.as_compact_state(state, layout.name)
            compact_kernel = _compact_kernel_for(p)
            if compact_kernel is not None:
                compact_kernel.step_rows(table.clock, p.detach().numpy(), arrays, table.last, rows)
            else:
                _lazy_compact.bring_up_to_date(table, layout.definition, p.detach().numpy(), arrays, rows)
        elif kernel is not None:
            kernel.step_rows(table.clock, *_arrays(p, state), table.last, rows)
        else:
            table.bring_up_to_date(*_arrays(p, state), rows)
        _written(p)
        table.mark(p)

    def check_compact(self, p: Tensor, state: dict | None, where: str) -> None:
        """A lazy table's compact entry (if any) is well formed, its scales in row blocks."""
        if not state:
            return
        _compact.check_state(p, state, where, loading=False, state_format=self.state_format)
        if not _compact.in_row_blocks(state):
            raise ValueError(f"{where}: a lazy table's scales must be in row blocks, of shape "
                             f"{self.layout.shape('blocks', p, rows=True)}")  # fmt: skip

    def check_step(self, p: Tensor, g: Tensor, index: int, config: AdamaxConfig, state: dict | None) -> None:
        """Before any write: a sparse gradient fits its lazy table, and the group's hyperparameters can be lazy."""
        _lazy.check_config(config)
        if g.layout is not torch.sparse_coo or g.sparse_dim() != 1 or g.shape != p.shape or g.dtype != p.dtype:
            raise RuntimeError(
                f"param {index} of its group is a lazy table of shape {tuple(p.shape)}, {p.dtype}: its gradient "
                f"must be a sparse COO tensor of that shape and dtype with one sparse dimension"
            )
        check_rows(g, p.shape[0], f"the sparse gradient of lazy param {index} of its group")
        where = f"state of lazy param {index} of its group"
        if self.layout is not None:
            self.check_compact(p, state, where)
        elif state and (state["exp_avg"].dtype != p.dtype or state["exp_avg"].layout is not torch.strided):
            raise ValueError(f"{where} must be dense and of the param's dtype")
        self.checked(p, state, config)

    def step(self, p: Tensor, state: dict, fresh: bool, config: AdamaxConfig) -> None:
        """One step of a lazy table (``state`` its entry, made just now when ``fresh``): rows the gradient
        touches, brought up to date and updated as dense Adamax updates them; rows about to fall out of the
        window, brought up to date; then the clock moves on."""
        table = self.for_step(p, state, config)
        layout = self.layout
        if fresh and table.huge_pages:  # new state (zeros), made where the table keeps it
            for key in self.state_keys():
                state[key] = _on_huge_pages(state[key], copy=False)
        touched, values = _coalesced(p.grad)
        t = int(state["step"])
        stale = table.clock.due(table.last)
        if len(stale):
            stale = np.setdiff1d(stale, touched, assume_unique=True)
        if layout is not None:
            _step_compact_rows(p, state, table, layout, touched, values, config, t, stale)
        else:
            _step_full_rows(p, state, table, touched, values, config, t, stale)
        with torch.no_grad():
            state["step"] += 1
        _written(p)
        table.mark(p)


def _step_full_rows(p: Tensor, state: dict, table: _Table, touched, values, config: AdamaxConfig, t: int, stale):
    """The rows of a table with full state: ``touched`` brought up to date and stepped, ``stale`` brought up to
    date, the clock moved on."""
    arrays = _arrays(p, state)
    kernel = _kernel_for(p, state)
    if kernel is not None:  # one parallel pass: catch-up and update, row by row
        if len(stale):  # only every W/2 steps
            kernel.step_rows(table.clock, *arrays, table.last, stale)
        size = step_size(config.lr, config.beta1, t + 1)
        kernel.step_rows(table.clock, *arrays, table.last, touched, values, step_size=size, config=config)
        kernel.advance(table.clock, *table.clock.step_scalars(config.lr, t + 1))
    else:
        table.step(*arrays, touched, values, config, t, stale)()


def _step_compact_rows(
    p: Tensor, state: dict, table: _Table, layout: _compact.Layout, touched, values, config: AdamaxConfig, t: int, stale
):
    """:func:`_step_full_rows` for compact state (in row blocks): the lazy compact kernel, or the definition."""
    arrays = _compact.as_compact_state(state, layout.name)
    kernel = _compact_kernel_for(p)
    if kernel is not None:  # one parallel pass, as for full state
        if len(stale):
            kernel.step_rows(table.clock, p.detach().numpy(), arrays, table.last, stale)
        kernel.step_rows(table.clock, p.detach().numpy(), arrays, table.last, touched, values, config)
        lazy_kernels().advance(table.clock, *table.clock.step_scalars(config.lr, t + 1))
    else:
        _lazy_compact.step(table, layout.definition, p.detach().numpy(), arrays, touched, values, config, t, stale)()


def _in_row_blocks(p: Tensor, state: Mapping[str, Any], state_format: str) -> dict[str, Tensor]:
    """A compact entry in consecutive blocks with its scales in row blocks: the same values where the blocks are
    the same (rows of a multiple of 256 elements), else through float32 (m to nearest, u up)."""
    layout = _compact.LAYOUTS[state_format]
    shape = layout.shape("blocks", p, rows=True)
    if (p.numel() // max(p.shape[0], 1)) % _compact.compact.BLOCK == 0:
        return {key: state[key].reshape(shape).clone() for key, _, how in layout.tensors if how == "blocks"}
    full = _compact.to_full_entry(state, state_format)
    entry = _compact.to_compact_entry(full, state_format, rows=True)
    return {key: value for key, value in entry.items() if key != "step"}


def _written(p: Tensor) -> None:
    """Mark ``p`` as changed in place (its rows were written through NumPy, which torch does not see), so that
    autograd refuses a graph that read the old values (a tied weight used before the lookup that brought its
    rows up to date)."""
    torch.autograd.graph.increment_version(p)


def _identity(p: Tensor) -> tuple:
    """What a write from outside the optimizer changes, as far as torch lets us see: ``p``'s version counter, its
    address, shape, strides and dtype."""
    return p._version, p.data_ptr(), tuple(p.shape), p.stride(), p.dtype


def _coalesced(grad: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A sparse COO gradient's rows (unique, ascending) and their values, as NumPy arrays.  A gradient whose rows
    are already unique and ascending is taken as it is: no sort, no copy."""
    grad = coalesced(grad)
    return grad._indices()[0].numpy(), grad._values().numpy()


def _on_huge_pages(t: Tensor, copy: bool = True) -> Tensor:
    """A CPU tensor like ``t`` (its values, or zeros without ``copy``) on memory advised for huge pages; ``t``
    itself where :mod:`adamax._memory` would give ordinary memory anyway."""
    if t.device.type != "cpu" or t.nbytes < _memory.MIN_BYTES or not _memory.available():
        return t
    moved = torch.from_numpy(_memory.zeros((t.nbytes,), np.dtype(np.uint8))).view(t.dtype).view(t.shape)
    if copy:
        moved.copy_(t)
    return moved


def _kernel_for(p: Tensor, state: Mapping[str, Any]):
    """The lazy-rows numba kernel where it can take this table (2-d, contiguous), else None: NumPy then."""
    kernel = lazy_kernels()
    if kernel is None or p.dim() != 2:
        return None
    if not (p.is_contiguous() and state["exp_avg"].is_contiguous() and state["exp_inf"].is_contiguous()):
        return None
    return kernel


def _compact_kernel_for(p: Tensor):
    """The lazy compact kernel where it can take this table (2-d, contiguous; its state is contiguous, as checked),
    else None: the NumPy definition then."""
    kernel = lazy_compact_kernels()
    return kernel if kernel is not None and p.dim() == 2 and p.is_contiguous() else None


def _arrays(p: Tensor, state: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy views of a lazy table and its state (CPU, dense: the same memory)."""
    return p.detach().numpy(), state["exp_avg"].numpy(), state["exp_inf"].numpy()
