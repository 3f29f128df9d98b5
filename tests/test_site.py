"""The API reference: ``make site`` builds it from the docstrings with no warning, and every public name has a
docstring of its own (a class's public methods included), so the reference has something to say for each."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ("adamax", "adamax.spec", "adamax.reference", "adamax.textbook", "adamax.numpy", "adamax.torch",
          "adamax.optax", "adamax.keras", "adamax.compact", "adamax.compact8", "adamax.distributed")  # fmt: skip


def _public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [n for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]  # fmt: skip


def test_the_site_builds_strict_with_no_warning(tmp_path):
    pytest.importorskip("mkdocstrings")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    pages = {p.parent.name for p in tmp_path.glob("*/index.html")}
    assert {m.split(".")[-1] if "." in m else "adamax" for m in PUBLIC} <= pages
    torch_page = (tmp_path / "torch" / "index.html").read_text()
    assert 'id="adamax.torch.AdamaxW"' in torch_page and 'id="adamax.torch.lazy_embeddings"' in torch_page


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_docstring_of_its_own(name):
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), name
    missing = []
    for attr in _public_names(module):
        value = getattr(module, attr)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue  # constants: described in their module's docstring
        if not (value.__doc__ or "").strip():
            missing.append(attr)
        if inspect.isclass(value):
            for method, member in vars(value).items():
                if method.startswith("_") or not inspect.isfunction(member):
                    continue
                if not (member.__doc__ or "").strip():
                    missing.append(f"{attr}.{method}")
    assert not missing, f"{name}: no docstring for {', '.join(missing)}"
