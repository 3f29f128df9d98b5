"""A stateful Adamax optimizer over NumPy arrays, updated in place.

It lifts :func:`adamax.reference.update` over a list, tuple or nested dict of
arrays, the way jax's ``example_libraries.optimizers`` lifts per-array math
over pytrees.  Each array keeps its own step count, as in torch.

Both :meth:`Adamax.step` and :meth:`Adamax.load_state_dict` are
all-or-nothing: every input is checked and every new value computed before
the first array is written, so an exception leaves params and state as they
were.

>>> import numpy as np
>>> from adamax.numpy import Adamax
>>> params = {"w": np.array([1.0, 2.0]), "b": np.array(0.5)}
>>> opt = Adamax(params, lr=0.1)
>>> opt.step({"w": np.array([1.0, -1.0]), "b": np.array(2.0)})
>>> params["w"].round(6), params["b"].round(6)
(array([0.9, 2.1]), np.float64(0.4))
"""

from adamax.numpy._optimizer import Adamax
from adamax.numpy._trees import RowGradient

__all__ = ["Adamax", "RowGradient"]

for _cls in (Adamax, RowGradient):
    _cls.__module__ = __name__  # one public home, for repr, docs and pickling
del _cls
