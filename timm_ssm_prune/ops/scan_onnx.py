"""The selective scan's ONNX form: an ONNX ``Scan`` over the sequence, one step per token.

``torch.onnx.export(model, (x,), f, dynamo=True)`` traces the model with ``torch.export``; while it does
(``torch.onnx.is_in_onnx_export()``), ``ops.selective_scan`` calls :func:`selective_scan_onnx` instead of the
``timm_ssm_prune::selective_scan`` op (whose chunked CPU kernel has no ONNX equivalent). This function writes the
recurrence with ``torch._higher_order_ops.scan``, which torch's ONNX exporter translates into one ONNX ``Scan``
node (its body a subgraph), so nothing has to be registered with the exporter and the plain ``torch.onnx.export``
call works after ``import timm_ssm_prune``, without a ``custom_translation_table``. Every other route
(eager, ``torch.export``, ``torch.compile``) keeps the op.

Design:

* Outside the loop, in bulk: Δ = softplus(delta + delta_bias), Δ·u, and the sequence-major views
  (L, batch, G, E/G, 1) of Δ and Δ·u and (L, batch, G, 1, N) of B and C (G: groups, as the op takes them).
* Scan body, one step t, state h (batch, G, E/G, N) starting at zero::

      h = exp(Δ_t · A) * h + (Δ·u)_t * B_t        (Mul, Exp, Mul, Mul, Add)
      y_t = Σ_n h * C_t                          (Mul, ReduceSum)

  exp(Δ_t A) is formed inside the body rather than for all steps up front: the (L, batch, E, N) tensors that
  would need are large, and on onnxruntime's CPU provider the bulk version measured slower (the Scan copies each
  step's slice of its inputs).
* After the loop, in bulk: y + D·u, times SiLU(z).

The batch stays a dynamic dimension (the state's shape comes from the input's). Maths run in float32 (float64 for
float64 inputs), as the op's. Where the time goes on onnxruntime: the Scan runs its 7-node body once per token,
on (batch, E, N) tensors, through the subgraph executor; see ``benchmarks/bench_export.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['selective_scan_onnx']


def selective_scan_onnx(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                        z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                        delta_softplus: bool = False) -> Tensor:
    """``ops.selective_scan`` (same arguments and result) as a ``torch._higher_order_ops.scan`` over the sequence,
    which exports to an ONNX ``Scan``. Runs eagerly too (slowly: one step at a time), which the tests use."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        from ..export import unsupported_route
        raise unsupported_route('TorchScript (torch.jit.trace / torch.onnx.export(..., dynamo=False))')
    from torch._higher_order_ops.scan import scan

    f = torch.float64 if torch.float64 in (u.dtype, A.dtype) else torch.float32
    bsz, dim, length = u.shape
    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    groups, dstate = B4.shape[1], A.shape[1]
    eg = dim // groups
    uf = u.to(f)
    dt = delta.to(f)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    dt_seq = dt.permute(2, 0, 1).reshape(length, bsz, groups, eg, 1)
    dtu_seq = (dt * uf).permute(2, 0, 1).reshape(length, bsz, groups, eg, 1)
    B_seq = B4.to(f).permute(3, 0, 1, 2).unsqueeze(3)  # (L, batch, G, 1, N)
    C_seq = C4.to(f).permute(3, 0, 1, 2).unsqueeze(3)
    Ag = A.to(f).reshape(groups, eg, dstate)

    def step(h, x):
        dt_t, dtu_t, B_t, C_t = x
        h = torch.exp(dt_t * Ag) * h + dtu_t * B_t
        return h, (h * C_t).sum(-1)

    h0 = uf.new_zeros((bsz, groups, eg, dstate))
    _, y = scan(step, h0, (dt_seq, dtu_seq, B_seq, C_seq))  # y (L, batch, G, E/G)
    y = y.reshape(length, bsz, dim).permute(1, 2, 0)
    if D is not None:
        y = y + D.to(f)[:, None] * uf
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(u.dtype)
