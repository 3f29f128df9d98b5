"""The console script, run as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adamax.cli import main

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
        ([], "required"),
    ],
)
def test_bad_arguments_get_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "adamax", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_bench_writes_json_and_a_chart(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("numba")
    pytest.importorskip("matplotlib")
    import json

    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    args = ["bench", "--sizes", "20k", "--no-model", "--repeats", "3", "--no-startup"]
    assert main([*args, "--json", str(out), "--out", str(chart)]) == 0
    result = json.loads(out.read_text())
    (case,) = result["cases"]
    assert case["numel"] == 20_000 and case["limit_GBps"] > 0
    methods = {r["method"]: r for r in case["results"]}
    assert {"torch forloop", "torch foreach", "adamax.torch fused", "fused kernel alone"} <= set(methods)
    assert methods["torch foreach"]["x_foreach"] == 1.0
    assert all(
        len(r["times_ms"]) >= 3 and r["median_ms"] > 0 for r in methods.values() if r["method"] != "numpy reference"
    )
    assert chart.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--sizes", "ten"], "expected sizes like 1M,10M,50M"),
        (["bench", "--sizes", "0"], "expected positive whole sizes"),
        (["bench", "--repeats", "2"], "integer >= 3"),
    ],
)
def test_bench_bad_arguments_get_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "adamax", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
