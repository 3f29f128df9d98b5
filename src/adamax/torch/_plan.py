"""The checks and the plan before a step or a load: hyperparameters, flags, gradients, state, and which backend
steps each param.  Nothing here writes to a param or its state."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any, NamedTuple

import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor

from adamax.spec import AdamaxConfig
from adamax.torch import _compact
from adamax.torch._cached import CachedPlan
from adamax.torch._config import FLAG_DEFAULTS, check_schedule_keys, config_of
from adamax.torch._devices import (
    KERNEL_FOR_DEVICE,
    KERNEL_TYPES,
    LOW_PRECISION,
    NUMBA_DTYPES,
    TRITON_DTYPES,
    dtensor_type,
    kernel_loader,
)
from adamax.torch._probe import triton_verdict
from adamax.torch._sparse import coalesced

STATE_KEYS = frozenset({"step", "exp_avg", "exp_inf"})


class Plan(NamedTuple):
    """What one group's step will do, decided and checked before anything is written."""

    group: dict
    config: AdamaxConfig
    fused: list[Tensor]  # params the fused kernel steps
    fused_states: list[dict | None]  # their state (None: not created yet), looked up once
    rest: list[Tensor]  # params stepped with torch ops
    backend: str  # for ``rest``: "forloop" or "foreach"
    lazy: tuple[Tensor, ...] | list[Tensor] = ()  # lazy tables with sparse gradients (lazy_embeddings)
    compact: tuple[Tensor, ...] | list[Tensor] = ()  # params with compact state ("compact" or "compact8")
    compact_routes: tuple[str, ...] | list[str] = ()  # how each is stepped: "triton", "numba" or "numpy"


def _kernel_can_take(p: Tensor, g: Tensor, state: Mapping[str, Any] | None, capturable: bool = False) -> str | None:
    """Why no fused kernel can update ``p`` in place as it is (None: one can).

    Called for every param at every step, so it reads as little as it can.
    """
    kernel = KERNEL_FOR_DEVICE.get(p.device.type)
    if kernel is None or kernel_loader(kernel) is None:
        return f"no fused kernel for {p.device.type} tensors here (numba for the CPU, triton for CUDA)"
    dtypes = NUMBA_DTYPES if kernel == "numba" else TRITON_DTYPES
    if p.dtype not in dtypes:
        return f"a {p.dtype} tensor; the {kernel} kernel takes {', '.join(map(str, dtypes))}"
    if kernel == "numba" and p.dtype in LOW_PRECISION and state and state["exp_avg"].dtype != torch.float32:
        return f"{state['exp_avg'].dtype} state; the numba kernel keeps float32 state for {p.dtype} params"
    if capturable and kernel == "numba":
        return "capturable=True: the CPU kernel keeps step counts on the host"
    if state and not state["step"].is_floating_point():
        return f"a {state['step'].dtype} step count; the kernel counts in floating point"
    dtensor = dtensor_type()
    if dtensor is not None and isinstance(p, dtensor):  # FSDP2 and friends: step the local shards
        tensors = [p, g, *((state["exp_avg"], state["exp_inf"]) if state else ())]
        if not all(isinstance(t, dtensor) and t.placements == p.placements for t in tensors):
            return "a DTensor whose gradient or state is sharded differently"
        p, g = p.to_local(), g.to_local()
        state = {"exp_avg": state["exp_avg"].to_local(), "exp_inf": state["exp_inf"].to_local()} if state else None
    if type(p) not in KERNEL_TYPES or type(g) not in KERNEL_TYPES:
        return "a tensor subclass"  # its memory need not be the tensor's values
    if not (p.is_contiguous() and g.is_contiguous()):
        return "a non-contiguous tensor"
    if state and not (state["exp_avg"].is_contiguous() and state["exp_inf"].is_contiguous()):
        return "non-contiguous state"
    return None


def _triton_state_dtype(p: Tensor, state: Mapping[str, Any] | None) -> torch.dtype:
    """The dtype of ``p``'s state on the Triton path: its own, or the one it will be made in."""
    if state:
        return state["exp_avg"].dtype
    return torch.float32 if p.dtype in LOW_PRECISION else p.dtype


def _kernel_mode(group: Mapping[str, Any]) -> str:
    """The one place that decides whether fused kernels step a group: "always", "where possible" or "never".

    * An explicit choice wins: ``fused=True`` is "always" (a param no kernel
      can take is refused, not silently stepped another way); ``fused=False``
      or an explicit ``foreach`` is "never".
    * Otherwise (``fused=None`` and ``foreach=None``) the kernels take every
      param they can: numba's on the CPU, Triton's on CUDA, where installed;
      Triton's only once a probe of its kind agreed with torch's ops bit for
      bit (:mod:`adamax.torch._probe`).
      The rest follow torch's own default (foreach where every tensor is on a
      device with foreach kernels, i.e. not the CPU).  Results are the same
      bits either way.
    * Differentiable steps never use a kernel (no autograd formula); capturable
      ones only the Triton kernel (its step counts can live on the device).
      Under ``torch.compile`` the automatic choice is torch's ops, which the
      compiler can trace and fuse; an opaque kernel would break the graph.
    """
    if group["fused"]:
        return "always"
    automatic = group["fused"] is None and group["foreach"] is None
    if not automatic or group["differentiable"] or torch.compiler.is_compiling():
        return "never"  # under torch.compile, torch's ops let the compiler fuse the step itself
    return "where possible"


def _torch_backend(group: Mapping[str, Any], params: list[Tensor]) -> str:
    """How params the kernel does not take are stepped: torch's own rule, or the explicit ``foreach``."""
    if group["differentiable"] and group["foreach"]:
        raise RuntimeError("foreach=True does not support differentiable=True; pass foreach=False or None")
    foreach = group["foreach"]
    if foreach is None:
        _, foreach = _torch_optimizer._default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)
    return "foreach" if foreach else "forloop"


def _check_capturable(params: list[Tensor], steps: list[Tensor], backend: str) -> None:
    # torch refuses capturable steps off its graph-capture devices (the CPU among them), with this message.
    if torch.compiler.is_compiling():
        return
    supported = _torch_optimizer._get_capturable_supported_devices(supports_xla=backend == "forloop")
    for p, step in zip(params, steps):
        if not (p.device.type == step.device.type and p.device.type in supported):
            raise AssertionError(
                f"If capturable=True, params and state_steps must be on supported devices: {supported}."
            )


def _check_live_state(p: Tensor, state: Mapping[str, Any], index: int) -> None:
    """The per-step check of a param's state: fast when all is well, :func:`_check_state`'s message when not."""
    m, u = state.get("exp_avg"), state.get("exp_inf")
    if (
        len(state) == 3
        and type(state.get("step")) in KERNEL_TYPES
        and state["step"].numel() == 1
        and state["step"].is_floating_point()
        and m is not None
        and u is not None
        and m.shape == p.shape
        and u.shape == p.shape
        and m.dtype == u.dtype
        and (m.dtype == p.dtype or (m.dtype == torch.float32 and p.dtype in LOW_PRECISION))
        and ((p.is_cpu and m.is_cpu and u.is_cpu) or (m.device == p.device and u.device == p.device))
    ):
        return
    _check_state(p, state, f"state of param {index} of its group", loading=False)


def _check_state(p: Tensor, state: Mapping[str, Any], where: str, *, loading: bool) -> None:
    """Raise unless ``state`` is a well-formed Adamax state for ``p``.

    ``loading``: a checkpoint, whose step may be a number and whose tensors
    ``load_state_dict`` will cast to the param's dtype and device.  Otherwise
    live state, checked without reading any tensor's values.
    """
    if not isinstance(state, Mapping) or set(state) != STATE_KEYS:
        keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{where}: expected the keys {sorted(STATE_KEYS)}, got {keys}")
    if not loading:
        step = state["step"]
        if not isinstance(step, Tensor) or step.numel() != 1 or step.is_complex() or step.dtype is torch.bool:
            raise ValueError(f"{where}: 'step' must be a 1-element real tensor")
        for key in ("exp_avg", "exp_inf"):
            value = state[key]
            matches = isinstance(value, Tensor) and value.shape == p.shape and value.dtype == p.dtype
            if not (matches and value.device == p.device):
                raise ValueError(f"{where}: {key!r} does not match the param's shape, dtype and device")
        return
    _compact.check_saved_step(state["step"], where)
    for key in ("exp_avg", "exp_inf"):
        value = state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}: {key!r} must be a tensor, got {type(value).__name__}")
        if value.shape != p.shape:
            raise ValueError(f"{where}: {key!r} has shape {tuple(value.shape)}, the param {tuple(p.shape)}")
        if value.is_complex() != p.is_complex() or not (value.is_floating_point() or value.is_complex()):
            raise TypeError(f"{where}: {key!r} has dtype {value.dtype}, which cannot hold state for {p.dtype}")


def _all_finite(tensors: list[Tensor]) -> bool:
    """Whether every gradient is finite; a sparse one as the step sees it, its repeated rows summed (two finite
    values on one row may sum to inf)."""
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(_summed_values(t) if t.is_sparse else t).all() for t in tensors]).all())


def _summed_values(grad: Tensor) -> Tensor:
    values = grad._values()
    if not torch.isfinite(values).all():
        return values
    return coalesced(grad)._values()


def planned_params(plan: Plan | CachedPlan) -> list[Tensor]:
    """The params a plan steps (those with gradients)."""
    return plan.params if isinstance(plan, CachedPlan) else [*plan.fused, *plan.rest, *plan.lazy, *plan.compact]


def check_loadable(param_groups: list[dict], state_dict: Mapping[str, Any]) -> None:
    """Refuse a state dict that does not fit ``param_groups``: its groups, their hyperparameters, and every state
    entry's keys, step, shapes and dtypes (either state format)."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError("expected an optimizer state dict with 'state' and 'param_groups'")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(param_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    for i, (group, saved) in enumerate(zip(param_groups, saved_groups)):
        if len(group["params"]) != len(saved["params"]):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
            )
        try:
            config_of({**FLAG_DEFAULTS, **saved})
            check_schedule_keys(saved)
        except (TypeError, ValueError, KeyError) as err:
            raise type(err)(f"param group {i} of the loaded state dict: {err}") from None
    id_map = dict(
        zip(
            chain.from_iterable(g["params"] for g in saved_groups),
            chain.from_iterable(g["params"] for g in param_groups),
        )
    )
    for key, entry in state_dict["state"].items():
        if key not in id_map:
            raise ValueError(f"loaded state dict has state for param {key!r}, which no param group lists")
        if isinstance(entry, Mapping) and not entry:
            continue  # torch leaves one where ``opt.state[p]`` was read before p had a gradient
        found = _compact.FORMAT_OF_KEYS.get(frozenset(entry)) if isinstance(entry, Mapping) else None
        if found in _compact.LAYOUTS:
            _compact.check_state(id_map[key], entry, f"state of param {key!r}", loading=True, state_format=found)
        else:
            _check_state(id_map[key], entry, f"state of param {key!r}", loading=True)


def plan_group(group: dict, state: Mapping, state_format: str, lazy) -> Plan:
    """Check one group's hyperparameters, gradients and state (``state``: the optimizer's mapping, read only),
    and choose each param's path; write nothing.  ``lazy``: the optimizer's
    :class:`adamax.torch._lazy.LazyTables`, which checks the sparse gradients of its tables."""
    config = config_of(group)
    mode = _kernel_mode(group)
    fused, fused_states, rest, lazy_params, compact, compact_routes = [], [], [], [], [], []
    compact_state = state_format in _compact.LAYOUTS
    for i, p in enumerate(group["params"]):
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            if p in lazy.tables:
                lazy.check_step(p, g, i, config, state.get(p))
                lazy_params.append(p)
                continue
            raise RuntimeError(
                "Adamax does not support sparse gradients, except on the embeddings that "
                "adamax.torch.lazy_embeddings(model, opt) registers"
            )
        if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            raise RuntimeError(
                f"param {i} of its group has a gradient of shape {tuple(g.shape)}, {g.dtype} on {g.device}; "
                f"expected shape {tuple(p.shape)}, {p.dtype} on {p.device}"
            )
        if compact_state:
            compact_routes.append(_compact.check_step(p, i, group, state.get(p), state_format))
            compact.append(p)
            continue
        s = state.get(p)
        if s:
            _check_live_state(p, s, i)
        if mode == "never":
            rest.append(p)
            continue
        reason = _kernel_can_take(p, g, s, group["capturable"])
        if reason is None and mode == "where possible" and KERNEL_FOR_DEVICE[p.device.type] == "triton":
            reason = triton_verdict(p, _triton_state_dtype(p, s), config)  # probed once per kind (_probe)
        if reason is None:
            fused.append(p)
            fused_states.append(s)
        elif mode == "always":
            raise RuntimeError(f"fused=True cannot update param {i} of its group: {reason}")
        else:
            rest.append(p)
    backend = _torch_backend(group, rest) if rest else "forloop"
    if group["capturable"]:
        steps = [state[p]["step"] if state.get(p) else p for p in rest]
        _check_capturable(rest, steps, backend)
    return Plan(group, config, fused, fused_states, rest, backend, lazy_params, compact, compact_routes)
