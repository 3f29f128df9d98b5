"""Which extra to install for what: one message for every layer and verb that needs an optional package."""

from __future__ import annotations

import importlib


def require(*modules: str, extra: str, what: str) -> None:
    """Import ``modules`` or raise :class:`ModuleNotFoundError` naming the extra that brings them.

    >>> require("no_such_package", extra="torch", what="adamax.example")
    Traceback (most recent call last):
    ...
    ModuleNotFoundError: adamax.example needs no_such_package, which is not installed here: pip install 'adamax[torch]'
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ModuleNotFoundError(
                f"{what} needs {name}, which is not installed here: pip install 'adamax[{extra}]'", name=name
            ) from err
