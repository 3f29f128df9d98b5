"""The optimizer's public face: ``Adamax`` and ``AdamaxW``, their options, state handling and ``step``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor
from torch.optim.optimizer import Optimizer, _use_grad_for_differentiable

from adamax import compact
from adamax.kernels import cpu_kernels, gpu_kernels
from adamax.spec import EpsPlacement
from adamax.torch import _compact
from adamax.torch._cached import CachedPlan, PlanCache, step_cached
from adamax.torch._config import FLAG_DEFAULTS, config_of, group_of
from adamax.torch._devices import KERNEL_FOR_DEVICE, fused_state_dtype
from adamax.torch._fused import step_fused
from adamax.torch._lazy import LazyTables
from adamax.torch._ops import step_ops
from adamax.torch._plan import Plan, _all_finite, check_loadable, plan_group, planned_params
from adamax.torch._state import TrackedState, init_state


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba 2015, section 7.1), a drop-in for ``torch.optim.Adamax``.

    Args:
        params: iterable of parameters or of param-group dicts.
        lr: learning rate, a float or a 1-element tensor (default 2e-3).
        betas: decay rates of the first moment and of the infinity norm (default (0.9, 0.999)).
        eps: see ``eps_placement`` (default 1e-8).
        weight_decay: L2 penalty, or decoupled decay with ``decoupled_weight_decay`` (default 0).
        foreach: step each group with torch's foreach ops; ``None`` picks as torch does.
        maximize: ascend instead of descend.
        differentiable: let autograd through the step (one tensor at a time).
        capturable: keep the step count on the device for graph capture; like
            torch, refused on the CPU.
        fused: a fused kernel for every param (numba on the CPU, Triton on CUDA: float32, and
            float16/bfloat16 with float32 state; numba float64 too); ``None`` uses them where they can,
            unless ``foreach`` is set.
        decoupled_weight_decay: ``p *= 1 - lr * wd`` instead of adding ``wd * p`` to the gradient.
        eps_placement: ``"max"`` (torch, optax), ``"denominator"`` (Keras, TF) or ``"none"`` (the paper).
        skip_nonfinite: skip, and count in ``skipped_steps``, any step whose gradients are not all finite.
        state_format: ``"full"`` (torch's state: m and u in the param's dtype), ``"compact"``
            (:mod:`adamax.compact`: m in bfloat16, u as 16-bit codes under a float32 scale per 256
            elements, 4.02 bytes per element) or ``"compact8"`` (:mod:`adamax.compact8`: m and u as 8-bit
            codes under float32 scales per 256 elements, 2.03 bytes per element); float32/float16/bfloat16
            CPU or CUDA params.  :meth:`load_state_dict` takes any format (and ``torch.optim.Adamax``'s) and
            converts it;
            :func:`adamax.torch.convert_state_dict` converts one for ``torch.optim.Adamax``.

    Every step is, per parameter with a gradient (:mod:`adamax.spec`)::

        m <- b1 m + (1 - b1) g,   u <- max(b2 u, |g| + eps),   p <- p - lr / (1 - b1^t) * m / u
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        eps_placement: EpsPlacement = "max",
        skip_nonfinite: bool = False,
        state_format: str = "full",
    ) -> None:
        compact.check_state_format(state_format)
        if state_format != "full" and (differentiable or capturable):
            raise RuntimeError(f"{state_format} state does not support differentiable=True or capturable=True")
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if fused and differentiable:
            raise RuntimeError("fused=True does not support differentiable=True")
        if fused and cpu_kernels() is None and gpu_kernels() is None:
            raise RuntimeError("fused=True needs numba (CPU) or triton (CUDA): pip install 'adamax[fast]'")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
            "eps_placement": eps_placement,
        }
        config_of(defaults)  # refuse bad hyperparameters before anything is built
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(f"Invalid skip_nonfinite: {skip_nonfinite!r} (expected True or False)")
        self.skip_nonfinite = skip_nonfinite
        self.state_format = state_format
        self.skipped_steps = 0
        self.last_step_paths: dict[str, int] = {}  # params per path in the last step: "numba", "triton", ...
        self._plans = PlanCache()  # the cached plans of groups the numba kernel steps whole
        self._lazy = LazyTables()  # the lazy tables' bookkeeping (lazy_embeddings)
        super().__init__(params, defaults)
        self.state = TrackedState(dict, self.state)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, and refuses integer params, a param listed twice and invalid hyperparameters,
        without adding anything."""
        params = param_group.get("params") if isinstance(param_group, dict) else None
        if isinstance(params, Iterable) and not isinstance(params, (Tensor, set)):
            param_group["params"] = params = list(params)  # a generator is read once, here (as torch does)
            if len({id(p) for p in params}) != len(params):  # torch only warns, then steps it twice
                raise ValueError("a param group lists the same parameter more than once")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            config_of(group)
            for p in group["params"]:
                if not (p.is_floating_point() or p.is_complex()):
                    raise TypeError(
                        f"Adamax can only optimize floating-point or complex tensors, got a {p.dtype} param"
                    )
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["skip_nonfinite"] = self.skip_nonfinite
        state["skipped_steps"] = self.skipped_steps
        state["state_format"] = self.state_format
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's load_state_dict calls this with only state and groups: the options set here stay as they are
        self.skip_nonfinite = state.pop("skip_nonfinite", getattr(self, "skip_nonfinite", False))
        self.skipped_steps = state.pop("skipped_steps", getattr(self, "skipped_steps", 0))
        self.state_format = state.pop("state_format", getattr(self, "state_format", "full"))
        self.last_step_paths = {}
        super().__setstate__(state)
        self.state = TrackedState(dict, self.state)
        self._plans = PlanCache()  # cached plans refer to the state just replaced
        if "_lazy" not in self.__dict__:  # unpickled (torch's load_state_dict keeps the tables, and resets them)
            self._lazy = LazyTables()
        for group in self.param_groups:
            for key, value in FLAG_DEFAULTS.items():
                group.setdefault(key, value)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):  # checkpoints from before tensor steps
                    p_state["step"] = torch.tensor(
                        float(p_state["step"]),
                        dtype=_torch_optimizer._get_scalar_dtype(),
                        device=p.device if group["capturable"] else None,
                    )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but a checkpoint that does not fit the params is refused whole, changing nothing.

        Checked before loading: the number of groups and of params per group,
        every group's hyperparameters, and every state entry's keys, step,
        shapes and dtypes.  State dicts of ``torch.optim.Adamax`` load as they are.  Entries in the other
        state format are converted (see ``state_format``).
        """
        check_loadable(self.param_groups, state_dict)
        for_torch, compact_entries = _compact.split_for_load(self.param_groups, state_dict, self.state_format)
        super().load_state_dict(for_torch)
        for p, entry in compact_entries.items():
            self.state[p] = entry
        for p in list(self._lazy.tables):  # every row is current: each table's history starts at its step count
            self._lazy.restart(p, self.state.get(p), self._config_for(p))

    def state_dict(self) -> dict[str, Any]:
        """As torch's; lazy tables are brought up to date first, so it is the state dense Adamax would have."""
        self.flush()
        return super().state_dict()

    def flush(self) -> None:
        """Bring every row of every lazy table up to date (see :func:`adamax.torch.lazy_embeddings`)."""
        for p in self._lazy.tables:
            self._lazy.bring_up_to_date(p, self.state.get(p), np.arange(p.shape[0]))

    def _config_for(self, p: Tensor):
        return config_of(group_of(self.param_groups, p))

    def _plan(self, group: dict) -> Plan:
        """Check one group's hyperparameters, gradients and state, and choose each param's path; write nothing."""
        return plan_group(group, self.state, self.state_format, self._lazy)

    def _count(self, path: str, n: int) -> None:
        self.last_step_paths[path] = self.last_step_paths.get(path, 0) + n

    def _run(self, plan: Plan) -> None:
        """One group's step, path by path as ``plan`` chose (every check has passed: nothing here refuses); each
        path's inputs gathered by its method below and handed to its function (the table ``_PATHS``)."""
        state, tables = self.state, self._lazy.tables
        dense_lazy = [p for p in (*plan.fused, *plan.rest, *plan.compact) if p in tables]
        for p in dense_lazy:  # a lazy table with a dense gradient (a tied weight): every row up to date first
            self._lazy.bring_up_to_date(p, state.get(p), np.arange(p.shape[0]))
        for field, run in _PATHS.items():
            params = getattr(plan, field)
            if params:
                run(self, plan, params)
        for p in dense_lazy:  # after a dense step the table's history starts afresh
            self._lazy.restart(p, state.get(p), plan.config)

    def _step_fused(self, plan: Plan, params: list[Tensor]) -> None:
        capturable = plan.group["capturable"]
        for p in params:
            self._count(KERNEL_FOR_DEVICE[p.device.type], 1)
        states = [
            s or init_state(self.state, p, capturable, fused_state_dtype(p)) for p, s in zip(params, plan.fused_states)
        ]
        step_fused(params, states, plan.config, lr=plan.group["lr"], capturable=capturable)

    def _step_ops(self, plan: Plan, params: list[Tensor]) -> None:
        group = plan.group
        self._count(plan.backend, len(params))
        states = [init_state(self.state, p, group["capturable"]) for p in params]
        step_ops(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_inf"] for s in states],
            [s["step"] for s in states],
            plan.config,
            lr=group["lr"],
            backend=plan.backend,
            capturable=group["capturable"],
            differentiable=group["differentiable"],
        )

    def _step_compact(self, plan: Plan, params: list[Tensor]) -> None:
        state = self.state
        names = _compact.PATH_NAMES[self.state_format]
        for way in plan.compact_routes:
            self._count(names[way], 1)
        entries = [state.get(p) or _compact.fresh_state(p, self.state_format) for p in params]
        _compact.step_compact(plan.config, params, plan.compact_routes, entries, self.state_format)
        for p, entry in zip(params, entries):
            if not state.get(p):
                state[p] = entry

    def _step_lazy(self, plan: Plan, params: list[Tensor]) -> None:
        self._count("lazy", len(params))
        for p in params:
            fresh = not self.state.get(p)
            if fresh and self._lazy.layout is not None:  # compact state, its scales in row blocks
                self.state[p] = _compact.fresh_state(p, self.state_format, rows=True)
            self._lazy.step(p, init_state(self.state, p, False), fresh, plan.config)

    @_use_grad_for_differentiable
    def step(self, closure=None):
        """Perform one optimization step; all-or-nothing (see the class docstring).

        Args:
            closure: a callable that re-evaluates the model and returns the loss.
        """
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_step_paths = {}  # how many params each path stepped: "numba", "triton", "forloop", "foreach"
        plans = [
            self._plans.lookup(group, self.state, self.state_format) or self._plan(group) for group in self.param_groups
        ]
        if self.skip_nonfinite and not _all_finite([p.grad for plan in plans for p in planned_params(plan)]):
            self.skipped_steps += 1
            return loss
        for plan in plans:
            if isinstance(plan, CachedPlan):
                self._count(step_cached(plan), len(plan.params))
            else:
                self._run(plan)
                self._plans.remember(
                    plan.group,
                    plan.fused,
                    self.state,
                    self._lazy.tables,
                    plan.compact,
                    plan.compact_routes,
                    self.state_format,
                )
        return loss


# The dispatch table: each field of a Plan (the params a path steps) and the shell's method that runs that path.
_PATHS = {
    "fused": Adamax._step_fused,  # torch/_fused.py: numba (CPU), Triton (CUDA)
    "rest": Adamax._step_ops,  # torch/_ops.py: torch's forloop or foreach ops
    "compact": Adamax._step_compact,  # torch/_compact.py: compact state
    "lazy": Adamax._step_lazy,  # torch/_lazy.py: lazy rows of sparse embeddings
}


class AdamaxW(Adamax):
    """Adamax with decoupled weight decay (``p *= 1 - lr * wd``), as AdamW is to Adam.

    Defaults to ``weight_decay=1e-2``, as ``torch.optim.AdamW`` does.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        foreach: bool | None = None,
        *,
        decoupled_weight_decay: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, foreach, decoupled_weight_decay=decoupled_weight_decay, **kwargs
        )
