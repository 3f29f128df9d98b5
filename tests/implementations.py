"""The table of implementations under test lives in the package, where ``adamax check`` uses it too."""

from adamax.cli.check import IMPLEMENTATIONS, ReferenceStepper

__all__ = ["IMPLEMENTATIONS", "ReferenceStepper"]
