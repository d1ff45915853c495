"""Selective scan (Mamba S6): a dispatcher-visible op with a fast pure-PyTorch path and the CUDA kernel.

Semantics follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``::

    Δ = softplus(delta + delta_bias)          (bias / softplus optional)
    h_t = exp(Δ_t A) * h_{t-1} + Δ_t u_t B_t  (h_{-1} = 0)
    y_t = <C_t, h_t> + D u_t
    out = y * silu(z)                         (if z is given)

Shapes: u, delta, z (B, E, L); A (E, N); B, C (B, N, L) or grouped (B, G, N, L) with E % G == 0;
D, delta_bias (E,). Maths run in float32 (float64 when the inputs are float64); the output has u's dtype.

The torch path is registered with ``torch.library`` as ``timm_ssm_prune::selective_scan`` (with a fake
implementation, an autograd formula and a FLOP formula), so ``torch.compile(fullgraph=True)`` traces it
and ``FlopCounterMode`` counts it. It walks the sequence in chunks of ``T`` steps: per chunk it
builds exp(ΔA) and ΔuB for those steps only (small enough to stay in cache), runs the recurrence in
place and contracts with C. The forward returns the state entering each chunk; the backward replays
each chunk from that state (newest chunk first), runs the adjoint recurrence
λ_t = C_t g_t + exp(Δ_{t+1} A) λ_{t+1} backwards and forms every gradient from λ and h.
No L-step autograd graph is ever built. ``T`` depends on E·N and L only, never on the batch size, so an exported
or compiled graph does not specialise on the batch; inside the op, batches too large for the chunk buffers run
in blocks of rows. Under ``torch.onnx.export`` the scan is written as an ONNX ``Scan`` instead (``scan_onnx.py``).
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.flop_counter
from torch import Tensor

__all__ = [
    'selective_scan', 'selective_scan_ref', 'cuda_kernels_available', 'scan_flops', 'CUDA_INSTALL_HINT',
    'set_chunk_size', 'record_scan_calls',
]

CUDA_INSTALL_HINT = (
    "mamba-ssm CUDA kernels are not available. Install them on a CUDA machine with "
    "`pip install --no-build-isolation 'timm-ssm-prune[cuda]'` (needs a CUDA build of torch and nvcc), "
    "or use backend='torch' / backend='auto'."
)

_BACKENDS = ('auto', 'torch', 'cuda', 'triton')
_CHUNK_BYTES = 4 << 20  # target size of one chunk's (T, rows, E, N) work tensor
_CHUNK_ROWS = 16  # batch rows a chunk's length is sized for: T·16·E·N·elt ≈ _CHUNK_BYTES


def set_chunk_size(nbytes: int) -> None:
    """Set the target size in bytes of one chunk's (T, rows, E, N) buffer (default 4 MiB)."""
    global _CHUNK_BYTES
    if nbytes < 1:
        raise ValueError(f"chunk size must be positive, got {nbytes}")
    _CHUNK_BYTES = int(nbytes)


def _elt_size(u: Tensor, A: Tensor) -> int:
    return 8 if _compute_dtype(u, A) == torch.float64 else 4


def _chunk_len(u: Tensor, A: Tensor) -> int:
    """Steps per chunk, from E·N and L only (never the batch size, so that an exported or compiled graph does not
    specialise on it): about _CHUNK_BYTES of (T, _CHUNK_ROWS, E, N) work, at least 4 steps, balanced so that the
    chunks have equal length. Larger batches run in blocks of rows inside the op (``_batch_rows``)."""
    dim, length = u.shape[1], u.shape[2]
    per_step = max(1, _CHUNK_ROWS * dim * A.shape[1] * _elt_size(u, A))
    t0 = int(min(length, max(4, _CHUNK_BYTES // per_step)))
    return max(1, math.ceil(length / math.ceil(length / t0))) if length else 1


def _batch_rows(u: Tensor, A: Tensor, T: int) -> int:
    """Batch rows per block inside the op: the chunk buffers (T, rows, E, N) stay near _CHUNK_BYTES whatever the
    batch (a real-shape decision made at run time, invisible to tracing)."""
    return max(1, _CHUNK_BYTES // max(1, T * u.shape[1] * A.shape[1] * _elt_size(u, A)))


# ------------------------------------------------------------------------------------------------
# CUDA kernels (mamba-ssm), imported lazily and never at package import
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _mamba_selective_scan_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, missing compiled extension, triton failures, ...
        return None
    return selective_scan_fn


def cuda_kernels_available() -> bool:
    """True when mamba-ssm's compiled selective-scan kernel imports and a GPU is visible."""
    return torch.cuda.is_available() and _mamba_selective_scan_fn() is not None


# ------------------------------------------------------------------------------------------------
# Argument checks (shared by every backend)
# ------------------------------------------------------------------------------------------------

_FLOAT_IO = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_FLOAT_PARAM = (torch.float32, torch.float64)


def _check_args(u, delta, A, B, C, D, z, delta_bias):
    def _tensor(name, t):
        if not isinstance(t, Tensor):
            raise ValueError(f"selective_scan: `{name}` must be a tensor, got {type(t).__name__}")

    for name, t in (('u', u), ('delta', delta), ('A', A), ('B', B), ('C', C)):
        _tensor(name, t)
    if u.dim() != 3:
        raise ValueError(f"selective_scan: `u` must be (batch, dim, length), got shape {tuple(u.shape)}")
    if u.dtype not in _FLOAT_IO:
        raise ValueError(f"selective_scan: `u` must be float32/float16/bfloat16/float64, got {u.dtype}")
    bsz, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: `delta` shape {tuple(delta.shape)} must equal u's {tuple(u.shape)}")
    if delta.dtype != u.dtype:
        raise ValueError(f"selective_scan: `delta` dtype {delta.dtype} must equal u's {u.dtype}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: `A` must be (dim={dim}, d_state), got shape {tuple(A.shape)}")
    if A.dtype not in _FLOAT_PARAM:
        raise ValueError(f"selective_scan: `A` must be float32 (or float64), got {A.dtype}")
    dstate = A.shape[1]
    if dstate > 256:
        raise ValueError(f"selective_scan: `A` has d_state={dstate}; at most 256 is supported")
    groups = None
    for name, t in (('B', B), ('C', C)):
        if t.dim() == 3:
            g = 1
            ok = t.shape == (bsz, dstate, length)
        elif t.dim() == 4:
            g = t.shape[1]
            ok = t.shape == (bsz, g, dstate, length) and g > 0 and dim % g == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"selective_scan: `{name}` must be (batch={bsz}, d_state={dstate}, length={length}) or "
                f"(batch, groups, d_state, length) with dim % groups == 0, got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_IO:
            raise ValueError(f"selective_scan: `{name}` must be a floating tensor, got {t.dtype}")
        if groups is not None and g != groups:
            raise ValueError(f"selective_scan: `B` and `C` have different group counts ({groups} vs {g})")
        groups = g
    if D is not None:
        _tensor('D', D)
        if D.shape != (dim,):
            raise ValueError(f"selective_scan: `D` must be (dim={dim},), got shape {tuple(D.shape)}")
        if D.dtype not in _FLOAT_PARAM:
            raise ValueError(f"selective_scan: `D` must be float32 (or float64), got {D.dtype}")
    if delta_bias is not None:
        _tensor('delta_bias', delta_bias)
        if delta_bias.shape != (dim,):
            raise ValueError(
                f"selective_scan: `delta_bias` must be (dim={dim},), got shape {tuple(delta_bias.shape)}")
        if delta_bias.dtype not in _FLOAT_PARAM:
            raise ValueError(f"selective_scan: `delta_bias` must be float32 (or float64), got {delta_bias.dtype}")
    if z is not None:
        _tensor('z', z)
        if z.shape != u.shape:
            raise ValueError(f"selective_scan: `z` shape {tuple(z.shape)} must equal u's {tuple(u.shape)}")
        if z.dtype != u.dtype:
            raise ValueError(f"selective_scan: `z` dtype {z.dtype} must equal u's {u.dtype}")
    for name, t in (('delta', delta), ('A', A), ('B', B), ('C', C), ('D', D), ('z', z),
                    ('delta_bias', delta_bias)):
        if t is not None and t.device != u.device:
            raise ValueError(f"selective_scan: `{name}` is on {t.device} but `u` is on {u.device}")


# ------------------------------------------------------------------------------------------------
# Pure PyTorch implementation (device agnostic)
# ------------------------------------------------------------------------------------------------

def _compute_dtype(*ts) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _layout(u, delta, A, B, C, delta_bias, delta_softplus):
    """Sequence-major (L, B, G, Eg, ...) views in the compute dtype, shared by forward and backward."""
    f = _compute_dtype(u, A)
    bsz, dim, length = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    groups, dstate = B.shape[1], A.shape[1]
    eg = dim // groups
    dt_raw = delta.to(f)
    if delta_bias is not None:
        dt_raw = dt_raw + delta_bias.to(f)[:, None]
    dt = F.softplus(dt_raw) if delta_softplus else dt_raw
    uL = u.to(f).permute(2, 0, 1).reshape(length, bsz, groups, eg)
    dtL = dt.permute(2, 0, 1).reshape(length, bsz, groups, eg)
    BL = B.to(f).permute(3, 0, 1, 2).unsqueeze(4).contiguous()  # (L, B, G, N, 1)
    CL = C.to(f).permute(3, 0, 1, 2).unsqueeze(4).contiguous()  # (L, B, G, N, 1)
    Af = A.to(f).reshape(groups, eg, dstate)
    return f, dt_raw, dt, uL, dtL, BL, CL, Af


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, T):
    bsz, dim, length = u.shape
    f, _, _, uL, dtL, BL, CL, Af = _layout(u, delta, A, B, C, delta_bias, delta_softplus)
    groups, eg, dstate = Af.shape
    n_chunks = math.ceil(length / T)
    dtu = dtL * uL
    states = u.new_zeros((n_chunks, bsz, groups, eg, dstate), dtype=f)
    y = u.new_empty((length, bsz, groups, eg), dtype=f)
    # Chunk buffers are allocated once and reused: fresh multi-MB allocations per chunk cost more than the maths.
    dA_buf = u.new_empty((T, bsz, groups, eg, dstate), dtype=f)
    hs_buf = torch.empty_like(dA_buf)
    h = u.new_zeros((bsz, groups, eg, dstate), dtype=f)
    for c in range(n_chunks):
        c0, c1 = c * T, min(length, (c + 1) * T)
        n = c1 - c0
        if c > 0:
            states[c].copy_(h)
        dA = torch.mul(dtL[c0:c1].unsqueeze(-1), Af, out=dA_buf[:n]).exp_()
        hs = torch.mul(dtu[c0:c1].unsqueeze(-1), BL[c0:c1].transpose(-1, -2), out=hs_buf[:n])  # -> h_t in place
        hs[0].addcmul_(dA[0], h)
        for t in range(1, n):
            hs[t].addcmul_(dA[t], hs[t - 1])
        h.copy_(hs[n - 1])
        # contraction over the short state axis: mul + sum beats a (E x N) @ (N x 1) bmm on CPU
        torch.sum(torch.mul(hs, CL[c0:c1].transpose(-1, -2), out=dA), -1, out=y[c0:c1])
    y = y.reshape(length, bsz, dim).permute(1, 2, 0)
    if D is not None:
        y = y + D.to(f)[:, None] * u.to(f)
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(u.dtype).contiguous(), states.reshape(n_chunks, bsz, dim, dstate)


def _scan_backward(gout, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, T):
    bsz, dim, length = u.shape
    f, dt_raw, dt, uL, dtL, BL, CL, Af = _layout(u, delta, A, B, C, delta_bias, delta_softplus)
    groups, eg, dstate = Af.shape
    n_chunks = states.shape[0]
    states = states.to(f).reshape(n_chunks, bsz, groups, eg, dstate)
    g = gout.to(f)
    uf = u.to(f)
    need_y = z is not None
    if z is not None:
        zf = z.to(f)
        sz = torch.sigmoid(zf)
        g_y = g * zf * sz  # grad wrt y before gating: g * silu(z)
    else:
        g_y = g
    gsL = g_y.permute(2, 0, 1).reshape(length, bsz, groups, eg)
    dtu = dtL * uL

    gdtL = torch.empty_like(dtL)
    guL = torch.empty_like(uL)
    gBL = u.new_empty((length, bsz, groups, 1, dstate), dtype=f)
    gCL = u.new_empty((length, bsz, groups, 1, dstate), dtype=f)
    gA = torch.zeros_like(Af)
    yL = u.new_empty((length, bsz, groups, eg), dtype=f) if need_y else None
    chunk_shape = (T, bsz, groups, eg, dstate)
    dA_buf = u.new_empty(chunk_shape, dtype=f)
    h_buf = u.new_empty((T + 1,) + chunk_shape[1:], dtype=f)
    lam_buf = torch.empty_like(dA_buf)
    tmp_buf = torch.empty_like(dA_buf)
    lamB_buf = u.new_empty((T, bsz, groups, eg), dtype=f)
    carry = u.new_zeros(chunk_shape[1:], dtype=f)  # exp(Δ_{t1} A) λ_{t1} handed back from the next chunk
    for c in reversed(range(n_chunks)):
        c0, c1 = c * T, min(length, (c + 1) * T)
        n = c1 - c0
        dA = torch.mul(dtL[c0:c1].unsqueeze(-1), Af, out=dA_buf[:n]).exp_()
        hb = h_buf[:n + 1]
        hb[0].copy_(states[c])
        torch.mul(dtu[c0:c1].unsqueeze(-1), BL[c0:c1].transpose(-1, -2), out=hb[1:])
        for t in range(n):
            hb[t + 1].addcmul_(dA[t], hb[t])
        hs, hprev = hb[1:], hb[:-1]
        if need_y:
            torch.sum(torch.mul(hs, CL[c0:c1].transpose(-1, -2), out=tmp_buf[:n]), -1, out=yL[c0:c1])
        gs = gsL[c0:c1]  # (n, B, G, Eg)
        lam = torch.mul(gs.unsqueeze(-1), CL[c0:c1].transpose(-1, -2), out=lam_buf[:n])  # (n, B, G, Eg, N)
        lam[n - 1].add_(carry)
        for t in range(n - 2, -1, -1):
            lam[t].addcmul_(dA[t + 1], lam[t + 1])
        torch.mul(dA[0], lam[0], out=carry)
        torch.bmm(gs.reshape(-1, 1, eg), hs.view(-1, eg, dstate), out=gCL[c0:c1].view(-1, 1, dstate))
        lamB = torch.sum(torch.mul(lam, BL[c0:c1].transpose(-1, -2), out=tmp_buf[:n]), -1, out=lamB_buf[:n])
        torch.bmm(dtu[c0:c1].reshape(-1, 1, eg), lam.view(-1, eg, dstate), out=gBL[c0:c1].view(-1, 1, dstate))
        P = dA.mul_(lam).mul_(hprev)  # λ_t ⊙ exp(Δ_t A) ⊙ h_{t-1}
        torch.addcmul(torch.mul(P, Af, out=tmp_buf[:n]).sum(-1), uL[c0:c1], lamB, out=gdtL[c0:c1])
        torch.mul(dtL[c0:c1], lamB, out=guL[c0:c1])
        gA += P.mul_(dtL[c0:c1].unsqueeze(-1)).sum((0, 1))

    def _bel(x):  # (L, B, G, Eg) -> (B, E, L)
        return x.reshape(length, bsz, dim).permute(1, 2, 0)

    gu = _bel(guL)
    gdt = _bel(gdtL)
    if delta_softplus:
        gdt = gdt * torch.sigmoid(dt_raw)
    gD = gz = gbias = None
    if D is not None:
        Df = D.to(f)
        gu = gu + g_y * Df[:, None]
        gD = (g_y * uf).sum((0, 2))
    if z is not None:
        y0 = _bel(yL)
        if D is not None:
            y0 = y0 + Df[:, None] * uf
        gz = g * y0 * sz * (1 + zf * (1 - sz))
    if delta_bias is not None:
        gbias = gdt.sum((0, 2))
    gB = gBL.squeeze(3).permute(1, 2, 3, 0)
    gC = gCL.squeeze(3).permute(1, 2, 3, 0)
    if B.dim() == 3:
        gB = gB.squeeze(1)
    if C.dim() == 3:
        gC = gC.squeeze(1)
    gA = gA.reshape(dim, dstate)
    return (gu.to(u.dtype).contiguous(), gdt.to(delta.dtype).contiguous(), gA.to(A.dtype),
            gB.to(B.dtype).contiguous(), gC.to(C.dtype).contiguous(),
            None if gD is None else gD.to(D.dtype),
            None if gz is None else gz.to(z.dtype).contiguous(),
            None if gbias is None else gbias.to(delta_bias.dtype))


# ------------------------------------------------------------------------------------------------
# torch.library registration
# ------------------------------------------------------------------------------------------------

@torch.library.custom_op("timm_ssm_prune::selective_scan", mutates_args=())
def _scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
             chunk: int) -> Tuple[Tensor, Tensor]:
    rows = _batch_rows(u, A, chunk)
    if rows >= u.shape[0]:
        return _scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk)
    outs, states = zip(*(
        _scan_forward(u[b:b + rows], delta[b:b + rows], A, B[b:b + rows], C[b:b + rows], D,
                      None if z is None else z[b:b + rows], delta_bias, delta_softplus, chunk)
        for b in range(0, u.shape[0], rows)))
    return torch.cat(outs, 0), torch.cat(states, 1)


@_scan_op.register_fake
def _scan_op_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
    bsz, dim, length = u.shape
    n_chunks = math.ceil(length / chunk)
    # contiguous like the real outputs (empty_like would copy the strides of a transposed u)
    return u.new_empty(u.shape), u.new_empty((n_chunks, bsz, dim, A.shape[1]), dtype=_compute_dtype(u, A))


@torch.library.custom_op("timm_ssm_prune::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(gout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                 z: Optional[Tensor], delta_bias: Optional[Tensor], states: Tensor, delta_softplus: bool,
                 chunk: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    rows = _batch_rows(u, A, chunk)
    if rows >= u.shape[0]:
        grads = _scan_backward(gout, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, chunk)
    else:  # blocks of rows, as the forward: per-sample gradients concatenated, parameter gradients summed
        blocks = [_scan_backward(gout[b:b + rows], u[b:b + rows], delta[b:b + rows], A, B[b:b + rows],
                                 C[b:b + rows], D, None if z is None else z[b:b + rows], delta_bias,
                                 states[:, b:b + rows], delta_softplus, chunk)
                  for b in range(0, u.shape[0], rows)]
        per_sample = (True, True, False, True, True, False, True, False)  # gu gdelta gA gB gC gD gz gbias
        grads = tuple(None if blocks[0][i] is None else torch.cat([g[i] for g in blocks], 0) if cat
                      else functools.reduce(torch.add, [g[i] for g in blocks])
                      for i, cat in enumerate(per_sample))
    return tuple(u.new_empty(0) if gr is None else gr for gr in grads)


@_scan_bwd_op.register_fake
def _scan_bwd_fake(gout, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, chunk):
    def like(t):  # the real gradients are contiguous
        return u.new_empty(0) if t is None else t.new_empty(t.shape)
    return (like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk = inputs
    _, states = output
    ctx.mark_non_differentiable(states)
    ctx.delta_softplus = delta_softplus
    ctx.chunk = chunk
    ctx.has = (D is not None, z is not None, delta_bias is not None)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)


def _backward(ctx, gout, _gstates):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    grads = torch.ops.timm_ssm_prune.selective_scan_bwd(
        gout.contiguous(), u, delta, A, B, C, D, z, delta_bias, states, ctx.delta_softplus, ctx.chunk)
    gu, gdelta, gA, gB, gC, gD, gz, gbias = grads
    has_d, has_z, has_bias = ctx.has
    return (gu, gdelta, gA, gB, gC, gD if has_d else None, gz if has_z else None,
            gbias if has_bias else None, None, None)


torch.library.register_autograd("timm_ssm_prune::selective_scan", _backward, setup_context=_setup_context)


_STATE = threading.local()


@contextlib.contextmanager
def record_scan_calls(log: List[Tuple[int, int, int, int]]):
    """While active, every scan seen by FlopCounterMode appends (batch, dim, length, d_state) to ``log``."""
    prev = getattr(_STATE, 'log', None)
    _STATE.log = log
    try:
        yield log
    finally:
        _STATE.log = prev


def scan_flops(batch: int, dim: int, length: int, dstate: int) -> int:
    """Multiply-accumulates of one scan call: 9·B·E·L·N + B·E·L (state-spaces/mamba#110, PlainMamba's get_flops)."""
    return 9 * batch * dim * length * dstate + batch * dim * length


@torch.utils.flop_counter.register_flop_formula(torch.ops.timm_ssm_prune.selective_scan)
def _scan_flop_formula(u_shape, delta_shape, A_shape, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate for matmuls and convolutions; the scan's
    # 9BELN + BEL is a multiply-accumulate count, so it is doubled to stay in the same unit.
    bsz, dim, length = u_shape
    log = getattr(_STATE, 'log', None)
    if log is not None:
        log.append((bsz, dim, length, A_shape[1]))
    return 2 * scan_flops(bsz, dim, length, A_shape[1])


# ------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------

def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                   backend: str = 'auto') -> Tensor:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics (see the module docstring).

    backend: 'auto' on CUDA tensors uses mamba-ssm's CUDA kernel when it imports, else the Triton kernel
    (``ops.triton_scan``) when Triton imports, else the PyTorch op; on other devices the PyTorch op.
    'torch' always uses the PyTorch op (any device); 'cuda' requires mamba-ssm's kernel; 'triton' requires
    Triton and CUDA tensors (or CPU tensors in a process started with TRITON_INTERPRET=1).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"selective_scan: backend must be one of {_BACKENDS}, got {backend!r}")
    _check_args(u, delta, A, B, C, D, z, delta_bias)
    if u.is_meta:  # shapes only (FLOP counting, fake tensors): the PyTorch op's meta kernel, whatever the backend
        backend = 'torch'
    if torch.onnx.is_in_onnx_export():  # an ONNX Scan in place of the op (ops/scan_onnx.py)
        from .scan_onnx import selective_scan_onnx
        return selective_scan_onnx(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == 'cuda':
        if _mamba_selective_scan_fn() is None:
            raise RuntimeError(CUDA_INSTALL_HINT)
        if not u.is_cuda:
            raise ValueError(f"selective_scan: backend='cuda' needs CUDA tensors, got tensors on {u.device}")
    use_cuda = backend == 'cuda' or (backend == 'auto' and u.is_cuda and _mamba_selective_scan_fn() is not None)
    if backend == 'auto' and u.is_cuda and not use_cuda:
        from . import triton_scan
        if triton_scan.triton_available(u.device):
            backend = 'triton'
    if backend == 'triton':
        from .triton_scan import selective_scan_triton  # raises a clear error without Triton / on CPU
        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if use_cuda:
        fn = _mamba_selective_scan_fn()
        return fn(u, delta, A.float(), B, C, None if D is None else D.float(), z,
                  None if delta_bias is None else delta_bias.float(), delta_softplus)
    out, _ = torch.ops.timm_ssm_prune.selective_scan(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), _chunk_len(u, A))
    return out


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Plain step-by-step reference (autograd through a Python loop: slow, for checking only)."""
    f = _compute_dtype(u, A)
    dt = delta.to(f)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    bsz, dim, length = u.shape
    Bf = (B if B.dim() == 4 else B.unsqueeze(1)).to(f)
    Cf = (C if C.dim() == 4 else C.unsqueeze(1)).to(f)
    Bf = Bf.repeat_interleave(dim // Bf.shape[1], dim=1)  # (B, E, N, L)
    Cf = Cf.repeat_interleave(dim // Cf.shape[1], dim=1)
    Af, uf = A.to(f), u.to(f)
    h = uf.new_zeros(bsz, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * Af) * h + (dt[:, :, t] * uf[:, :, t])[..., None] * Bf[..., t]
        ys.append((h * Cf[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(f)[:, None] * uf
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(u.dtype)
