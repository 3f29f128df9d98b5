r"""PyTorch: ``adamax.torch.Adamax``, a drop-in for ``torch.optim.Adamax``.

Same defaults, same state keys (``step``, ``exp_avg``, ``exp_inf``), same
error messages, and with torch-compatible options the same bits: float32 and
float64, forloop and foreach, complex included.  Checkpoints move both ways.

What it adds:

* ``eps_placement="max" | "denominator" | "none"`` (:mod:`adamax.spec`): torch
  and optax, Keras/TensorFlow, or the paper.
* ``decoupled_weight_decay=True`` (``p *= 1 - lr * wd``), and :class:`AdamaxW`
  with it on by default.
* All-or-nothing steps: every group's hyperparameters, every gradient (sparse,
  shape, dtype, device) and every state entry is checked before the first
  tensor is written, so a step that raises changes nothing.
* Validated checkpoints: :meth:`Adamax.load_state_dict` checks structure,
  shapes and dtypes against the params and refuses a bad one whole.
* ``skip_nonfinite=True``: a step in which any gradient holds NaN or inf is
  skipped whole and counted in ``skipped_steps``.  The default, like torch,
  applies such gradients, and NaN then spreads into params and state.

The math is :func:`adamax._algorithm.adamax_update`, the one definition every
backend runs; this module supplies torch operations for one tensor (forloop)
or for lists of tensors (foreach).

>>> import torch
>>> from adamax.torch import Adamax
>>> model = torch.nn.Linear(3, 1)
>>> opt = Adamax(model.parameters(), lr=2e-3)
>>> model(torch.ones(2, 3)).sum().backward()
>>> opt.step()
>>> sorted(opt.state[model.weight])
['exp_avg', 'exp_inf', 'step']
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from adamax._extras import require

require("torch", extra="torch", what="adamax.torch")

import torch  # noqa: E402
import torch.optim.optimizer as _torch_optimizer  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.optim.optimizer import Optimizer, _use_grad_for_differentiable  # noqa: E402

from adamax._algorithm import adamax_update, step_size  # noqa: E402
from adamax.kernels import cpu_kernels, gpu_kernels  # noqa: E402
from adamax.spec import AdamaxConfig, EpsPlacement  # noqa: E402

__all__ = ["Adamax", "AdamaxW"]

_FLAG_DEFAULTS = {
    "foreach": None,
    "maximize": False,
    "differentiable": False,
    "capturable": False,
    "fused": None,
    "decoupled_weight_decay": False,
    "eps_placement": "max",
}
_STATE_KEYS = frozenset({"step", "exp_avg", "exp_inf"})


def _check_flags(group: Mapping[str, Any]) -> None:
    """torch's own flags must be what they say: ``fused="no"`` is not ``fused=True``."""
    for key in ("foreach", "fused"):
        value = group.get(key)
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"Invalid {key}: {value!r} (expected True, False or None)")
    for key in ("differentiable", "capturable"):
        value = group.get(key, False)
        if not isinstance(value, bool):
            raise TypeError(f"Invalid {key}: {value!r} (expected True or False)")


def _config_of(group: Mapping[str, Any]) -> AdamaxConfig:
    """Validate a param group's hyperparameters (torch's messages) and flags, and bundle them."""
    _check_flags(group)
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr = lr.item()
    return AdamaxConfig(
        lr=lr,
        betas=group["betas"],
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        decoupled_weight_decay=group.get("decoupled_weight_decay", False),
        maximize=group.get("maximize", False),
        eps_placement=group.get("eps_placement", "max"),
    )


class _DeviceStep(NamedTuple):
    """Capturable steps keep the step size on the device, as torch's reciprocal ``(b1**t - 1) / lr``."""

    reciprocal: Any  # a tensor (forloop) or a list of tensors (foreach)


class _TensorOps:
    """One tensor at a time, in place on state and param (torch's single-tensor path)."""

    decay_before_real_view = True

    def __init__(self, differentiable: bool) -> None:
        self.differentiable = differentiable

    def real_view(self, xs):
        return [torch.view_as_real(x) if x.is_complex() else x for x in xs]

    def neg(self, g):
        return -g

    def add_scaled(self, g, p, alpha):
        return g.add(p, alpha=alpha)

    def mul_(self, x, s):
        return x.mul_(s)

    def moment_(self, m, g, beta1):
        return m.lerp_(g, 1 - beta1)

    def abs(self, g):
        return g.abs()

    def abs_plus(self, g, eps):
        return g.abs().add_(eps)

    def add(self, x, eps):
        return x.add(eps)

    def maximum_(self, u, v):
        if self.differentiable:  # maximum(out=) has no autograd formula
            return u.copy_(torch.amax(torch.stack([u, v]), 0))
        return torch.maximum(u, v, out=u)

    def apply_step_(self, p, m, d, s, guard_zero):
        if guard_zero:
            zero = d == 0
            m, d = m.masked_fill(zero, 0), d.masked_fill(zero, 1)
        if isinstance(s, _DeviceStep):
            return p.addcdiv_(m, d * s.reciprocal)
        return p.addcdiv_(m, d, value=s)


class _ForeachOps:
    """Lists of tensors on one device and dtype (torch's foreach path)."""

    decay_before_real_view = False  # torch's foreach path splits complex tensors first

    def real_view(self, lists):
        return [[torch.view_as_real(x) if x.is_complex() else x for x in xs] for xs in lists]

    def neg(self, g):
        return torch._foreach_neg(g)

    def add_scaled(self, g, p, alpha):
        return torch._foreach_add(g, p, alpha=alpha)

    def mul_(self, x, s):
        torch._foreach_mul_(x, s)
        return x

    def moment_(self, m, g, beta1):
        torch._foreach_lerp_(m, g, 1 - beta1)
        return m

    def abs(self, g):
        return torch._foreach_abs(g)

    def abs_plus(self, g, eps):
        out = torch._foreach_abs(g)
        torch._foreach_add_(out, eps)
        return out

    def add(self, x, eps):
        return torch._foreach_add(x, eps)

    def maximum_(self, u, v):
        torch._foreach_maximum_(u, v)
        return u

    def apply_step_(self, p, m, d, s, guard_zero):
        if guard_zero:
            zeros = [x == 0 for x in d]
            m = [x.masked_fill(z, 0) for x, z in zip(m, zeros)]
            d = [x.masked_fill(z, 1) for x, z in zip(d, zeros)]
        if isinstance(s, _DeviceStep):
            torch._foreach_addcdiv_(p, m, torch._foreach_mul(d, s.reciprocal))
        else:
            torch._foreach_addcdiv_(p, m, d, s)
        return p


class _Plan(NamedTuple):
    """What one group's step will do, decided and checked before anything is written."""

    group: dict
    config: AdamaxConfig
    fused: list[Tensor]  # params the fused kernel steps
    fused_states: list[dict | None]  # their state (None: not created yet), looked up once
    rest: list[Tensor]  # params stepped with torch ops
    backend: str  # for ``rest``: "forloop" or "foreach"


class _CachedPlan(NamedTuple):
    """A step of a group that the kernel steps whole, from a :class:`_FusedGroup` still valid."""

    group: dict
    config: AdamaxConfig
    cached: Any  # _FusedGroup
    params: list[Tensor]
    grads: list[Tensor]


def _host_step_sizes(lr: float | Tensor, beta1: float, counts: list[float]) -> list[float]:
    """``-lr / (1 - beta1**t)`` per step count, as torch's forloop rounds it; each distinct count once."""
    by_count = {t: float(step_size(lr, beta1, t)) for t in set(counts)}
    return [by_count[t] for t in counts]


def _planned_params(plan: _Plan | _CachedPlan) -> list[Tensor]:
    return plan.params if isinstance(plan, _CachedPlan) else [*plan.fused, *plan.rest]


_ONE = torch.tensor(1.0)  # torch's fast form for incrementing CPU step counts
_KERNEL_TYPES = (Tensor, torch.nn.Parameter)  # not subclasses (DTensor and friends): the kernel reads raw memory
_KERNEL_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Which fused kernel serves each device type (tests route the CPU to Triton's interpreter through this).
_KERNEL_FOR_DEVICE = {"cpu": "numba", "cuda": "triton"}
_LOW_PRECISION = (torch.float16, torch.bfloat16)  # their state is float32 on the Triton path


@functools.cache
def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard, which the kernels update in place (the update is elementwise), or ``t``."""
    dtensor = _dtensor_type()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def _kernel_loader(name: str):
    return cpu_kernels() if name == "numba" else gpu_kernels()


def _kernel_can_take(p: Tensor, g: Tensor, state: Mapping[str, Any] | None, capturable: bool = False) -> str | None:
    """Why no fused kernel can update ``p`` in place as it is (None: one can).

    Called for every param at every step, so it reads as little as it can.
    """
    kernel = _KERNEL_FOR_DEVICE.get(p.device.type)
    if kernel is None or _kernel_loader(kernel) is None:
        return f"no fused kernel for {p.device.type} tensors here (numba for the CPU, triton for CUDA)"
    dtypes = _KERNEL_DTYPES if kernel == "numba" else _TRITON_DTYPES
    if p.dtype not in dtypes:
        return f"a {p.dtype} tensor; the {kernel} kernel takes {', '.join(map(str, dtypes))}"
    if capturable and kernel == "numba":
        return "capturable=True: the CPU kernel keeps step counts on the host"
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(p, dtensor):  # FSDP2 and friends: step the local shards
        tensors = [p, g, *((state["exp_avg"], state["exp_inf"]) if state else ())]
        if not all(isinstance(t, dtensor) and t.placements == p.placements for t in tensors):
            return "a DTensor whose gradient or state is sharded differently"
        p, g = p.to_local(), g.to_local()
        state = {"exp_avg": state["exp_avg"].to_local(), "exp_inf": state["exp_inf"].to_local()} if state else None
    if type(p) not in _KERNEL_TYPES or type(g) not in _KERNEL_TYPES:
        return "a tensor subclass"  # its memory need not be the tensor's values
    if not (p.is_contiguous() and g.is_contiguous()):
        return "a non-contiguous tensor"
    if state and not (state["exp_avg"].is_contiguous() and state["exp_inf"].is_contiguous()):
        return "non-contiguous state"
    return None


def _kernel_mode(group: Mapping[str, Any]) -> str:
    """The one place that decides whether fused kernels step a group: "always", "where possible" or "never".

    * An explicit choice wins: ``fused=True`` is "always" (a param no kernel
      can take is refused, not silently stepped another way); ``fused=False``
      or an explicit ``foreach`` is "never".
    * Otherwise (``fused=None`` and ``foreach=None``) the kernels take every
      param they can: numba's on the CPU, Triton's on CUDA, where installed.
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
        and type(state.get("step")) in _KERNEL_TYPES
        and m is not None
        and u is not None
        and m.shape == p.shape
        and u.shape == p.shape
        and m.dtype == u.dtype
        and (m.dtype == p.dtype or (m.dtype == torch.float32 and p.dtype in _LOW_PRECISION))
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
    if not isinstance(state, Mapping) or set(state) != _STATE_KEYS:
        keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{where}: expected the keys {sorted(_STATE_KEYS)}, got {keys}")
    if not loading:
        if not isinstance(state["step"], Tensor) or state["step"].numel() != 1:
            raise ValueError(f"{where}: 'step' must be a 1-element tensor")
        for key in ("exp_avg", "exp_inf"):
            value = state[key]
            matches = isinstance(value, Tensor) and value.shape == p.shape and value.dtype == p.dtype
            if not (matches and value.device == p.device):
                raise ValueError(f"{where}: {key!r} does not match the param's shape, dtype and device")
        return
    step = state["step"]
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.is_complex():
            raise ValueError(f"{where}: 'step' must be a single real number, got a tensor of shape {tuple(step.shape)}")
        step = step.item()
    if (
        isinstance(step, bool)
        or not isinstance(step, (int, float))
        or not (math.isfinite(step) and step >= 0 and step == int(step))
    ):
        raise ValueError(f"{where}: 'step' must be a whole number >= 0, got {step!r}")
    for key in ("exp_avg", "exp_inf"):
        value = state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}: {key!r} must be a tensor, got {type(value).__name__}")
        if value.shape != p.shape:
            raise ValueError(f"{where}: {key!r} has shape {tuple(value.shape)}, the param {tuple(p.shape)}")
        if value.is_complex() != p.is_complex() or not (value.is_floating_point() or value.is_complex()):
            raise TypeError(f"{where}: {key!r} has dtype {value.dtype}, which cannot hold state for {p.dtype}")


class _TrackedState(defaultdict):
    """``Optimizer.state`` that counts replacements of its entries, so a cached plan knows when it is stale."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.version = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.version += 1
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:
        self.version += 1
        return super().pop(*args)

    def popitem(self) -> Any:
        self.version += 1
        return super().popitem()

    def clear(self) -> None:
        self.version += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.version += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.version += 1
        return super().setdefault(key, default)


class _FusedGroup(NamedTuple):
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


def _group_flags(group: Mapping[str, Any]) -> tuple:
    return (group["fused"], group["foreach"], group["differentiable"], group["capturable"])


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
        fused: a fused kernel for every param (numba on the CPU: float32/float64; Triton on
            CUDA: float32/float16/bfloat16, with float32 state for the last two); ``None`` uses
            them where they can, unless ``foreach`` is set.
        decoupled_weight_decay: ``p *= 1 - lr * wd`` instead of adding ``wd * p`` to the gradient.
        eps_placement: ``"max"`` (torch, optax), ``"denominator"`` (Keras, TF) or ``"none"`` (the paper).
        skip_nonfinite: skip, and count in ``skipped_steps``, any step whose gradients are not all finite.

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
    ) -> None:
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
        _config_of(defaults)  # refuse bad hyperparameters before anything is built
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(f"Invalid skip_nonfinite: {skip_nonfinite!r} (expected True or False)")
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        self.last_step_paths: dict[str, int] = {}  # params per path in the last step: "numba", "triton", ...
        super().__init__(params, defaults)
        self.state = _TrackedState(dict, self.state)

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
            _config_of(group)
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
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.skip_nonfinite = state.pop("skip_nonfinite", False)
        self.skipped_steps = state.pop("skipped_steps", 0)
        self.last_step_paths = {}
        super().__setstate__(state)
        self.state = _TrackedState(dict, self.state)
        self.__dict__.pop("_fused_groups", None)  # cached plans refer to the state just replaced
        for group in self.param_groups:
            for key, value in _FLAG_DEFAULTS.items():
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
        shapes and dtypes.  State dicts of ``torch.optim.Adamax`` load as they are.
        """
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)

    def _check_loadable(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("expected an optimizer state dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
                )
            try:
                _config_of({**_FLAG_DEFAULTS, **saved})
            except (TypeError, ValueError, KeyError) as err:
                raise type(err)(f"param group {i} of the loaded state dict: {err}") from None
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in self.param_groups),
            )
        )
        for key, entry in state_dict["state"].items():
            if key not in id_map:
                raise ValueError(f"loaded state dict has state for param {key!r}, which no param group lists")
            if isinstance(entry, Mapping) and not entry:
                continue  # torch leaves one where ``opt.state[p]`` was read before p had a gradient
            _check_state(id_map[key], entry, f"state of param {key!r}", loading=True)

    def _plan(self, group: dict) -> _Plan:
        """Check one group's hyperparameters, gradients and state, and choose backends; write nothing."""
        config = _config_of(group)
        mode = _kernel_mode(group)
        state = self.state
        fused, fused_states, rest = [], [], []
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError("Adamax does not support sparse gradients")
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                raise RuntimeError(
                    f"param {i} of its group has a gradient of shape {tuple(g.shape)}, {g.dtype} on {g.device}; "
                    f"expected shape {tuple(p.shape)}, {p.dtype} on {p.device}"
                )
            s = state.get(p)
            if s:
                _check_live_state(p, s, i)
            if mode == "never":
                rest.append(p)
                continue
            reason = _kernel_can_take(p, g, s, group["capturable"])
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
        return _Plan(group, config, fused, fused_states, rest, backend)

    def _init_state(self, p: Tensor, capturable: bool, state_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        state = self.state.get(p)
        if state:
            return state
        state = self.state[p]
        if not state:
            dtype = _torch_optimizer._get_scalar_dtype()
            state["step"] = torch.zeros((), dtype=dtype, device=p.device if capturable else None)
            state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
            state["exp_inf"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
        return state

    def _run(self, plan: _Plan) -> None:
        paths = self.last_step_paths
        for p in plan.fused:
            paths[_KERNEL_FOR_DEVICE[p.device.type]] = paths.get(_KERNEL_FOR_DEVICE[p.device.type], 0) + 1
        if plan.rest:
            paths[plan.backend] = paths.get(plan.backend, 0) + len(plan.rest)
        if plan.fused:
            self._run_fused(plan.group, plan.config, plan.fused, plan.fused_states)
        if plan.rest:
            self._run_ops(plan.group, plan.config, plan.rest, plan.backend)

    def _run_fused(self, group: dict, config: AdamaxConfig, params: list[Tensor], states: list[dict | None]) -> None:
        on_triton = [_KERNEL_FOR_DEVICE[p.device.type] == "triton" for p in params]
        if any(on_triton):
            pairs = [(p, s) for p, s, t in zip(params, states, on_triton) if t]
            self._run_triton(group, config, *map(list, zip(*pairs)))
            params = [p for p, t in zip(params, on_triton) if not t]
            states = [s for s, t in zip(states, on_triton) if not t]
        if params:
            self._run_numba(group, config, params, states)

    def _run_triton(self, group: dict, config: AdamaxConfig, params: list[Tensor], states: list[dict | None]) -> None:
        """One launch per (device, param dtype, state dtype); low-precision params keep float32 state."""
        capturable = group["capturable"]
        lr = _torch_optimizer._to_scalar(group["lr"])
        states = [
            s or self._init_state(p, capturable, torch.float32 if p.dtype in _LOW_PRECISION else None)
            for p, s in zip(params, states)
        ]
        buckets: dict[tuple, list[tuple[Tensor, dict]]] = {}
        for p, s in zip(params, states):
            buckets.setdefault((p.device, p.dtype, s["exp_avg"].dtype), []).append((p, s))
        for (device, _, _), chosen in buckets.items():
            steps = [s["step"] for _, s in chosen]
            torch._foreach_add_(steps, 1.0)
            if capturable:  # counts stay on the device: bias correction there too, in float64
                counts = torch.stack(steps).to(torch.float64)
                step_sizes = -(lr / (1 - config.beta1**counts))
            else:
                counts = [t.item() for t in steps]
                step_sizes = torch.tensor(_host_step_sizes(lr, config.beta1, counts), dtype=torch.float64)
            gpu_kernels().step(
                [_local(p) for p, _ in chosen],
                [_local(p.grad) for p, _ in chosen],
                [_local(s["exp_avg"]) for _, s in chosen],
                [_local(s["exp_inf"]) for _, s in chosen],
                step_sizes.to(device),
                config,
            )

    def _run_numba(self, group: dict, config: AdamaxConfig, params: list[Tensor], states: list[dict | None]) -> None:
        kernels = cpu_kernels()
        lr = _torch_optimizer._to_scalar(group["lr"])  # a tensor lr: the step size is rounded as torch's forloop does
        threads = torch.get_num_threads()
        for dtype, np_dtype in _KERNEL_DTYPES.items():
            chosen = [(p, s or self._init_state(p, False)) for p, s in zip(params, states) if p.dtype is dtype]
            if not chosen:
                continue
            steps = [s["step"] for _, s in chosen]
            torch._foreach_add_(steps, _ONE, alpha=1.0)
            counts = [t.item() for t in steps]
            step_sizes = np.array(_host_step_sizes(lr, config.beta1, counts))
            n = len(chosen)
            addresses = (
                np.fromiter((_local(p).data_ptr() for p, _ in chosen), np.int64, n),
                np.fromiter((_local(p.grad).data_ptr() for p, _ in chosen), np.int64, n),
                np.fromiter((_local(s["exp_avg"]).data_ptr() for _, s in chosen), np.int64, n),
                np.fromiter((_local(s["exp_inf"]).data_ptr() for _, s in chosen), np.int64, n),
            )
            sizes = tuple(_local(p).numel() for p, _ in chosen)
            kernels.step(np_dtype, addresses, sizes, step_sizes, config, threads=threads)

    def _run_ops(self, group: dict, config: AdamaxConfig, params: list[Tensor], backend: str) -> None:
        capturable = group["capturable"]
        states = [self._init_state(p, capturable) for p in params]
        grads = [p.grad for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_infs = [s["exp_inf"] for s in states]
        steps = [s["step"] for s in states]
        beta1 = config.beta1
        if backend == "forloop":
            ops = _TensorOps(group["differentiable"])
            lr = _torch_optimizer._to_scalar(group["lr"])  # a tensor lr stays a tensor here, as in torch
            for p, g, m, u, t in zip(params, grads, exp_avgs, exp_infs, steps):
                t += 1
                if capturable:
                    size = _DeviceStep((beta1**t - 1) / lr)
                else:
                    size = step_size(lr, beta1, _torch_optimizer._get_value(t))
                adamax_update(ops, p, g, m, u, size, config)
            return
        ops = _ForeachOps()
        lr = group["lr"] if capturable else _torch_optimizer._get_value(group["lr"])  # ... and a float here
        buckets = Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avgs, exp_infs, steps])
        for (ps, gs, ms, us, ts), _ in buckets.values():
            if not torch.compiler.is_compiling() and ts[0].is_cpu:
                torch._foreach_add_(ts, torch.tensor(1.0, device="cpu"), alpha=1.0)  # torch's fast CPU form
            else:
                torch._foreach_add_(ts, 1)
            if capturable:
                sizes = _DeviceStep([(beta1**t - 1) / lr for t in ts])
            else:
                sizes = [step_size(lr, beta1, _torch_optimizer._get_value(t)) for t in ts]
            adamax_update(ops, ps, gs, ms, us, sizes, config)

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
        cache = self.__dict__.setdefault("_fused_groups", {})
        self.last_step_paths = {}  # how many params each path stepped: "numba", "triton", "forloop", "foreach"
        plans = [self._cached_plan(group, cache.get(id(group))) or self._plan(group) for group in self.param_groups]
        if self.skip_nonfinite and not _all_finite([p.grad for plan in plans for p in _planned_params(plan)]):
            self.skipped_steps += 1
            return loss
        for group, plan in zip(self.param_groups, plans):
            if isinstance(plan, _CachedPlan):
                self._run_cached(plan)
            else:
                self._run(plan)
                cache[id(group)] = self._fused_group(plan)
        return loss

    def _cached_plan(self, group: dict, cached: _FusedGroup | None) -> _CachedPlan | None:
        """The plan of a group the kernel stepped whole last time, if nothing relevant has changed since."""
        state = self.state
        if (
            cached is None
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
        for p, cached_p, g, shape, s, m, u, t in zip(
            params,
            cached.params,
            grads,
            cached.shapes,
            cached.states,
            cached.exp_avgs,
            cached.exp_infs,
            cached.step_views,
        ):
            if not (
                p is cached_p
                and type(g) in _KERNEL_TYPES
                and g.layout is torch.strided
                and g.dtype is dtype
                and g.is_cpu
                and g.shape == shape
                and g.is_contiguous()
                and p.dtype is dtype
                and p.is_contiguous()
                and p.shape == shape
                and len(s) == 3
                and s.get("exp_avg") is m
                and s.get("exp_inf") is u
                and s.get("step") is t
            ):
                return None  # anything unusual: the full plan checks it, and explains a refusal
        if [m.data_ptr() for m in cached.exp_avgs] != cached.m_addresses.tolist():
            return None
        if [u.data_ptr() for u in cached.exp_infs] != cached.u_addresses.tolist():
            return None
        return _CachedPlan(group, _config_of(group), cached, params, grads)

    def _fused_group(self, plan: _Plan) -> _FusedGroup | None:
        """After a full-plan step: cache the group if the kernel stepped all of it, in one dtype."""
        params = plan.group["params"]
        if plan.rest or len(plan.fused) != len(params) or not params:
            return None
        dtype = params[0].dtype
        if any(
            p.dtype is not dtype or type(p) not in _KERNEL_TYPES or _KERNEL_FOR_DEVICE.get(p.device.type) != "numba"
            for p in params
        ):
            return None
        states = tuple(self.state[p] for p in params)
        steps = torch.tensor([float(s["step"]) for s in states], dtype=torch.float32)
        if any(s["step"].dtype is not torch.float32 or s["step"].device.type != "cpu" for s in states):
            return None
        views = tuple(steps[i] for i in range(len(states)))
        for s, view in zip(states, views):
            s["step"] = view  # same value, now one element of ``steps``
        return _FusedGroup(
            state=self.state,
            state_version=self.state.version,
            flags=_group_flags(plan.group),
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

    def _run_cached(self, plan: _CachedPlan) -> None:
        cached, config = plan.cached, plan.config
        self.last_step_paths["numba"] = self.last_step_paths.get("numba", 0) + len(plan.params)
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
        step_sizes = np.array(_host_step_sizes(lr, config.beta1, counts))
        kernel_dtype = _KERNEL_DTYPES[cached.dtype]
        cpu_kernels().step(kernel_dtype, addresses, cached.sizes, step_sizes, config, threads=torch.get_num_threads())


def _all_finite(tensors: list[Tensor]) -> bool:
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


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
