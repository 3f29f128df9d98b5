r"""PyTorch: ``adamax.torch.Adamax``, a drop-in for ``torch.optim.Adamax``.

Same defaults, same state keys (``step``, ``exp_avg``, ``exp_inf``), same
error messages, and with torch-compatible options the same bits: float32 and
float64, forloop and foreach, complex included.  Checkpoints move both ways.

What it adds:

* ``eps_placement="max" | "denominator" | "none"`` (:mod:`adamax.spec`): torch
  and optax, Keras/TensorFlow, or the paper.
* ``decoupled_weight_decay=True`` (``p *= 1 - lr * wd``), and :class:`AdamaxW`
  with it on by default.
* All-or-nothing steps: every group's hyperparameters, every gradient (sparse,
  shape, dtype, device) and every state entry is checked before the first
  tensor is written, so a step that raises changes nothing.
* Validated checkpoints: :meth:`Adamax.load_state_dict` checks structure,
  shapes and dtypes against the params and refuses a bad one whole.
* ``skip_nonfinite=True``: a step in which any gradient holds NaN or inf is
  skipped whole and counted in ``skipped_steps``.  The default, like torch,
  applies such gradients, and NaN then spreads into params and state.

The math is :func:`adamax._algorithm.adamax_update`, the one definition every
backend runs; this module supplies torch operations for one tensor (forloop)
or for lists of tensors (foreach).

>>> import torch
>>> from adamax.torch import Adamax
>>> model = torch.nn.Linear(3, 1)
>>> opt = Adamax(model.parameters(), lr=2e-3)
>>> model(torch.ones(2, 3)).sum().backward()
>>> opt.step()
>>> sorted(opt.state[model.weight])
['exp_avg', 'exp_inf', 'step']
"""

from adamax._extras import require

require("torch", extra="torch", what="adamax.torch")

from adamax.torch._compact import convert_state_dict  # noqa: E402
from adamax.torch._devices import KERNEL_FOR_DEVICE as _KERNEL_FOR_DEVICE  # noqa: E402, F401  (tests: CPU to Triton)
from adamax.torch._lazy import lazy_embeddings  # noqa: E402
from adamax.torch._ops import _TensorOps as _TensorOps  # noqa: E402  (tests replace its methods)
from adamax.torch._optimizer import Adamax, AdamaxW  # noqa: E402

__all__ = ["Adamax", "AdamaxW", "convert_state_dict", "lazy_embeddings"]

for _cls in (Adamax, AdamaxW):
    _cls.__module__ = __name__  # one public home, for repr, docs and pickling
del _cls
