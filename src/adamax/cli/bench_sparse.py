"""``adamax bench --sparse``: lazy Adamax on an embedding table against dense steps on the same table.

A ``rows x dim`` float32 table, a fraction of its rows touched per step (drawn
at random, the same draws for every method).  Timed, interleaved round by
round as in :mod:`adamax.cli.bench`, except that each timed step follows an
untimed one of the same method: what is timed is a step's cost in a
training loop, not the wake-up of a CPU idle during the pause between
methods (which, on the machine behind the README's figures, added about
1 ms to a 2 ms step).  The timed step's rows are not the untimed one's, and
the dense steps run between have evicted them from the caches.

* the optimizer step alone: ``adamax.torch`` lazy (sparse gradient,
  :func:`adamax.torch.lazy_embeddings`), ``adamax.torch`` fused (the dense
  gradient), ``torch.optim.Adamax`` foreach (the dense gradient); and lazy
  against dense for compact and compact8 state (``state_format``);
* a whole training step: embedding lookup of the touched rows, a small MLP,
  backward, step; lazy (``sparse=True``) against dense (``sparse=False``,
  fused step).

The bytes a lazy step must move are the touched rows' p, m, u read and
written and their gradient read: 28 bytes per touched element in float32.
Their rate is printed beside the DRAM bandwidth measured in the same run
(:func:`adamax.cli._bandwidth._bandwidth_stepper` on a large array); random rows are
bound by memory latency, not bandwidth, so the rate stays well below it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from adamax.cli._bandwidth import LIMIT_BYTES_PER_ELEMENT, SETTLE_SECONDS, _bandwidth_stepper


@dataclass
class SparseResult:
    method: str
    median_ms: float
    times_ms: list[float] = field(repr=False)


def _draws(rows: int, touched: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.unique(rng.integers(0, rows, size=touched)) for _ in range(count)]


def steppers(rows: int, dim: int, fraction: float, draws: int = 8) -> tuple[dict[str, Callable[[], None]], int]:
    """The methods, each a closure that takes one step (cycling through the same ``draws`` row sets), and the
    mean number of distinct rows a step touches."""
    import torch

    from adamax.torch import Adamax, lazy_embeddings

    torch.manual_seed(0)
    touched = _draws(rows, max(1, int(rows * fraction)), draws)
    values = [torch.randn(len(r), dim) for r in touched]
    sparse = [
        torch.sparse_coo_tensor(torch.from_numpy(r).unsqueeze(0), v, (rows, dim), check_invariants=True)
        for r, v in zip(touched, values)
    ]
    dense_grads = [g.to_dense() for g in sparse[:2]]  # two dense gradients (each the size of the table)
    start = torch.randn(rows, dim) * 0.1

    embedding = torch.nn.Embedding(rows, dim, sparse=True)
    with torch.no_grad():
        embedding.weight.copy_(start)
    lazy = Adamax(embedding.parameters(), lr=1e-3)
    lazy_embeddings(embedding, lazy)
    fused_table = torch.nn.Parameter(start.clone())
    fused = Adamax([fused_table], lr=1e-3, fused=True)
    torch_table = torch.nn.Parameter(start.clone())
    foreach = torch.optim.Adamax([torch_table], lr=1e-3, foreach=True)
    counter = {"lazy": 0, "fused": 0, "foreach": 0, "train lazy": 0, "train dense": 0}
    formats = {}  # state format: (lazy table, its optimizer, dense table, its optimizer)
    for state_format in ("compact", "compact8"):
        table = torch.nn.Embedding(rows, dim, sparse=True)
        with torch.no_grad():
            table.weight.copy_(start)
        opt = Adamax(table.parameters(), lr=1e-3, state_format=state_format)
        lazy_embeddings(table, opt)
        dense_table = torch.nn.Parameter(start.clone())
        formats[state_format] = (table, opt, dense_table, Adamax([dense_table], lr=1e-3, state_format=state_format))
        counter[f"lazy {state_format}"] = counter[f"dense {state_format}"] = 0

    def cycle(name: str, items: list):
        k = counter[name]
        counter[name] = k + 1
        return items[k % len(items)]

    def lazy_step() -> None:
        embedding.weight.grad = cycle("lazy", sparse)
        lazy.step()

    def fused_step() -> None:
        fused_table.grad = cycle("fused", dense_grads)
        fused.step()

    def foreach_step() -> None:
        torch_table.grad = cycle("foreach", dense_grads)
        foreach.step()

    def format_steps(state_format: str) -> dict[str, Callable[[], None]]:
        table, opt, dense_table, dense = formats[state_format]

        def lazy_format_step() -> None:
            table.weight.grad = cycle(f"lazy {state_format}", sparse)
            opt.step()

        def dense_format_step() -> None:
            dense_table.grad = cycle(f"dense {state_format}", dense_grads)
            dense.step()

        return {
            f"adamax.torch lazy, {state_format} state (sparse gradient)": lazy_format_step,
            f"adamax.torch {state_format} state (dense gradient)": dense_format_step,
        }

    def model(sparse_table: bool):
        torch.manual_seed(1)
        table = torch.nn.Embedding(rows, dim, sparse=sparse_table)
        with torch.no_grad():
            table.weight.copy_(start)
        head = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        opt = Adamax([*table.parameters(), *head.parameters()], lr=1e-3, fused=None if sparse_table else True)
        if sparse_table:
            lazy_embeddings(table, opt)
        return table, head, opt

    lazy_model, dense_model = model(True), model(False)
    indices = [torch.from_numpy(r) for r in touched]
    targets = [torch.randn(len(r), 1) for r in touched]

    def train_step(parts, name: str) -> Callable[[], None]:
        table, head, opt = parts

        def run() -> None:
            k = counter[name] % len(indices)
            counter[name] += 1
            opt.zero_grad()
            torch.nn.functional.mse_loss(head(table(indices[k])), targets[k]).backward()
            opt.step()

        return run

    methods = {
        "adamax.torch lazy (sparse gradient)": lazy_step,
        "adamax.torch fused (dense gradient)": fused_step,
        "torch.optim.Adamax foreach (dense gradient)": foreach_step,
        **format_steps("compact"),
        **format_steps("compact8"),
        "training step, lazy": train_step(lazy_model, "train lazy"),
        "training step, dense (fused)": train_step(dense_model, "train dense"),
    }
    for step in methods.values():  # compile kernels, create state
        step()
    lazy.flush()
    state_bytes = {"full": _state_bytes(lazy, embedding.weight)}
    for state_format, (table, opt, _, _) in formats.items():
        opt.flush()
        state_bytes[state_format] = _state_bytes(opt, table.weight)
    return methods, int(np.mean([len(r) for r in touched])), state_bytes


def _state_bytes(opt, weight) -> float:
    """A lazy table's optimizer state per param, in bytes: its state tensors, and the bookkeeping of its rows (the
    step each was last brought up to date at, int64)."""
    entry = opt.state[weight]
    tensors = sum(value.nbytes for key, value in entry.items() if key != "step")
    return (tensors + opt._lazy.tables[weight].last.nbytes) / weight.numel()


def run(
    rows: int,
    dim: int,
    fraction: float,
    repeats: int,
    advance: Callable[[], None],
    work: Callable[[], None] = lambda: None,
) -> dict:
    """Every method, interleaved round by round, each timed step after ``work()`` (other torch work, as in
    training: :mod:`adamax.cli._work`); medians, ratios and the bandwidth figures."""
    methods, touched, state_bytes = steppers(rows, dim, fraction)
    limit = _bandwidth_stepper(rows * dim)
    times: dict[str, list[float]] = {name: [] for name in [*methods, "bandwidth limit"]}
    for _ in range(repeats):
        for name, step in [*methods.items(), ("bandwidth limit", limit)]:
            time.sleep(SETTLE_SECONDS)
            step()  # untimed: the step before, as in a training loop (code warm; other rows)
            work()  # then the forward and backward passes' stand-in, as before every timed step of every method
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
        advance()
    medians = {name: float(np.median(ts)) for name, ts in times.items()}
    bandwidth = LIMIT_BYTES_PER_ELEMENT * rows * dim / medians.pop("bandwidth limit")
    lazy = medians["adamax.torch lazy (sparse gradient)"]
    return {
        "rows": rows,
        "dim": dim,
        "fraction": fraction,
        "touched_rows": touched,
        "dram_GBps": bandwidth / 1e9,
        "lazy_touched_GBps": 28 * touched * dim / lazy / 1e9,
        "x_lazy_over_fused": medians["adamax.torch fused (dense gradient)"] / lazy,
        "x_lazy_over_foreach": medians["torch.optim.Adamax foreach (dense gradient)"] / lazy,
        "x_training_step": medians["training step, dense (fused)"] / medians["training step, lazy"],
        **{
            f"x_lazy_over_dense_{state_format}": medians[f"adamax.torch {state_format} state (dense gradient)"]
            / medians[f"adamax.torch lazy, {state_format} state (sparse gradient)"]
            for state_format in ("compact", "compact8")
        },
        "state_bytes_per_param": state_bytes,
        "results": [
            {"method": name, "median_ms": medians[name] * 1e3, "times_ms": [t * 1e3 for t in times[name]]}
            for name in methods
        ],
    }


def report(result: dict, table: Callable) -> None:
    table(
        f"{result['rows']:,} x {result['dim']} float32 table, {result['fraction']:.0%} of rows per step "
        f"({result['touched_rows']:,} distinct rows)",
        ["method", "median ms"],
        [[r["method"], f"{r['median_ms']:.2f}"] for r in result["results"]],
    )
    print(
        f"lazy step: {result['x_lazy_over_fused']:.1f}x faster than the fused dense step, "
        f"{result['x_lazy_over_foreach']:.1f}x faster than torch's foreach step; "
        f"training step {result['x_training_step']:.1f}x faster than dense"
    )
    for state_format in ("compact", "compact8"):
        if f"x_lazy_over_dense_{state_format}" in result:
            print(f"lazy {state_format} step: {result[f'x_lazy_over_dense_{state_format}']:.1f}x faster than the dense "
                  f"{state_format} step")  # fmt: skip
    if "state_bytes_per_param" in result:
        print("state bytes per param of the lazy table (with its rows' bookkeeping): " + ", ".join(
            f"{name} {value:.3f}" for name, value in result["state_bytes_per_param"].items()))  # fmt: skip
    print(
        f"lazy step moves its touched bytes at {result['lazy_touched_GBps']:.1f} GB/s; "
        f"DRAM bandwidth in this run {result['dram_GBps']:.1f} GB/s (random rows are latency-bound)"
    )
