"""The console script, run as a user would."""

from __future__ import annotations

import sys

import pytest

from adamax.cli import main
from tests import processes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "tmp.png"
    assert main(["demo", "--iterations", "200", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out).shape
    assert width > 600 and height > 300
    printed = capsys.readouterr().out
    assert "least squares" in printed and f"wrote {out}" in printed


def test_demo_without_a_plot(tmp_path, capsys):
    assert main(["demo", "--iterations", "50", "--no-plot", "--out", str(tmp_path / "x.png")]) == 0
    assert not (tmp_path / "x.png").exists()
    assert "slope m" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--iterations", "-3"], "expected a positive integer, got '-3'"),
        (["demo", "--iterations", "many"], "expected a positive integer"),
        (["demo", "--lr", "nan"], "expected a positive finite number"),
        (["demo", "--lr", "0"], "expected a positive finite number"),
        (["demo", "--seed", "-1"], "expected a non-negative integer"),
        (["demo", "--out", "/no/such/dir/plot.png"], "does not exist"),
        (["demo", "--out", "plot.jpg"], "ending in .png"),
        (["demo", "--bogus"], "unrecognized arguments"),
        (["lp", "--beta2", "1.5"], "expected a decay rate in [0, 1), got '1.5'"),
        (["lp", "--beta2", "-0.1"], "expected a decay rate in [0, 1)"),
        (["freeze", "--spike", "-1"], "expected a gradient in (0, 1e+30]"),
        (["freeze", "--steps", "1"], "expected an integer"),
    ],
)
def test_bad_arguments_get_one_line(args, message):
    result = processes.run([sys.executable, "-m", "adamax", *args])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_bench_writes_json_and_a_chart(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("numba")
    pytest.importorskip("matplotlib")
    pytest.importorskip("optax")
    import json

    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    args = ["bench", "--sizes", "20k", "--no-model", "--no-small", "--repeats", "3", "--no-startup"]
    assert main([*args, "--json", str(out), "--out", str(chart)]) == 0
    result = json.loads(out.read_text())
    (case,) = result["cases"]
    assert case["numel"] == 20_000 and case["limit_GBps"] > 0
    methods = {r["method"]: r for r in case["results"]}
    expected = {"torch forloop", "torch foreach", "adamax.torch fused", "fused kernel alone", "adamax.torch compact",
                "compact kernel alone", "compact8 kernel alone", "adamax.optax compact8 (jit, donated)"}  # fmt: skip
    assert expected <= set(methods)
    assert methods["torch foreach"]["x_foreach"] == 1.0
    assert all(
        len(r["times_ms"]) >= 3 and r["median_ms"] > 0 for r in methods.values() if r["method"] != "numpy reference"
    )
    assert chart.read_bytes().startswith(PNG_SIGNATURE)
    assert all(r["fraction_of_limit"] is None for r in methods.values()), "20k elements fit in cache: no DRAM limit"


def test_bench_redraws_a_json_file_without_measuring(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    chart = tmp_path / "again.png"
    assert main(["bench", "--from-json", "benchmarks/results/cpu.json", "--out", str(chart)]) == 0
    assert chart.read_bytes().startswith(PNG_SIGNATURE)
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "fits in cache (16 MB): no DRAM limit applies" in printed and "model-like" in printed


def test_bench_knows_which_sizes_the_dram_limit_bounds():
    from adamax.cli import bench

    megabytes = 1 << 20
    assert bench.fits_in_cache(1_000_000, 48 * megabytes)  # 16 MB of arrays in a 48 MB cache
    assert not bench.fits_in_cache(10_000_000, 48 * megabytes)
    assert bench.fits_in_cache(1_000_000, None)  # unknown cache: assumed 32 MiB


def test_bench_gives_every_method_its_own_fixed_colour():
    pytest.importorskip("torch")
    from adamax.cli import bench

    methods = bench._methods(include_compile=True, include_reference=True)
    assert set(methods) <= set(bench.COLOURS)
    assert len(set(bench.COLOURS.values())) == len(bench.COLOURS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--sizes", "ten"], "expected sizes like 1M,10M,50M"),
        (["bench", "--sizes", "0"], "expected positive whole sizes"),
        (["bench", "--repeats", "2"], "expected an integer >= 3, got '2'"),
        (["bench", "--sparse", "--sparse-fraction", "0"], "expected a fraction in (0, 1]"),
        (["bench", "--work-ms", "-1"], "expected a finite number >= 0, got '-1'"),
        (["bench", "--work-ms", "ten"], "expected a number >= 0, got 'ten'"),
    ],
)
def test_bench_bad_arguments_get_one_line(args, message):
    result = processes.run([sys.executable, "-m", "adamax", *args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_lp_writes_a_png_and_prints_the_table(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "lp.png"
    assert main(["lp", "--iterations", "200", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    printed = capsys.readouterr().out
    assert "8192" in printed and "(1 - b2^p)^(1/p)" in printed


def test_compare_shows_identical_curves(tmp_path, capsys):
    for module in ("torch", "sklearn", "matplotlib"):
        pytest.importorskip(module)
    out = tmp_path / "compare.png"
    assert main(["compare", "--epochs", "2", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    printed = capsys.readouterr().out
    assert "curves identical, number for number: yes" in printed
    assert (
        "torch.optim.Adam " in printed
        or "torch.optim.Adam│" in printed.replace(" ", "")
        or "torch.optim.Adam" in printed
    )


def test_check_passes_on_this_install(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "check.png"
    assert main(["check", "--backends", "numpy,torch-forloop,torch-fused,numba kernel", "--out", str(out)]) == 0
    assert "0 failed" in capsys.readouterr().out
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_check_fails_when_a_backend_is_broken(monkeypatch, capsys):
    pytest.importorskip("torch")
    import adamax.torch

    def wrong_first_moment(self, m, g, beta1):  # b1 and 1 - b1 swapped
        return m.lerp_(g, beta1)

    monkeypatch.setattr(adamax.torch._TensorOps, "moment_", wrong_first_moment)
    assert main(["check", "--backends", "torch-forloop", "--no-plot"]) == 1
    out = capsys.readouterr()
    assert "FAIL" in out.out and "checks failed" in out.err


def test_check_lists_missing_backends_as_absent(monkeypatch, capsys):
    from adamax.cli import check

    rows = [impl._replace(available=False) if impl.name == "optax" else impl for impl in check.IMPLEMENTATIONS]
    monkeypatch.setattr(check, "IMPLEMENTATIONS", rows)
    assert main(["check", "--backends", "optax,numpy", "--no-plot"]) == 0
    assert "absent (not installed): optax" in capsys.readouterr().out


def test_bare_adamax_prints_the_help():
    result = processes.run([sys.executable, "-m", "adamax"])
    assert result.returncode == 0 and not result.stderr
    assert "usage: adamax" in result.stdout and "demo" in result.stdout and "check" in result.stdout


@pytest.mark.parametrize("verb", ["demo", "lp", "compare", "check", "bench", "freeze"])
def test_help_shows_where_the_plot_goes(verb):
    result = processes.run([sys.executable, "-m", "adamax", verb, "--help"])
    assert result.returncode == 0
    assert f"(default adamax-{verb}.png)" in " ".join(result.stdout.split())


def test_compare_without_a_plot(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "compare.png"
    assert main(["compare", "--epochs", "1", "--no-plot", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert not out.exists() and "number for number: yes" in printed
    assert "compact state: final train loss" in printed and "bfloat16 state: final train loss" in printed


def test_freeze_shows_bfloat16_state_stuck_and_compact_state_decaying(tmp_path, capsys):
    out = tmp_path / "freeze.png"
    assert main(["freeze", "--steps", "500", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.exists() and "bfloat16 state stuck at 100" in printed
    rows = [line.split("│") for line in printed.splitlines() if line.startswith("│ 500")]
    float32, compact, compact8, bfloat16 = (float(cell) for cell in rows[0][2:6])
    assert compact == pytest.approx(100 * 0.999**499, rel=1e-3) and float32 == pytest.approx(compact, rel=1e-3)
    assert float32 <= compact8 <= float32 * (1 + 2**-3)  # within a code above
    assert bfloat16 == 100


def test_check_progress_counts_the_checks_that_run(monkeypatch):
    from adamax.cli import _console, check

    counted = {}

    class Bar:
        def __init__(self, total, description):
            counted["total"], counted["advanced"] = total, 0

        def __enter__(self):
            return lambda: counted.__setitem__("advanced", counted["advanced"] + 1)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(_console, "progress", Bar)
    assert main(["check", "--backends", "numpy,numba kernel", "--no-plot"]) == 0
    runnable = [impl for impl in check.IMPLEMENTATIONS if impl.name in ("numpy", "numba kernel") and impl.available]
    expected = sum(len(impl.dtypes) for impl in runnable) * len(check.CONFIGS)
    assert counted == {"total": expected, "advanced": expected}


def test_check_piped_into_head_stops_quietly():
    result = processes.run(
        ["/bin/sh", "-c", f"{sys.executable} -m adamax check --backends numpy --all --no-plot | head -3"]
    )
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_bench_sparse_runs_and_writes_json(tmp_path, capsys):
    pytest.importorskip("numba")
    import json

    out = tmp_path / "sparse.json"
    args = ["bench", "--sparse", "--sparse-rows", "20000", "--repeats", "3", "--no-plot", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())["sparse"]
    assert result["rows"] == 20000 and result["touched_rows"] > 100
    assert {r["method"] for r in result["results"]} >= {
        "adamax.torch lazy (sparse gradient)",
        "training step, lazy",
        "adamax.torch lazy, compact8 state (sparse gradient)",
    }
    # a 20,000 x 64 table's state: m and u (8 bytes), compact (4 + 4/64), compact8 (2 + 8/64), each with an int64
    # per row (8/64 bytes per param)
    bookkeeping = 8 / 64
    assert result["state_bytes_per_param"] == pytest.approx(
        {"full": 8 + bookkeeping, "compact": 4 + 4 / 64 + bookkeeping, "compact8": 2 + 8 / 64 + bookkeeping}
    )
    out = capsys.readouterr().out
    assert "faster than the fused dense step" in out and "faster than the dense compact8 step" in out


def test_the_work_before_each_timed_step_is_calibrated_once_and_the_same_for_every_method(monkeypatch):
    torch = pytest.importorskip("torch")
    from adamax.cli import _work, bench

    work = _work.TrainingWork(5.0)
    assert work.count >= 1 and work.describe()["matmuls"] == work.count
    assert f"after {work.count} matmuls" in work.sentence() and "the same for every method" in work.sentence()
    assert _work.TrainingWork(0).count == 0 and "back to back" in _work.TrainingWork(0).sentence()
    with pytest.raises(ValueError, match="milliseconds >= 0"):
        _work.TrainingWork(-1)
    calls = []  # every timed step of every method follows the same work, in order
    monkeypatch.setattr(torch, "mm", lambda *a, **k: calls.append("work"))
    steppers = {"bandwidth limit": lambda: calls.append("limit"), "a": lambda: calls.append("a")}
    monkeypatch.setattr(bench, "_bandwidth_stepper", lambda numel: steppers["bandwidth limit"])
    monkeypatch.setattr(bench, "_methods", lambda *args: {"torch foreach": lambda sizes: steppers["a"]})
    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0)
    work.count = 2
    bench.run_case(bench.Case("tiny", [10]), 3, False, False, lambda: None, work)
    assert calls == ["work", "work", "limit", "work", "work", "a"] * 3
