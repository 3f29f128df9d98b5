"""A stateful Adamax optimizer over NumPy arrays, updated in place.

It lifts :func:`adamax.reference.update` over a list, tuple or nested dict of
arrays, the way jax's ``example_libraries.optimizers`` lifts per-array math
over pytrees.  Each array keeps its own step count, as in torch.

Both :meth:`Adamax.step` and :meth:`Adamax.load_state_dict` are
all-or-nothing: every input is checked and every new value computed before
the first array is written, so an exception leaves params and state as they
were.

>>> import numpy as np
>>> from adamax.numpy import Adamax
>>> params = {"w": np.array([1.0, 2.0]), "b": np.array(0.5)}
>>> opt = Adamax(params, lr=0.1)
>>> opt.step({"w": np.array([1.0, -1.0]), "b": np.array(2.0)})
>>> params["w"].round(6), params["b"].round(6)
(array([0.9, 2.1]), np.float64(0.4))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from adamax import _lazy, compact, reference
from adamax._algorithm import step_size
from adamax.kernels import compact_kernels, cpu_kernels
from adamax.reference import AdamaxState
from adamax.spec import AdamaxConfig, EpsPlacement

Tree = Any  # an ndarray, or a list/tuple/dict of trees
_STATE_KEYS = frozenset({"step", "exp_avg", "exp_inf"})


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


class Adamax:
    r"""Adamax over a list or (nested) dict of NumPy arrays.

    Args:
        params: the arrays to optimize, updated in place.  Each must be a
            writeable float16/32/64 or complex64/128 array; no two may share
            memory.
        lr, betas, eps, weight_decay, decoupled_weight_decay, maximize,
        eps_placement: see :mod:`adamax.spec`.
        fused: the fused numba kernel for every array (``True``), never
            (``False``), or for every C-contiguous float32/float64 array when
            numba is installed (``None``); other arrays take the reference.
            Results are bit-identical either way.
        lazy: paths of tables (arrays of 1 or more dimensions, rows along
            the first) stepped lazily: their gradients are
            :class:`RowGradient`\ s, and a row no gradient touches is brought
            up to date only when read (:meth:`rows`, :meth:`flush`,
            :meth:`state_dict`), with the results of dense Adamax on zero
            gradients there (:mod:`adamax._lazy`).  Until then the table's
            untouched rows are stale.  Needs decoupled (or no) weight decay and
            ``beta1 < beta2``.
        state_format: ``"full"`` (m and u in the param's dtype) or ``"compact"``
            (:mod:`adamax.compact`: m in bfloat16, u as 16-bit codes under a
            float32 scale per 256 elements, about 4 bytes per element; float32
            and float16 params; not with ``lazy``).  :meth:`load_state_dict`
            takes either format and converts it to this one.

    ``opt.config`` holds the hyperparameters; assign
    ``opt.config = opt.config.replace(lr=...)`` to schedule them.
    """

    def __init__(
        self,
        params: Tree,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        eps_placement: EpsPlacement = "max",
        fused: bool | None = None,
        lazy: Sequence[str] = (),
        state_format: str = "full",
    ) -> None:
        self.state_format = compact.check_state_format(state_format)
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"Invalid fused: {fused!r} (expected True, False or None)")
        if fused and cpu_kernels() is None:
            raise RuntimeError("fused=True needs numba: pip install 'adamax[fast]'")
        self.fused = fused
        self.config = AdamaxConfig(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            eps_placement=eps_placement,
        )
        leaves = _flatten(params)
        if not leaves:
            raise ValueError("optimizer got an empty parameter list")
        for path, leaf in leaves:
            if not isinstance(leaf, np.ndarray):
                raise TypeError(f"param {path!r} must be a numpy array, got {type(leaf).__name__}")
            reference.check_dtype(leaf.dtype, f"param {path!r}")
            if not leaf.flags.writeable:
                raise ValueError(f"param {path!r} is read-only; Adamax updates params in place")
        for i, (path_a, a) in enumerate(leaves):
            for path_b, b in leaves[i + 1 :]:
                if np.may_share_memory(a, b) and np.shares_memory(a, b):
                    raise ValueError(f"params {path_a!r} and {path_b!r} share memory")
        if state_format == "compact":
            for path, leaf in leaves:
                if leaf.dtype not in _COMPACT_DTYPES:
                    raise TypeError(f"compact state computes in float32: param {path!r} must be float32 or "
                                    f"float16, got {leaf.dtype}")  # fmt: skip
            if lazy:
                raise ValueError("lazy tables keep full state: use state_format='full' with lazy")
        self.params = params
        self._leaves: dict[str, np.ndarray] = dict(leaves)
        self.state: dict[str, AdamaxState | compact.CompactState] = {}
        if isinstance(lazy, str) or not all(isinstance(path, str) for path in lazy):
            raise TypeError(f"lazy must be a list of param paths, got {lazy!r}")
        unknown = [path for path in lazy if path not in self._leaves]
        if unknown:
            raise ValueError(f"lazy names unknown params {unknown}; the params are {list(self._leaves)}")
        for path in lazy:
            if self._leaves[path].ndim < 1:
                raise ValueError(f"lazy param {path!r} must have rows (at least 1 dimension)")
        if lazy:
            _lazy.check_config(self.config)  # refuses coupled decay and beta1 >= beta2 now, not at a step
        self._lazy: dict[str, _lazy.Table] = {path: _fresh_table(self._leaves[path], self.config) for path in lazy}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"Adamax({len(self._leaves)} arrays, {fields})"

    def _matching_grads(self, grads: Tree) -> dict[str, Any]:
        flat = dict(_flatten(grads))
        for path in self._leaves:
            if path not in flat and any(key.startswith(f"{path}/") for key in flat):
                raise TypeError(f"gradient for {path!r} must be a numpy array, got a list, tuple or dict")
        missing = [p for p in self._leaves if p not in flat or flat[p] is None]
        if missing:
            raise ValueError(f"missing gradient for {', '.join(map(repr, missing))}")
        extra = [p for p in flat if p not in self._leaves]
        if extra:
            raise ValueError(f"gradient for unknown param {', '.join(map(repr, extra))}")
        for path, param in self._leaves.items():
            if path in self._lazy:
                flat[path] = _coalesced(path, flat[path], param)
            elif isinstance(flat[path], RowGradient):
                raise TypeError(f"a RowGradient for {path!r}, which is not lazy: name it in Adamax(..., lazy=[...])")
            else:
                reference.check_like_param(f"gradient for {path!r}", flat[path], param)
        return flat

    def _kernel_paths(self, grads: dict[str, np.ndarray]) -> list[str]:
        """The one place that decides which arrays the fused kernel updates (see ``fused``)."""
        if self.state_format == "compact":
            return self._compact_kernel_paths(grads)
        kernels = cpu_kernels() if self.fused is not False else None
        if kernels is None:
            return []
        chosen = []
        for path, param in self._leaves.items():
            if path in self._lazy:
                continue
            if kernels.qualifies(param, grads[path]):
                chosen.append(path)
            elif self.fused:
                raise ValueError(
                    f"fused=True cannot update {path!r}: the kernel takes C-contiguous float32 or float64 "
                    f"arrays with gradients alike, got a {param.dtype} param"
                )
        return chosen

    def step(self, grads: Tree) -> None:
        """Update every param in place from ``grads``, a tree shaped like the params; all or nothing."""
        for path, leaf in self._leaves.items():  # made read-only after construction: refused before any write
            if not leaf.flags.writeable:
                raise ValueError(f"param {path!r} is read-only; Adamax updates params in place")
        flat = self._matching_grads(grads)
        fused = self._kernel_paths(flat)
        taken = set(fused)
        new = {}
        lazy = {path: self._lazy_step(path, flat[path]) for path in self._lazy}
        for path, param in self._leaves.items():
            if path not in taken and path not in self._lazy:
                new[path] = self._update(param, flat[path], self.state.get(path))
        # Nothing above wrote anything; from here on nothing can fail.
        if fused and self.state_format == "compact":
            self._step_compact_fused(fused, flat)
        elif fused:
            self._step_fused(fused, flat)
        for path, (value, state) in new.items():
            np.copyto(self._leaves[path], value)
            self.state[path] = state
        for commit in lazy.values():
            commit()

    def _compact_kernel_paths(self, grads: dict[str, np.ndarray]) -> list[str]:
        kernel = compact_kernels() if self.fused is not False else None
        if kernel is None:
            return []
        chosen = []
        for path, param in self._leaves.items():
            grad = grads[path]
            if param.flags.c_contiguous and grad.flags.c_contiguous and grad.dtype == param.dtype:
                chosen.append(path)
            elif self.fused:
                raise ValueError(f"fused=True cannot update {path!r}: the kernel takes C-contiguous arrays with "
                                 f"gradients alike")  # fmt: skip
        return chosen

    def _step_compact_fused(self, paths: list[str], grads: dict[str, np.ndarray]) -> None:
        kernel = compact_kernels()
        for dtype, kind in kernel.KINDS.items():
            group = [path for path in paths if self._leaves[path].dtype == dtype]
            if not group:
                continue
            states = [self.state[path] if path in self.state else compact.init(self._leaves[path]) for path in group]
            counts = np.array([int(s.step) + 1 for s in states], dtype=np.int64)
            columns = (
                [self._leaves[path] for path in group], [grads[path] for path in group],
                [s.exp_avg for s in states], [s.exp_inf_code for s in states], [s.exp_inf_scale for s in states],
            )  # fmt: skip
            addresses = tuple(np.array([a.ctypes.data for a in column], dtype=np.int64) for column in columns)
            kernel.step(kind, addresses, tuple(self._leaves[path].size for path in group), counts, self.config)
            for path, state in zip(group, states):
                self.state[path] = state._replace(step=int(state.step) + 1)

    def _update(self, param: np.ndarray, grad: np.ndarray, state):
        """One array's step by the reference of this optimizer's state format."""
        if self.state_format == "compact":
            return compact.update(param, grad, state if state is not None else compact.init(param), self.config)
        return reference.update(param, grad, state if state is not None else reference.init(param), self.config)

    def _lazy_step(self, path: str, grad: RowGradient):
        """Compute one lazy table's step (rows the gradient touches, and rows about to fall out of the window);
        returns the function that writes it."""
        table, param = self._lazy_table(path), self._leaves[path]
        state = self._state_of(path)
        t = int(state.step)
        stale = np.setdiff1d(table.clock.stale(table.last), grad.indices, assume_unique=True)
        write = table.step(param, state.exp_avg, state.exp_inf, grad.indices, grad.values, self.config, t, stale)

        def commit() -> None:
            write()
            self.state[path] = AdamaxState(t + 1, state.exp_avg, state.exp_inf)

        return commit

    def _lazy_table(self, path: str) -> _lazy.Table:
        """The table's bookkeeping under the current config.  Its history holds for the betas, eps and placement
        it was recorded with; when one of those changed, every row is first brought up to date under the old
        ones (which changes no row's value, only where it is stored) and the history starts afresh."""
        config, table = self.config, self._lazy[path]
        _lazy.check_config(config)
        if not table.recorded_with(config):
            self._bring_up_to_date(path, np.arange(len(self._leaves[path])))
            table = self._lazy[path] = _fresh_table(self._leaves[path], config, int(self._state_of(path).step))
        table.clock.config = config  # the lr and decay of the steps to come
        return table

    def _state_of(self, path: str) -> AdamaxState:
        return self.state[path] if path in self.state else reference.init(self._leaves[path])

    def rows(self, path: str, indices) -> np.ndarray:
        """Bring rows ``indices`` of lazy table ``path`` up to date (in place) and return a copy of them."""
        if path not in self._lazy:
            raise ValueError(f"{path!r} is not lazy; read it directly")
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        self._bring_up_to_date(path, indices)
        return self._leaves[path][indices].copy()

    def flush(self) -> None:
        """Bring every row of every lazy table up to date, in place."""
        for path in self._lazy:
            self._bring_up_to_date(path, np.arange(len(self._leaves[path])))

    def _bring_up_to_date(self, path: str, indices: np.ndarray) -> None:
        if path not in self.state:
            return  # never stepped: nothing is stale
        state = self.state[path]
        self._lazy[path].bring_up_to_date(self._leaves[path], state.exp_avg, state.exp_inf, indices)

    def _step_fused(self, paths: list[str], grads: dict[str, np.ndarray]) -> None:
        kernels = cpu_kernels()
        states = {
            path: self.state[path] if path in self.state else reference.init(self._leaves[path]) for path in paths
        }
        for dtype in kernels.DTYPES:
            group = [path for path in paths if self._leaves[path].dtype == dtype]
            if not group:
                continue
            steps = [int(states[path].step) + 1 for path in group]
            step_sizes = np.array([step_size(self.config.lr, self.config.beta1, t) for t in steps])
            arrays = (
                [self._leaves[path] for path in group],
                [grads[path] for path in group],
                [states[path].exp_avg for path in group],
                [states[path].exp_inf for path in group],
            )
            addresses = tuple(np.array([a.ctypes.data for a in column], dtype=np.int64) for column in arrays)
            kernels.step(dtype, addresses, tuple(self._leaves[path].size for path in group), step_sizes, self.config)
            for path, t in zip(group, steps):
                self.state[path] = AdamaxState(t, states[path].exp_avg, states[path].exp_inf)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: ``{"state": {path: {step, exp_avg, exp_inf}}, "hyperparams": {...}}``; lazy tables are
        brought up to date first, so it is the state dense Adamax would have."""
        self.flush()
        return {
            "state": {
                path: {
                    key: (value.copy() if isinstance(value, np.ndarray) else int(value))
                    for key, value in zip(s._fields, s)
                }
                for path, s in self.state.items()
            },
            "hyperparams": self.config.to_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot; refuse it whole if anything mismatches."""
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "hyperparams"}:
            keys = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"expected a state dict with keys 'state' and 'hyperparams', got {keys}")
        config = AdamaxConfig.from_dict(state_dict["hyperparams"])
        saved = state_dict["state"]
        if not isinstance(saved, Mapping):
            raise TypeError(f"'state' must be a mapping, got {type(saved).__name__}")
        if saved and set(saved) != set(self._leaves):
            missing = sorted(set(self._leaves) - set(saved))
            unknown = sorted(set(saved) - set(self._leaves), key=str)
            raise ValueError(f"state does not match the params: missing {missing}, unknown {unknown}")
        state = {}
        for path, entry in saved.items():
            state[path] = self._loaded_entry(path, entry)
        self.config = config
        self.state = state
        self._lazy = {
            path: _fresh_table(self._leaves[path], config, int(state[path].step) if path in state else 0)
            for path in self._lazy
        }

    def _loaded_entry(self, path: str, entry: Any):
        """A saved state entry, checked against its param and converted to this optimizer's state format (full
        -> compact rounds m to nearest and u up; compact -> full is exact).  Raises, naming the path."""
        param = self._leaves[path]
        keys = set(entry) if isinstance(entry, Mapping) else None
        if keys == set(compact.KEYS):
            compact.check_state(entry, param.shape, f"state for {path!r}")
            loaded = compact.CompactState(*(np.array(entry[key]) if key != "step" else int(entry[key])
                                            for key in compact.KEYS))  # fmt: skip
            if self.state_format == "compact":
                return loaded
            step, m, u = compact.to_full(loaded)
            return AdamaxState(step, m.astype(param.dtype), u.astype(param.dtype))
        if keys != _STATE_KEYS:
            formats = f"{sorted(_STATE_KEYS)} (full) or {sorted(compact.KEYS)} (compact)"
            raise ValueError(f"state for {path!r} must have exactly the keys {formats}")
        candidate = AdamaxState(entry["step"], entry["exp_avg"], entry["exp_inf"])
        try:
            reference.check_update_args(param, param, candidate)
        except (TypeError, ValueError) as err:
            raise type(err)(f"state for {path!r}: {err}") from None
        if self.state_format == "compact":
            return compact.from_full(int(candidate.step), candidate.exp_avg, candidate.exp_inf)
        return AdamaxState(int(candidate.step), candidate.exp_avg.copy(), candidate.exp_inf.copy())


_COMPACT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def _coalesced(path: str, grad: Any, param: np.ndarray) -> RowGradient:
    """Check a lazy table's gradient and sum the values of repeated rows."""
    if not isinstance(grad, RowGradient):
        raise TypeError(f"gradient for lazy {path!r} must be a RowGradient(indices, values), got {type(grad).__name__}")
    indices, values = grad
    if not (isinstance(indices, np.ndarray) and indices.ndim == 1 and np.issubdtype(indices.dtype, np.integer)):
        raise TypeError(f"RowGradient for {path!r}: indices must be a 1-d integer array")
    if indices.size and (indices.min() < 0 or indices.max() >= len(param)):
        bad = int(indices[(indices < 0) | (indices >= len(param))][0])
        raise IndexError(f"RowGradient for {path!r}: indices must lie in [0, {len(param)}), got row {bad}")
    reference.check_like_param(
        f"RowGradient values for {path!r}", values, np.empty((len(indices), *param.shape[1:]), param.dtype)
    )
    unique, where = np.unique(indices, return_inverse=True)
    if len(unique) == len(indices):
        order = np.argsort(indices)
        return RowGradient(indices[order], values[order])
    summed = np.zeros((len(unique), *param.shape[1:]), param.dtype)
    np.add.at(summed, where, values)
    return RowGradient(unique, summed)


def _fresh_table(param: np.ndarray, config: AdamaxConfig, step: int = 0) -> _lazy.Table:
    """A lazy table's bookkeeping, starting at ``step`` with every row up to date."""
    return _lazy.Table(len(param), config, param.dtype if param.dtype in (np.float32, np.float64) else np.float64, step)
