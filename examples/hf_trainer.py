"""adamax.torch.AdamaxW inside Hugging Face ``transformers.Trainer``, with compact state, saved and resumed.

Trainer takes a third-party optimizer through ``optimizer_cls_and_kwargs`` (it builds its decay and no-decay
param groups and passes them in; it is also the route Trainer allows under FSDP, which refuses
``optimizers=(opt, sched)``) and checkpoints its ``state_dict`` with ``torch.save``, loading it back with
``torch.load(weights_only=True)``.

    python examples/hf_trainer.py --steps 40 --state-format compact
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

from adamax.torch import AdamaxW


class Regression(torch.nn.Module):
    """Any ``torch.nn.Module`` whose ``forward(**batch)`` returns the loss will do; no download needed."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.LayerNorm(32),
                                       torch.nn.Linear(32, 1))  # fmt: skip

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 512) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=gen)
        self.y = (self.x @ torch.linspace(-1, 1, 8)).unsqueeze(-1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def trainer(out: str, steps: int, state_format: str) -> transformers.Trainer:
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=16, save_strategy="steps",
        save_steps=max(1, steps // 2), lr_scheduler_type="constant", weight_decay=0.01, report_to="none",
        use_cpu=True, seed=0, logging_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    optimizer = (AdamaxW, {"lr": 1e-2, "state_format": state_format})
    return transformers.Trainer(model=Regression(), args=args, train_dataset=Rows(), optimizer_cls_and_kwargs=optimizer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--state-format", default="compact", choices=["full", "compact", "compact8"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        whole = trainer(out, args.steps, args.state_format)
        result = whole.train()
        half = f"{out}/checkpoint-{max(1, args.steps // 2)}"
        resumed = trainer(out, args.steps, args.state_format)
        resumed.train(resume_from_checkpoint=half)
        same = all(torch.equal(a, b) for a, b in zip(whole.model.parameters(), resumed.model.parameters()))
    verdict = "equal" if same else "DIFFER FROM"
    print(f"{args.state_format} state: final training loss {result.training_loss:.4f}; resumed from step "
          f"{max(1, args.steps // 2)}, the params {verdict} the uninterrupted run's")  # fmt: skip
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
