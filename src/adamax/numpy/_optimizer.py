"""The NumPy optimizer's shell: params and gradients checked, each array's path chosen (the numba kernel, the
reference, lazy rows) and run, every result computed before the first array is written; state dicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adamax import _lazy, compact, compact8, reference
from adamax.kernels import cpu_kernels
from adamax.numpy import _compact, _full, _rows
from adamax.numpy._trees import RowGradient, Tree, _flatten
from adamax.reference import AdamaxState
from adamax.spec import AdamaxConfig, EpsPlacement

_STATE_KEYS = frozenset({"step", "exp_avg", "exp_inf"})
_PATHS = {"full": _full, "compact": _compact.COMPACT, "compact8": _compact.COMPACT8}  # each state format's path


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
        state_format: ``"full"`` (m and u in the param's dtype), ``"compact"``
            (:mod:`adamax.compact`: m in bfloat16, u as 16-bit codes under a
            float32 scale per 256 elements, 4.02 bytes per element) or
            ``"compact8"`` (:mod:`adamax.compact8`: 8-bit m and u codes under
            float32 scales per 256 elements, 2.03 bytes per element); float32
            and float16 params; not with ``lazy``.  :meth:`load_state_dict`
            takes any format and converts it to this one.

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
        if state_format != "full":
            for path, leaf in leaves:
                if leaf.dtype not in _compact.DTYPES:
                    raise TypeError(f"{state_format} state computes in float32: param {path!r} must be float32 or "
                                    f"float16, got {leaf.dtype}")  # fmt: skip
            if lazy:
                raise ValueError("lazy tables keep full state: use state_format='full' with lazy")
        self.params = params
        self._leaves: dict[str, np.ndarray] = dict(leaves)
        self.state: dict[str, AdamaxState | compact.CompactState | compact8.Compact8State] = {}
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
        self._lazy: dict[str, _lazy.Table] = {path: _rows.fresh_table(self._leaves[path], self.config) for path in lazy}

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
                flat[path] = _rows.coalesced(path, flat[path], param)
            elif isinstance(flat[path], RowGradient):
                raise TypeError(f"a RowGradient for {path!r}, which is not lazy: name it in Adamax(..., lazy=[...])")
            else:
                reference.check_like_param(f"gradient for {path!r}", flat[path], param)
        return flat

    def _kernel_paths(self, grads: dict[str, np.ndarray]) -> list[str]:
        """The one place that decides which arrays the fused kernel updates (see ``fused``)."""
        if self.state_format != "full":
            return _PATHS[self.state_format].kernel_paths(self._leaves, grads, self.fused)
        return _full.kernel_paths(self._leaves, grads, self._lazy, self.fused)

    def step(self, grads: Tree) -> None:
        """Update every param in place from ``grads``, a tree shaped like the params; all or nothing."""
        for path, leaf in self._leaves.items():  # made read-only after construction: refused before any write
            if not leaf.flags.writeable:
                raise ValueError(f"param {path!r} is read-only; Adamax updates params in place")
        flat = self._matching_grads(grads)
        fused = self._kernel_paths(flat)
        taken = set(fused)
        path_module = _PATHS[self.state_format]
        lazy = {path: _rows.step(self._lazy_table(path), self._leaves[path], self._state_of(path), flat[path],
                                 self.config) for path in self._lazy}  # fmt: skip
        new = {}
        for path, param in self._leaves.items():
            if path not in taken and path not in self._lazy:
                new[path] = path_module.update(param, flat[path], self.state.get(path), self.config)
        # Nothing above wrote anything; from here on nothing can fail.
        if fused:
            states = path_module.step_fused(
                [self._leaves[path] for path in fused],
                [flat[path] for path in fused],
                [self.state.get(path) for path in fused],
                self.config,
            )
            self.state.update(zip(fused, states))
        for path, (value, state) in new.items():
            np.copyto(self._leaves[path], value)
            self.state[path] = state
        for path, commit in lazy.items():
            self.state[path] = commit()

    def _lazy_table(self, path: str) -> _lazy.Table:
        """The table's bookkeeping under the current config.  Its history holds for the betas, eps and placement
        it was recorded with; when one of those changed, every row is first brought up to date under the old
        ones (which changes no row's value, only where it is stored) and the history starts afresh."""
        config, table = self.config, self._lazy[path]
        _lazy.check_config(config)
        if not table.recorded_with(config):
            self._bring_up_to_date(path, np.arange(len(self._leaves[path])))
            table = self._lazy[path] = _rows.fresh_table(self._leaves[path], config, int(self._state_of(path).step))
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
        _rows.bring_up_to_date(self._lazy[path], self._leaves[path], self.state.get(path), indices)

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
            path: _rows.fresh_table(self._leaves[path], config, int(state[path].step) if path in state else 0)
            for path in self._lazy
        }

    def _loaded_entry(self, path: str, entry: Any):
        """A saved state entry, checked against its param and converted to this optimizer's state format (full
        -> compact rounds m to nearest and u up; compact -> full is exact).  Raises, naming the path."""
        param = self._leaves[path]
        keys = set(entry) if isinstance(entry, Mapping) else None
        for name, definition in _compact.DEFINITIONS.items():
            if keys != set(definition.KEYS):
                continue
            definition.check_state(entry, param.shape, f"state for {path!r}")
            loaded = definition.init(param)._make(np.array(entry[key]) if key != "step" else int(entry[key])
                                                  for key in definition.KEYS)  # fmt: skip
            if self.state_format == name:
                return loaded
            step, m, u = definition.to_full(loaded)
            if self.state_format != "full":
                return _compact.DEFINITIONS[self.state_format].from_full(step, m, u)
            return AdamaxState(step, m.astype(param.dtype), u.astype(param.dtype))
        if keys != _STATE_KEYS:
            formats = (f"{sorted(_STATE_KEYS)} (full), {sorted(compact.KEYS)} (compact) or {sorted(compact8.KEYS)} "
                       f"(compact8)")  # fmt: skip
            raise ValueError(f"state for {path!r} must have exactly the keys {formats}")
        candidate = AdamaxState(entry["step"], entry["exp_avg"], entry["exp_inf"])
        try:
            reference.check_update_args(param, param, candidate)
        except (TypeError, ValueError) as err:
            raise type(err)(f"state for {path!r}: {err}") from None
        if self.state_format != "full":
            definition = _compact.DEFINITIONS[self.state_format]
            return definition.from_full(int(candidate.step), candidate.exp_avg, candidate.exp_inf)
        return AdamaxState(int(candidate.step), candidate.exp_avg.copy(), candidate.exp_inf.copy())
