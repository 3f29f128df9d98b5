"""The console script, ``adamax``, and what only it uses: its verbs (``demo``, ``lp``, ``compare``, ``check``,
``freeze``, ``bench``) and their helpers.  Nothing in the library imports from here; training code needs none of
it.  :func:`main` is the entry point."""

from adamax.cli._main import main

__all__ = ["main"]
