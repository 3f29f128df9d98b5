"""``adamax bench``: step time of every Adamax implementation, against the memory-bandwidth limit.

An in-place float32 Adamax step reads p, g, m, u and writes p, m, u: 28 bytes
per element, and no implementation can move less.  The limit is measured in
the same run with a parallel in-place ``a += s * b`` (12 bytes per element):
its bandwidth, times 28 bytes per element, is the fastest possible step.

The machines are shared and noisy, so every method is timed in the same
round, one step each, round after round ("paired" runs), and the median per
method is reported; ratios within one run are what to compare.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from adamax.cli._bandwidth import LIMIT_BYTES_PER_ELEMENT, SETTLE_SECONDS, _bandwidth_stepper
from adamax.cli._work import TrainingWork

BYTES_PER_ELEMENT = 28  # float32: read p, g, m, u; write p, m, u


RESIDENT_BYTES_PER_ELEMENT = 16  # float32 p, g, m, u: what a step keeps in memory
CACHE_FACTOR = 2  # a case whose arrays total less than this many times the last-level cache may live in it
# Fixed colours, so that a method keeps its colour whichever methods a run includes.
COLOURS = {
    "torch forloop": "#1f77b4",
    "torch foreach": "#ff7f0e",
    "torch.compile (foreach)": "#2ca02c",
    "optax.adamax (jit, donated)": "#d62728",
    "numpy reference": "#9467bd",
    "adamax.torch fused": "#8c564b",
    "fused kernel alone": "#e377c2",
    "adamax.torch compact": "#17becf",
    "adamax.torch compact8": "#bcbd22",
    "adamax.optax full (jit, donated)": "#ff9896",
    "adamax.optax compact (jit, donated)": "#c5b0d5",
    "adamax.optax compact8 (jit, donated)": "#c49c94",
    "compact kernel alone": "#9edae5",
    "compact8 kernel alone": "#dbdb8d",
}
# Bytes a method's step must move per float32 element, where not BYTES_PER_ELEMENT: compact state reads and writes
# p (4 + 4), m (2 + 2) and u's code (2 + 2), and reads g (4); compact8 p (4 + 4), m's and u's codes (1 + 1 each), g (4).
METHOD_BYTES = {
    "adamax.torch compact": 20,
    "adamax.torch compact8": 16,
    "compact kernel alone": 20,
    "compact8 kernel alone": 16,
    "adamax.optax compact (jit, donated)": 20,
    "adamax.optax compact8 (jit, donated)": 16,
}


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache, from Linux's sysfs (None where it is not readable)."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return max(sizes, default=None)


def fits_in_cache(numel: int, cache_bytes: int | None) -> bool:
    """Whether a case's arrays may stay in cache between steps, so that the DRAM limit does not bound it
    (unknown cache: assume 32 MiB)."""
    return RESIDENT_BYTES_PER_ELEMENT * numel < CACHE_FACTOR * (cache_bytes or 32 << 20)


@dataclass
class Case:
    name: str
    sizes: list[int]

    @property
    def numel(self) -> int:
        return sum(self.sizes)


def model_like_sizes(layers: int = 16, width: int = 224, vocab: int = 1600) -> list[int]:
    """A transformer-shaped list of ~195 tensors totalling ~10M elements."""
    sizes = [vocab * width]
    for _ in range(layers):
        d = width
        sizes += [3 * d * d, 3 * d, d * d, d, 4 * d * d, 4 * d, 4 * d * d, d, d, d, d, d]
    return [*sizes, width, width]


@dataclass
class Result:
    method: str
    median_ms: float
    times_ms: list[float] = field(repr=False)
    x_foreach: float | None = None
    fraction_of_limit: float | None = None


def _torch_stepper(sizes: list[int], **options) -> Callable[[], None]:
    import torch

    from adamax.torch import Adamax

    gen = torch.Generator().manual_seed(0)
    params = [torch.rand(n, generator=gen).requires_grad_() for n in sizes]
    for p in params:
        p.grad = torch.rand(p.shape, generator=gen)
    cls = options.pop("cls", None) or Adamax
    opt = cls(params, **options)
    opt.step()
    return opt.step


def _compiled_stepper(sizes: list[int]) -> Callable[[], None]:
    import torch

    step = _torch_stepper(sizes, cls=torch.optim.Adamax, foreach=True)
    compiled = torch.compile(step)
    compiled()  # compile now, outside the timings
    return compiled


def _optax_stepper(sizes: list[int], state_format: str | None = None) -> Callable[[], None]:
    """A jitted step with donated buffers: ``optax.adamax``, or (``state_format`` given) ``adamax.optax.adamax``
    in that state format."""
    import jax
    import jax.numpy as jnp
    import optax

    if state_format is None:
        opt = optax.adamax(2e-3)
    else:
        import adamax.optax

        opt = adamax.optax.adamax(2e-3, state_format=state_format)
    keys = jax.random.split(jax.random.PRNGKey(0), len(sizes))
    params = [jax.random.uniform(k, (n,), jnp.float32) for k, n in zip(keys, sizes)]
    grads = [jax.random.uniform(k, (n,), jnp.float32) for k, n in zip(keys[::-1], sizes)]
    state = opt.init(params)

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step, donate_argnums=(0, 1))
    box = {"params": params, "state": state}

    def run() -> None:
        box["params"], box["state"] = jitted(box["params"], box["state"], grads)
        jax.block_until_ready(box["params"])

    run()
    return run


def _reference_stepper(sizes: list[int]) -> Callable[[], None]:
    from adamax import reference

    rng = np.random.default_rng(0)
    params = [rng.random(n, dtype=np.float32) for n in sizes]
    grads = [rng.random(n, dtype=np.float32) for n in sizes]
    states = [reference.init(p) for p in params]

    def run() -> None:
        for i, g in enumerate(grads):
            params[i], states[i] = reference.update(params[i], g, states[i])

    return run


def _kernel_stepper(sizes: list[int]) -> Callable[[], None]:
    """The fused kernel alone, on fixed arrays: what the optimizers' per-parameter bookkeeping adds to."""
    from adamax.kernels import cpu
    from adamax.spec import AdamaxConfig

    rng = np.random.default_rng(0)
    arrays = [[rng.random(n, dtype=np.float32) for n in sizes] for _ in range(4)]
    addresses = tuple(np.array([a.ctypes.data for a in column], dtype=np.int64) for column in arrays)
    config, step_sizes, sizes_key = AdamaxConfig(), np.full(len(sizes), -2e-3), tuple(sizes)
    threads = _torch_threads()

    def run(keep_alive=arrays) -> None:  # the kernel writes through the arrays' addresses
        cpu.step(np.dtype(np.float32), addresses, sizes_key, step_sizes, config, threads=threads)

    run()
    return run


def _compact_kernel_stepper(sizes: list[int], state_format: str) -> Callable[[], None]:
    """A compact format's fused kernel alone (float32 params), on fixed arrays, as :func:`_kernel_stepper`; the
    state starts as its definition's ``init`` and is stepped once before the timings."""
    from adamax import compact, compact8
    from adamax.kernels import compact8_kernels, compact_kernels
    from adamax.kernels.cpu import F32
    from adamax.spec import AdamaxConfig

    definition, kernels = (compact, compact_kernels()) if state_format == "compact" else (compact8, compact8_kernels())
    rng = np.random.default_rng(0)
    params = [rng.random(n, dtype=np.float32) for n in sizes]
    states = [definition.init(p) for p in params]
    columns = [params, [rng.random(n, dtype=np.float32) for n in sizes]]
    columns += [[getattr(state, key) for state in states] for key in states[0]._fields[1:]]  # the kernel's order
    addresses = tuple(np.array([a.ctypes.data for a in column], dtype=np.int64) for column in columns)
    config, counts, sizes_key, threads = AdamaxConfig(), np.full(len(sizes), 10), tuple(sizes), _torch_threads()

    def run(keep_alive=columns) -> None:  # the kernel writes through the arrays' addresses
        kernels.step(F32, addresses, sizes_key, counts, config, threads=threads)

    run()
    return run


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _methods(include_compile: bool, include_reference: bool) -> dict[str, Callable[[list[int]], Callable[[], None]]]:
    import torch

    methods = {
        "torch forloop": lambda s: _torch_stepper(s, cls=torch.optim.Adamax, foreach=False),
        "torch foreach": lambda s: _torch_stepper(s, cls=torch.optim.Adamax, foreach=True),
    }
    if include_compile:
        methods["torch.compile (foreach)"] = _compiled_stepper
    if importlib.util.find_spec("optax") is not None:
        methods["optax.adamax (jit, donated)"] = _optax_stepper
        for state_format in ("full", "compact", "compact8"):
            methods[f"adamax.optax {state_format} (jit, donated)"] = functools.partial(
                _optax_stepper, state_format=state_format
            )
    if include_reference:
        methods["numpy reference"] = _reference_stepper
    methods["adamax.torch fused"] = lambda s: _torch_stepper(s, fused=True)
    methods["fused kernel alone"] = _kernel_stepper
    methods["adamax.torch compact"] = lambda s: _torch_stepper(s, state_format="compact")
    methods["adamax.torch compact8"] = lambda s: _torch_stepper(s, state_format="compact8")
    methods["compact kernel alone"] = functools.partial(_compact_kernel_stepper, state_format="compact")
    methods["compact8 kernel alone"] = functools.partial(_compact_kernel_stepper, state_format="compact8")
    return methods


def run_case(
    case: Case,
    repeats: int,
    include_compile: bool,
    include_reference: bool,
    advance: Callable[[], None],
    work: Callable[[], None] = lambda: None,
) -> tuple[float, list[Result]]:
    """Time every method, interleaved round by round, each step after ``work()`` (other torch work, as in training:
    :mod:`adamax.cli._work`); returns (limit GB/s, results)."""
    steppers = {"bandwidth limit": _bandwidth_stepper(case.numel)}
    for name, make in _methods(include_compile, include_reference).items():
        steppers[name] = make(case.sizes)
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for r in range(repeats):
        for name, step in steppers.items():
            if name == "numpy reference" and r >= 3:  # seconds per step at this size; three rounds suffice
                continue
            time.sleep(SETTLE_SECONDS)
            work()  # the forward and backward passes' stand-in: cores awake, caches as other work leaves them
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
        advance()
    limit_seconds = float(np.median(times.pop("bandwidth limit")))
    bandwidth = LIMIT_BYTES_PER_ELEMENT * case.numel / limit_seconds
    in_cache = fits_in_cache(case.numel, last_level_cache_bytes())  # cache-resident: no DRAM limit bounds it
    foreach = float(np.median(times["torch foreach"]))
    results = []
    for name, ts in times.items():
        median = float(np.median(ts))
        fastest_possible = METHOD_BYTES.get(name, BYTES_PER_ELEMENT) * case.numel / bandwidth
        results.append(
            Result(
                name,
                median * 1e3,
                [t * 1e3 for t in ts],
                x_foreach=foreach / median,
                fraction_of_limit=None if in_cache else fastest_possible / median,
            )
        )
    return bandwidth / 1e9, results


def startup_seconds() -> dict[str, float]:
    """``import adamax.torch`` (numba included) plus the first fused step, in a fresh process: with an empty
    numba cache (the first-ever compile), then again from the cache that run wrote."""
    code = textwrap.dedent(
        """
        import time
        import torch
        # torch's one-time costs are not ours: its import, and the torch._dynamo import (about 1 s here)
        # that any torch.optim optimizer's constructor triggers on first use.
        torch.optim.Adamax([torch.zeros(1, requires_grad=True)])
        start = time.perf_counter()
        from adamax.torch import Adamax
        p = torch.zeros(1000, requires_grad=True)
        p.grad = torch.ones(1000)
        Adamax([p], fused=True).step()
        print(time.perf_counter() - start)
        """
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("first-ever compile", "from numba's on-disk cache"):
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            out[label] = float(done.stdout.strip())
    return out


def environment(threads: int) -> dict[str, str | int]:
    import torch

    info: dict[str, str | int] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count() or 0,
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch cpu capability": torch.backends.cpu.get_cpu_capability(),
    }
    for module in ("numba", "jax", "optax"):
        if importlib.util.find_spec(module) is not None:
            info[module] = importlib.import_module(module).__version__
    return info


def report(cases: list[tuple[Case, float, list[Result]]], table: Callable) -> None:
    for case, bandwidth, results in cases:
        in_cache = all(r.fraction_of_limit is None for r in results)
        limit = (
            f"fits in cache ({RESIDENT_BYTES_PER_ELEMENT * case.numel / 1e6:.0f} MB): no DRAM limit applies"
            if in_cache
            else f"limit {bandwidth:.1f} GB/s = {BYTES_PER_ELEMENT * case.numel / bandwidth / 1e6:.2f} ms per step"
        )
        table(
            f"{case.name}: {case.numel / 1e6:.1f}M float32 elements in {len(case.sizes)} tensors; {limit}",
            ["method", "median ms", "x foreach", "fraction of limit"],
            [
                [
                    r.method,
                    f"{r.median_ms:.2f}",
                    f"{r.x_foreach:.2f}",
                    "-" if r.fraction_of_limit is None else f"{r.fraction_of_limit:.2f}",
                ]
                for r in results
            ],
        )


def plot(cases: list[tuple[Case, float, list[Result]]], path: str) -> None:
    """Speed-up over torch's foreach step, per method and case; a dash marks the fastest step the measured
    bandwidth allows, on the cases too large for the cache."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [r.method for r in cases[0][2]]
    fig, ax = plt.subplots(figsize=(13, 4.8))
    width = 0.8 / len(methods)
    x = np.arange(len(cases))
    for i, method in enumerate(methods):
        values = [next((r.x_foreach for r in results if r.method == method), np.nan) for _, _, results in cases]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width, label=method, color=COLOURS.get(method))
    labels = []
    for k, (case, _, results) in enumerate(cases):
        foreach = next(r for r in results if r.method == "torch foreach")
        labels.append(f"{case.name}\n{case.numel / 1e6:.3g}M elements in {len(case.sizes)}")
        if foreach.fraction_of_limit is None:
            labels[-1] += "\n(fits in cache)"
            continue
        ax.hlines(1 / foreach.fraction_of_limit, k - 0.45, k + 0.45, color="black", lw=2, ls="--")
    ax.plot([], [], color="black", lw=2, ls="--", label="bandwidth limit (same run)")
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up over torch's foreach step")
    ax.set_title("Adamax step, float32: against torch's foreach step and the measured bandwidth limit")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(path: str) -> list[tuple[Case, float, list[Result]]]:
    """The cases of a ``--json`` file written by an earlier run, as :func:`run_case` returned them."""
    with open(path) as f:
        payload = json.load(f)
    cases = []
    for c in payload["cases"]:
        results = [Result(**r) for r in c["results"]]
        if fits_in_cache(c["numel"], last_level_cache_bytes()):  # files from before cache-resident cases were marked
            results = [Result(**{**asdict(r), "fraction_of_limit": None}) for r in results]
        sizes = [c["numel"]] if c["tensors"] == 1 else model_like_sizes()
        cases.append((Case(c["name"], sizes), c["limit_GBps"], results))
    return cases


def main(args) -> None:
    from adamax.cli import _console

    if args.from_json:
        measured = load(args.from_json)
        report(measured, _console.table)
        if args.out:
            plot(measured, str(args.out))
            print(f"wrote {args.out}")
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    work = TrainingWork(args.work_ms)
    if args.sparse:
        from adamax.cli import bench_sparse

        with _console.progress(args.repeats, "benchmark rounds (sparse)") as advance:
            result = bench_sparse.run(args.sparse_rows, 64, args.sparse_fraction, args.repeats, advance, work)
        bench_sparse.report(result, _console.table)
        print(work.sentence())
        if args.json:
            with open(args.json, "w") as f:
                payload = {"environment": environment(threads), "work_before_step": work.describe(), "sparse": result}
                json.dump(payload, f, indent=2)
            print(f"wrote {args.json}")
        return
    cases = [Case(f"{n / 1e6:g}M", [n]) for n in args.sizes]
    if args.model:
        cases.append(Case("model-like", model_like_sizes()))
    if args.small:
        cases.append(Case("1,000 small tensors", [256] * 1000))  # the step's host time, not bandwidth
    measured = []
    with _console.progress(args.repeats * len(cases), "benchmark rounds") as advance:
        for case in cases:
            bandwidth, results = run_case(case, args.repeats, args.compile, not args.no_reference, advance, work)
            measured.append((case, bandwidth, results))
    report(measured, _console.table)
    print(work.sentence())
    startup = startup_seconds() if args.startup else {}
    for label, seconds in startup.items():
        print(f"import + first fused step, {label}: {seconds:.2f} s")
    if args.json:
        payload = {
            "environment": environment(threads),
            "bytes_per_element": BYTES_PER_ELEMENT,
            "repeats": args.repeats,
            "work_before_step": work.describe(),
            "cases": [
                {
                    "name": c.name,
                    "numel": c.numel,
                    "tensors": len(c.sizes),
                    "limit_GBps": bw,
                    "results": [asdict(r) for r in rs],
                }
                for c, bw, rs in measured
            ],
            "startup_seconds": startup,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.json}")
    if args.out:
        plot(measured, str(args.out))
        print(f"wrote {args.out}")
