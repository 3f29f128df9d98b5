"""Adamax on torch.distributed (gloo, 2 CPU processes) and on sharded JAX; each against one process.

Run on their own with ``pytest -m distributed``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from adamax import distributed  # noqa: E402
from tests import distributed_workers as workers  # noqa: E402
from tests import processes  # noqa: E402

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parent.parent


def launch(scenario: str, out: Path, *options: str) -> list[subprocess.Popen]:
    store = out.parent / f".store-{out.name}-{time.monotonic_ns()}"  # a fresh rendezvous file per launch
    procs = []
    for rank in range(workers.WORLD):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(workers.WORLD), "ADAMAX_TEST_STORE": str(store)}
        cmd = [sys.executable, "-m", "tests.distributed_workers", scenario, "--out", str(out), *options]
        procs.append(processes.popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def wait(procs: list[subprocess.Popen], timeout: float = processes.TIMEOUT) -> None:
    """Wait for every rank (a hang, not a slow machine, runs out ``timeout``); whatever happens, none is left."""
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out.decode()[-3000:])
    finally:
        for p in procs:
            processes.end_group(p)
    codes = [p.returncode for p in procs]
    assert all(code == 0 for code in codes), f"exit codes by rank: {codes}\n" + "\n---\n".join(outputs)


def run(scenario: str, out: Path, *options: str) -> None:
    wait(launch(scenario, out, *options))


def assert_bitwise(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        assert torch.equal(a, b), f"max |diff| {(a - b).abs().max().item()}"


@pytest.mark.parametrize("backend", ["fused", "foreach"])
def test_ddp_equals_one_process_on_the_same_global_batch(tmp_path, backend):
    run("ddp", tmp_path / "ddp.pt", "--backend", backend)
    result = torch.load(tmp_path / "ddp.pt")
    assert_bitwise(result["params"], workers.reference_run(8))
    assert result["paths"] == ({"numba": 4} if backend == "fused" else {"foreach": 4})


def test_lazy_embeddings_under_ddp_equal_one_dense_process(tmp_path):
    """gloo all-reduces the sparse embedding gradients; the lazy rows equal a dense single-process run."""
    run("lazy-ddp", tmp_path / "lazy.pt", "--steps", "30")
    result = torch.load(tmp_path / "lazy.pt")
    assert result["paths"].get("lazy") == 1
    for a, b in zip(result["params"], workers.lazy_reference_run(30)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)  # the sums round in another order


def test_zero_shards_the_state_and_equals_the_unsharded_run(tmp_path, capsys):
    run("zero", tmp_path / "zero.pt")
    ranks = [torch.load(f"{tmp_path / 'zero.pt'}.{r}") for r in range(workers.WORLD)]
    reference = workers.reference_run(8)
    for result in ranks:
        assert_bitwise(result["params"], reference)
    total = 2 * ranks[0]["param_elements"]  # exp_avg and exp_inf for every param
    held = [r["state_elements"] for r in ranks]
    assert sum(held) == total
    assert all(0.3 * total < h < 0.7 * total for h in held), held
    with capsys.disabled():
        print(f"\nZeRO: optimizer state elements per rank {held} of {total} unsharded ({[h / total for h in held]})")


def test_fsdp2_steps_the_local_shards_with_the_fused_kernel(tmp_path):
    run("fsdp", tmp_path / "fsdp.pt")
    result = torch.load(tmp_path / "fsdp.pt")
    assert result["param_types"] == ["DTensor"]
    assert result["paths"] == {"numba": 4}, "the kernel must take the DTensors' local shards, not fall back"
    for a, b in zip(result["params"], workers.reference_run(8)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # FSDP reduces in its own order


def test_fsdp2_checkpoints_resume_bit_identically(tmp_path):
    run("fsdp-checkpoint", tmp_path / "fsdp.pt", "--ckpt-dir", str(tmp_path / "ckpt"))
    result = torch.load(tmp_path / "fsdp.pt")
    assert result["start"] == 4
    assert_bitwise(result["resumed"], result["straight"])


@pytest.fixture(scope="module")
def straight_12(tmp_path_factory) -> list[torch.Tensor]:
    """The params after 12 steps of the 'train' scenario in one uninterrupted run: what every resume must reach."""
    out = tmp_path_factory.mktemp("straight") / "straight.pt"
    run("train", out, "--steps", "12", "--ckpt-dir", str(out.parent / "ckpt"))
    return torch.load(out)["params"]


def test_dcp_resume_is_bit_identical(tmp_path, straight_12):
    run("train", tmp_path / "first.pt", "--steps", "4", "--ckpt-dir", str(tmp_path / "b"))
    run("train", tmp_path / "resumed.pt", "--steps", "12", "--ckpt-dir", str(tmp_path / "b"), "--resume")
    resumed = torch.load(tmp_path / "resumed.pt")
    assert resumed["start"] == 4
    assert_bitwise(resumed["params"], straight_12)


def test_a_save_refused_on_one_rank_is_refused_on_every_rank_and_writes_nothing(tmp_path):
    run("refused", tmp_path / "seen", "--ckpt-dir", str(tmp_path / "ckpt"))
    for rank in range(workers.WORLD):
        result = torch.load(tmp_path / f"seen{rank}")
        assert result["seen"].startswith("refused: rank 1: cannot checkpoint object"), result["seen"]
        assert result["seen_by_all"].startswith("refused: rank 0: cannot checkpoint object"), result["seen_by_all"]
        assert result["written"] == [], result["written"]  # no checkpoint, partial directory or pointer
        assert result["latest"] == 1  # and the next save, with the value gone, goes through on every rank
        # rank 0 deleted what a killed save left at that name, and the checkpoint holds only this save's files
        assert not result["leftover"]
        assert result["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "manifest.json", "state.json"]


def test_a_killed_rank_restarts_from_the_last_checkpoint(tmp_path, straight_12):
    ckpt = tmp_path / "ckpt"
    procs = launch("train", tmp_path / "never.pt", "--steps", "12", "--ckpt-dir", str(ckpt), "--stall-at", "6")
    try:
        deadline = time.monotonic() + processes.TIMEOUT
        while not (ckpt / "stalled").exists():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "the run ended early"
            time.sleep(0.1)
        os.kill(procs[1].pid, signal.SIGKILL)  # rank 1 dies mid-training
    finally:
        for p in procs:  # rank 0, blocked in the next all-reduce, is torn down as a launcher would
            processes.end_group(p)
    run("train", tmp_path / "resumed.pt", "--steps", "12", "--ckpt-dir", str(ckpt), "--resume")
    resumed = torch.load(tmp_path / "resumed.pt")
    assert resumed["start"] == 4  # the last checkpoint before step 6
    assert_bitwise(resumed["params"], straight_12)


def test_a_save_cut_short_never_replaces_the_good_checkpoint(tmp_path, straight_12):
    ckpt = tmp_path / "ckpt"
    procs = launch("train", tmp_path / "never.pt", "--steps", "12", "--ckpt-dir", str(ckpt), "--die-in-save-at", "8")
    try:
        for p in procs:
            p.wait(timeout=processes.TIMEOUT)
    finally:
        for p in procs:
            processes.end_group(p)
    assert {p.returncode for p in procs} == {-signal.SIGKILL}
    assert {p.name for p in ckpt.iterdir()} >= {"died-0", "died-1"}, "both ranks died inside save_checkpoint"
    assert any((ckpt / ".partial-step-00000008").glob("*.distcp")), "the shards of the cut save were written"
    assert distributed.latest_step(ckpt) == 4, "but 'latest' still names the last good one"
    run("train", tmp_path / "resumed.pt", "--steps", "12", "--ckpt-dir", str(ckpt), "--resume")
    resumed = torch.load(tmp_path / "resumed.pt")
    assert resumed["start"] == 4
    assert_bitwise(resumed["params"], straight_12)


def test_the_ddp_example_learns():
    """The example's held-out loss must fall visibly over its README run (one process here, same data)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_train", ROOT / "examples" / "ddp_train.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = workers.Adamax(model.parameters(), lr=1e-2)
    x_out, y_out = example.batch(-1, 1024)
    held_out = []
    for step in range(200):
        x, y = example.batch(step, 64)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        with torch.no_grad():
            held_out.append(torch.nn.functional.mse_loss(model(x_out), y_out).item())
    assert held_out[-1] < 0.6 * held_out[19], held_out[19::20]


def test_the_ddp_example_trains_checkpoints_and_resumes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    example = [
        str(ROOT / "examples" / "ddp_train.py"),
        "--steps",
        "6",
        "--ckpt-dir",
        str(tmp_path),
        "--ckpt-every",
        "3",
    ]
    first = processes.run([*cmd, *example, "--resume"])  # torchrun and its workers, ended together whatever happens
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"no checkpoint in {tmp_path}/: starting at step 0" in first.stdout
    assert "step 6/6" in first.stdout and "checkpoint step-00000006" in first.stdout
    again = processes.run([*cmd, *example[:2], "10", *example[3:], "--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 6" in again.stdout and "step 10/10" in again.stdout
