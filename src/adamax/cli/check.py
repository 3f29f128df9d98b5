"""``adamax check``: every backend installed here against the reference, and the one table of backends.

Every row is driven the same way -- a list of arrays (which the row owns from
then on), a config, then steps with a list of gradients -- and exposes its
params and per-array state after each step.  ``adamax check`` runs each row on
random problems for every convention and dtype, and reports the largest
difference from :mod:`adamax.reference` in ulps; the test suite
(``tests/test_conformance.py``) holds the same rows to the same reference.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

import numpy as np

from adamax import compact, reference
from adamax import numpy as adamax_numpy
from adamax.reference import AdamaxState
from adamax.spec import AdamaxConfig


class Stepper(Protocol):
    def step(self, grads: list[np.ndarray]) -> None: ...
    def params(self) -> list[np.ndarray]: ...
    def states(self) -> list[AdamaxState]: ...


class ReferenceStepper:
    """The oracle: ``reference.update`` applied array by array."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        self._params = list(params)
        self._states = [reference.init(p) for p in params]
        self._config = config

    def step(self, grads: list[np.ndarray]) -> None:
        for i, g in enumerate(grads):
            self._params[i], self._states[i] = reference.update(self._params[i], g, self._states[i], self._config)

    def params(self) -> list[np.ndarray]:
        return self._params

    def states(self) -> list[AdamaxState]:
        return self._states


class CompactReferenceStepper:
    """The compact state's definition, ``adamax.compact.update`` array by array; states decoded to float32."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        self._params = list(params)
        self._states = [compact.init(p) for p in params]
        self._config = config

    def step(self, grads: list[np.ndarray]) -> None:
        for i, g in enumerate(grads):
            self._params[i], self._states[i] = compact.update(self._params[i], g, self._states[i], self._config)

    def params(self) -> list[np.ndarray]:
        return self._params

    def states(self) -> list[AdamaxState]:
        return [AdamaxState(*compact.to_full(s)) for s in self._states]


class NumpyStepper:
    def __init__(self, params: list[np.ndarray], config: AdamaxConfig, fused: bool | None = None) -> None:
        self._params = params  # updated in place, keeping the caller's memory layout
        self._opt = adamax_numpy.Adamax(self._params, fused=fused, **config.to_dict())

    def step(self, grads: list[np.ndarray]) -> None:
        self._opt.step(grads)

    def params(self) -> list[np.ndarray]:
        return self._params

    def states(self) -> list[AdamaxState]:
        return [self._opt.state[str(i)] for i in range(len(self._params))]


class CompactNumpyStepper(NumpyStepper):
    """``adamax.numpy.Adamax(state_format="compact")`` (the numba kernel where it can); states decoded to float32."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        self._params = params
        self._opt = adamax_numpy.Adamax(self._params, state_format="compact", **config.to_dict())

    def states(self) -> list[AdamaxState]:
        return [AdamaxState(*compact.to_full(self._opt.state[str(i)])) for i in range(len(self._params))]


class TorchStepper:
    """``adamax.torch.Adamax`` on tensors that share the arrays' memory (and so their layout)."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig, **backend: bool) -> None:
        import torch

        from adamax.torch import Adamax

        self._torch = torch
        if backend.get("fused"):  # fused=True refuses non-contiguous tensors; it is given contiguous copies
            params = [_c_contiguous(p) for p in params]
        self._tensors = [torch.from_numpy(p) for p in params]
        self._opt = Adamax(self._tensors, **backend, **config.to_dict())

    def step(self, grads: list[np.ndarray]) -> None:
        for t, g in zip(self._tensors, grads):
            t.grad = self._torch.from_numpy(_c_contiguous(g) if t.is_contiguous() and g.ndim else g)
        self._opt.step()

    def params(self) -> list[np.ndarray]:
        return [t.numpy() for t in self._tensors]

    def states(self) -> list[AdamaxState]:
        out = []
        for t in self._tensors:
            s = self._opt.state[t]
            if "exp_inf_code" in s:  # compact state, decoded
                from adamax.torch._compact import as_compact_state

                out.append(AdamaxState(*compact.to_full(as_compact_state(s))))
            else:
                out.append(AdamaxState(int(s["step"]), s["exp_avg"].numpy(), s["exp_inf"].numpy()))
        return out


class OptaxStepper:
    """``adamax.optax.adamax`` (or ``adamaxw`` for decoupled decay), one jitted update per step."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        from adamax.optax import adamax, adamaxw

        b1, b2 = config.betas
        kwargs = dict(b1=b1, b2=b2, eps=config.eps, eps_placement=config.eps_placement)
        if config.weight_decay:
            opt = adamaxw(config.lr, weight_decay=config.weight_decay, **kwargs)
        else:
            opt = adamax(config.lr, **kwargs)
        self._params = [jnp.asarray(p) for p in params]
        self._state = opt.init(self._params)

        @jax.jit
        def step(params, state, grads):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self._step = step

    def step(self, grads: list[np.ndarray]) -> None:
        self._params, self._state = self._step(self._params, self._state, [np.asarray(g) for g in grads])

    def params(self) -> list[np.ndarray]:
        return [np.asarray(p) for p in self._params]

    def states(self) -> list[AdamaxState]:
        inner = self._state[0]
        step = int(inner.count)
        return [AdamaxState(step, np.asarray(m), np.asarray(u)) for m, u in zip(inner.m, inner.u)]


def _row_gradients(grads: list[np.ndarray], lazy: list[bool]):
    """Each lazy array's gradient as the rows that are not all zero (the rows a sparse gradient would hold)."""
    out = []
    for g, is_lazy in zip(grads, lazy):
        if is_lazy:
            rows = np.flatnonzero(np.abs(g.reshape(len(g), -1)).sum(axis=1) != 0) if g.size else np.arange(0)
            g = adamax_numpy.RowGradient(rows.astype(np.int64), np.ascontiguousarray(g[rows]))
        out.append(g)
    return out


class LazyNumpyStepper(NumpyStepper):
    """``adamax.numpy.Adamax`` with every array of one or more dimensions stepped lazily (rows: the first axis)."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        self._params = params
        self._lazy = [p.ndim >= 1 for p in params]
        lazy = [str(i) for i, is_lazy in enumerate(self._lazy) if is_lazy]
        self._opt = adamax_numpy.Adamax(self._params, lazy=lazy, **config.to_dict())

    def step(self, grads: list[np.ndarray]) -> None:
        self._opt.step(_row_gradients(grads, self._lazy))

    def params(self) -> list[np.ndarray]:
        self._opt.flush()
        return self._params

    def states(self) -> list[AdamaxState]:
        self._opt.flush()
        return super().states()


class LazyTorchStepper(TorchStepper):
    """``adamax.torch.Adamax`` with every 2-d array an ``nn.Embedding(sparse=True)`` registered by
    ``lazy_embeddings``, given sparse gradients of its non-zero rows; the rest as usual."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        import torch

        from adamax.torch import Adamax, lazy_embeddings

        self._torch = torch
        tensors = [torch.from_numpy(p) for p in params]
        self._lazy = [t.dim() == 2 for t in tensors]
        tables = torch.nn.ModuleList(  # their weights share the arrays' memory
            torch.nn.Embedding(*t.shape, sparse=True, _weight=t) for t, is_lazy in zip(tensors, self._lazy) if is_lazy
        )
        weights = iter(table.weight for table in tables)
        self._tensors = [next(weights) if is_lazy else t for t, is_lazy in zip(tensors, self._lazy)]
        self._opt = Adamax(self._tensors, **config.to_dict())
        lazy_embeddings(tables, self._opt)

    def step(self, grads: list[np.ndarray]) -> None:
        torch = self._torch
        for t, g, is_lazy in zip(self._tensors, _row_gradients(grads, self._lazy), self._lazy):
            if is_lazy:
                rows = torch.from_numpy(g.indices).unsqueeze(0)
                t.grad = torch.sparse_coo_tensor(rows, torch.from_numpy(g.values), t.shape, check_invariants=True)
            else:
                t.grad = torch.from_numpy(_c_contiguous(g) if t.is_contiguous() and g.ndim else g)
        self._opt.step()

    def params(self) -> list[np.ndarray]:
        self._opt.flush()
        return [t.detach().numpy() for t in self._tensors]

    def states(self) -> list[AdamaxState]:
        self._opt.flush()
        return super().states()


def _lazy_unsupported(config: AdamaxConfig) -> str | None:
    if config.weight_decay and not config.decoupled_weight_decay:
        return "coupled weight decay moves every row every step: lazy tables take decoupled decay"
    return None


def _lazy_inexact(config: AdamaxConfig, dtype) -> str:
    return "rows brought up to date in closed form (adamax._lazy), rounded once rather than at every step"


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _torch_installed() -> bool:
    return _installed("torch")


def _optax_unsupported(config: AdamaxConfig) -> str | None:
    if config.maximize:
        return "optax transforms descend; negate the gradients to ascend"
    if config.weight_decay and not config.decoupled_weight_decay:
        return "optax composes coupled decay from add_decayed_weights before the transform; not an option here"
    return None


def _foreach_complex_decay(config: AdamaxConfig, dtype: type) -> str | None:
    if np.issubdtype(dtype, np.complexfloating) and config.weight_decay and not config.decoupled_weight_decay:
        return "torch's foreach path fuses complex weight decay on real pairs; the reference follows its forloop"
    return None


class Implementation(NamedTuple):
    name: str
    make: Callable[[list[np.ndarray], AdamaxConfig], Stepper]
    dtypes: tuple[type, ...]  # the dtypes it promises to match the reference on, bit for bit
    available: bool = True
    # why, for a config and dtype, it only matches to a few ulps instead of bit for bit (None: bit for bit)
    inexact: Callable[[AdamaxConfig, type], str | None] = lambda config, dtype: None
    # why it has no such option (None: it has)
    unsupported: Callable[[AdamaxConfig], str | None] = lambda config: None
    allowed_ulps: float = 0  # for its inexact rows, where more than ALLOWED_ULPS_INEXACT (compact state: 2^18)


def _c_contiguous(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else a.copy(order="C")  # (np.ascontiguousarray makes 0-d arrays 1-d)


class KernelStepper:
    """The numba kernel called directly on the arrays (C-contiguous float32/float64)."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        from adamax.kernels import cpu

        self._cpu, self._config = cpu, config
        self._params = [_c_contiguous(p) for p in params]
        self._states = [reference.init(p) for p in self._params]

    def step(self, grads: list[np.ndarray]) -> None:
        grads = [_c_contiguous(g) for g in grads]
        t = self._states[0].step + 1 if self._states else 1
        columns = (self._params, grads, [s.exp_avg for s in self._states], [s.exp_inf for s in self._states])
        addresses = tuple(np.array([a.ctypes.data for a in col], dtype=np.int64) for col in columns)
        sizes = np.full(len(grads), -(self._config.lr / (1 - self._config.beta1**t)))
        dtype = self._params[0].dtype if self._params else np.dtype(np.float32)
        self._cpu.step(dtype, addresses, tuple(p.size for p in self._params), sizes, self._config)
        self._states = [AdamaxState(t, s.exp_avg, s.exp_inf) for s in self._states]

    def params(self) -> list[np.ndarray]:
        return self._params

    def states(self) -> list[AdamaxState]:
        return self._states


@contextlib.contextmanager
def _interpreting() -> Iterator[None]:
    """``TRITON_INTERPRET=1`` for the duration, then as it was."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


def interpreted_triton():
    """:mod:`adamax.kernels.gpu` with its kernel built by Triton's interpreter, to run on CPU tensors.

    ``TRITON_INTERPRET`` is read when ``triton.jit`` decorates, so the module is (re)loaded with it set;
    triton also reads it again, lazily, at the first launch, so the module's ``step`` runs with it set.
    """
    with _interpreting():
        module = importlib.reload(importlib.import_module("adamax.kernels.gpu"))

    def interpreted(launch):
        @functools.wraps(launch)
        def interpreted_launch(*args, **kwargs):
            # The interpreter evaluates with NumPy, which warns where a GPU is silent (0/0 in a masked-off lane).
            with _interpreting(), np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return launch(*args, **kwargs)

        return interpreted_launch

    module.step = interpreted(module.step)
    module.compact_step = interpreted(module.compact_step)
    return module


class TritonStepper:
    """The Triton kernel under its interpreter, on CPU tensors sharing the arrays' memory (float32)."""

    def __init__(self, params: list[np.ndarray], config: AdamaxConfig) -> None:
        import torch

        self._torch, self._gpu, self._config = torch, interpreted_triton(), config
        self._params = [_c_contiguous(p) for p in params]
        self._states = [reference.init(p) for p in self._params]

    def step(self, grads: list[np.ndarray]) -> None:
        torch = self._torch
        t = self._states[0].step + 1 if self._states else 1
        as_tensors = lambda arrays: [torch.from_numpy(_c_contiguous(a)) for a in arrays]  # noqa: E731
        sizes = torch.full((len(grads),), -(self._config.lr / (1 - self._config.beta1**t)), dtype=torch.float64)
        self._gpu.step(
            as_tensors(self._params),
            as_tensors(grads),
            as_tensors([s.exp_avg for s in self._states]),
            as_tensors([s.exp_inf for s in self._states]),
            sizes,
            self._config,
        )
        self._states = [AdamaxState(t, s.exp_avg, s.exp_inf) for s in self._states]

    def params(self) -> list[np.ndarray]:
        return self._params

    def states(self) -> list[AdamaxState]:
        return self._states


ALL_DTYPES = (np.float32, np.float64, np.complex64, np.complex128)
IMPLEMENTATIONS = [
    # automatic: the fused kernel for contiguous float32/float64 arrays (with numba), the reference otherwise
    Implementation("numpy", NumpyStepper, ALL_DTYPES),
    Implementation("numpy-unfused", lambda p, c: NumpyStepper(p, c, fused=False), ALL_DTYPES),
    Implementation("torch-automatic", TorchStepper, ALL_DTYPES, available=_torch_installed()),
    Implementation(
        "torch-forloop", lambda p, c: TorchStepper(p, c, foreach=False), ALL_DTYPES, available=_torch_installed()
    ),
    Implementation(
        "torch-foreach",
        lambda p, c: TorchStepper(p, c, foreach=True),
        ALL_DTYPES,
        available=_torch_installed(),
        inexact=_foreach_complex_decay,
    ),
    Implementation(
        "optax",
        OptaxStepper,
        (np.float32, np.complex64),  # float64 needs jax_enable_x64 (test_optax.py runs it in a subprocess)
        available=_installed("jax", "optax"),
        inexact=lambda config, dtype: "optax's rounding order: (1 - b1) g + b1 m, m_hat / u, then -lr times that",
        unsupported=_optax_unsupported,
    ),
    Implementation(
        "torch-fused",
        lambda p, c: TorchStepper(p, c, fused=True),
        (np.float32, np.float64),
        available=_installed("torch", "numba"),
    ),
    Implementation("numba kernel", KernelStepper, (np.float32, np.float64), available=_installed("numba")),
    Implementation("triton (interpreter)", TritonStepper, (np.float32,), available=_installed("triton", "torch")),
    Implementation(
        "numpy-lazy",
        LazyNumpyStepper,
        (np.float32, np.float64),
        inexact=_lazy_inexact,
        unsupported=_lazy_unsupported,
    ),
    Implementation(
        "numpy-compact",
        CompactNumpyStepper,
        (np.float32,),
        inexact=lambda config, dtype: COMPACT_NOTE,
        allowed_ulps=2.0**18,
    ),
    Implementation(
        "torch-compact",
        lambda p, c: TorchStepper(p, c, state_format="compact"),
        (np.float32,),
        available=_torch_installed(),
        inexact=lambda config, dtype: COMPACT_NOTE,
        allowed_ulps=2.0**18,
    ),
    Implementation(
        "torch-lazy",
        LazyTorchStepper,
        (np.float32, np.float64),
        available=_torch_installed(),
        inexact=_lazy_inexact,
        unsupported=_lazy_unsupported,
    ),
]

WEIGHT_DECAY = {
    "no-wd": {},
    "coupled-wd": {"weight_decay": 0.1},
    "decoupled-wd": {"weight_decay": 0.1, "decoupled_weight_decay": True},
}
CONFIGS = {
    f"{eps}-{wd}{'-max' if maximize else ''}": AdamaxConfig(
        lr=0.05, eps=1e-3, eps_placement=eps, maximize=maximize, **WEIGHT_DECAY[wd]
    )
    for eps in ("max", "denominator", "none")
    for wd in WEIGHT_DECAY
    for maximize in (False, True)
}
SHAPES = {"0-d": (), "empty": (0,), "one": (1,), "4097": (4097,), "matrix": (3, 5), "rows": (40, 3)}
SPARSE_ROWS = 0.7  # the fraction of "rows"' rows whose gradient is zero at a step, as in an embedding table


def sparse_rows(rng: np.random.Generator, grad: np.ndarray, shape_name: str) -> np.ndarray:
    """``grad``, with most of its rows zeroed when it is the "rows" case (every backend sees the same zeros)."""
    if shape_name == "rows":
        grad[rng.random(len(grad)) < SPARSE_ROWS] = 0
    return grad


ALLOWED_ULPS_INEXACT = 64  # for rows with a documented rounding difference; all others must be exact
COMPACT_NOTE = (
    "compact state (adamax.compact): m in bfloat16, rounded stochastically (up to one bfloat16 ulp, 2^16 float32 "
    "ulps, a step), u up to a code (0.1%); the check's 4 steps allow 4 bfloat16 ulps of the array's scale"
)


def random_array(rng: np.random.Generator, shape: tuple, dtype, scale: float = 1.0) -> np.ndarray:
    x = rng.standard_normal(shape) * scale
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape) * scale
    return np.asarray(x).astype(dtype)


def ulps(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference, in ulps of ``expected``'s largest magnitude (0 when equal; NaN against not: inf).

    Measured against the array's scale rather than each element's: where an update cancels to nearly 0,
    an element's own ulp is meaninglessly small.
    """
    a, e = np.asarray(actual), np.asarray(expected)
    if np.iscomplexobj(e):
        a, e = np.stack([a.real, a.imag], -1), np.stack([e.real, e.imag], -1)
    if e.size == 0:
        return 0.0
    same = (a == e) | (np.isnan(a) & np.isnan(e))
    if same.all():
        return 0.0
    if (np.isnan(a) != np.isnan(e)).any():
        return float("inf")
    unit = float(np.spacing(np.max(np.abs(e[~np.isnan(e)]), initial=0).astype(e.dtype)))
    return float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64))[~same]) / unit)


class Verdict(NamedTuple):
    backend: str
    convention: str
    dtype: str
    max_ulps: float | None  # None: absent or not offered
    status: str  # "pass", "FAIL", "absent", "n/a"
    note: str = ""


def runs(impl: Implementation, config: AdamaxConfig, dtype) -> bool:
    """Whether :func:`check_one` runs steps for this row, or only reports it absent or not offered."""
    return impl.available and dtype in impl.dtypes and impl.unsupported(config) is None


def check_one(impl: Implementation, name: str, config: AdamaxConfig, dtype, steps: int = 4, seed: int = 0) -> Verdict:
    dtype_name = np.dtype(dtype).name
    if not impl.available:
        return Verdict(impl.name, name, dtype_name, None, "absent", "not installed")
    if dtype not in impl.dtypes or impl.unsupported(config):
        return Verdict(impl.name, name, dtype_name, None, "n/a", impl.unsupported(config) or "dtype not offered")
    rng = np.random.default_rng(seed)
    initial = [random_array(rng, shape, dtype) for shape in SHAPES.values()]
    under_test = impl.make([p.copy() for p in initial], config)
    oracle = ReferenceStepper([p.copy() for p in initial], config)
    worst = 0.0
    for _ in range(steps):
        grads = [
            sparse_rows(rng, random_array(rng, shape, dtype, 10.0 ** rng.uniform(-3, 2)), shape_name)
            for shape_name, shape in SHAPES.items()
        ]
        under_test.step([g.copy() for g in grads])
        oracle.step(grads)
        for p, s, p_ref, s_ref in zip(under_test.params(), under_test.states(), oracle.params(), oracle.states()):
            worst = max(worst, ulps(p, p_ref), ulps(s.exp_avg, s_ref.exp_avg), ulps(s.exp_inf, s_ref.exp_inf))
            if int(s.step) != s_ref.step:
                worst = float("inf")
    inexact = impl.inexact(config, dtype)
    allowed = max(ALLOWED_ULPS_INEXACT, impl.allowed_ulps) if inexact else 0
    return Verdict(impl.name, name, dtype_name, worst, "pass" if worst <= allowed else "FAIL", inexact or "")


def plot(verdicts: list[Verdict], path: str) -> None:
    """A grid: backend x dtype, coloured by the worst result over the conventions, labelled with the max ulps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(v.backend for v in verdicts))
    dtypes = [np.dtype(d).name for d in ALL_DTYPES]
    rank = {"FAIL": 3, "pass": 2, "n/a": 1, "absent": 0}
    colours = {"FAIL": "#d62728", "pass": "#2ca02c", "n/a": "#dddddd", "absent": "#999999"}
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(backends) + 1.5))
    for i, backend in enumerate(backends):
        for j, dtype in enumerate(dtypes):
            cell = [v for v in verdicts if v.backend == backend and v.dtype == dtype]
            status = max((v.status for v in cell), key=rank.__getitem__, default="n/a")
            measured = [v.max_ulps for v in cell if v.max_ulps is not None]
            worst = max(measured, default=None)
            label = status if worst is None else f"{worst:.0f} ulp" + ("" if worst == 1 else "s")
            ax.add_patch(plt.Rectangle((j, i), 1, 1, color=colours[status], ec="white"))
            ax.text(j + 0.5, i + 0.5, label, ha="center", va="center", fontsize=9)
    ax.set(xlim=(0, len(dtypes)), ylim=(0, len(backends)))
    ax.set_xticks(np.arange(len(dtypes)) + 0.5, dtypes)
    ax.set_yticks(np.arange(len(backends)) + 0.5, backends)
    ax.invert_yaxis()
    ax.set_title("Largest difference from adamax.reference over every convention (green: pass)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_all(advance: Callable[[], None] = lambda: None, implementations=None) -> list[Verdict]:
    verdicts = []
    for impl in IMPLEMENTATIONS if implementations is None else implementations:
        for name, config in CONFIGS.items():
            for dtype in ALL_DTYPES:
                try:
                    verdicts.append(check_one(impl, name, config, dtype))
                except Exception as err:  # a crash is a failure to report, not to hide
                    verdicts.append(Verdict(impl.name, name, np.dtype(dtype).name, None, "FAIL", repr(err)[:120]))
                if runs(impl, config, dtype):
                    advance()
    return verdicts
