"""Progress bars and tables for the console script.

rich draws them when it is installed (the ``plot`` extra); otherwise the
script still runs on NumPy alone and prints plain text.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence

try:
    import rich.console
    import rich.progress
    import rich.table
except ImportError:  # rich is optional
    rich = None


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[], None]]:
    """Yield ``advance()``, which moves a progress bar of ``total`` steps by one."""
    if rich is None:
        yield lambda: None
        return
    with rich.progress.Progress(
        rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(),
        rich.progress.MofNCompleteColumn(),
        rich.progress.TimeElapsedColumn(),
        console=rich.console.Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``columns`` to stdout."""
    if rich is not None:
        out = rich.table.Table(title=title)
        for name in columns:
            out.add_column(name, justify="right" if name != columns[0] else "left")
        for row in rows:
            out.add_row(*row)
        console = rich.console.Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)  # logs and pipes: no truncated names
        console.print(out)
        return
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows)]
    print(title)
    for row in [columns, *rows]:
        print("  ".join(str(cell).rjust(w) for cell, w in zip(row, widths)))
    sys.stdout.flush()
