"""The package as users get it: the sdist and the wheel built from it, installed into a fresh environment.

``python -m build`` builds the sdist from this tree, then the wheel from the sdist (so a file the sdist leaves out
is missing from the wheel too).  The wheel goes into a new virtual environment with pip, without its
dependencies; the development environment's site-packages are put after the new one's on its path (a ``.pth``
line), standing in for the extras, so each layer imports from the installed wheel, not from this tree.
About 10 s.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("adamax/cli", "adamax/distributed", "adamax/kernels", "adamax/numpy", "adamax/torch")
LAYERS = (
    "adamax",
    "adamax.reference",
    "adamax.textbook",
    "adamax.numpy",
    "adamax.compact",
    "adamax.compact8",
    "adamax.torch",
    "adamax.distributed",
    "adamax.optax",
    "adamax.keras",
    "adamax.kernels",
    "adamax.cli",
)


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    done = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("adamax-*.whl")
    (sdist,) = out.glob("adamax-*.tar.gz")
    return wheel, sdist


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """A fresh environment's Python, with the wheel installed by pip."""
    wheel, _ = dist
    env = tmp_path_factory.mktemp("env")
    done = _run(sys.executable, "-m", "venv", "--without-pip", str(env))
    assert done.returncode == 0, done.stderr
    python = env / "bin" / "python"
    done = _run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                "--quiet", str(wheel))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    site = _run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    (Path(site) / "zz_extras_from_the_dev_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_holds_every_subpackage_the_type_marker_and_the_license_and_no_tests(dist):
    wheel, _ = dist
    names = zipfile.ZipFile(wheel).namelist()
    for package in SUBPACKAGES:
        assert f"{package}/__init__.py" in names, package
    assert "adamax/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not any(name.startswith("tests/") for name in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    for extra in ("torch", "jax", "keras", "fast", "gpu", "plot", "data", "trainers"):
        assert f"Provides-Extra: {extra}" in metadata


def test_the_sdist_holds_the_sources_the_license_and_the_readme(dist):
    _, sdist = dist
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for name in ("LICENSE", "README.md", "pyproject.toml", "src/adamax/py.typed", "src/adamax/torch/__init__.py"):
        assert name in names, name


def test_each_layer_imports_from_the_installed_wheel(installed):
    code = (
        "import importlib, pathlib, sys\n"
        f"for name in {LAYERS!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert not pathlib.Path(module.__file__).is_relative_to({str(ROOT)!r}), module.__file__\n"
        "import adamax.torch, torch\n"
        "ps = [torch.nn.Parameter(torch.linspace(-1, 1, 5)) for _ in range(2)]\n"
        "opts = [adamax.torch.Adamax([ps[0]], lr=0.1), torch.optim.Adamax([ps[1]], lr=0.1)]\n"
        "for t in range(3):\n"
        "    for p, opt in zip(ps, opts):\n"
        "        p.grad = torch.cos(torch.arange(5.0) + t)\n"
        "        opt.step()\n"
        "assert torch.equal(ps[0], ps[1]) and not torch.equal(ps[0], torch.linspace(-1, 1, 5))\n"
        "print('stepped as torch.optim.Adamax')\n"
    )
    done = _run(str(installed), "-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "stepped as torch.optim.Adamax"
    script = installed.parent / "adamax"
    done = _run(str(script), "--help")
    assert done.returncode == 0 and "demo" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize(("layer", "missing", "extra"), [("adamax.torch", "torch", "torch"),
                                                         ("adamax.optax", "jax", "jax"),
                                                         ("adamax.keras", "keras", "keras")])  # fmt: skip
def test_a_layer_without_its_extra_names_the_extra_to_install(installed, layer, missing, extra):
    done = _run(str(installed), "-c", f"import sys; sys.modules[{missing!r}] = None; import {layer}")
    assert done.returncode != 0
    assert f"pip install 'adamax[{extra}]'" in done.stderr, done.stderr[-2000:]
