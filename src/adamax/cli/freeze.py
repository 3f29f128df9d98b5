"""``adamax freeze``: why compact state exists.  One spike gradient, then small ones: u in float32 state decays
by beta2 a step; in bfloat16 state (torch's, for bfloat16 params) the decayed value rounds back to where it was
and u never forgets the spike; compact and compact8 state (:mod:`adamax.compact`, :mod:`adamax.compact8`) decay as
float32 does, within a code."""

from __future__ import annotations

import numpy as np

from adamax import compact, compact8, reference
from adamax.spec import AdamaxConfig

_F32 = np.float32


def freeze_demo(*, steps: int, spike: float, grad: float, beta2: float = 0.999) -> dict:
    """u of one element after one spike gradient and ``steps - 1`` small ones, four ways: float32 state (the
    reference), compact and compact8 state, and naive bfloat16 state (u rounded to bfloat16 at every step, as
    torch's Adamax keeps it for bfloat16 params).  Returns ``{"step", "float32", "compact", "compact8",
    "bfloat16"}`` arrays."""
    config = AdamaxConfig(lr=1e-3, betas=(0.9, beta2))
    zero = np.zeros(1, _F32)
    full, small, smaller = reference.init(zero), compact.init(zero), compact8.init(zero)
    naive = _F32(0)
    out = {"step": np.arange(1, steps + 1), "float32": [], "compact": [], "compact8": [], "bfloat16": []}
    for t in range(steps):
        g = np.full(1, spike if t == 0 else grad, _F32)
        _, full = reference.update(zero, g, full, config)
        _, small = compact.update(zero, g, small, config)
        _, smaller = compact8.update(zero, g, smaller, config)
        decayed = compact.bf16_to_f32(compact.f32_to_bf16_nearest(naive * _F32(beta2)))[()]
        fresh = compact.bf16_to_f32(compact.f32_to_bf16_nearest(np.abs(g[0]) + _F32(config.eps)))[()]
        naive = max(decayed, fresh)
        out["float32"].append(full.exp_inf[0])
        out["compact"].append(compact.to_full(small)[2][0])
        out["compact8"].append(compact8.to_full(smaller)[2][0])
        out["bfloat16"].append(naive)
    return {key: np.asarray(value) for key, value in out.items()}
