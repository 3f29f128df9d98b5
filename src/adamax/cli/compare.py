"""``adamax compare``: the same small MLP, the same seed, on scikit-learn's bundled digits, per optimizer.

``load_digits`` ships inside scikit-learn (8x8 images, 10 classes, 1797 samples): nothing is downloaded.
Every run starts from the same weights and sees the same batches, so curves differ only by optimizer;
``adamax.torch.Adamax`` and ``torch.optim.Adamax`` must give the very same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Run:
    name: str
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    seconds_per_epoch: float = 0.0


def optimizers() -> dict[str, Callable]:
    import torch

    from adamax.torch import Adamax, AdamaxW

    return {
        "adamax.torch.Adamax": lambda ps: Adamax(ps, lr=2e-3),
        "torch.optim.Adamax": lambda ps: torch.optim.Adamax(ps, lr=2e-3),
        "torch.optim.Adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
        "SGD (momentum 0.9)": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        "adamax.torch.AdamaxW": lambda ps: AdamaxW(ps, lr=2e-3, weight_decay=1e-2),
        "adamax.torch.Adamax, compact state": lambda ps: Adamax(ps, lr=2e-3, state_format="compact"),
        "adamax.torch.Adamax, compact8 state": lambda ps: Adamax(ps, lr=2e-3, state_format="compact8"),
        "torch.optim.Adamax, bfloat16 state": lambda ps: Bfloat16State(ps, lr=2e-3),
    }


def _bfloat16_state_class():
    import torch

    class Bfloat16State(torch.optim.Adamax):
        """``torch.optim.Adamax`` whose state is stored in bfloat16 (rounded to nearest after every step), as it
        is for bfloat16 params: the naive way to halve optimizer memory.  ``u * 0.999`` rounds back to ``u``
        in bfloat16, so u never decays (:func:`adamax.compact.freeze_demo`)."""

        @torch.no_grad()
        def step(self, closure=None):
            loss = super().step(closure)
            for state in self.state.values():
                for key in ("exp_avg", "exp_inf"):
                    state[key].copy_(state[key].bfloat16())
            return loss

    return Bfloat16State


def Bfloat16State(params, **kwargs):  # noqa: N802 (a class, built when torch is imported)
    return _bfloat16_state_class()(params, **kwargs)


def digits(seed: int):
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.8 * len(x))
    train, test = order[:split], order[split:]
    as_tensors = lambda idx: (torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))  # noqa: E731
    return as_tensors(train), as_tensors(test)


def train_all(
    epochs: int,
    seed: int,
    advance: Callable[[], None] = lambda: None,
    batch_size: int = 64,
    only: Sequence[str] | None = None,
) -> list[Run]:
    """Train the model once per optimizer (those named in ``only``, or all of :func:`optimizers`)."""
    import torch

    (x_train, y_train), (x_test, y_test) = digits(seed)
    runs = []
    for name, make in optimizers().items():
        if only is not None and name not in only:
            continue
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        opt = make(model.parameters())
        run = Run(name)
        order_rng = np.random.default_rng(seed)
        epoch_seconds = []
        for _ in range(epochs):
            start = time.perf_counter()
            order = torch.from_numpy(order_rng.permutation(len(x_train)))
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
                opt.step()
            epoch_seconds.append(time.perf_counter() - start)
            with torch.no_grad():
                for x, y, losses, accs in (
                    (x_train, y_train, run.train_loss, run.train_acc),
                    (x_test, y_test, run.test_loss, run.test_acc),
                ):
                    logits = model(x)
                    losses.append(torch.nn.functional.cross_entropy(logits, y).item())
                    accs.append((logits.argmax(1) == y).float().mean().item())
            advance()
        run.seconds_per_epoch = float(np.median(epoch_seconds))  # the median leaves out one-time start-up
        runs.append(run)
    return runs


def plot(runs: list[Run], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, run in enumerate(runs):
        epochs = np.arange(1, len(run.train_loss) + 1)
        ours = run.name == "adamax.torch.Adamax"
        style = dict(
            color=f"C{i}",
            lw=3 if run.name == "torch.optim.Adamax" else 1.5,
            alpha=0.6 if i == 1 else 1.0,
            zorder=3 if ours else 2,
        )
        dashed = "--" if ours else "-"
        ax_loss.semilogy(epochs, run.train_loss, dashed, label=run.name, **style)
        ax_acc.plot(epochs, run.test_acc, dashed, label=run.name, **style)
    ax_loss.set(xlabel="epoch", ylabel="train loss (cross-entropy)", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy (held-out 20%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.legend(fontsize=8)
    fig.suptitle("The same MLP on scikit-learn's digits; adamax.torch.Adamax is drawn over torch.optim.Adamax")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
