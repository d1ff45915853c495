"""The 'decay' alignment's scan: a selective scan whose state also decays across pruned positions.

Used by both model families after a pruning stage with ``alignment='decay'`` (docs/method.md §5). Before
each kept token the dense scan would have passed ``g`` pruned positions; their inputs are gone, but the state
would still have decayed through them. With the token-independent step ``Δ̄ = softplus(gap_bias)`` that decay
is folded into the kept token's step:

    Δ' = Δ + g·Δ̄,   u' = u·Δ/Δ'   (so the input term Δ'u'B equals ΔuB),   y = scan(u', Δ', A, B, C) + D·u

and the gate ``SiLU(z)``, when given, multiplies the result. With every gap 0 this is the ordinary scan.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan import selective_scan

__all__ = ['decay_selective_scan']


def decay_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                         z: Optional[Tensor], delta_bias: Tensor, gap_bias: Tensor, gaps: Tensor,
                         backend: str = 'auto') -> Tensor:
    """Selective scan with the state decayed across ``gaps`` skipped positions before each step.

    u, delta: (batch, E, L) (delta before ``delta_bias`` and softplus); A (E, N); B, C as ``selective_scan``
    takes them; D, delta_bias, gap_bias: (E,); z: (batch, E, L) or None; gaps: broadcastable to (batch, E, L),
    the number of pruned positions the dense scan would have visited just before each step. Returns y like
    ``selective_scan`` (the dtype of u), computed in float32 (float64 for float64 inputs).
    """
    f = torch.promote_types(u.dtype, torch.float32)
    step = F.softplus(delta.to(f) + delta_bias.to(f)[:, None])
    step_new = step + gaps.to(step.dtype) * F.softplus(gap_bias.to(f))[:, None]
    u_new = (u.to(f) * (step / step_new)).to(u.dtype)
    y = selective_scan(u_new, step_new.to(u.dtype), A, B, C, None, None, None, False, backend=backend)
    out = y.to(f) + D.to(f)[:, None] * u.to(f)
    if z is not None:
        out = out * F.silu(z.to(f))
    return out.to(y.dtype)
