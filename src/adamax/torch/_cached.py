"""The cached plan of a group the numba kernel steps whole (full state, or compact state by the compact kernel):
:class:`PlanCache`, which the optimizer owns, and :func:`step_cached`, the step it allows."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor

from adamax.kernels import cpu_kernels
from adamax.spec import AdamaxConfig
from adamax.torch._compact import KERNEL_KINDS, LAYOUTS, PATH_NAMES
from adamax.torch._config import config_of
from adamax.torch._devices import KERNEL_DTYPES, KERNEL_FOR_DEVICE, KERNEL_TYPES
from adamax.torch._fused import host_step_sizes
from adamax.torch._state import TrackedState


class EntryCheck(NamedTuple):
    """What a compact group's state entries held when it was cached, in the forms cheapest to compare again: per
    entry its size, then the ids of its values (``"step"`` and the tensors, in ``getter``'s order), then the
    tensors' data addresses.  It holds every one of those values, so no id can be reused meanwhile."""

    getter: Callable[[Mapping], tuple]  # an entry's values, in a fixed order
    sizes: list[int]
    values: list[Any]  # every entry's values, in the getter's order (kept alive)
    ids: list[int]
    tensors: list[Tensor]
    addresses: list[int]

    @classmethod
    def of(cls, states: tuple, keys: tuple[str, ...]) -> EntryCheck:
        getter = operator.itemgetter("step", *keys)
        values = [v for s in states for v in getter(s)]
        tensors = [s[key] for s in states for key in keys]
        return cls(getter, [len(s) for s in states], values, list(map(id, values)), tensors,
                   [t.data_ptr() for t in tensors])  # fmt: skip

    def intact(self, states: tuple) -> bool:
        """Whether every entry still holds the very values it held, and no tensor's memory moved."""
        if list(map(len, states)) != self.sizes:
            return False
        try:  # (map, chain and itemgetter: no Python code runs per entry)
            ids = list(map(id, itertools.chain.from_iterable(map(self.getter, states))))
        except KeyError:
            return False
        return ids == self.ids and list(map(_DATA_PTR, self.tensors)) == self.addresses


_DATA_PTR = torch.Tensor.data_ptr


class CachedPlan(NamedTuple):
    """A step of a group that the kernel steps whole, from a :class:`FusedGroup` still valid."""

    group: dict
    config: AdamaxConfig
    cached: Any  # FusedGroup
    params: list[Tensor]
    grads: list[Tensor]


class FusedGroup(NamedTuple):
    """A group every param of which the kernel stepped last time, kept to skip re-deriving it.

    Every step re-checks, cheaply, everything a user could have changed:
    the group's flags, each gradient, each param's shape, and that state is
    still the very tensors (and memory) cached here.  Step counts live in
    ``steps``, one buffer: each state's ``"step"`` is a view of one element.
    """

    state: Any  # the optimizer's state mapping it was built from, and its version then
    state_version: int
    flags: tuple
    params: tuple
    dtype: torch.dtype
    shapes: tuple
    states: tuple  # the state dicts
    exp_avgs: tuple
    exp_infs: tuple
    step_views: tuple
    steps: Tensor  # float32 buffer
    m_addresses: np.ndarray
    u_addresses: np.ndarray
    sizes: tuple

    def state_intact(self) -> bool:
        """Whether every param's entry still holds the very tensors cached here, in the same memory."""
        for s, m, u, t in zip(self.states, self.exp_avgs, self.exp_infs, self.step_views):
            if not (len(s) == 3 and s.get("exp_avg") is m and s.get("exp_inf") is u and s.get("step") is t):
                return False
        for tensors, addresses in ((self.exp_avgs, self.m_addresses), (self.exp_infs, self.u_addresses)):
            if [x.data_ptr() for x in tensors] != addresses.tolist():
                return False
        return True


class CompactGroup(NamedTuple):
    """A compact-state group every param of which a compact numba kernel stepped last time: as
    :class:`FusedGroup`, with the entries' tensors' addresses in the layout's order and an :class:`EntryCheck`."""

    state: Any
    state_version: int
    flags: tuple
    params: tuple
    dtype: torch.dtype
    kind: int  # the compact kernel's kind for ``dtype``
    shapes: tuple
    states: tuple
    state_format: str  # "compact" or "compact8"
    steps: Tensor  # float32 buffer (each entry's "step" is a view of one element)
    addresses: tuple  # per key of the layout, in the kernel's order, an int64 array of the tensors' addresses
    sizes: tuple
    check: EntryCheck

    def state_intact(self) -> bool:
        """Whether every param's compact entry still holds the very tensors cached here, in the same memory."""
        return self.check.intact(self.states)


def _group_flags(group: Mapping[str, Any]) -> tuple:
    return (group["fused"], group["foreach"], group["differentiable"], group["capturable"])


class PlanCache:
    """The optimizer's cached plans, one per group (by the group's id), and their one owner."""

    def __init__(self) -> None:
        self.groups: dict[int, FusedGroup | None] = {}

    def lookup(self, group: dict, state: Any, state_format: str = "full") -> CachedPlan | None:
        """The plan of a group the kernel stepped whole last time, if nothing relevant has changed since."""
        cached = self.groups.get(id(group))
        if (
            cached is None
            or getattr(cached, "state_format", "full") != state_format
            or state is not cached.state
            or state.version != cached.state_version
            or _group_flags(group) != cached.flags
            or torch.compiler.is_compiling()
        ):
            return None
        params = group["params"]
        if len(params) != len(cached.shapes):
            return None
        grads = [p.grad for p in params]
        dtype = cached.dtype
        # Per param, the fewest reads that keep the kernel's raw-memory writes safe and its result right.
        # The gradient's shape is compared, not only its size: ``p.grad.data = ...`` bypasses torch's setter.
        for p, cached_p, g, shape in zip(params, cached.params, grads, cached.shapes):
            if not (
                p is cached_p
                and type(g) in KERNEL_TYPES
                and g.layout is torch.strided
                and g.dtype is dtype
                and g.is_cpu
                and g.shape == shape
                and g.is_contiguous()
                and p.dtype is dtype
                and p.is_contiguous()
                and p.shape == shape
            ):
                return None  # anything unusual: the full plan checks it, and explains a refusal
        if not cached.state_intact():
            return None
        return CachedPlan(group, config_of(group), cached, params, grads)

    def remember(
        self, group: dict, fused: list[Tensor], state: Any, lazy_tables: Mapping, compact: list[Tensor] = (),
        routes: list[str] = (), state_format: str = "compact",
    ) -> None:  # fmt: skip
        """After a full-plan step of ``group`` whose ``fused`` params the kernel stepped (or ``compact`` params,
        by ``routes``): cache the group if one numba kernel stepped all of it, in one dtype (else forget any plan
        it had)."""
        if compact:
            self.groups[id(group)] = _compact_group(group, compact, routes, state, state_format)
        else:
            self.groups[id(group)] = _fused_group(group, fused, state, lazy_tables)

    def clear(self) -> None:
        self.groups.clear()


def _fused_group(group: dict, fused: list[Tensor], state: Any, lazy_tables: Mapping) -> FusedGroup | None:
    params = group["params"]
    if len(fused) != len(params) or not params:  # a param without a gradient, or off the kernel
        return None
    if not isinstance(state, TrackedState):  # ``opt.state`` assigned by hand: its changes are not counted
        return None
    if any(p in lazy_tables for p in params):  # a lazy table's dense steps go through the full plan
        return None
    dtype = params[0].dtype
    if dtype not in KERNEL_DTYPES:  # bfloat16/float16 params: the full plan each step
        return None
    if any(
        p.dtype is not dtype or type(p) not in KERNEL_TYPES or KERNEL_FOR_DEVICE.get(p.device.type) != "numba"
        for p in params
    ):
        return None
    states = tuple(state[p] for p in params)
    if any(s["step"].dtype is not torch.float32 or s["step"].device.type != "cpu" for s in states):
        return None
    steps, views = _one_buffer(states)
    return FusedGroup(
        state=state,
        state_version=state.version,
        flags=_group_flags(group),
        params=tuple(params),
        dtype=dtype,
        shapes=tuple(p.shape for p in params),
        states=states,
        exp_avgs=tuple(s["exp_avg"] for s in states),
        exp_infs=tuple(s["exp_inf"] for s in states),
        step_views=views,
        steps=steps,
        m_addresses=np.array([s["exp_avg"].data_ptr() for s in states], dtype=np.int64),
        u_addresses=np.array([s["exp_inf"].data_ptr() for s in states], dtype=np.int64),
        sizes=tuple(p.numel() for p in params),
    )


def step_cached(plan: CachedPlan) -> str:
    """The group's step by the numba kernel, from its cached addresses and step counts; returns the path's name."""
    cached, config = plan.cached, plan.config
    if isinstance(cached, CompactGroup):
        return _step_compact_cached(plan)
    cached.steps.add_(1)
    counts = cached.steps.tolist()
    lr = _torch_optimizer._to_scalar(plan.group["lr"])
    n = len(counts)
    addresses = (
        np.fromiter((p.data_ptr() for p in plan.params), np.int64, n),
        np.fromiter((g.data_ptr() for g in plan.grads), np.int64, n),
        cached.m_addresses,
        cached.u_addresses,
    )
    step_sizes = np.array(host_step_sizes(lr, config.beta1, counts))
    kernel_dtype = KERNEL_DTYPES[cached.dtype]
    cpu_kernels().step(kernel_dtype, addresses, cached.sizes, step_sizes, config, threads=torch.get_num_threads())
    return "numba"


def _one_buffer(states: tuple) -> tuple[Tensor, tuple]:
    """Every entry's step count moved into one float32 buffer (same values): the buffer, and each entry's view of
    its element, which the entry now holds."""
    steps = torch.tensor([float(s["step"]) for s in states], dtype=torch.float32)
    views = tuple(steps[i] for i in range(len(states)))
    for s, view in zip(states, views):
        s["step"] = view
    return steps, views


def _compact_group(
    group: dict, params: list[Tensor], routes: list[str], state: Any, state_format: str
) -> CompactGroup | None:
    """A compact group to cache: every param of the group stepped by the compact numba kernel, in one dtype."""
    members = group["params"]
    if len(params) != len(members) or not members or any(way != "numba" for way in routes):
        return None
    if not isinstance(state, TrackedState):  # ``opt.state`` assigned by hand: its changes are not counted
        return None
    dtype = members[0].dtype
    if dtype not in KERNEL_KINDS or any(p.dtype is not dtype or type(p) not in KERNEL_TYPES for p in members):
        return None
    states = tuple(state[p] for p in members)
    if any(s["step"].dtype is not torch.float32 or s["step"].device.type != "cpu" for s in states):
        return None
    steps, _ = _one_buffer(states)
    keys = tuple(key for key, _, _ in LAYOUTS[state_format].tensors)
    return CompactGroup(
        state=state,
        state_version=state.version,
        flags=_group_flags(group),
        params=tuple(members),
        dtype=dtype,
        kind=KERNEL_KINDS[dtype],
        shapes=tuple(p.shape for p in members),
        states=states,
        state_format=state_format,
        steps=steps,
        addresses=tuple(np.array([s[key].data_ptr() for s in states], dtype=np.int64) for key in keys),
        sizes=tuple(p.numel() for p in members),
        check=EntryCheck.of(states, keys),
    )


def _step_compact_cached(plan: CachedPlan) -> str:
    cached = plan.cached
    cached.steps.add_(1)
    counts = cached.steps.numpy().astype(np.int64)  # whole numbers (float32 counts are exact to 2**24)
    n = len(counts)
    addresses = (
        np.fromiter((p.data_ptr() for p in plan.params), np.int64, n),
        np.fromiter((g.data_ptr() for g in plan.grads), np.int64, n),
        *cached.addresses,
    )
    layout = LAYOUTS[cached.state_format]
    layout.kernels().step(cached.kind, addresses, cached.sizes, counts, plan.config, threads=torch.get_num_threads())
    return PATH_NAMES[cached.state_format]["numba"]
