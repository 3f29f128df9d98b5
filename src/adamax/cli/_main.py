"""The ``adamax`` console script.

``adamax demo`` runs the textbook's Adamax on its line-fitting problem, prints
the fit beside the least-squares optimum, and plots the loss and the line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adamax import _extras, textbook
from adamax.cli import _console


class CommandError(Exception):
    """A problem to report in one line, without a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(lowest: int):
    what = {0: "a non-negative integer", 1: "a positive integer"}.get(lowest, f"an integer >= {lowest}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lowest - 1
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _float_in(low: float, high: float, *, closed_low: bool, closed_high: bool, what: str):
    """A parser for a number in an interval (the ends included or not), named ``what`` in its message."""
    interval = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = value >= low if closed_low else value > low
        below = value <= high if closed_high else value < high
        if not (above and below):
            raise argparse.ArgumentTypeError(f"expected {what} in {interval}, got {text!r}")
        return value

    return parse


# beta, as the library validates it: 0 <= beta < 1
_decay_rate = _float_in(0, 1, closed_low=True, closed_high=False, what="a decay rate")
_fraction = _float_in(0, 1, closed_low=False, closed_high=True, what="a fraction")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _png_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"expected a path ending in .png, got {text!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} does not exist")
    return path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise CommandError("matplotlib is not installed: pip install 'adamax[plot]', or pass --no-plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def demo(args: argparse.Namespace) -> None:
    plt = None if args.no_plot else _pyplot()  # fail before the work, not after
    data = textbook.make_data(500, seed=args.seed)
    optimum = textbook.least_squares(data)
    with _console.progress(args.iterations, "Adamax (textbook)") as advance:
        run = textbook.trace(
            data, np.zeros(2), lr=args.lr, num_iterations=args.iterations, on_step=lambda t, theta: advance()
        )
    final_loss, best_loss = run.losses[-1], textbook.loss_function(data, optimum)
    _console.table(
        f"Line fit on {len(data)} points, {args.iterations} iterations, lr={args.lr}",
        ["", "Adamax", "least squares", "|difference|"],
        [
            ["slope m", f"{run.theta[0]:.6f}", f"{optimum[0]:.6f}", f"{abs(run.theta[0] - optimum[0]):.2e}"],
            ["intercept b", f"{run.theta[1]:.6f}", f"{optimum[1]:.6f}", f"{abs(run.theta[1] - optimum[1]):.2e}"],
            ["MSE loss", f"{final_loss:.6f}", f"{best_loss:.6f}", f"{abs(final_loss - best_loss):.2e}"],
        ],
    )
    if plt is None:
        return
    fig, (ax_fit, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    x = np.linspace(data[:, 0].min(), data[:, 0].max(), 2)
    ax_fit.scatter(data[:, 0], data[:, 1], s=6, alpha=0.4, color="gray", label="data")
    ax_fit.plot(x, optimum[0] * x + optimum[1], color="black", lw=3, alpha=0.5, label="least squares")
    ax_fit.plot(x, run.theta[0] * x + run.theta[1], color="C3", ls="--", label="Adamax")
    ax_fit.set(xlabel="x", ylabel="y", title="Fitted line")
    ax_fit.legend()
    excess = np.maximum(run.losses - best_loss, np.finfo(float).tiny)
    ax_loss.semilogy(np.arange(len(excess)), excess, color="C3")
    ax_loss.set(xlabel="iteration", ylabel="loss - least-squares loss", title="Convergence")
    ax_loss.grid(True, which="both", alpha=0.3)
    fig.suptitle("The textbook's Adamax on linear regression")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")


def _sizes(text: str) -> list[int]:
    units = {"k": 10**3, "m": 10**6}
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        scale = units.get(item[-1:], 1)
        digits = item[:-1] if item[-1:] in units else item
        try:
            value = float(digits) * scale
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected sizes like 1M,10M,50M; got {text!r}") from None
        if not (value >= 1 and value == int(value)):
            raise argparse.ArgumentTypeError(f"expected positive whole sizes; got {item!r}")
        sizes.append(int(value))
    return sizes


def bench(args: argparse.Namespace) -> None:
    if args.from_json is None:
        _need("torch", "numba", extra="torch,fast,jax,plot")
    if args.out is not None:
        _pyplot()
    from adamax.cli import bench as benchmark

    benchmark.main(args)


def _need(*modules: str, extra: str) -> None:
    try:
        _extras.require(*modules, extra=extra, what="this verb")
    except ModuleNotFoundError as err:
        raise CommandError(str(err)) from None


def freeze(args: argparse.Namespace) -> None:
    from adamax import compact, compact8
    from adamax.cli.freeze import freeze_demo

    shown = freeze_demo(steps=args.steps, spike=args.spike, grad=args.grad)
    marks = sorted({1, 2, 10, 100, 1000, args.steps} & set(range(1, args.steps + 1)))
    _console.table(
        f"u after one gradient of {args.spike:g}, then {args.grad:g} for {args.steps - 1} steps (beta2 = 0.999)",
        ["step", "float32 state", "compact state", "compact8 state", "bfloat16 state"],
        [[str(t)] + [f"{shown[key][t - 1]:.6g}" for key in ("float32", "compact", "compact8", "bfloat16")]
         for t in marks],
    )  # fmt: skip
    for name, ratio in (("compact", compact.RATIO), ("compact8", compact8.RATIO)):
        drift = float(np.max(np.abs(shown[name] / shown["float32"] - 1)))
        print(f"{name} state within {drift:.2e} of float32 state at every step (one code: at most {ratio - 1:.1e})")
    print(f"bfloat16 state stuck at {shown['bfloat16'][-1]:g}")
    if args.no_plot:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, style in (("float32", "-"), ("compact", "--"), ("compact8", ":"), ("bfloat16", "-")):
        ax.semilogy(shown["step"], shown[key], style, lw=2, label=f"{key} state")
    ax.set(xlabel="step", ylabel="u (infinity norm)", title="One spike: bfloat16 state never forgets it")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")


def lp(args: argparse.Namespace) -> None:
    from adamax.cli import lp as lp_adam

    plt = None if args.no_plot else _pyplot()
    rows = []
    with _console.progress(len(lp_adam.POWERS), "Lp-Adam, p = 1 .. 8192") as advance:
        for p in lp_adam.POWERS:
            rows.extend(lp_adam.convergence_table(powers=[p], beta2=args.beta2))
            advance()
    _console.table(
        f"Lp-Adam against Adamax on the documented gradient sequence (beta2={args.beta2})",
        ["p", "max |v^(1/p) - u| / u", "max step difference / max step", "(1 - b2^p)^(1/p)"],
        [[str(r.p), f"{r.norm_distance:.3e}", f"{r.step_distance:.3e}", f"{r.factor:.6f}"] for r in rows],
    )
    if plt is None:
        return
    methods = {
        "SGD": ("sgd", 1.5e-3, 2),
        "Adam (p = 2)": ("adam", args.lr, 2),
        f"Lp-Adam (p = {args.p})": ("lp-adam", args.lr, args.p),
        "Adamax (p = inf)": ("adamax", args.lr, 2),
    }
    with _console.progress(len(methods), "trajectories on Rosenbrock") as advance:
        paths = {}
        for label, (method, rate, p) in methods.items():
            paths[label] = lp_adam.trajectory(method, (-1.5, 2.0), args.iterations, rate, p)
            advance()
    fig, (ax_dist, ax_path) = plt.subplots(1, 2, figsize=(12, 5))
    powers = [r.p for r in rows]
    ax_dist.loglog(
        powers, [r.norm_distance for r in rows], "o-", mfc="none", ms=8, lw=3, alpha=0.5, label="max |v^(1/p) - u| / u"
    )
    ax_dist.loglog(powers, [r.step_distance for r in rows], "s--", label="steps: max difference / max step")
    # drawn last and on top: where the distance is all factor, it runs along the first curve
    ax_dist.loglog(
        powers, [1 - r.factor for r in rows], ":", color="black", lw=2, zorder=5, label="1 - (1 - b2^p)^(1/p)"
    )
    ax_dist.set(xlabel="p", ylabel="relative distance to Adamax", title="Lp-Adam converges to Adamax as p grows")
    ax_dist.grid(True, which="both", alpha=0.3)
    ax_dist.legend()
    x, y = np.meshgrid(np.linspace(-2, 2, 300), np.linspace(-1, 3, 300))
    ax_path.contour(x, y, np.log1p(lp_adam.rosenbrock(np.stack([x, y]))), levels=30, cmap="Greys", linewidths=0.6)
    for label, path in paths.items():
        ax_path.plot(path[:, 0], path[:, 1], lw=1.5, label=f"{label}: ends at ({path[-1, 0]:.3f}, {path[-1, 1]:.3f})")
    ax_path.plot([1], [1], "k*", ms=12)
    ax_path.set(xlabel="x", ylabel="y", title=f"Rosenbrock from (-1.5, 2), {args.iterations} iterations")
    ax_path.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")


def compare(args: argparse.Namespace) -> None:
    _need("torch", "sklearn", extra="torch,data")
    if not args.no_plot:
        _pyplot()  # refuse now, not after training, if matplotlib is missing
    from adamax.cli import compare as comparison

    with _console.progress(args.epochs * len(comparison.optimizers()), "training") as advance:
        runs = comparison.train_all(args.epochs, args.seed, advance)
    _console.table(
        f"MLP on scikit-learn's digits, {args.epochs} epochs, seed {args.seed}",
        ["optimizer", "train acc", "test acc", "train loss", "test loss", "s / epoch"],
        [
            [
                r.name,
                f"{r.train_acc[-1]:.4f}",
                f"{r.test_acc[-1]:.4f}",
                f"{r.train_loss[-1]:.6f}",
                f"{r.test_loss[-1]:.6f}",
                f"{r.seconds_per_epoch:.3f}",
            ]
            for r in runs
        ],
    )
    ours, torchs = runs[0], runs[1]
    same = ours.train_loss == torchs.train_loss and ours.test_acc == torchs.test_acc
    print(f"adamax.torch.Adamax and torch.optim.Adamax curves identical, number for number: {'yes' if same else 'NO'}")
    for run in runs:
        if run.name.endswith(" state"):
            change = 100 * (run.train_loss[-1] / ours.train_loss[-1] - 1)
            print(f"{run.name}: final train loss {change:+.2f}% against float32 state")
    if not args.no_plot:
        comparison.plot(runs, str(args.out))
        print(f"wrote {args.out}")
    if not same:
        raise CommandError("adamax.torch.Adamax departed from torch.optim.Adamax")


def check(args: argparse.Namespace) -> None:
    from adamax.cli import check as conformance

    plt = None if args.no_plot else _pyplot()
    known = [impl.name for impl in conformance.IMPLEMENTATIONS]
    unknown = [name for name in args.backends or [] if name not in known]
    if unknown:
        raise CommandError(f"unknown backend {unknown[0]!r}; the backends are {', '.join(known)}")
    chosen = [impl for impl in conformance.IMPLEMENTATIONS if not args.backends or impl.name in args.backends]
    total = sum(
        conformance.runs(impl, config, dtype)
        for impl in chosen
        for config in conformance.CONFIGS.values()
        for dtype in conformance.ALL_DTYPES
    )
    with _console.progress(total, "checks (backend x convention x dtype)") as advance:
        verdicts = conformance.check_all(advance, chosen)
    rows = []
    for v in verdicts:
        if v.status in ("absent", "n/a") and not args.all:
            continue
        shown = "-" if v.max_ulps is None else f"{v.max_ulps:.0f}"
        rows.append([v.backend, v.convention, v.dtype, shown, v.status, v.note[:60]])
    _console.table(
        "Every backend against adamax.reference, 4 steps on random problems",
        ["backend", "convention", "dtype", "max ulps", "result", "note"],
        rows,
    )
    absent = sorted({v.backend for v in verdicts if v.status == "absent"})
    if absent:
        print(f"absent (not installed): {', '.join(absent)}")
    failed = [v for v in verdicts if v.status == "FAIL"]
    passed = sum(v.status == "pass" for v in verdicts)
    if plt is not None:
        conformance.plot(verdicts, str(args.out))
        print(f"wrote {args.out}")
    print(f"{passed} passed, {len(failed)} failed")
    if failed:
        raise CommandError(
            f"{len(failed)} checks failed, first: {failed[0].backend} {failed[0].convention} {failed[0].dtype}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="adamax", description="The Adamax optimizer: demonstrate, compare, benchmark.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser, metavar="VERB")
    p = verbs.add_parser("demo", help="the textbook's Adamax fitting a line, with a plot")
    p.add_argument("--iterations", type=_int_at_least(1), default=1000, help="Adamax iterations (default 1000)")
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate (default 1e-2)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed for the data (default 0)")
    p.add_argument("--out", type=_png_path, default=Path("adamax-demo.png"), help="PNG to write (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="print the fit only")
    p.set_defaults(run=demo)

    p = verbs.add_parser("bench", help="step time of every implementation against the bandwidth limit")
    p.add_argument(
        "--sizes", type=_sizes, default=_sizes("1M,10M,50M"), help="single-tensor sizes (default 1M,10M,50M)"
    )
    p.add_argument("--no-model", dest="model", action="store_false", help="skip the ~200-tensor model-like case")
    p.add_argument("--no-small", dest="small", action="store_false", help="skip the 1,000-small-tensors case")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the step (slow to compile)")
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) NumPy reference")
    p.add_argument("--no-startup", dest="startup", action="store_false", help="skip the start-up timings")
    p.add_argument("--repeats", type=_int_at_least(3), default=15, help="rounds (default 15)")
    p.add_argument("--threads", type=_int_at_least(1), default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--work-ms",
        type=_non_negative_float,
        default=10.0,
        help="milliseconds of torch matmuls before every timed step, as a training loop's forward and backward "
        "(default %(default)s; 0: steps back to back)",
    )
    p.add_argument(
        "--sparse", action="store_true", help="lazy steps of an embedding table (1M x 64, 1%% of rows a step) instead"
    )
    p.add_argument("--sparse-rows", type=_int_at_least(1), default=1_000_000, help=argparse.SUPPRESS)
    p.add_argument("--sparse-fraction", type=_fraction, default=0.01, help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--from-json", metavar="PATH", help="measure nothing: report and plot an earlier --json file")
    p.add_argument("--out", type=_png_path, default=Path("adamax-bench.png"), help="chart PNG (default %(default)s)")
    p.add_argument("--no-plot", dest="out", action="store_const", const=None, help="no chart")
    p.set_defaults(run=bench)

    p = verbs.add_parser("lp", help="the Lp-norm derivation in numbers: Lp-Adam converging to Adamax")
    p.add_argument("--beta2", type=_decay_rate, default=0.999, help="decay rate, in [0, 1) (default 0.999)")
    p.add_argument("--p", type=_int_at_least(1), default=64, help="the large p to draw (default 64)")
    p.add_argument("--iterations", type=_int_at_least(1), default=3000, help="trajectory length")
    p.add_argument("--lr", type=_positive_float, default=0.05, help="learning rate of the adaptive methods")
    p.add_argument("--out", type=_png_path, default=Path("adamax-lp.png"), help="PNG to write (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.set_defaults(run=lp)

    p = verbs.add_parser("compare", help="optimizers on scikit-learn's digits, same model and seed")
    p.add_argument("--epochs", type=_int_at_least(1), default=20, help="epochs (default 20)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed (default 0)")
    p.add_argument(
        "--out", type=_png_path, default=Path("adamax-compare.png"), help="PNG to write (default %(default)s)"
    )
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.set_defaults(run=compare)

    p = verbs.add_parser("freeze", help="one spike gradient: u in float32, compact, compact8 and bfloat16 state")
    p.add_argument("--steps", type=_int_at_least(2), default=3000, help="steps (default 3000)")
    positive = _float_in(0, 1e30, closed_low=False, closed_high=True, what="a gradient")
    p.add_argument("--spike", type=positive, default=100.0, help="the first gradient (default 100)")
    p.add_argument("--grad", type=positive, default=0.01, help="every later gradient (default 0.01)")
    p.add_argument(
        "--out", type=_png_path, default=Path("adamax-freeze.png"), help="PNG to write (default %(default)s)"
    )
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.set_defaults(run=freeze)

    p = verbs.add_parser("check", help="every installed backend against the reference, in ulps")
    p.add_argument("--all", action="store_true", help="also list absent backends and options not offered")
    p.add_argument("--backends", type=lambda text: text.split(","), help="only these (comma-separated) backends")
    p.add_argument("--out", type=_png_path, default=Path("adamax-check.png"), help="PNG to write (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.set_defaults(run=check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        args.run(args)
        sys.stdout.flush()
    except CommandError as err:
        print(f"adamax {args.verb}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader left (``adamax check | head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
