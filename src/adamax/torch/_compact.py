"""Compact state on the torch optimizer (``state_format="compact"``, :mod:`adamax.compact`): its entries, the
checks of a step and a checkpoint, the step over explicit entries, and conversions of state dicts between the two
formats.

A compact entry is ``{"step", "exp_avg", "exp_inf_code", "exp_inf_scale"}``: ``exp_avg`` a bfloat16 tensor of
the param's shape, ``exp_inf_code`` uint16 of the param's shape, ``exp_inf_scale`` float32 with one scale per
256 elements of the param (row-major).  CPU params, float32, float16 or bfloat16; the arithmetic is float32 and
a low-precision param is rounded to nearest when stored.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from itertools import chain
from typing import Any

import numpy as np
import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor

from adamax import compact
from adamax._algorithm import step_size
from adamax.kernels import compact_kernels, gpu_kernels
from adamax.spec import MAX_STEP, AdamaxConfig
from adamax.torch._devices import KERNEL_FOR_DEVICE

COMPACT_KEYS = frozenset(compact.KEYS)
FULL_KEYS = frozenset({"step", "exp_avg", "exp_inf"})
_PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_PLAIN = (Tensor, torch.nn.Parameter)


def fresh_state(p: Tensor) -> dict[str, Tensor]:
    """A param's compact state before its first step: m = 0, u = 0."""
    return {
        "step": torch.zeros((), dtype=_torch_optimizer._get_scalar_dtype()),
        "exp_avg": torch.zeros(p.shape, dtype=torch.bfloat16, device=p.device),
        "exp_inf_code": torch.full(p.shape, compact.ZERO, dtype=torch.uint16, device=p.device),
        "exp_inf_scale": torch.zeros(compact.blocks(p.numel()), dtype=torch.float32, device=p.device),
    }


def check_param(p: Tensor, index: int) -> None:
    """Refuse a param compact state cannot step."""
    if p.dtype not in _PARAM_DTYPES or type(p) not in _PLAIN:
        raise TypeError(
            f"param {index} of its group: compact state steps float32, float16 or bfloat16 tensors, "
            f"got a {type(p).__name__} of {p.dtype}"
        )


def route(p: Tensor, fused: bool | None, index: int) -> str:
    """How a compact param is stepped: ``"triton"`` (CUDA), ``"numba"`` (the CPU kernel) or ``"numpy"``
    (:func:`adamax.compact.update`, CPU); raises where none can."""
    kernel = KERNEL_FOR_DEVICE.get(p.device.type)  # (tests route the CPU to Triton through it)
    dense = p.is_contiguous() and p.grad.is_contiguous() and p.grad.dtype is p.dtype
    if kernel == "triton":
        if gpu_kernels() is None or not dense:
            raise RuntimeError(f"param {index} of its group: compact state on {p.device} needs triton and dense "
                               f"tensors")  # fmt: skip
        return "triton"
    if p.device.type != "cpu":
        raise TypeError(f"param {index} of its group: compact state steps CPU or CUDA tensors, got {p.device}")
    if fused is not False and kernel == "numba" and compact_kernels() is not None and dense:
        return "numba"
    if fused:
        raise RuntimeError(f"fused=True cannot update param {index} of its group: not a dense tensor with a dense "
                           f"gradient, or numba missing")  # fmt: skip
    return "numpy"


def check_state(p: Tensor, state: Mapping[str, Any], where: str, *, loading: bool) -> None:
    """Raise unless ``state`` is a well-formed compact entry for ``p`` (a checkpoint's step may be a number)."""
    if not isinstance(state, Mapping) or set(state) != COMPACT_KEYS:
        keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{where}: expected the keys {sorted(COMPACT_KEYS)}, got {keys}")
    _check_step(state["step"], where, loading=loading)
    want = {
        "exp_avg": (torch.bfloat16, tuple(p.shape)),
        "exp_inf_code": (torch.uint16, tuple(p.shape)),
        "exp_inf_scale": (torch.float32, (compact.blocks(p.numel()),)),
    }
    for key, (dtype, shape) in want.items():
        value = state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}: {key!r} must be a tensor, got {type(value).__name__}")
        if value.dtype != dtype or tuple(value.shape) != shape:
            raise ValueError(
                f"{where}: {key!r} must be {dtype} of shape {shape}, got {value.dtype} of shape {tuple(value.shape)}"
            )
        if not loading and (value.device != p.device or not value.is_contiguous()):
            raise ValueError(f"{where}: {key!r} must be contiguous, on the param's device")
    if loading and bool((state["exp_inf_scale"] < 0).any()):
        raise ValueError(f"{where}: 'exp_inf_scale' must not be negative")
    if loading and bool((state["exp_inf_code"].to(torch.int32) > compact.ONE).any()):
        raise ValueError(f"{where}: 'exp_inf_code' holds codes above {compact.ONE}, the largest (u = the scale)")


def _check_step(step: Any, where: str, *, loading: bool) -> None:
    """A live step count is a 1-element floating-point tensor, checked by its form alone (no value is read, as for
    the full format); a checkpoint's as :func:`check_saved_step` says."""
    if loading:
        check_saved_step(step, where)
    elif not isinstance(step, Tensor) or step.numel() != 1 or not step.is_floating_point():
        raise ValueError(f"{where}: 'step' must be a 1-element floating-point tensor")


def check_saved_step(step: Any, where: str) -> None:
    """A checkpoint's step count, in either format: a whole number >= 0, or a 1-element real tensor holding one."""
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.is_complex():
            raise ValueError(f"{where}: 'step' must be a single real number, got a tensor of shape {tuple(step.shape)}")
        step = step.item()
    if (
        isinstance(step, bool)
        or not isinstance(step, (int, float))
        or not (math.isfinite(step) and 0 <= step < MAX_STEP and step == int(step))
    ):
        raise ValueError(f"{where}: 'step' must be a whole number >= 0, got {step!r} (counts stop at 2**53 - 1)")


def _live_state_fits(p: Tensor, state: Mapping[str, Any]) -> bool:
    """:func:`check_state` for live state, in the fewest reads (it runs for every param at every step)."""
    m, q, s, step = state.get("exp_avg"), state.get("exp_inf_code"), state.get("exp_inf_scale"), state.get("step")
    return (
        len(state) == 4
        and type(step) in _PLAIN
        and type(m) in _PLAIN
        and type(q) in _PLAIN
        and type(s) in _PLAIN
        and step.numel() == 1
        and step.is_floating_point()
        and m.dtype is torch.bfloat16
        and q.dtype is torch.uint16
        and s.dtype is torch.float32
        and m.shape == p.shape
        and q.shape == p.shape
        and s.shape == (compact.blocks(p.numel()),)
        and m.device == p.device
        and q.device == p.device
        and s.device == p.device
        and m.is_contiguous()
        and q.is_contiguous()
        and s.is_contiguous()
    )


# ----- between tensors and the NumPy definition -----


def _bits(t: Tensor) -> np.ndarray:
    """A bfloat16 or uint16 CPU tensor's 16-bit patterns as a NumPy uint16 view (shared memory)."""
    return t.view(torch.uint16).numpy() if t.dtype is torch.bfloat16 else t.numpy()


def as_compact_state(state: Mapping[str, Any]) -> compact.CompactState:
    """A compact entry as :class:`adamax.compact.CompactState` (NumPy views of CPU tensors)."""
    return compact.CompactState(
        int(float(state["step"])),
        _bits(state["exp_avg"].cpu()),
        _bits(state["exp_inf_code"].cpu()),
        state["exp_inf_scale"].cpu().numpy(),
    )


def _entry_of(state: compact.CompactState, step: Any, device: torch.device) -> dict[str, Any]:
    return {
        "step": step,
        "exp_avg": torch.from_numpy(np.ascontiguousarray(state.exp_avg)).view(torch.bfloat16).to(device),
        "exp_inf_code": torch.from_numpy(np.ascontiguousarray(state.exp_inf_code)).to(device),
        "exp_inf_scale": torch.from_numpy(np.ascontiguousarray(state.exp_inf_scale)).to(device),
    }


def _step_value(step: Any) -> Any:
    return step.clone() if isinstance(step, Tensor) else step


def to_compact_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A full entry (``step, exp_avg, exp_inf``) as compact: m rounded to the nearest bfloat16, u up."""
    m, u = entry["exp_avg"], entry["exp_inf"]
    state = compact.from_full(0, m.detach().float().cpu().numpy(), u.detach().float().cpu().numpy())
    return _entry_of(state, _step_value(entry["step"]), m.device)


def to_full_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A compact entry as full float32 state, exactly (a param of another dtype casts it when it loads)."""
    _, m, u = compact.to_full(as_compact_state(entry))
    device = entry["exp_avg"].device
    return {"step": _step_value(entry["step"]), "exp_avg": torch.from_numpy(m).to(device),
            "exp_inf": torch.from_numpy(u).to(device)}  # fmt: skip


def convert_state_dict(state_dict: Mapping[str, Any], state_format: str) -> dict[str, Any]:
    """``state_dict`` (of :class:`adamax.torch.Adamax` in either state format, or of ``torch.optim.Adamax``)
    with every state entry in ``state_format``: ``"full"`` (loads into ``torch.optim.Adamax``; exact) or
    ``"compact"`` (m rounded to the nearest bfloat16, u up to its code).  The input is not modified."""
    compact.check_state_format(state_format)
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError("expected an optimizer state dict with 'state' and 'param_groups'")
    out = {key: copy.deepcopy(value) for key, value in state_dict.items() if key != "state"}
    out["state"] = {key: convert_entry(entry, state_format) for key, entry in state_dict["state"].items()}
    return out


def convert_entry(entry: Mapping[str, Any], state_format: str) -> dict[str, Any]:
    """One state entry in ``state_format`` (a copy; an empty entry stays empty)."""
    keys = set(entry) if isinstance(entry, Mapping) else None
    if not keys:
        return dict(entry) if isinstance(entry, Mapping) else entry
    if keys not in (COMPACT_KEYS, FULL_KEYS):
        raise ValueError(f"a state entry with keys {sorted(keys)} is neither full {sorted(FULL_KEYS)} "
                     f"nor compact {sorted(COMPACT_KEYS)} Adamax state")  # fmt: skip
    if (keys == COMPACT_KEYS) == (state_format == "compact"):  # already in that format
        return {k: _step_value(v) if k == "step" else v.clone() for k, v in entry.items()}
    return to_full_entry(entry) if state_format == "full" else to_compact_entry(entry)


KERNEL_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # the numba kernel's kind per param dtype


def _kernel_step(name: str, config: AdamaxConfig, items: list[tuple[Tensor, dict[str, Tensor]]]) -> None:
    """One kernel call per (device, param dtype) over ``(param, state)`` pairs, in place; each count advances."""
    buckets: dict[tuple, list[tuple[Tensor, dict[str, Tensor]]]] = {}
    for p, s in items:
        buckets.setdefault((p.device, p.dtype), []).append((p, s))
    for (_, dtype), group in buckets.items():
        step_tensors = [s["step"] for _, s in group]
        torch._foreach_add_(step_tensors, 1.0)  # one call for the group: per-tensor adds cost microseconds each
        counts = [int(t) for t in torch.stack(step_tensors).tolist()]
        params, grads = [p for p, _ in group], [p.grad for p, _ in group]
        ms = [s["exp_avg"].view(torch.uint16) for _, s in group]
        codes, scales = [s["exp_inf_code"] for _, s in group], [s["exp_inf_scale"] for _, s in group]
        if name == "triton":
            steps = torch.tensor([step_size(config.lr, config.beta1, t) for t in counts], dtype=torch.float64)
            gpu_kernels().compact_step(params, grads, ms, codes, scales, steps, torch.tensor(counts), config)
        else:
            columns = (params, grads, ms, codes, scales)
            addresses = tuple(np.array([t.data_ptr() for t in column], dtype=np.int64) for column in columns)
            sizes = tuple(p.numel() for p in params)
            threads = torch.get_num_threads()
            compact_kernels().step(KERNEL_KINDS[dtype], addresses, sizes, counts, config, threads=threads)


PATH_NAMES = {"triton": "triton compact", "numba": "numba compact", "numpy": "compact"}  # in last_step_paths


def check_step(p: Tensor, index: int, group: Mapping[str, Any], state: Mapping[str, Any] | None) -> str:
    """Before any write: ``p`` (whose gradient is checked already) and its ``state`` entry (None or empty: none
    yet) can take a compact step; returns its :func:`route`."""
    if group["differentiable"] or group["capturable"]:
        raise RuntimeError("compact state does not support differentiable=True or capturable=True")
    check_param(p, index)
    way = route(p, group["fused"], index)
    if state and not _live_state_fits(p, state):
        check_state(p, state, f"state of param {index} of its group", loading=False)  # raises, and says why
    return way


def step_compact(config: AdamaxConfig, params: list[Tensor], ways: list[str], states: list[dict]) -> None:
    """Every param's compact step in place on it and its ``states`` entry (a fresh one where it has none yet), by
    the route the plan chose: a kernel for dense tensors (Triton on CUDA, numba on the CPU),
    :func:`adamax.compact.update` for the rest (computed for all first, then written)."""
    routes = {name: [] for name in ("triton", "numba", "numpy")}
    for p, way, state in zip(params, ways, states):
        routes[way].append((p, state))
    results = []
    for p, state in routes["numpy"]:
        p32 = p.detach().float().numpy() if p.dtype is not torch.float32 else p.detach().numpy()
        g32 = p.grad.detach().float().numpy()
        results.append((p, state, *compact.update(p32, g32, as_compact_state(state), config)))
    with torch.no_grad():  # nothing above wrote; from here nothing can fail
        for name in ("triton", "numba"):
            if routes[name]:
                _kernel_step(name, config, routes[name])
        for p, state, new_p, new in results:
            p.copy_(torch.from_numpy(new_p))
            _bits(state["exp_avg"])[...] = new.exp_avg
            _bits(state["exp_inf_code"])[...] = new.exp_inf_code
            state["exp_inf_scale"].numpy()[...] = new.exp_inf_scale
            state["step"] += 1


def split_for_load(
    param_groups: list[dict], state_dict: Mapping[str, Any], state_format: str
) -> tuple[dict[str, Any], dict[Tensor, dict]]:
    """A checked state dict, split for torch's loader: the dict to give it (entries in the full format, which
    it casts to the params), and the compact entries to install after it (which it must not cast)."""
    groups = [g["params"] for g in param_groups]
    id_map = dict(zip(chain.from_iterable(g["params"] for g in state_dict["param_groups"]), chain(*groups)))
    to_torch, compact_entries = {}, {}
    for key, entry in state_dict["state"].items():
        entry = convert_entry(entry, state_format)
        if state_format == "compact" and entry:
            p = id_map[key]
            step = torch.tensor(float(entry["step"]), dtype=_torch_optimizer._get_scalar_dtype())
            compact_entries[p] = {  # its own memory, contiguous, where the param is: what a step takes
                k: step if k == "step" else v.to(p.device).clone(memory_format=torch.contiguous_format)
                for k, v in entry.items()
            }
        else:
            to_torch[key] = entry
    return {**state_dict, "state": to_torch}, compact_entries
