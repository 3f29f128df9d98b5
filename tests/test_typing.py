"""The public API's annotations (the package ships ``py.typed``), checked by mypy as users' code would be: code
written against the public API type-checks clean, and misuse is reported on the very lines that misuse it (so
the annotations say something, and are not ``Any``).  mypy reads the package's annotations without reporting
on its internals (``--follow-imports=silent``).  About 10 s (mypy's cache is kept in a temporary directory)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "typed"


def _mypy(path: Path, cache: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports", "--no-error-summary",
         "--cache-dir", str(cache), "--python-version", "3.11", str(path)],
        capture_output=True, text=True, timeout=600, cwd=HERE.parents[1],
    )  # fmt: skip


def test_code_written_against_the_public_api_type_checks(tmp_path):
    done = _mypy(HERE / "public_api.py", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_misuse_of_the_public_api_is_reported_on_its_lines(tmp_path):
    source = (HERE / "misuse.py").read_text().splitlines()
    expected = {i + 1 for i, line in enumerate(source) if "# E:" in line}
    done = _mypy(HERE / "misuse.py", tmp_path)
    reported = {int(m.group(1)) for m in re.finditer(r"misuse\.py:(\d+): error", done.stdout)}
    assert expected and reported == expected, done.stdout
