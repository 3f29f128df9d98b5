"""adamax.distributed's checkpoints in one process: verified before anything is read, loaded whole or not at all,
never written over, and crash-safe at every point of a save.  (The 2-rank runs are in test_distributed.py.)"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import processes

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import torch.distributed.checkpoint as dcp  # noqa: E402

from adamax.distributed import (  # noqa: E402  # noqa: E402
    CheckpointError,
    _files,
    _load,
    _retention,
    _save,
    _verify,
    latest_checkpoint,
    latest_step,
    load_latest,
    save_checkpoint,
)
from tests import checkpoint_worker as worker  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def trained(steps: int = 3, seed: int = 0):
    model, opt = worker.make(seed)
    for step in range(steps):
        worker.train_step(model, opt, step)
    return model, opt


def snapshot(model, opt):
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return [p.detach().clone() for p in model.parameters()], state, groups, [p.grad for p in model.parameters()]


def assert_unchanged(model, opt, before):
    params, state, groups, grads = before
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert {id(p) for p in opt.state} == set(state)
    for p, entry in opt.state.items():
        assert entry.keys() == state[id(p)].keys()
        assert all(torch.equal(entry[k], state[id(p)][k]) for k in entry)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))


def assert_same(model_a, opt_a, model_b, opt_b):
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
        for key in ("step", "exp_avg", "exp_inf"):
            assert torch.equal(opt_a.state[a][key], opt_b.state[b][key]), key


def test_a_checkpoint_round_trips_and_resumes_exactly(tmp_path):
    model, opt = trained(3)
    path = save_checkpoint(tmp_path, 3, model, opt)
    assert path == latest_checkpoint(tmp_path) == tmp_path / "step-00000003" and latest_step(tmp_path) == 3
    assert sorted(p.name for p in path.iterdir()) == [".metadata", "__0_0.distcp", "manifest.json", "state.json"]
    fresh_model, fresh_opt = worker.make()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 3
    assert_same(model, opt, fresh_model, fresh_opt)
    assert fresh_opt.param_groups[0]["betas"] == (0.9, 0.999)  # a tuple again, from JSON
    for step in range(3, 6):
        worker.train_step(model, opt, step)
        worker.train_step(fresh_model, fresh_opt, step)
    assert_same(model, opt, fresh_model, fresh_opt)


def test_nothing_but_tensors_is_handed_to_dcp(tmp_path):
    """The structure and every non-tensor value are JSON; the only pickle is DCP's own index."""
    model, opt = trained(2)
    path = save_checkpoint(tmp_path, 2, model, opt)
    tree = json.loads((path / "state.json").read_text())["tree"]
    assert tree["optim"]["param_groups"][0]["lr"] == 0.01
    assert tree["optim"]["param_groups"][0]["betas"] == {"__tuple__": [0.9, 0.999]}
    metadata = _verify._VerifiedReader(path, ["__0_0.distcp"]).read_metadata()
    kinds = {type(m).__name__ for m in metadata.state_dict_metadata.values()}
    assert kinds == {"TensorStorageMetadata"}


def test_a_checkpoint_loads_into_an_optimizer_whose_params_already_have_gradients(tmp_path):
    """With gradients present, DCP does not create a fresh optimizer's state; the loader still restores it all."""
    model, opt = trained(3)
    save_checkpoint(tmp_path, 3, model, opt)
    fresh_model, fresh_opt = worker.make()
    fresh_model(torch.ones(2, 6)).sum().backward()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 3
    assert_same(model, opt, fresh_model, fresh_opt)


def test_loading_from_an_empty_directory_returns_none(tmp_path):
    model, opt = worker.make()
    before = snapshot(model, opt)
    assert load_latest(tmp_path / "nothing-here", model, opt) is None
    assert_unchanged(model, opt, before)


# --- hostile and damaged checkpoints -------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _forge_manifest(path: Path) -> None:
    """What someone who can write the files can do: make the manifest match."""
    (path / "manifest.json").unlink()
    _verify._write_manifest(path)


def _malicious_metadata(path: Path, marker: Path, forge: bool) -> None:
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    if forge:
        _forge_manifest(path)


def _pickled_param_group_value(path: Path, marker: Path) -> None:
    """A checkpoint as plain DCP writes it, with a param-group value that is a pickled payload."""
    model, opt = trained(1)
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, opt)
    optim_state["param_groups"][0]["lr"] = _Payload(marker)
    for name in (".metadata", "__0_0.distcp"):
        (path / name).unlink()
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))
    _forge_manifest(path)


def _flip_a_bit(path: Path) -> None:
    data = bytearray((path / "__0_0.distcp").read_bytes())
    data[-200] ^= 0x10  # inside the last tensor's data
    (path / "__0_0.distcp").write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = (path / "__0_0.distcp").read_bytes()
    (path / "__0_0.distcp").write_bytes(data[: len(data) // 2])


def _swap_shard(path: Path, other: Path) -> None:
    shutil.copy(other / "__0_0.distcp", path / "__0_0.distcp")


def _state_json(path: Path, edit, forge: bool = True) -> None:
    state = json.loads((path / "state.json").read_text())
    edit(state["tree"])
    (path / "state.json").write_text(json.dumps(state))
    if forge:
        _forge_manifest(path)


def _overwrite(path: Path, name: str, text: str) -> None:
    _overwrite_bytes(path, name, text.encode())


def _overwrite_bytes(path: Path, name: str, data: bytes) -> None:
    (path / name).write_bytes(data)
    _forge_manifest(path)


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _directory_in_manifest(path: Path) -> None:
    """A directory where the manifest lists a file: sizes and hashes are of files only."""
    (path / "sub").mkdir()
    entry = {"bytes": (path / "sub").stat().st_size, "sha256": ""}
    _edit_manifest(path, lambda m: m["files"].__setitem__("sub", entry))


def _metadata_outside(path: Path) -> None:
    """A forged index that points a tensor at a file outside the checkpoint."""
    reader = _verify._VerifiedReader(path, ["__0_0.distcp"])
    metadata = reader.read_metadata()
    for info in metadata.storage_data.values():
        info.relative_path = "../outside.distcp"
    shutil.copy(path / "__0_0.distcp", path.parent / "outside.distcp")
    metadata.storage_meta = None
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    _forge_manifest(path)


ATTACKS = {
    "malicious .metadata": lambda path, other, marker: _malicious_metadata(path, marker, forge=False),
    "malicious .metadata, forged manifest": lambda path, other, marker: _malicious_metadata(path, marker, forge=True),
    "pickled param-group value, forged manifest": lambda path, other, marker: _pickled_param_group_value(path, marker),
    "one flipped bit": lambda path, other, marker: _flip_a_bit(path),
    "truncated shard": lambda path, other, marker: _truncate(path),
    "grown shard": lambda path, other, marker: (path / "__0_0.distcp").write_bytes(
        (path / "__0_0.distcp").read_bytes() + b"\0"
    ),
    "swapped shard": lambda path, other, marker: _swap_shard(path, other),
    "no manifest": lambda path, other, marker: (path / "manifest.json").unlink(),
    "a file added": lambda path, other, marker: (path / "extra.bin").write_bytes(b"x"),
    "edited state.json": lambda path, other, marker: _state_json(
        path, lambda tree: tree["optim"]["param_groups"][0].__setitem__("lr", 0.5), forge=False
    ),
    "invalid lr, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree["optim"]["param_groups"][0].__setitem__("lr", -1.0)
    ),
    "a tensor the model lacks, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree["model"].__setitem__("9.weight", {"__tensor__": True})
    ),
    "index pointing outside, forged manifest": lambda path, other, marker: _metadata_outside(path),
    "state.json not JSON, forged manifest": lambda path, other, marker: _overwrite(path, "state.json", "{"),
    "manifest not JSON": lambda path, other, marker: (path / "manifest.json").write_text("{"),
    "manifest of another format": lambda path, other, marker: (path / "manifest.json").write_text(
        json.dumps({"format": 99, "files": {}})
    ),
    "a model key swapped for another, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: (tree["model"].pop("0.bias"), tree["model"].__setitem__("note", 1))
    ),
    "state.json without 'optim', forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree.pop("optim")
    ),
    "state.json with a third key, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree.__setitem__("extra", {})
    ),
    "state.json of format true, forged manifest": lambda path, other, marker: _overwrite(
        path, "state.json", json.dumps({**json.loads((path / "state.json").read_text()), "format": True})
    ),
    "state.json nested too deep to parse, forged manifest": lambda path, other, marker: _overwrite(
        path, "state.json", "[" * 100_000 + "]" * 100_000
    ),
    "manifest nested too deep to parse": lambda path, other, marker: (path / "manifest.json").write_text(
        "[" * 100_000 + "]" * 100_000
    ),
    "manifest a JSON list": lambda path, other, marker: (path / "manifest.json").write_text("[1]"),
    "manifest of format 1.0": lambda path, other, marker: _edit_manifest(path, lambda m: m.__setitem__("format", 1.0)),
    "manifest of format 2": lambda path, other, marker: _edit_manifest(path, lambda m: m.__setitem__("format", 2)),
    "manifest of format 0": lambda path, other, marker: _edit_manifest(path, lambda m: m.__setitem__("format", 0)),
    "manifest without state.json": lambda path, other, marker: _edit_manifest(
        path, lambda m: m["files"].pop("state.json")
    ),
    "state.json whose optimizer lacks its groups, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree["optim"].pop("param_groups")
    ),
    "state.json of format 2, forged manifest": lambda path, other, marker: _overwrite(
        path, "state.json", json.dumps({**json.loads((path / "state.json").read_text()), "format": 2})
    ),
    "a file removed": lambda path, other, marker: (path / "__0_0.distcp").unlink(),
    "a directory in the manifest": lambda path, other, marker: _directory_in_manifest(path),
    "a manifest entry not an object": lambda path, other, marker: _edit_manifest(
        path, lambda m: m["files"].__setitem__("state.json", "abc")
    ),
    ".metadata another allowed record, forged manifest": lambda path, other, marker: _overwrite_bytes(
        path, ".metadata", pickle.dumps(torch.Size([3]))
    ),
    "state.json whose optimizer has a third key, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree["optim"].__setitem__("extra", {})
    ),
    # markers: a save writes {"__tensor__": true} and {"__tuple__": [...]}, nothing else with their keys
    "a tensor marker with another key, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree["model"].__setitem__("0.bias", {"__tensor__": True, "x": 1})
    ),
    "a tensor marker of false, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree["model"].__setitem__("0.bias", {"__tensor__": False})
    ),
    "a tuple marker with another key, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree["optim"]["param_groups"][0].__setitem__("betas", {"__tuple__": [0.9, 0.99], "x": 1})
    ),
    "a tuple marker of a string, forged manifest": lambda path, other, marker: _state_json(
        path, lambda tree: tree["optim"]["param_groups"][0].__setitem__("betas", {"__tuple__": "ab"})
    ),
}


REASONS = {  # why each is refused: the first line of defence that catches it
    "malicious .metadata": "bytes, the manifest says",
    "malicious .metadata, forged manifest": "refused to load posix.system",
    "pickled param-group value, forged manifest": "refused to load .*BytesStorageMetadata",
    "one flipped bit": "SHA-256 differs",
    "truncated shard": "bytes, the manifest says",
    "grown shard": "bytes, the manifest says",
    "swapped shard": "SHA-256 differs",
    "no manifest": "has no manifest.json",
    "a file added": r"missing \[\], unexpected \['extra.bin'\]",
    "edited state.json": "bytes, the manifest says",
    "invalid lr, forged manifest": "Invalid learning rate: -1.0",
    "a tensor the model lacks, forged manifest": "tensor at model/9.weight",
    "index pointing outside, forged manifest": "outside the checkpoint's files",
    # the file at fault, named by its path
    "state.json not JSON, forged manifest": r"step-00000004/state\.json: Expecting property name",
    "manifest not JSON": r"step-00000004/manifest\.json: Expecting property name",
    "manifest of another format": r"step-00000004/manifest\.json: not a format-1 manifest",
    "a model key swapped for another, forged manifest": r"keys differ \(missing \['0\.bias'\], unexpected \['note'\]\)",
    "state.json without 'optim', forged manifest": r"step-00000004/state\.json: expected the keys 'model' and 'optim'",
    "state.json with a third key, forged manifest": r"step-00000004/state\.json: expected the keys 'model' and",
    "state.json of format true, forged manifest": r"step-00000004/state\.json: not a format-1 adamax checkpoint",
    "state.json nested too deep to parse, forged manifest": r"step-00000004/state\.json: maximum recursion depth",
    "manifest nested too deep to parse": r"step-00000004/manifest\.json: maximum recursion depth",
    "manifest a JSON list": r"step-00000004/manifest\.json: not a format-1 manifest",
    "manifest of format 1.0": r"step-00000004/manifest\.json: not a format-1 manifest",
    "manifest of format 2": r"step-00000004/manifest\.json: not a format-1 manifest",
    "manifest of format 0": r"step-00000004/manifest\.json: not a format-1 manifest",
    "manifest without state.json": r"step-00000004/manifest\.json: not a format-1 manifest",
    "state.json whose optimizer lacks its groups, forged manifest": r"state\.json: expected the optimizer's keys",
    "state.json of format 2, forged manifest": r"step-00000004/state\.json: not a format-1 adamax checkpoint",
    "a file removed": r"files differ from its manifest \(missing \['__0_0\.distcp'\], unexpected \[\]\)",
    "a directory in the manifest": r"step-00000004/sub: not a file of the manifest",
    "a manifest entry not an object": r"step-00000004/state\.json: not a file of the manifest",
    ".metadata another allowed record, forged manifest": r"step-00000004/\.metadata: not DCP metadata",
    "state.json whose optimizer has a third key, forged manifest": r"state\.json: expected the optimizer's keys",
    "a tensor marker with another key, forged manifest": r"structure is malformed at model/0\.bias",
    "a tensor marker of false, forged manifest": r"structure is malformed at model/0\.bias",
    "a tuple marker with another key, forged manifest": "structure is malformed at optim/param_groups/0/betas",
    "a tuple marker of a string, forged manifest": "structure is malformed at optim/param_groups/0/betas",
}


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    """Two good checkpoints of step 4 (different seeds), saved once; each attack works on a copy."""
    root = tmp_path_factory.mktemp("good")
    save_checkpoint(root / "ckpt", 4, *trained(4, seed=1))
    save_checkpoint(root / "other", 4, *trained(4, seed=2))
    return root


@pytest.mark.parametrize("target", ["trained", "fresh"])
@pytest.mark.parametrize("attack", ATTACKS, ids=ATTACKS.keys())
def test_a_hostile_or_damaged_checkpoint_is_refused_and_changes_nothing(tmp_path, two_checkpoints, attack, target):
    for name in ("ckpt", "other"):
        shutil.copytree(two_checkpoints / name, tmp_path / name)
    path, other = tmp_path / "ckpt" / "step-00000004", tmp_path / "other" / "step-00000004"
    marker = tmp_path / "code-ran"
    ATTACKS[attack](path, other, marker)
    model, opt = trained(2) if target == "trained" else worker.make()
    before = snapshot(model, opt)
    with pytest.raises(CheckpointError, match=REASONS[attack]) as caught:
        load_latest(tmp_path / "ckpt", model, opt)
    assert isinstance(caught.value, Exception)
    assert not marker.exists(), "code stored in the checkpoint ran"
    assert_unchanged(model, opt, before)
    worker.train_step(model, opt, 9)  # and training goes on


def regrouped(model, groups: list[slice]):
    from adamax.torch import Adamax

    params = list(model.parameters())
    return Adamax([{"params": params[part], "lr": 0.01 * (k + 1)} for k, part in enumerate(groups)])


@pytest.mark.parametrize(
    ("saved", "live"),
    [
        ([slice(0, 2), slice(2, 4)], [slice(0, 4)]),  # two groups into one: DCP gives all four the second's lr
        ([slice(0, 4)], [slice(0, 2), slice(2, 4)]),
        ([slice(0, 1), slice(1, 4)], [slice(0, 3), slice(3, 4)]),  # as many groups, other params in them
    ],
    ids=["two-into-one", "one-into-two", "regrouped"],
)
def test_a_checkpoint_of_other_param_groups_is_refused_and_changes_nothing(tmp_path, saved, live):
    model, _ = worker.make()
    opt = regrouped(model, saved)
    worker.train_step(model, opt, 0)
    save_checkpoint(tmp_path, 1, model, opt)
    for fresh in (True, False):
        target = worker.make(seed=3)[0]
        target_opt = regrouped(target, live)
        if not fresh:
            worker.train_step(target, target_opt, 5)
        before = snapshot(target, target_opt)
        with pytest.raises(CheckpointError, match="the optimizer's param groups differ"):
            load_latest(tmp_path, target, target_opt)
        assert_unchanged(target, target_opt, before)


def test_by_default_the_three_newest_checkpoints_are_kept(tmp_path):
    model, opt = trained(1)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000003", "step-00000004", "step-00000005"]


def test_a_refused_load_undoes_the_state_dcp_creates_on_a_fresh_optimizer(tmp_path):
    path = save_checkpoint(tmp_path, 4, *trained(4))
    _state_json(path, lambda tree: tree["optim"]["param_groups"][0].__setitem__("betas", [0.9, 1.5]))
    model, opt = worker.make()
    with pytest.raises(CheckpointError, match="Invalid beta parameter"):
        load_latest(tmp_path, model, opt)
    assert not opt.state and all(p.grad is None for p in model.parameters())


def _model_write_dies_after_copying(monkeypatch) -> None:
    """The load's last write (the model's values, after the optimizer's) copies the values in, then dies."""
    real = _load.set_model_state_dict

    def dies_after_writing(model, state, **kwargs):
        real(model, state, **kwargs)
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(_load, "set_model_state_dict", dies_after_writing)


@pytest.mark.parametrize("target", ["trained", "fresh"])
def test_a_load_that_fails_while_writing_the_model_puts_back_the_model_and_the_optimizer(tmp_path, monkeypatch, target):
    """The last step of a load writes the model after the optimizer; if it dies halfway (here: after copying
    the values in), both must be as they were, the optimizer's state entries the very objects they were."""
    save_checkpoint(tmp_path, 4, *trained(4, seed=1))
    _model_write_dies_after_copying(monkeypatch)
    model, opt = trained(2) if target == "trained" else worker.make()
    before = snapshot(model, opt)
    entries = dict(opt.state)
    with pytest.raises(CheckpointError, match="the disk went away"):
        load_latest(tmp_path, model, opt)
    assert_unchanged(model, opt, before)
    assert all(opt.state[p] is entry for p, entry in entries.items())
    worker.train_step(model, opt, 9)


class _FailsHalfway(worker.Adamax):
    """An optimizer that changes itself in place and then fails: in its step (which DCP's load runs once on a
    fresh optimizer, with zero gradients and lr 0), or in its own ``load_state_dict``."""

    fail_in = None

    def __init__(self, params) -> None:
        super().__init__(params, lr=0.01)
        self.stats = {"loads": 0}  # a dict of its own, as optimizers keep

    def step(self, closure=None):
        loss = super().step(closure)
        if self.fail_in == "step":
            self.stats["failed"] = True
            raise RuntimeError("failed halfway")
        return loss

    def load_state_dict(self, state_dict) -> None:
        if self.fail_in == "load_state_dict":
            first, second, *_ = self.state
            self.state[first] = {key: torch.zeros_like(value) for key, value in self.state[first].items()}
            self.state[second]["exp_inf"] = torch.ones_like(second)
            self.param_groups[0]["lr"] = 0.5
            self.defaults["lr"] = 0.5
            self.stats["loads"] += 1
            for p in self.param_groups[0]["params"]:
                p.grad = None
            raise RuntimeError("failed halfway")
        super().load_state_dict(state_dict)


@pytest.mark.parametrize("fail_in", ["step", "load_state_dict"])
def test_an_optimizer_that_fails_halfway_through_a_load_is_put_back_whole(tmp_path, fail_in):
    """Whatever the optimizer changed in place before it failed (its state entries, its groups, its own dicts,
    the params' gradients) is as it was, and it trains on exactly as an optimizer that never saw the load."""
    save_checkpoint(tmp_path, 4, *trained(4, seed=1))

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        opt = _FailsHalfway(model.parameters())
        for step in range(0 if fail_in == "step" else 2):  # DCP steps only a fresh optimizer
            worker.train_step(model, opt, step)
        return model, opt

    model, opt = make()
    before, entries, defaults = snapshot(model, opt), dict(opt.state), dict(opt.defaults)
    opt.fail_in = fail_in
    with pytest.raises(CheckpointError, match="failed halfway"):
        load_latest(tmp_path, model, opt)
    assert_unchanged(model, opt, before)
    assert all(opt.state[p] is entry for p, entry in entries.items())
    assert opt.stats == {"loads": 0} and opt.defaults == defaults
    opt.fail_in = None
    twin_model, twin_opt = make()
    for step in range(5, 8):
        worker.train_step(model, opt, step)
        worker.train_step(twin_model, twin_opt, step)
    assert_same(model, opt, twin_model, twin_opt)


def test_a_checkpoint_whose_index_has_no_storage_meta_loads(tmp_path):
    """DCP's index may come without ``storage_meta`` (as older writers left it): the reader supplies one."""
    model, opt = trained(3)
    path = save_checkpoint(tmp_path, 3, model, opt)
    metadata = _verify._VerifiedReader(path, ["__0_0.distcp"]).read_metadata()
    metadata.storage_meta = None
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    _forge_manifest(path)
    fresh_model, fresh_opt = worker.make()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 3
    assert_same(model, opt, fresh_model, fresh_opt)


def test_metadata_unpickler_refuses_what_dcp_metadata_never_holds():
    for payload in (_Payload(Path("/nonexistent/marker")), {"x": torch.nn.Linear(1, 1)}, print):
        with pytest.raises(pickle.UnpicklingError, match="refused to load"):
            _verify._MetadataUnpickler(io.BytesIO(pickle.dumps(payload))).load()
    # dtypes are looked up in torch itself, under no other module's name
    assert _verify._MetadataUnpickler(io.BytesIO(b"ctorch\nfloat32\n.")).load() is torch.float32
    for module in (b"zzz", b"torch.nn", b"os"):
        with pytest.raises(pickle.UnpicklingError, match="refused to load"):
            _verify._MetadataUnpickler(io.BytesIO(b"c" + module + b"\nfloat32\n.")).load()


# --- never written over; retention ---------------------------------------------------------------------------


def test_re_saving_a_step_writes_a_new_directory(tmp_path):
    model, opt = trained(4)
    first = save_checkpoint(tmp_path, 4, model, opt)
    first_manifest = (first / "manifest.json").read_text()
    worker.train_step(model, opt, 4)
    second = save_checkpoint(tmp_path, 4, model, opt)
    assert (first.name, second.name) == ("step-00000004", "step-00000004.1")
    assert (first / "manifest.json").read_text() == first_manifest
    assert latest_checkpoint(tmp_path) == second and latest_step(tmp_path) == 4
    fresh_model, fresh_opt = worker.make()
    load_latest(tmp_path, fresh_model, fresh_opt)
    assert_same(model, opt, fresh_model, fresh_opt)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model, opt = trained(1)
    for step in (2, 4, 6, 6, 8):
        save_checkpoint(tmp_path, step, model, opt, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000006.1", "step-00000008"]
    save_checkpoint(tmp_path, 3, model, opt, keep=None)  # a restart from an earlier step: kept, and newest
    assert latest_step(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step")) == [
        "step-00000003",
        "step-00000006.1",
        "step-00000008",
    ]


DAMAGED_POINTERS = {
    "garbage": lambda path: path.write_text("garbage " * 1000),
    "not UTF-8": lambda path: path.write_bytes(b"\xff\xfe\x00step"),
    "a JSON list": lambda path: path.write_text('["step-00000002"]'),
    "nested too deep to parse": lambda path: path.write_text("[" * 100_000 + "]" * 100_000),
    "a name outside the root": lambda path: path.write_text(json.dumps({"checkpoint": "../step-00000002"})),
}


@pytest.mark.parametrize("damage", DAMAGED_POINTERS.values(), ids=DAMAGED_POINTERS.keys())
def test_a_damaged_pointer_is_refused_at_load_and_replaced_by_the_next_save(tmp_path, damage):
    """Refused naming the file, never quoting it (it may be any file); the next save writes a good one."""
    model, opt = trained(2)
    save_checkpoint(tmp_path, 2, model, opt)
    damage(tmp_path / "latest")
    with pytest.raises(CheckpointError, match="latest does not name a checkpoint") as caught:
        load_latest(tmp_path, *worker.make())
    assert "garbage" not in str(caught.value) and "step-00000002" not in str(caught.value).split("latest")[-1]
    save_checkpoint(tmp_path, 3, model, opt)
    assert latest_step(tmp_path) == 3
    fresh_model, fresh_opt = worker.make()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 3
    assert_same(model, opt, fresh_model, fresh_opt)


def test_a_checkpoint_that_cannot_be_deleted_does_not_fail_the_save_that_drops_it(tmp_path, monkeypatch):
    """Deleting the checkpoints past ``keep`` comes after the pointer moved: the save is complete, and a
    deletion that fails (here: every file refuses) leaves the old files behind rather than fail it."""
    model, opt = trained(2)
    save_checkpoint(tmp_path, 1, model, opt, keep=1)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "unlink", refuse)
    path = save_checkpoint(tmp_path, 2, model, opt, keep=1)
    monkeypatch.undo()
    assert path == latest_checkpoint(tmp_path) and (tmp_path / "step-00000001").is_dir()
    fresh_model, fresh_opt = worker.make()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 2
    assert_same(model, opt, fresh_model, fresh_opt)


def test_a_directory_named_latest_is_refused_at_load_and_a_save_says_so_rather_than_delete_it(tmp_path):
    model, opt = trained(2)
    save_checkpoint(tmp_path, 2, model, opt)
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").mkdir()
    with pytest.raises(CheckpointError, match=r"latest does not name a checkpoint: .*Is a directory"):
        load_latest(tmp_path, *worker.make())
    with pytest.raises(CheckpointError, match="Is a directory"):
        save_checkpoint(tmp_path, 3, model, opt)
    assert (tmp_path / "latest").is_dir()


@pytest.mark.parametrize(("argument", "value"), [("step", -1), ("step", 2.0), ("keep", 0), ("keep", True)])
def test_save_refuses_bad_arguments(tmp_path, argument, value):
    model, opt = trained(1)
    kwargs = {"step": 1, **{argument: value}}
    with pytest.raises(ValueError, match=argument):
        save_checkpoint(tmp_path, model=model, optimizer=opt, **kwargs)
    assert not tmp_path.joinpath("latest").exists()


def test_an_unsaveable_value_is_refused_before_anything_is_written(tmp_path):
    model, opt = trained(1)
    opt.param_groups[0]["note"] = object()
    with pytest.raises(CheckpointError, match=r"^cannot checkpoint object"):  # one process: no rank named
        save_checkpoint(tmp_path / "ckpt", 1, model, opt)
    assert not any(tmp_path.iterdir())  # not even the checkpoints' directory


@pytest.mark.parametrize("key", ["a/b", "__tensor__", "__tuple__", 3])
def test_a_key_a_checkpoint_cannot_hold_is_refused_before_anything_is_written(tmp_path, key):
    """'/' joins the paths DCP stores tensors under, and the two markers tag tensors and tuples in state.json: such
    a key would come back as something else."""
    model, opt = trained(1)
    opt.param_groups[0]["note"] = {key: 1}
    with pytest.raises(CheckpointError, match="cannot checkpoint the key"):
        save_checkpoint(tmp_path, 1, model, opt)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "live_note",
    [None, {"list": [0], "tuple": (False,), "deep": {"a": []}}, {"list": [0] * 9, "tuple": (False,) * 9}],
    ids=["none", "shorter", "longer"],
)
def test_param_group_values_of_every_saveable_kind_round_trip(tmp_path, live_note):
    """The saved values load whole, whatever the live group holds at that key (lists of other lengths too)."""
    note = {"empty": {}, "empty list": [], "list": [1, 2.5, None, "s"], "tuple": (True, (), (1,)), "deep": {"a": [{}]}}
    model, opt = trained(1)
    opt.param_groups[0]["note"] = note
    save_checkpoint(tmp_path, 1, model, opt)
    fresh_model, fresh_opt = worker.make()
    if live_note is not None:
        fresh_opt.param_groups[0]["note"] = live_note
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 1
    assert fresh_opt.param_groups[0]["note"] == note
    assert_same(model, opt, fresh_model, fresh_opt)


def test_tensors_inside_a_param_groups_tuple_round_trip(tmp_path):
    """torch's Adam takes tensor betas: tensors inside a tuple load onto the live tuple's tensors."""

    def make(lr, betas):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, torch.optim.Adam(model.parameters(), lr=torch.tensor(lr), betas=tuple(map(torch.tensor, betas)))

    model, opt = make(0.01, (0.8, 0.99))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 1, model, opt)
    fresh_model, fresh_opt = make(0.02, (0.9, 0.999))
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 1
    group = fresh_opt.param_groups[0]
    assert isinstance(group["betas"], tuple) and [b.item() for b in group["betas"]] == [
        b.item() for b in opt.param_groups[0]["betas"]
    ]
    assert group["lr"].item() == opt.param_groups[0]["lr"].item()


def test_a_checkpoint_of_a_bigger_model_is_refused_naming_the_first_tensor_this_model_lacks(tmp_path):
    """The checkpoint holds that tensor (DCP's index lists it), but only the optimizer's state may be created."""
    torch.manual_seed(0)
    bigger = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3), torch.nn.Linear(3, 3))
    opt = worker.Adamax(bigger.parameters(), lr=0.01)
    bigger(torch.randn(2, 6)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 1, bigger, opt)
    model, opt = trained(2)
    before = snapshot(model, opt)
    with pytest.raises(CheckpointError, match=r"a tensor at model/3\.weight, where this model and optimizer have none"):
        load_latest(tmp_path, model, opt)
    assert_unchanged(model, opt, before)


def test_a_save_makes_missing_parent_directories_and_takes_step_0_and_keep_1(tmp_path):
    model, opt = trained(1)
    root = tmp_path / "runs" / "a" / "checkpoints"
    assert save_checkpoint(root, 0, model, opt, keep=1) == root / "step-00000000" and latest_step(root) == 0


@pytest.mark.parametrize("error", [RuntimeError("disk full"), dcp.api.CheckpointException("disk full", {})])
def test_a_failing_dcp_save_raises_checkpoint_error_and_moves_nothing(tmp_path, monkeypatch, error):
    """DCP's own errors derive from BaseException; both kinds come out as CheckpointError, the pointer unmoved."""
    model, opt = trained(1)
    save_checkpoint(tmp_path, 1, model, opt)

    def failing_save(*args, **kwargs):
        raise error

    monkeypatch.setattr(_save.dcp, "save", failing_save)
    with pytest.raises(CheckpointError, match=r"^saving step-00000002: ") as caught:
        save_checkpoint(tmp_path, 2, model, opt)
    assert caught.value.__cause__ is error and latest_step(tmp_path) == 1


def test_checkpoints_are_kept_by_save_order_not_by_step(tmp_path):
    """A run resumed from an earlier step saves lower steps after higher ones: keep counts saves, newest first."""
    model, opt = trained(1)
    for step in (5, 8, 3):
        save_checkpoint(tmp_path, step, model, opt, keep=2)
    assert latest_step(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000003", "step-00000008"]


def test_a_checkpoint_deleted_by_hand_and_saved_again_counts_once(tmp_path):
    model, opt = trained(1)
    save_checkpoint(tmp_path, 1, model, opt, keep=2)
    save_checkpoint(tmp_path, 2, model, opt, keep=2)
    shutil.rmtree(tmp_path / "step-00000002")  # the pointer's recent list still names it
    assert save_checkpoint(tmp_path, 2, model, opt, keep=2) == tmp_path / "step-00000002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001", "step-00000002"]
    assert json.loads((tmp_path / "latest").read_text())["recent"] == ["step-00000002", "step-00000001"]


def test_a_pointer_whose_recent_list_holds_other_values_loads_and_the_next_save_drops_them(tmp_path):
    model, opt = trained(2)
    save_checkpoint(tmp_path, 2, model, opt)
    pointer = json.loads((tmp_path / "latest").read_text())
    pointer["recent"] = [5, None, "../elsewhere", *pointer["recent"]]
    pointer["sha256"] = _retention._pointer_digest(pointer)  # forged whole: its checksum matches
    (tmp_path / "latest").write_text(json.dumps(pointer))
    fresh_model, fresh_opt = worker.make()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 2
    save_checkpoint(tmp_path, 3, model, opt)
    assert json.loads((tmp_path / "latest").read_text())["recent"] == ["step-00000003", "step-00000002"]


# --- a crash inside a save, in this process -------------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so no handler in the save catches it."""


def crash_at(monkeypatch, point: str) -> None:
    def reached(name: str) -> None:
        if name == point:
            raise Crash(name)

    monkeypatch.setattr(_save, "_reached", reached)


@pytest.mark.parametrize("point", ["saved", "sealed", "renamed"])
def test_a_save_that_dies_before_the_pointer_moves_leaves_the_last_checkpoint_in_charge(tmp_path, monkeypatch, point):
    model, opt = trained(2)
    save_checkpoint(tmp_path, 2, model, opt)
    good_model, good_opt = worker.make()
    load_latest(tmp_path, good_model, good_opt)
    worker.train_step(model, opt, 2)
    crash_at(monkeypatch, point)
    with pytest.raises(Crash):
        save_checkpoint(tmp_path, 3, model, opt)
    assert latest_step(tmp_path) == 2  # the pointer names the last whole checkpoint
    fresh_model, fresh_opt = worker.make()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 2
    assert_same(good_model, good_opt, fresh_model, fresh_opt)


def test_a_save_after_one_that_died_at_the_same_step_holds_only_its_own_files(tmp_path, monkeypatch):
    """A save killed after DCP wrote its shards leaves a partial directory behind; the next save of that step (here
    after a restart on fewer ranks, so the dead save had a shard this one does not write) must not adopt its files."""
    model, opt = trained(2)
    crash_at(monkeypatch, "saved")
    with pytest.raises(Crash):
        save_checkpoint(tmp_path, 2, model, opt)
    (partial,) = tmp_path.glob(".partial-*")
    (partial / "__1_0.distcp").write_bytes(b"a shard of the dead save's second rank")
    monkeypatch.undo()
    path = save_checkpoint(tmp_path, 2, model, opt)
    assert sorted(p.name for p in path.iterdir()) == [".metadata", "__0_0.distcp", "manifest.json", "state.json"]
    assert not list(tmp_path.glob(".partial-*"))
    fresh_model, fresh_opt = worker.make()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 2
    assert_same(model, opt, fresh_model, fresh_opt)


def test_a_save_that_dies_while_writing_the_pointer_leaves_the_old_pointer_whole(tmp_path, monkeypatch):
    """Half the new pointer's text written, then death: readers still see the old pointer, never part of one."""
    model, opt = trained(2)
    save_checkpoint(tmp_path, 2, model, opt)
    real_open = open

    class HalfWritten:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise Crash("died mid-write")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def dying_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return HalfWritten(f) if "w" in mode and "latest" in Path(path).name else f

    monkeypatch.setattr(builtins, "open", dying_open)  # open(), and Path.write_text and Path.open through io
    monkeypatch.setattr(io, "open", dying_open)
    with pytest.raises(Crash):
        save_checkpoint(tmp_path, 3, model, opt)
    monkeypatch.undo()
    assert latest_step(tmp_path) == 2
    assert load_latest(tmp_path, *worker.make()) == 2


# --- SIGKILL at every point of a save ------------------------------------------------------------------------


def run_worker(ckpt: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tests.checkpoint_worker", "--ckpt", str(ckpt), "--out", str(out), *options]
    return processes.run(cmd, cwd=ROOT)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "straight.pt"
    done = run_worker(out.parent / "ckpt", out, "--steps", "10")
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(out)


KILLS = [
    ("saved", "8"),  # shards written, not sealed
    ("sealed", "8"),  # manifest written, not renamed into place
    ("renamed", "8"),  # in place, 'latest' not moved
    ("pointed", "8"),  # 'latest' moved, older ones not yet pruned
    # The same in a re-save of the step 'latest' names, where two directories of step 8 then exist.  (A re-save
    # killed at 'saved' or 'sealed' leaves only a partial directory, as the first save does.)
    ("renamed", "8r"),
    ("pointed", "8r"),
]


@pytest.mark.parametrize(("point", "when"), KILLS, ids=[f"{p}-at-{w}" for p, w in KILLS])
def test_sigkill_anywhere_in_a_save_leaves_a_checkpoint_that_resumes_exactly(tmp_path, straight_run, point, when):
    ckpt = tmp_path / "ckpt"
    killed = run_worker(ckpt, tmp_path / "never.pt", "--steps", "10", "--kill-at", f"{point}@{when}")
    assert killed.returncode == -9, killed.stderr[-2000:]
    expected_start = 8 if point == "pointed" or when == "8r" else 4
    resumed = run_worker(ckpt, tmp_path / "resumed.pt", "--steps", "10", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = torch.load(tmp_path / "resumed.pt")
    assert result["start"] == expected_start
    for a, b in zip(result["params"], straight_run["params"]):
        assert torch.equal(a, b)
    for a, b in zip(result["state"], straight_run["state"]):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_refused_load_into_a_fresh_lazy_optimizer_leaves_its_tables_consistent(tmp_path):
    """DCP's initialisation steps a fresh optimizer once; a refused load must undo that for lazy tables too."""
    from adamax.torch import Adamax, lazy_embeddings

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(20, 3, sparse=True), torch.nn.Flatten(), torch.nn.Linear(6, 1))
        opt = Adamax(model.parameters(), lr=0.05)
        lazy_embeddings(model, opt)
        return model, opt

    def train(model, opt, steps):
        for step in range(steps):
            gen = torch.Generator().manual_seed(step)
            opt.zero_grad()
            model(torch.randint(0, 20, (4, 2), generator=gen)).pow(2).mean().backward()
            opt.step()

    saved_model, saved_opt = make()
    train(saved_model, saved_opt, 3)
    path = save_checkpoint(tmp_path, 3, saved_model, saved_opt)
    _state_json(path, lambda tree: tree["optim"]["param_groups"][0].__setitem__("lr", -1.0))
    model, opt = make()
    with pytest.raises(CheckpointError):
        load_latest(tmp_path, model, opt)
    assert not opt.state
    twin_model, twin_opt = make()
    train(model, opt, 5)
    train(twin_model, twin_opt, 5)
    opt.flush()
    twin_opt.flush()
    for a, b in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("state_format", ["compact", "compact8"])
def test_compact_state_round_trips_through_a_checkpoint_and_resumes_exactly(tmp_path, state_format):
    from adamax import compact, compact8
    from adamax.torch import Adamax

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(300, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3))
        return model, Adamax(model.parameters(), lr=1e-2, state_format=state_format)

    def step(model, opt, seed):
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(8, 300, generator=gen), torch.randn(8, 3, generator=gen)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    model, opt = make()
    for seed in range(3):
        step(model, opt, seed)
    save_checkpoint(tmp_path, 3, model, opt)
    again, again_opt = make()
    assert load_latest(tmp_path, again, again_opt) == 3
    for seed in range(3, 6):
        step(model, opt, seed)
        step(again, again_opt, seed)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
        keys = set((compact if state_format == "compact" else compact8).KEYS)
        assert opt.state[a].keys() == again_opt.state[b].keys() == keys
        for key in opt.state[a]:
            assert opt.state[a][key].dtype == again_opt.state[b][key].dtype
            assert torch.equal(opt.state[a][key], again_opt.state[b][key]), key


# --- retention deletes only its own; one writer at a time; only regular files inside the root are read ----------


def test_a_folder_of_the_users_named_as_a_checkpoint_is_never_deleted(tmp_path):
    model, opt = trained(1)
    mine = tmp_path / "step-00000001"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own work")
    partial = tmp_path / ".partial-mine"
    partial.mkdir()
    for step in (2, 3, 4, 5):
        save_checkpoint(tmp_path, step, model, opt, keep=1)
    assert (mine / "notes.txt").read_text() == "my own work"
    assert partial.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".partial-mine", "latest", "step-00000001", "step-00000005"]


def test_keep_none_deletes_nothing_not_even_an_interrupted_save(tmp_path, monkeypatch):
    model, opt = trained(1)
    crash_at(monkeypatch, "saved")
    with pytest.raises(Crash):
        save_checkpoint(tmp_path, 1, model, opt)
    monkeypatch.undo()
    for step in (2, 3, 4, 5):
        save_checkpoint(tmp_path, step, model, opt, keep=None)
    assert (tmp_path / ".partial-step-00000001").is_dir()
    assert len(list(tmp_path.glob("step-*"))) == 4
    save_checkpoint(tmp_path, 6, model, opt, keep=2)  # with keep set, this module's interrupted save goes too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005", "step-00000006"]


LOST_POINTERS = {
    "missing": lambda path: path.unlink(),
    "unreadable": lambda path: path.write_text("garbage"),
    "an empty recent list": lambda path: path.write_text(
        json.dumps({"checkpoint": "step-00000004", "step": 4, "recent": []})
    ),
    "a recent list of junk": lambda path: path.write_text(
        json.dumps({"checkpoint": "step-00000004", "step": 4, "recent": [7, "step-99999999"]})
    ),
}


@pytest.mark.parametrize("lose", LOST_POINTERS.values(), ids=LOST_POINTERS.keys())
def test_a_lost_pointer_never_costs_the_last_good_checkpoints(tmp_path, lose):
    """The next save keeps the newest ``keep`` sealed checkpoints, by when they were sealed; it used to keep
    only itself."""
    model, opt = trained(1)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, opt, keep=None)
    lose(tmp_path / "latest")
    save_checkpoint(tmp_path, 5, model, opt, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000003", "step-00000004", "step-00000005"]
    assert json.loads((tmp_path / "latest").read_text())["recent"] == [
        "step-00000005",
        "step-00000004",
        "step-00000003",
    ]


def test_a_save_that_dies_while_the_pointer_is_written_with_keep_1_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    """Deleting past ``keep`` comes only after ``latest`` has moved: with keep=1 and a death while the pointer is
    written, the checkpoint the old pointer names is still there, and loads."""
    model, opt = trained(2)
    save_checkpoint(tmp_path, 2, model, opt, keep=1)
    good_model, good_opt = worker.make()
    load_latest(tmp_path, good_model, good_opt)
    worker.train_step(model, opt, 2)
    write = _save._write_atomically

    def die_on_the_pointer(path, text):
        if path.name == "latest":
            raise Crash("writing latest")
        write(path, text)

    monkeypatch.setattr(_save, "_write_atomically", die_on_the_pointer)
    with pytest.raises(Crash):
        save_checkpoint(tmp_path, 3, model, opt, keep=1)
    monkeypatch.undo()
    fresh_model, fresh_opt = worker.make()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 2
    assert_same(good_model, good_opt, fresh_model, fresh_opt)
    assert not (tmp_path / ".lock").exists()  # the dead save's lock went with it


def test_a_save_waits_for_another_save_into_the_same_root_and_refuses_after_lock_timeout(tmp_path):
    import fcntl

    model, opt = trained(1)
    save_checkpoint(tmp_path, 1, model, opt)
    with open(tmp_path / ".lock", "w") as held:  # another save in progress
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        with pytest.raises(
            CheckpointError, match=r"another save into .* has held .*\.lock for 0\.2 s \(process 4242\)"
        ):
            save_checkpoint(tmp_path, 2, model, opt, lock_timeout=0.2)
    assert latest_step(tmp_path) == 1 and sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == [
        "latest",
        "step-00000001",
    ]
    save_checkpoint(tmp_path, 2, model, opt)  # released: it saves, and leaves no lock file behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001", "step-00000002"]


@pytest.mark.parametrize("keep", [0, 2])
def test_two_processes_saving_into_one_root_each_get_a_checkpoint_that_loads(tmp_path, keep):
    """A restarted job whose predecessor still runs: two writers, ten saves each, at once, some of the same step.
    Every save that returned holds a checkpoint that loads as that writer's model; ``latest`` names one."""
    root = tmp_path / "ckpt"
    procs = []
    try:
        for seed in (1, 2):
            out = tmp_path / f"writer{seed}.json"
            cmd = [sys.executable, "-m", "tests.writer_worker", "--ckpt", str(root), "--out", str(out), "--saves", "10",
                   "--seed", str(seed), "--keep", str(keep)]  # fmt: skip
            procs.append(processes.popen(cmd, cwd=ROOT))
        while not all(Path(f"{tmp_path}/writer{seed}.json.ready").exists() for seed in (1, 2)):
            assert all(p.poll() is None for p in procs), "a writer ended before it started saving"
            time.sleep(0.05)
        Path(f"{root}.go").touch()
        for p in procs:
            assert p.wait(timeout=processes.TIMEOUT) == 0
    finally:
        for p in procs:
            processes.end_group(p)
    returned = [r for seed in (1, 2) for r in json.loads((tmp_path / f"writer{seed}.json").read_text())]
    if keep == 0:
        assert len({r["name"] for r in returned}) == 20  # each save a directory of its own
    on_disk = sorted(p.name for p in root.iterdir() if p.name.startswith("step-"))
    assert len(on_disk) == (20 if keep == 0 else keep)

    def loads_as_saved(name: str, r: dict) -> bool:  # through a root of its own whose pointer names it
        alone = tmp_path / "alone" / f"{name}-{r['seed']}"
        if not alone.exists():
            shutil.copytree(root / name, alone / name)
            (alone / "latest").write_text(name)
        model, opt = worker.make(r["seed"])
        for i in range(r["saves"]):
            worker.train_step(model, opt, i)
        fresh_model, fresh_opt = worker.make(99)
        if load_latest(alone, fresh_model, fresh_opt) != r["step"]:
            return False
        return all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh_model.parameters()))

    for name in on_disk:  # a name freed by retention may be taken again: one of the saves that returned it
        assert any(loads_as_saved(name, r) for r in returned if r["name"] == name), name
    fresh_model, fresh_opt = worker.make(99)
    assert load_latest(root, fresh_model, fresh_opt) in {r["step"] for r in returned}
    assert not (root / ".lock").exists()


def _outside(tmp_path: Path) -> Path:
    """A good checkpoint of its own, outside the root."""
    model, opt = trained(3)
    return save_checkpoint(tmp_path / "elsewhere", 3, model, opt)


def _alarm(seconds: int):
    import signal

    def fail(*_):
        raise Crash("load_latest blocked")  # not an OSError, which a reader's handlers would take for a bad file

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


SPECIAL_POINTERS = {
    "a FIFO": lambda root, outside: os.mkfifo(root / "latest"),
    "a link to /dev/zero": lambda root, outside: os.symlink("/dev/zero", root / "latest"),
    "a link to a file outside": lambda root, outside: os.symlink(outside.parent / "latest", root / "latest"),
    "a link to a secret": lambda root, outside: (
        (outside.parent / "secret").write_text("root:x:0:0:secret-words\n"),
        os.symlink(outside.parent / "secret", root / "latest"),
    ),
    "too big": lambda root, outside: (root / "latest").write_bytes(b" " * (2 << 20)),
}


@pytest.mark.parametrize("make", SPECIAL_POINTERS.values(), ids=SPECIAL_POINTERS.keys())
def test_a_pointer_that_is_not_a_regular_file_inside_the_root_is_refused_at_once(tmp_path, make):
    outside = _outside(tmp_path)
    root = tmp_path / "root"
    model, opt = trained(2)
    save_checkpoint(root, 2, model, opt)
    (root / "latest").unlink()
    make(root, outside)
    fresh_model, fresh_opt = worker.make()
    before = snapshot(fresh_model, fresh_opt)
    _alarm(10)
    try:
        with pytest.raises(CheckpointError, match="latest does not name a checkpoint") as caught:
            load_latest(root, fresh_model, fresh_opt)
    finally:
        import signal

        signal.alarm(0)
    assert "secret" not in str(caught.value)
    assert_unchanged(fresh_model, fresh_opt, before)


@pytest.mark.parametrize("what", ["the step directory", "state.json", "a shard"])
def test_a_checkpoint_linked_in_from_outside_the_root_is_refused(tmp_path, what):
    outside = _outside(tmp_path)
    root = tmp_path / "root"
    model, opt = trained(2)
    here = save_checkpoint(root, 3, model, opt)  # a checkpoint of step 3 here, as the one outside
    if what == "the step directory":
        shutil.rmtree(here)
        os.symlink(outside, here)
    else:
        name = "state.json" if what == "state.json" else "__0_0.distcp"
        shutil.copyfile(outside / name, here / name)
        (here / "manifest.json").unlink()
        _verify._write_manifest(here)  # a manifest that matches the linked file's contents
        (here / name).unlink()
        os.symlink(outside / name, here / name)
    fresh_model, fresh_opt = worker.make()
    before = snapshot(fresh_model, fresh_opt)
    with pytest.raises(CheckpointError, match=r"symbolic link|not a file of the manifest"):
        load_latest(root, fresh_model, fresh_opt)
    assert_unchanged(fresh_model, fresh_opt, before)


def test_a_flipped_digit_in_the_pointer_is_refused_rather_than_followed(tmp_path):
    model, opt = trained(2)
    save_checkpoint(tmp_path, 2, model, opt)
    save_checkpoint(tmp_path, 3, model, opt)
    text = (tmp_path / "latest").read_text()
    (tmp_path / "latest").write_text(text.replace('"checkpoint": "step-00000003"', '"checkpoint": "step-00000002"'))
    with pytest.raises(CheckpointError, match="its SHA-256 differs from its contents'"):
        load_latest(tmp_path, *worker.make())
    (tmp_path / "latest").write_text(json.dumps({"checkpoint": "step-00000002"}))  # an earlier version's: no digest
    assert load_latest(tmp_path, *worker.make()) == 2


@pytest.mark.parametrize("name", [b"save", b"load", b"Tensor", b"nn", b"from_file", b"set_default_dtype"])
def test_metadata_unpickler_takes_torchs_dtypes_and_no_other_attribute_of_torch(name):
    """A ``.metadata`` that could call ``torch.save`` could write a file anywhere: only dtypes come from torch."""
    with pytest.raises(pickle.UnpicklingError, match="refused to load"):
        _verify._MetadataUnpickler(io.BytesIO(b"ctorch\n" + name + b"\n.")).load()


@pytest.mark.parametrize("refusal", ["flock refused", "no fcntl"])
def test_a_file_system_or_platform_without_flock_saves_with_a_warning(tmp_path, monkeypatch, refusal):
    import errno
    import fcntl

    if refusal == "flock refused":

        def refuse(fd, operation):
            raise OSError(errno.ENOLCK, "No locks available")

        monkeypatch.setattr(fcntl, "flock", refuse)
    else:

        def no_fcntl(root, timeout):
            raise ImportError("No module named 'fcntl'")

        monkeypatch.setattr(_retention, "_SaveLock", no_fcntl)
    model, opt = trained(2)
    with pytest.warns(RuntimeWarning, match="not protected from another save") as record:
        save_checkpoint(tmp_path, 2, model, opt)
    assert [w.filename for w in record] == [__file__]  # the warning names the caller's save, not this package
    fresh_model, fresh_opt = worker.make()
    assert load_latest(tmp_path, fresh_model, fresh_opt) == 2
    assert_same(model, opt, fresh_model, fresh_opt)


def test_a_file_longer_than_its_size_says_is_refused_not_cut(tmp_path, monkeypatch):
    """A size is known before a byte is read, and no more than the limit is read even where ``fstat`` says less
    than the file holds (a file growing while it is read, say)."""
    path = tmp_path / "latest"
    path.write_bytes(b"x" * 20)
    assert _files._read_regular(path, 20) == b"x" * 20
    with pytest.raises(OSError, match="20 bytes, more than the 10 this file may hold"):
        _files._read_regular(path, 10)
    real_fstat = os.fstat

    def smaller(fd):
        info = real_fstat(fd)
        return os.stat_result((*info[:6], 5, *info[7:]))  # st_size: 5

    monkeypatch.setattr(os, "fstat", smaller)
    for limit in (10, 11):  # an odd limit too: one byte past it is read, whatever the limit's last bit
        with pytest.raises(OSError, match=f"more than the {limit} bytes this file may hold"):
            _files._read_regular(path, limit)


def test_only_a_directory_itself_is_a_real_directory(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    os.symlink(tmp_path / "dir", tmp_path / "link")
    assert _files._is_real_dir(tmp_path / "dir")
    assert not any(_files._is_real_dir(tmp_path / name) for name in ("file", "link", "missing"))


def test_a_save_waits_for_a_lock_released_within_its_timeout(tmp_path):
    import fcntl
    import threading

    model, opt = trained(1)
    save_checkpoint(tmp_path, 1, model, opt)
    held = open(tmp_path / ".lock", "w")  # noqa: SIM115 (released by the thread)
    fcntl.flock(held, fcntl.LOCK_EX)

    def release():
        time.sleep(0.3)
        os.unlink(tmp_path / ".lock")  # as a save that ends removes it
        held.close()

    releaser = threading.Thread(target=release)
    releaser.start()
    started = time.monotonic()
    save_checkpoint(tmp_path, 2, model, opt, lock_timeout=0.9)  # waits, then saves
    releaser.join()
    assert time.monotonic() - started >= 0.3 and latest_step(tmp_path) == 2


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    model, opt = trained(1)
    save_checkpoint(tmp_path / "ckpt", 1, model, opt)
    target = tmp_path / "precious"
    target.write_text("keep me")
    os.symlink(target, tmp_path / "ckpt" / ".lock")
    with pytest.raises(CheckpointError, match="symbolic links"):
        save_checkpoint(tmp_path / "ckpt", 2, model, opt, lock_timeout=1)
    assert target.read_text() == "keep me" and latest_step(tmp_path / "ckpt") == 1


def test_a_sealed_checkpoint_under_a_name_of_the_users_is_never_deleted(tmp_path):
    model, opt = trained(1)
    first = save_checkpoint(tmp_path, 1, model, opt)
    shutil.copytree(first, tmp_path / "my-copy")  # sealed, but not named as a checkpoint: the user's
    for step in (2, 3):
        save_checkpoint(tmp_path, step, model, opt, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "my-copy", "step-00000003"]


@pytest.mark.parametrize("field", ["checkpoint", "step", "recent"])
def test_every_edit_of_the_pointers_fields_is_refused(tmp_path, field):
    model, opt = trained(1)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt)
    pointer = json.loads((tmp_path / "latest").read_text())
    edits = {
        "checkpoint": ["step-00000001", "step-00000002", "step-00000003.1"],
        "step": [0, 1, 2, 4],
        "recent": [[], ["step-00000003"], ["step-00000003", "step-00000001"]],
    }[field]
    for value in edits:
        (tmp_path / "latest").write_text(json.dumps({**pointer, field: value}))
        with pytest.raises(CheckpointError, match="its SHA-256 differs"):
            load_latest(tmp_path, *worker.make())


def test_a_load_that_fails_after_the_optimizer_loaded_puts_back_a_lazy_tables_bookkeeping(tmp_path, monkeypatch):
    """Loading restarts a lazy table's bookkeeping (every row current at the loaded count), and DCP's reading of
    the optimizer's state dict brings rows up to date in place; a load that then dies must leave values, state
    and bookkeeping consistent (it failed so before: the rows' values put back, their state and bookkeeping
    not), or later catch-ups go wrong."""
    from adamax.torch import Adamax, lazy_embeddings

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(30, 3, sparse=True), torch.nn.Flatten(), torch.nn.Linear(6, 1))
        opt = Adamax(model.parameters(), lr=0.05)
        lazy_embeddings(model, opt)
        return model, opt

    def train(model, opt, steps, seed=0):
        for step in range(steps):
            gen = torch.Generator().manual_seed(seed + step)
            opt.zero_grad()
            model(torch.randint(0, 30, (2, 2), generator=gen)).pow(2).mean().backward()
            opt.step()

    saved_model, saved_opt = make()
    train(saved_model, saved_opt, 2, seed=100)
    save_checkpoint(tmp_path, 2, saved_model, saved_opt)
    _model_write_dies_after_copying(monkeypatch)
    (model, opt), (twin_model, twin_opt) = make(), make()
    train(model, opt, 6)
    train(twin_model, twin_opt, 6)
    with pytest.raises(CheckpointError, match="the disk went away"):
        load_latest(tmp_path, model, opt)
    twin_opt.flush()  # a load brings every row up to date before anything else (as its own state_dict() would)
    train(model, opt, 7, seed=6)
    train(twin_model, twin_opt, 7, seed=6)
    opt.flush()
    twin_opt.flush()
    for a, b in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(a, b)


def test_a_load_into_torchs_own_adamax_that_fails_puts_everything_back(tmp_path, monkeypatch):
    """The restore handles optimizers without this project's bookkeeping (torch's own)."""
    model, opt = trained(2)
    save_checkpoint(tmp_path, 2, model, opt)
    _model_write_dies_after_copying(monkeypatch)
    target = worker.make()[0]
    theirs = torch.optim.Adamax(target.parameters(), lr=0.01)
    before = [p.detach().clone() for p in target.parameters()]
    with pytest.raises(CheckpointError, match="the disk went away"):
        load_latest(tmp_path, target, theirs)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters())) and not theirs.state


def test_a_negative_lock_timeout_is_refused_and_zero_saves_without_waiting(tmp_path):
    model, opt = trained(1)
    with pytest.raises(ValueError, match="lock_timeout must be a number of seconds >= 0, got -1"):
        save_checkpoint(tmp_path, 1, model, opt, lock_timeout=-1)
    assert not any(tmp_path.iterdir())
    assert save_checkpoint(tmp_path, 1, model, opt, lock_timeout=0).name == "step-00000001"


def test_the_lock_file_is_readable_by_all_and_writable_by_its_owner_only(tmp_path, monkeypatch):
    modes = []

    def reached(point):
        if point == "saved":
            modes.append(stat.S_IMODE(os.stat(tmp_path / ".lock").st_mode))

    monkeypatch.setattr(_save, "_reached", reached)
    umask = os.umask(0)
    os.umask(umask)
    save_checkpoint(tmp_path, 1, *trained(1))
    assert modes == [0o644 & ~umask]
