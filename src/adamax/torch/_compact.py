"""Compact state on the torch optimizer (``state_format="compact"``, :mod:`adamax.compact`, and
``"compact8"``, :mod:`adamax.compact8`): their entries, the checks of a step and a checkpoint, the step over
explicit entries, and conversions of state dicts between the formats.

A compact entry is ``{"step", "exp_avg", "exp_inf_code", "exp_inf_scale"}``: ``exp_avg`` a bfloat16 tensor of
the param's shape, ``exp_inf_code`` uint16 of the param's shape, ``exp_inf_scale`` float32 with one scale per
256 elements of the param (row-major).  A compact8 entry is ``{"step", "exp_avg_code", "exp_avg_scale",
"exp_inf_code", "exp_inf_scale"}``: the codes uint8 of the param's shape, the scales float32, one per 256
elements.  CPU or CUDA params, float32, float16 or bfloat16; the arithmetic is float32 and a low-precision param
is rounded to nearest when stored.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from itertools import chain
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor

from adamax import compact, compact8
from adamax._algorithm import step_size
from adamax.kernels import compact8_kernels, compact_kernels, gpu_kernels
from adamax.spec import MAX_STEP, AdamaxConfig
from adamax.torch._devices import KERNEL_FOR_DEVICE


class Layout(NamedTuple):
    """A compact format's tensors in a torch state entry: ``(key, dtype, "param" | "blocks")`` in the kernels'
    order, its definition module, and its numba kernel module's getter."""

    name: str
    tensors: tuple[tuple[str, torch.dtype, str], ...]
    definition: ModuleType
    kernels: Any

    @property
    def keys(self) -> frozenset[str]:
        return frozenset({"step", *(key for key, _, _ in self.tensors)})

    def shape(self, how: str, p: Tensor, rows: bool = False) -> tuple[int, ...]:
        """A tensor's shape for ``p``: the param's, or its scales' (``rows``: in row blocks, as a lazy table
        keeps them)."""
        return tuple(p.shape) if how == "param" else compact.scales_shape(tuple(p.shape), rows)


LAYOUTS = {
    "compact": Layout(
        "compact",
        (("exp_avg", torch.bfloat16, "param"), ("exp_inf_code", torch.uint16, "param"),
         ("exp_inf_scale", torch.float32, "blocks")),
        compact, compact_kernels,
    ),
    "compact8": Layout(
        "compact8",
        (("exp_avg_code", torch.uint8, "param"), ("exp_avg_scale", torch.float32, "blocks"),
         ("exp_inf_code", torch.uint8, "param"), ("exp_inf_scale", torch.float32, "blocks")),
        compact8, compact8_kernels,
    ),
}  # fmt: skip
COMPACT_KEYS = LAYOUTS["compact"].keys
FULL_KEYS = frozenset({"step", "exp_avg", "exp_inf"})
FORMAT_OF_KEYS = {FULL_KEYS: "full", **{layout.keys: name for name, layout in LAYOUTS.items()}}
_PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_PLAIN = (Tensor, torch.nn.Parameter)


def fresh_state(p: Tensor, state_format: str = "compact", rows: bool = False) -> dict[str, Tensor]:
    """A param's compact state before its first step: m = 0, u = 0 (every code and scale 0); ``rows``: its scales
    in row blocks (a lazy table's)."""
    layout = LAYOUTS[state_format]
    entry = {"step": torch.zeros((), dtype=_torch_optimizer._get_scalar_dtype())}
    for key, dtype, how in layout.tensors:
        entry[key] = torch.zeros(layout.shape(how, p, rows), dtype=dtype, device=p.device)
    return entry


def in_row_blocks(state: Mapping[str, Any]) -> bool:
    """Whether a compact entry's scales are in row blocks (2-d: a lazy table's), not consecutive blocks."""
    scale = state.get("exp_inf_scale") if isinstance(state, Mapping) else None
    return isinstance(scale, Tensor) and scale.dim() == 2


def check_param(p: Tensor, index: int) -> None:
    """Refuse a param compact state cannot step."""
    if p.dtype not in _PARAM_DTYPES or type(p) not in _PLAIN:
        raise TypeError(
            f"param {index} of its group: compact state steps float32, float16 or bfloat16 tensors, "
            f"got a {type(p).__name__} of {p.dtype}"
        )


def route(p: Tensor, fused: bool | None, index: int, state_format: str = "compact", rows: bool = False) -> str:
    """How a compact param is stepped: ``"triton"`` (CUDA), ``"numba"`` (the CPU kernel) or ``"numpy"``
    (the definition's ``update``, CPU); raises where none can.  State in row blocks (``rows``: a lazy table's,
    stepped with a dense gradient, or loaded from one) takes the definition."""
    kernel = KERNEL_FOR_DEVICE.get(p.device.type)  # (tests route the CPU to Triton through it)
    dense = p.is_contiguous() and p.grad.is_contiguous() and p.grad.dtype is p.dtype and not rows
    if kernel == "triton":
        if gpu_kernels() is None or not dense:
            raise RuntimeError(f"param {index} of its group: {state_format} state on {p.device} needs triton and "
                               f"dense tensors")  # fmt: skip
        return "triton"
    if p.device.type != "cpu":
        raise TypeError(f"param {index} of its group: {state_format} state steps CPU or CUDA tensors, got {p.device}")
    if fused is not False and kernel == "numba" and LAYOUTS[state_format].kernels() is not None and dense:
        return "numba"
    if fused:
        raise RuntimeError(f"fused=True cannot update param {index} of its group: not a dense tensor with a dense "
                           f"gradient and state in consecutive blocks, or numba missing")  # fmt: skip
    return "numpy"


def check_state(
    p: Tensor, state: Mapping[str, Any], where: str, *, loading: bool, state_format: str = "compact"
) -> None:
    """Raise unless ``state`` is a well-formed ``state_format`` entry for ``p`` (a checkpoint's step may be a
    number)."""
    layout = LAYOUTS[state_format]
    if not isinstance(state, Mapping) or set(state) != layout.keys:
        keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{where}: expected the keys {sorted(layout.keys)}, got {keys}")
    _check_step(state["step"], where, loading=loading)
    rows = in_row_blocks(state) and p.dim() > 0
    for key, dtype, how in layout.tensors:
        value, shape = state[key], layout.shape(how, p, rows)
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}: {key!r} must be a tensor, got {type(value).__name__}")
        if value.dtype != dtype or tuple(value.shape) != shape:
            raise ValueError(
                f"{where}: {key!r} must be {dtype} of shape {shape}, got {value.dtype} of shape {tuple(value.shape)}"
            )
        if not loading and (value.device != p.device or not value.is_contiguous()):
            raise ValueError(f"{where}: {key!r} must be contiguous, on the param's device")
    if not loading:
        return
    for key, _, how in layout.tensors:
        if how == "blocks" and bool((state[key] < 0).any()):
            raise ValueError(f"{where}: {key!r} must not be negative")
    one = layout.definition.ONE
    if bool((state["exp_inf_code"].to(torch.int32) > one).any()):
        raise ValueError(f"{where}: 'exp_inf_code' holds codes above {one}, the largest (u = the scale)")


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


def _live_state_fits(p: Tensor, state: Mapping[str, Any], layout: Layout) -> bool:
    """:func:`check_state` for live state, in few reads (it runs for every param at every step)."""
    step = state.get("step")
    if not (len(state) == len(layout.tensors) + 1 and type(step) in _PLAIN and step.numel() == 1
            and step.is_floating_point()):  # fmt: skip
        return False
    for key, dtype, how in layout.tensors:
        t = state.get(key)
        if not (
            type(t) in _PLAIN
            and t.dtype is dtype
            and (t.shape == p.shape if how == "param" else t.shape == (compact.blocks(p.numel()),))
            and t.device == p.device
            and t.is_contiguous()
        ):
            return False
    return True


# ----- between tensors and the NumPy definition -----


def _bits(t: Tensor) -> np.ndarray:
    """A bfloat16 or uint16 CPU tensor's 16-bit patterns as a NumPy uint16 view (shared memory)."""
    return t.view(torch.uint16).numpy() if t.dtype is torch.bfloat16 else t.numpy()


def as_compact_state(state: Mapping[str, Any], state_format: str = "compact"):
    """A compact entry as its definition's state (:class:`adamax.compact.CompactState` or
    :class:`adamax.compact8.Compact8State`): NumPy views of CPU tensors."""
    layout = LAYOUTS[state_format]
    arrays = (_bits(state[key].cpu()) for key, _, _ in layout.tensors)
    return (compact.CompactState if state_format == "compact" else compact8.Compact8State)(
        int(float(state["step"])), *arrays
    )


def _entry_of(state, step: Any, device: torch.device, state_format: str) -> dict[str, Any]:
    entry = {"step": step}
    for key, dtype, _ in LAYOUTS[state_format].tensors:
        t = torch.from_numpy(np.ascontiguousarray(getattr(state, key)))
        entry[key] = (t.view(torch.bfloat16) if dtype is torch.bfloat16 else t).to(device)
    return entry


def _step_value(step: Any) -> Any:
    return step.clone() if isinstance(step, Tensor) else step


def to_compact_entry(entry: Mapping[str, Any], state_format: str = "compact", rows: bool = False) -> dict[str, Any]:
    """A full entry (``step, exp_avg, exp_inf``) in a compact format: m rounded to nearest, u up; ``rows``: the
    scales in row blocks."""
    m, u = entry["exp_avg"], entry["exp_inf"]
    definition = LAYOUTS[state_format].definition
    state = definition.from_full(0, m.detach().float().cpu().numpy(), u.detach().float().cpu().numpy(), rows)
    return _entry_of(state, _step_value(entry["step"]), m.device, state_format)


def to_full_entry(entry: Mapping[str, Any], state_format: str = "compact") -> dict[str, Any]:
    """A compact entry as full float32 state, exactly (a param of another dtype casts it when it loads)."""
    _, m, u = LAYOUTS[state_format].definition.to_full(as_compact_state(entry, state_format))
    device = entry["exp_inf_code"].device
    return {"step": _step_value(entry["step"]), "exp_avg": torch.from_numpy(m).to(device),
            "exp_inf": torch.from_numpy(u).to(device)}  # fmt: skip


def convert_state_dict(state_dict: Mapping[str, Any], state_format: str) -> dict[str, Any]:
    """``state_dict`` (of :class:`adamax.torch.Adamax` in any state format, or of ``torch.optim.Adamax``)
    with every state entry in ``state_format``: ``"full"`` (loads into ``torch.optim.Adamax``; exact),
    ``"compact"`` (m rounded to the nearest bfloat16, u up to its code) or ``"compact8"`` (m to the nearest
    8-bit code, u up).  Between two compact formats the values go through float32 (exact), then round.  The input
    is not modified."""
    compact.check_state_format(state_format)
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError("expected an optimizer state dict with 'state' and 'param_groups'")
    out = {key: copy.deepcopy(value) for key, value in state_dict.items() if key != "state"}
    out["state"] = {key: convert_entry(entry, state_format) for key, entry in state_dict["state"].items()}
    return out


def format_of(entry: Mapping[str, Any]) -> str:
    """Which format a (non-empty) state entry is in, by its keys; raises for none."""
    found = FORMAT_OF_KEYS.get(frozenset(entry))
    if found is None:
        known = "; ".join(f"{name} {sorted(keys)}" for keys, name in FORMAT_OF_KEYS.items())
        raise ValueError(f"a state entry with keys {sorted(entry)} is no Adamax state (full, compact or compact8: "
                         f"{known})")  # fmt: skip
    return found


def convert_entry(entry: Mapping[str, Any], state_format: str) -> dict[str, Any]:
    """One state entry in ``state_format`` (a copy; an empty entry stays empty); a compact entry in row blocks
    stays in row blocks."""
    if not isinstance(entry, Mapping) or not entry:
        return dict(entry) if isinstance(entry, Mapping) else entry
    source = format_of(entry)
    if source == state_format:
        return {k: _step_value(v) if k == "step" else v.clone() for k, v in entry.items()}
    full = entry if source == "full" else to_full_entry(entry, source)
    return full if state_format == "full" else to_compact_entry(full, state_format, in_row_blocks(entry))


KERNEL_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # the numba kernel's kind per param dtype


def _kernel_step(
    name: str, config: AdamaxConfig, items: list[tuple[Tensor, dict[str, Tensor]]], layout: Layout
) -> None:
    """One kernel call per (device, param dtype) over ``(param, state)`` pairs, in place; each count advances."""
    buckets: dict[tuple, list[tuple[Tensor, dict[str, Tensor]]]] = {}
    for p, s in items:
        buckets.setdefault((p.device, p.dtype), []).append((p, s))
    for (_, dtype), group in buckets.items():
        step_tensors = [s["step"] for _, s in group]
        torch._foreach_add_(step_tensors, 1.0)  # one call for the group: per-tensor adds cost microseconds each
        counts = [int(t) for t in torch.stack(step_tensors).tolist()]
        params, grads = [p for p, _ in group], [p.grad for p, _ in group]
        columns = [params, grads] + [
            [s[key].view(torch.uint16) if dt is torch.bfloat16 else s[key] for _, s in group]
            for key, dt, _ in layout.tensors
        ]
        if name == "triton":
            steps = torch.tensor([step_size(config.lr, config.beta1, t) for t in counts], dtype=torch.float64)
            step = gpu_kernels().compact_step if layout.name == "compact" else gpu_kernels().compact8_step
            step(*columns, steps, torch.tensor(counts), config)
        else:
            addresses = tuple(np.array([t.data_ptr() for t in column], dtype=np.int64) for column in columns)
            sizes = tuple(p.numel() for p in params)
            threads = torch.get_num_threads()
            layout.kernels().step(KERNEL_KINDS[dtype], addresses, sizes, counts, config, threads=threads)


PATH_NAMES = {
    "compact": {"triton": "triton compact", "numba": "numba compact", "numpy": "compact"},
    "compact8": {"triton": "triton compact8", "numba": "numba compact8", "numpy": "compact8"},
}  # in last_step_paths


def check_step(
    p: Tensor, index: int, group: Mapping[str, Any], state: Mapping[str, Any] | None, state_format: str = "compact"
) -> str:
    """Before any write: ``p`` (whose gradient is checked already) and its ``state`` entry (None or empty: none
    yet) can take a compact step; returns its :func:`route`."""
    if group["differentiable"] or group["capturable"]:
        raise RuntimeError(f"{state_format} state does not support differentiable=True or capturable=True")
    check_param(p, index)
    fits = bool(state) and _live_state_fits(p, state, LAYOUTS[state_format])
    if state and not fits:
        check_state(p, state, f"state of param {index} of its group", loading=False, state_format=state_format)
    return route(p, group["fused"], index, state_format, rows=bool(state) and not fits and in_row_blocks(state))


def step_compact(
    config: AdamaxConfig, params: list[Tensor], ways: list[str], states: list[dict], state_format: str = "compact"
) -> None:
    """Every param's compact step in place on it and its ``states`` entry (a fresh one where it has none yet), by
    the route the plan chose: a kernel for dense tensors (Triton on CUDA, numba on the CPU), the definition's
    ``update`` for the rest (computed for all first, then written)."""
    layout = LAYOUTS[state_format]
    routes = {name: [] for name in ("triton", "numba", "numpy")}
    for p, way, state in zip(params, ways, states):
        routes[way].append((p, state))
    results = []
    for p, state in routes["numpy"]:
        p32 = p.detach().float().numpy() if p.dtype is not torch.float32 else p.detach().numpy()
        g32 = p.grad.detach().float().numpy()
        new = layout.definition.update(p32, g32, as_compact_state(state, state_format), config)
        results.append((p, state, *new))
    with torch.no_grad():  # nothing above wrote; from here nothing can fail
        for name in ("triton", "numba"):
            if routes[name]:
                _kernel_step(name, config, routes[name], layout)
        for p, state, new_p, new in results:
            p.copy_(torch.from_numpy(new_p))
            for key, _, _ in layout.tensors:
                _bits(state[key])[...] = getattr(new, key)
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
        if state_format in LAYOUTS and entry:
            p = id_map[key]
            step = torch.tensor(float(entry["step"]), dtype=_torch_optimizer._get_scalar_dtype())
            compact_entries[p] = {  # its own memory, contiguous, where the param is: what a step takes
                k: step if k == "step" else v.to(p.device).clone(memory_format=torch.contiguous_format)
                for k, v in entry.items()
            }
        else:
            to_torch[key] = entry
    return {**state_dict, "state": to_torch}, compact_entries
