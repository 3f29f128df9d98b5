"""The ``adamax`` console script.

``adamax demo`` runs the seed's Adamax on its line-fitting problem, prints
the fit beside the least-squares optimum, and plots the loss and the line.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adamax import _console, textbook


class CommandError(Exception):
    """A problem to report in one line, without a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(lowest: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lowest - 1
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
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
    fig.suptitle("The seed's Adamax on linear regression")
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
    missing = [m for m in ("torch", "numba") if importlib.util.find_spec(m) is None]
    if missing:
        raise CommandError(f"adamax bench needs {' and '.join(missing)}: pip install 'adamax[torch,fast,jax,plot]'")
    if args.out is not None:
        _pyplot()
    from adamax import bench as benchmark

    benchmark.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="adamax", description="The Adamax optimizer: demonstrate, compare, benchmark.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    p = verbs.add_parser("demo", help="the seed's Adamax fitting a line, with a plot")
    p.add_argument(
        "--iterations", type=_int_at_least(1, "positive"), default=1000, help="Adamax iterations (default 1000)"
    )
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate (default 1e-2)")
    p.add_argument("--seed", type=_int_at_least(0, "non-negative"), default=0, help="seed for the data (default 0)")
    p.add_argument("--out", type=_png_path, default=Path("adamax-demo.png"), help="PNG to write")
    p.add_argument("--no-plot", action="store_true", help="print the fit only")
    p.set_defaults(run=demo)

    p = verbs.add_parser("bench", help="step time of every implementation against the bandwidth limit")
    p.add_argument(
        "--sizes", type=_sizes, default=_sizes("1M,10M,50M"), help="single-tensor sizes (default 1M,10M,50M)"
    )
    p.add_argument("--no-model", dest="model", action="store_false", help="skip the ~200-tensor model-like case")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the step (slow to compile)")
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) NumPy reference")
    p.add_argument("--no-startup", dest="startup", action="store_false", help="skip the start-up timings")
    p.add_argument("--repeats", type=_int_at_least(3, "an integer >= 3, a"), default=15, help="rounds (default 15)")
    p.add_argument(
        "--threads", type=_int_at_least(1, "positive"), default=None, help="torch threads (default: torch's)"
    )
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--out", type=_png_path, default=Path("adamax-bench.png"), help="bar chart PNG")
    p.add_argument("--no-plot", dest="out", action="store_const", const=None, help="no chart")
    p.set_defaults(run=bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CommandError as err:
        print(f"adamax {args.verb}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
