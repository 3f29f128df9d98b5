"""adamax.torch.Adamax inside a Lightning ``Trainer``, with lazy rows for a sparse embedding, saved and resumed.

Lightning calls ``optimizer.step(closure)`` (training_step, zero_grad and backward run inside the closure) and
keeps the optimizer's ``state_dict`` in its checkpoints.  ``lazy_embeddings`` in ``configure_optimizers`` makes
the embedding's rows lazy: a step touches only the rows the batch looked up.

    python examples/lightning_trainer.py --epochs 4 --state-format compact
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lightning
import torch

from adamax.torch import Adamax, lazy_embeddings


class Model(lightning.LightningModule):
    def __init__(self, state_format: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.state_format = state_format
        self.embedding = torch.nn.Embedding(1000, 16, sparse=True)
        self.head = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        ids, y = batch
        return torch.nn.functional.mse_loss(self.head(self.embedding(ids)), y)

    def configure_optimizers(self):
        opt = Adamax(self.parameters(), lr=1e-2, state_format=self.state_format)
        lazy_embeddings(self, opt)
        return opt


def fit(root: str, state_format: str, epochs: int, ckpt_path: str | None = None) -> Model:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (512,), generator=gen)
    y = torch.sin(ids.float()).unsqueeze(-1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, y), batch_size=32)
    model = Model(state_format)
    every_epoch = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1)
    trainer = lightning.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                                callbacks=[every_epoch])  # fmt: skip
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--state-format", default="compact", choices=["full", "compact", "compact8"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        whole = fit(f"{root}/a", args.state_format, args.epochs)
        half = max(1, args.epochs // 2)
        (checkpoint,) = Path(f"{root}/a").glob(f"epoch={half - 1}-*.ckpt")
        resumed = fit(f"{root}/b", args.state_format, args.epochs, ckpt_path=str(checkpoint))
        same = all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
    print(f"{args.state_format} state, lazy embedding rows: resumed after epoch {half}, the params "
          f"{'equal' if same else 'DIFFER FROM'} the uninterrupted run's")  # fmt: skip
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
