"""The optimizers inside the trainers people use: Hugging Face ``transformers.Trainer``, Lightning and accelerate.

Each test trains a tiny model built here (no downloads, seconds), saves a checkpoint part way, resumes from it
in a new trainer, and requires the resumed run to end with exactly the params of the run that was not
interrupted.  A trainer that loses or mangles the optimizer's state on the way (a state dict it cannot load
with ``weights_only=True``, a step count reset, compact state densified) fails here.
"""

from __future__ import annotations

import copy

import pytest
import torch

from adamax.torch import Adamax, AdamaxW, lazy_embeddings

STATE_FORMATS = ["full", "compact"]


def _inputs(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    return x, (x @ torch.linspace(-1, 1, 8) + 0.1 * torch.randn(n, generator=gen)).unsqueeze(-1)


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))


def _assert_same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name].detach(), pb[name].detach()), name


# ----- Hugging Face transformers.Trainer -----


class _Regression(torch.nn.Module):
    """What ``transformers.Trainer`` trains: ``forward(**batch)`` returning the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class _Rows(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x, self.y = _inputs()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def _hf_trainer(tmp_path, state_format: str, steps: int):
    transformers = pytest.importorskip("transformers")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=8,
        save_strategy="steps",
        save_steps=4,
        lr_scheduler_type="constant",
        weight_decay=0.01,  # Trainer's decay/no-decay groups: LayerNorm and biases get none
        report_to="none",
        use_cpu=True,
        seed=0,
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    kwargs = {"lr": 1e-2, "state_format": state_format}
    return transformers.Trainer(
        model=_Regression(), args=args, train_dataset=_Rows(), optimizer_cls_and_kwargs=(AdamaxW, kwargs)
    )


@pytest.mark.parametrize("state_format", STATE_FORMATS)
def test_hugging_face_trainer_resumed_from_a_checkpoint_ends_where_an_uninterrupted_run_does(tmp_path, state_format):
    whole = _hf_trainer(tmp_path, state_format, steps=8)
    whole.train()
    assert isinstance(whole.optimizer.optimizer if hasattr(whole.optimizer, "optimizer") else whole.optimizer, AdamaxW)
    groups = whole.optimizer.param_groups
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.01]  # Trainer's two groups reached the optimizer
    checkpoint = tmp_path / "run" / "checkpoint-4"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)  # as Trainer loads it, nothing registered
    assert all(int(entry["step"]) == 4 for entry in saved["state"].values())
    if state_format == "compact":
        assert all(entry["exp_avg"].dtype == torch.bfloat16 for entry in saved["state"].values())
    resumed = _hf_trainer(tmp_path, state_format, steps=8)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    _assert_same_params(whole.model, resumed.model)
    moved = _hf_trainer(tmp_path, state_format, steps=8).model
    with pytest.raises(AssertionError):
        _assert_same_params(whole.model, moved)  # the comparison can fail: an untrained model differs


# ----- Lightning -----


def _lightning_module(state_format: str, lazy: bool):
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embedding = torch.nn.Embedding(16, 8, sparse=lazy) if lazy else None
            self.net = _net()
            self.steps_seen = 0

        def training_step(self, batch, batch_idx):
            x, y = batch
            if self.embedding is not None:
                x = x + self.embedding((x[:, 0].abs() * 7).long() % 16)
            self.steps_seen += 1
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = Adamax(self.parameters(), lr=1e-2, state_format=state_format)
            if self.embedding is not None:
                lazy_embeddings(self, opt)
            return opt

    return Module()


def _lightning_fit(tmp_path, module, epochs: int, ckpt_path=None):
    lightning = pytest.importorskip("lightning")
    x, y = _inputs()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[lightning.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1)],
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize(("state_format", "lazy"), [("full", False), ("compact", False), ("full", True),
                                                    ("compact", True)])  # fmt: skip
def test_lightning_resumed_from_an_epochs_checkpoint_ends_where_an_uninterrupted_run_does(tmp_path, state_format, lazy):
    """Lightning steps through ``optimizer.step(closure)`` (training_step, zero_grad and backward inside the
    closure) and checkpoints the optimizer's ``state_dict``; resumed at an epoch boundary (mid-epoch the data
    order restarts, for any optimizer)."""
    whole = _lightning_module(state_format, lazy)
    trainer = _lightning_fit(tmp_path / "a", whole, epochs=4)
    assert whole.steps_seen == 16 and trainer.global_step == 16
    checkpoints = sorted((tmp_path / "a" / "ckpt").glob("epoch=1-*.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], weights_only=False)["optimizer_states"][0]["state"]
    assert all(int(entry["step"]) == 8 for entry in state.values() if "step" in entry)
    resumed = _lightning_module(state_format, lazy)
    _lightning_fit(tmp_path / "b", resumed, epochs=4, ckpt_path=str(checkpoints[0]))
    assert resumed.steps_seen == 8
    _assert_same_params(whole, resumed)


# ----- accelerate -----


def _accelerate_run(tmp_path, state_format: str, save_at: int | None = None, load: bool = False):
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model = _net()
    opt = AdamaxW(model.parameters(), lr=1e-2, weight_decay=0.01, state_format=state_format)
    x, y = _inputs()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    if load:
        accelerator.load_state(str(tmp_path / "state"))
        loader = accelerator.skip_first_batches(loader, 4)
    for step, (xb, yb) in enumerate(loader):
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if save_at is not None and step + 1 == save_at:
            accelerator.save_state(str(tmp_path / "state"))
    return model, opt


@pytest.mark.parametrize("state_format", STATE_FORMATS)
def test_accelerate_save_state_and_load_state_resume_exactly(tmp_path, state_format):
    whole, opt = _accelerate_run(tmp_path, state_format, save_at=4)
    assert all(int(s["step"]) == 8 for s in opt.state_dict()["state"].values())
    resumed, _ = _accelerate_run(tmp_path, state_format, load=True)
    _assert_same_params(whole, resumed)


@pytest.mark.parametrize("state_format", STATE_FORMATS)
def test_a_step_that_accelerates_grad_scaler_skips_leaves_the_optimizer_as_it_was(state_format):
    """An fp16 run's GradScaler skips a step whose gradients overflowed; accelerate reports it through
    ``step_was_skipped``.  The optimizer's params and state must be exactly as before."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.optimizer import AcceleratedOptimizer

    accelerate.Accelerator(cpu=True)  # the library's state, which its optimizer wrapper reads
    model = _net()
    opt = Adamax(model.parameters(), lr=1e-2, state_format=state_format)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    wrapped = AcceleratedOptimizer(opt, device_placement=False, scaler=scaler)
    x, y = _inputs()
    for overflow in (False, True, False):
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        if overflow:
            next(model.parameters()).grad[0, 0] = float("inf")
        before = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        wrapped.step()  # the scaler's step and update, as accelerate runs them under fp16
        assert wrapped.step_was_skipped is overflow
        params_same = all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())
        assert params_same is overflow
        if overflow:
            after = opt.state_dict()["state"]
            for key, entry in before[1]["state"].items():
                assert all(torch.equal(after[key][name], value) for name, value in entry.items())
        wrapped.zero_grad(set_to_none=True)
    assert scaler.get_scale() == 2.0**7  # halved once, by the skipped step


# ----- checkpoints as trainers load them -----


@pytest.mark.parametrize("state_format", ["full", "compact", "compact8"])
@pytest.mark.parametrize("lazy", [False, True])
def test_every_state_formats_state_dict_loads_with_weights_only_and_resumes_exactly(tmp_path, state_format, lazy):
    """Trainers load optimizer checkpoints with ``torch.load(weights_only=True)``: every state format, dense or
    lazy rows, is plain tensors and numbers (this project registers no classes), and the loaded state resumes
    the run exactly."""

    def build():
        torch.manual_seed(0)
        model = torch.nn.ModuleDict({"embedding": torch.nn.Embedding(40, 8, sparse=lazy), "net": _net()})
        opt = Adamax(model.parameters(), lr=1e-2, state_format=state_format)
        if lazy:
            lazy_embeddings(model, opt)
        return model, opt

    def step(model, opt, k):
        rows = torch.arange(k % 5, 40, 5)
        loss = model["net"](model["embedding"](rows)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    model, opt = build()
    for k in range(3):
        step(model, opt, k)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    twin, twin_opt = build()
    twin.load_state_dict(loaded["model"])
    twin_opt.load_state_dict(loaded["opt"])
    for k in range(3, 6):
        step(model, opt, k)
        step(twin, twin_opt, k)
    _assert_same_params(model, twin)


@pytest.mark.parametrize(
    ("script", "needs"),
    [("hf_trainer.py", "transformers"), ("lightning_trainer.py", "lightning"), ("accelerate_loop.py", "accelerate")],
)
def test_each_trainers_example_runs_and_resumes_exactly(script, needs):
    """The README links these: each trains, saves, resumes and checks the resumed params itself (exit 1 if not)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip(needs)
    path = Path(__file__).resolve().parents[1] / "examples" / script
    args = {"hf_trainer.py": ["--steps", "8"], "lightning_trainer.py": ["--epochs", "2"]}.get(script, [])
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the params equal the uninterrupted run's" in done.stdout
