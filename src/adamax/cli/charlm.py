"""A character-level language model on text every machine has: the Python standard library's own source.

An LSTM over bytes (about 0.94M parameters at the default size), trained with
next-byte cross-entropy; :func:`train` runs one optimizer on it from a fixed
seed and batch order, so runs differ only by optimizer.  Used to compare
compact optimizer state with float32 state and with naive bfloat16 state
(``benchmarks/char_lm.py``, and a small version in the tests).
"""

from __future__ import annotations

import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def corpus(limit: int = 2_000_000) -> np.ndarray:
    """The bytes of the standard library's top-level ``.py`` files, in sorted order, up to ``limit``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return np.frombuffer(b"".join(chunks)[:limit], dtype=np.uint8)


def model(hidden: int = 256, layers: int = 2, embedding: int = 64):
    import torch

    class CharLSTM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(256, embedding)
            self.lstm = torch.nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
            self.head = torch.nn.Linear(hidden, 256)

        def forward(self, x):
            out, _ = self.lstm(self.embed(x))
            return self.head(out)

    return CharLSTM()


@dataclass
class LMRun:
    name: str
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    params: int = 0
    state_bytes: int = 0


def train(
    name: str,
    make: Callable,
    steps: int = 2000,
    batch: int = 32,
    length: int = 64,
    seed: int = 0,
    every: int = 100,
    size: dict | None = None,
    text: np.ndarray | None = None,
    advance: Callable[[], None] = lambda: None,
) -> LMRun:
    """Train :func:`model` (``size``: its keyword arguments) with ``make(params)`` for ``steps`` steps; the loss
    on a fixed held-out tenth every ``every`` steps (and the running training loss)."""
    import torch

    text = corpus() if text is None else text
    split = int(0.9 * len(text))
    train_text = torch.from_numpy(text[:split].astype(np.int64))
    val_text = torch.from_numpy(text[split:].astype(np.int64))
    torch.manual_seed(seed)
    net = model(**(size or {}))
    opt = make(net.parameters())
    rng = np.random.default_rng(seed)
    val_starts = np.random.default_rng(seed + 1).integers(0, len(val_text) - length - 1, 64)
    val_x = torch.stack([val_text[s : s + length] for s in val_starts])
    val_y = torch.stack([val_text[s + 1 : s + length + 1] for s in val_starts])
    run = LMRun(name, params=sum(p.numel() for p in net.parameters()))
    recent = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        starts = rng.integers(0, len(train_text) - length - 1, batch)
        x = torch.stack([train_text[s : s + length] for s in starts])
        y = torch.stack([train_text[s + 1 : s + length + 1] for s in starts])
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x).reshape(-1, 256), y.reshape(-1))
        loss.backward()
        opt.step()
        recent.append(loss.item())
        if step % every == 0 or step == steps:
            with torch.no_grad():
                val = torch.nn.functional.cross_entropy(net(val_x).reshape(-1, 256), val_y.reshape(-1)).item()
            run.steps.append(step)
            run.train_loss.append(float(np.mean(recent)))
            run.val_loss.append(val)
            recent = []
        advance()
    run.seconds = time.perf_counter() - start
    run.state_bytes = sum(
        t.nbytes for s in opt.state.values() for k, t in s.items() if k != "step" and hasattr(t, "nbytes")
    )
    return run
