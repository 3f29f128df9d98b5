"""Every Python example in the README runs, in order, as one session would run them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_examples_run_in_order():
    assert len(BLOCKS) >= 5
    namespace: dict = {}
    for i, code in enumerate(BLOCKS):
        try:
            exec(compile(code, f"{README}:block{i}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"README example {i} fails:\n{code}") from err
