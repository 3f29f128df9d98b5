"""adamax.torch.AdamaxW in a training loop run by Hugging Face accelerate, saved and resumed.

``Accelerator.prepare`` wraps the optimizer (round-tripping its ``state_dict``); ``save_state`` and
``load_state`` checkpoint it; under fp16 on a GPU its GradScaler skips overflowed steps, which leave this
optimizer exactly as it was.

    python examples/accelerate_loop.py --state-format compact
"""

from __future__ import annotations

import argparse
import tempfile

import accelerate
import torch

from adamax.torch import AdamaxW


def run(state_dir: str, state_format: str, save_at: int | None = None, load: bool = False) -> torch.nn.Module:
    accelerator = accelerate.Accelerator()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = AdamaxW(model.parameters(), lr=1e-2, weight_decay=0.01, state_format=state_format)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    if load:
        accelerator.load_state(state_dir)
        loader = accelerator.skip_first_batches(loader, save_at)
    for step, (xb, yb) in enumerate(loader):
        accelerator.backward(torch.nn.functional.mse_loss(model(xb), yb))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not load and save_at is not None and step + 1 == save_at:
            accelerator.save_state(state_dir)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-format", default="compact", choices=["full", "compact", "compact8"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as state_dir:
        whole = run(state_dir, args.state_format, save_at=8)
        resumed = run(state_dir, args.state_format, save_at=8, load=True)
        same = all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
    print(f"{args.state_format} state: resumed from step 8 of 16, the params "
          f"{'equal' if same else 'DIFFER FROM'} the uninterrupted run's")  # fmt: skip
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
