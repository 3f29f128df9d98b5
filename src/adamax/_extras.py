"""Which extra to install for what: one message for every layer and verb that needs an optional package."""

from __future__ import annotations

import importlib


def require(*modules: str, extra: str, what: str) -> None:
    """Import ``modules`` or raise :class:`ModuleNotFoundError` naming the extra that brings them.

    >>> require("numpy", extra="core", what="adamax.reference")
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ModuleNotFoundError(
                f"{what} needs {name}, which is not installed here: pip install 'adamax[{extra}]'", name=name
            ) from err
