"""Adamax, the infinity-norm variant of Adam: one exact definition, many backends.

Layers (each imported on its own, so NumPy alone is enough for the core):

* :mod:`adamax.textbook` - the textbook's ``Adamax(data, theta, ...)`` on linear regression
* :mod:`adamax.spec` - the validated hyperparameters and the conventions
* :mod:`adamax.reference` - the exact NumPy reference, one array at a time
* :mod:`adamax.numpy` - a stateful optimizer over lists and dicts of arrays
"""

from adamax.spec import EPS_PLACEMENTS, AdamaxConfig

__all__ = ["EPS_PLACEMENTS", "AdamaxConfig", "__version__"]
__version__ = "0.1.0"
