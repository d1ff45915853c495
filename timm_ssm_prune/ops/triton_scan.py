"""Selective scan in Triton: no build step, and a variant that reads the tokens through a position map.

Two entry points, both with a Triton forward and a Triton backward (recompute from checkpoints, reverse adjoint
recurrence; no autograd graph over the steps), registered as the torch.library ops
``timm_ssm_prune::triton_scan`` / ``triton_scan_bwd`` (fake implementations, autograd formula), so
``torch.compile(fullgraph=True)`` traces through them:

* :func:`selective_scan_triton` — the semantics of :func:`timm_ssm_prune.ops.selective_scan` (reached from it
  as ``backend='triton'``): u, delta, z (B, E, L); A (E, N); B, C (B, N, L) or grouped (B, G, N, L); D,
  delta_bias (E,); Δ = softplus(delta + delta_bias); float32 state for fp32/bf16/fp16 inputs, float64 for
  float64 inputs; output in u's dtype and u's memory layout ((B, L, E) memory viewed as (B, E, L), as the
  models pass it, gives an output laid out the same way).
* :func:`selective_scan_gathered` — S scan directions over one sequence, each visiting the L positions in
  its own order (the position map), reading its inputs through that map and adding its output back at the
  positions it visited; the directions' sum is gated by silu(z). See its docstring.

Kernel layout: one program per (batch row, block of ``BLOCK_E`` channels) holds the (BLOCK_E, N) state in
registers and walks the steps (and, for the gathered variant, the directions one after the other, so the
directions' outputs are summed in a fixed order without atomics). The forward stores the state entering each
chunk of ``chunk`` steps; the backward replays each chunk from it (newest chunk first) into a per-program
scratch buffer, then runs λ_t = C_t g_t + exp(Δ_{t+1} A) λ_{t+1} backwards. Gradients of B and C (shared by
the channels of a group, so by several programs) are accumulated with atomic adds; those of A, D and
delta_bias are written per batch row and summed afterwards.

On CPU tensors the kernels run under Triton's interpreter, which must be switched on before ``triton`` is
first imported (``TRITON_INTERPRET=1`` in the environment of the process); this is what the tests do.
"""
from __future__ import annotations

import functools
import math
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ['selective_scan_triton', 'selective_scan_gathered', 'selective_scan_gathered_ref',
           'triton_available', 'gathered_scan_applies', 'set_triton_tuning', 'TRITON_INSTALL_HINT', 'TRITON_CPU_HINT']

TRITON_INSTALL_HINT = (
    "Triton is not available: it ships with the CUDA builds of PyTorch (or `pip install triton`); "
    "use backend='torch' otherwise.")
TRITON_CPU_HINT = (
    "backend='triton' needs CUDA tensors, got tensors on {device}. To run the Triton kernels on CPU tensors "
    "(slowly, for testing) start the process with TRITON_INTERPRET=1 in its environment (it must be set before "
    "triton is first imported); otherwise use backend='torch' (or 'auto').")

try:  # never fatal: the package works without Triton
    import triton
    import triton.language as tl
    _IMPORT_ERROR: Optional[BaseException] = None
except Exception as exc:  # ImportError, or a broken install
    triton = tl = None
    _IMPORT_ERROR = exc


_STEP_NAMES = ('delta', 'B', 'C')


def _interpreting() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0').lower() in ('1', 'true', 'on', 'yes')


# Whether triton was imported in interpreter mode (only then can it run on CPU tensors).
_INTERPRETED_AT_IMPORT = triton is not None and _interpreting()


def triton_available(device: Optional[torch.device] = None) -> bool:
    """True when the kernels can run on ``device``: CUDA with a GPU Triton supports (compute capability 7.5+),
    or CPU under Triton's interpreter (TRITON_INTERPRET=1 set before triton was imported)."""
    if triton is None:
        return False
    device = torch.device('cuda' if device is None else device)
    if device.type == 'cuda':
        return torch.cuda.is_available() and (
            _INTERPRETED_AT_IMPORT or torch.cuda.get_device_capability(device) >= (7, 5))
    return device.type == 'cpu' and _INTERPRETED_AT_IMPORT and _interpreting()


def gathered_scan_applies(backend: str, x: Tensor) -> bool:
    """Whether a model's mixer with ``scan_backend=backend`` runs its scans through :func:`selective_scan_gathered`
    on tensors like ``x``: exactly when :func:`timm_ssm_prune.ops.selective_scan` would take the Triton kernel
    ('triton'; 'auto' on CUDA tensors when mamba-ssm's kernel does not import and Triton is available), except
    on meta tensors (FLOP counting: the PyTorch ops' formulas) and under ``torch.onnx.export`` (the ONNX Scan).
    With 'triton' on a device Triton cannot run on, the gathered call raises selective_scan's clear error."""
    if backend == 'triton':
        return not (x.is_meta or torch.onnx.is_in_onnx_export())
    if backend != 'auto' or not x.is_cuda or torch.onnx.is_in_onnx_export():
        return False
    from .scan import _mamba_selective_scan_fn
    return _mamba_selective_scan_fn() is None and triton_available(x.device)


def _require(device: torch.device) -> None:
    if triton is None:
        raise RuntimeError(f"{TRITON_INSTALL_HINT} (import failed: {_IMPORT_ERROR!r})")
    if device.type == 'cuda':
        if not triton_available(device):
            raise RuntimeError(f"backend='triton': Triton does not support the GPU {device} "
                               f"(compute capability {torch.cuda.get_device_capability(device)}); "
                               "use backend='torch'")
        return
    if not triton_available(device):
        raise ValueError(TRITON_CPU_HINT.format(device=device))


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _softplus(x):
        # log1p(exp(x)) for x <= 20 (torch's threshold), x above; log1p by Kahan's trick (no libdevice needed)
        ex = tl.exp(tl.minimum(x, 20.0))
        w = 1.0 + ex
        lp = tl.where(w == 1.0, ex, tl.log(w) * (ex / tl.where(w == 1.0, 1.0, w - 1.0)))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def _sigmoid(x):
        return 1.0 / (1.0 + tl.exp(-x))

    @triton.jit
    def _scan_fwd_kernel(
            u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ord_ptr, bs_ptr,
            out_ptr, acc_ptr, st_ptr,
            ob, oe, ol,
            su_s, su_b, su_e, su_l,
            sd_s, sd_b, sd_e, sd_l,
            sa_s, sa_e, sa_n,
            sB_s, sB_b, sB_g, sB_n, sB_l,
            sC_s, sC_b, sC_g, sC_n, sC_l,
            sD_s, sbias_s,
            sz_b, sz_e, sz_l,
            so_s, so_b, so_l,
            sbs_s, sbs_b, sbs_n, sbs_l,
            S, L, E, N, EG, CHUNK, NC,
            FDT: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
            SOFTPLUS: tl.constexpr, HAS_ORDER: tl.constexpr, DT_GATHER: tl.constexpr, B_GATHER: tl.constexpr,
            C_GATHER: tl.constexpr, HAS_BSTEP: tl.constexpr, ACC: tl.constexpr,
            BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        pe = tl.program_id(1)
        e = pe * BLOCK_E + tl.arange(0, BLOCK_E)
        n = tl.arange(0, BLOCK_N)
        em = e < E
        nm = n < N
        m2 = em[:, None] & nm[None, :]
        g = (pe * BLOCK_E) // EG  # BLOCK_E divides EG (or there is one group): one group per program
        row = b * ob + e.to(tl.int64) * oe  # out and acc: (B, E, L), strides (ob, oe, ol)
        for s in range(S):
            s64 = b * 0 + s  # int64: s * (a direction's stride) may pass 2**31
            A = tl.load(A_ptr + s64 * sa_s + e[:, None] * sa_e + n[None, :] * sa_n, mask=m2, other=0.0).to(FDT)
            if HAS_D:
                Dv = tl.load(D_ptr + s64 * sD_s + e, mask=em, other=0.0).to(FDT)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + s64 * sbias_s + e, mask=em, other=0.0).to(FDT)
            u_base = u_ptr + s64 * su_s + b * su_b + e * su_e
            d_base = dt_ptr + s64 * sd_s + b * sd_b + e * sd_e
            B_base = B_ptr + s64 * sB_s + b * sB_b + g * sB_g + n * sB_n
            C_base = C_ptr + s64 * sC_s + b * sC_b + g * sC_g + n * sC_n
            h = tl.zeros((BLOCK_E, BLOCK_N), dtype=FDT)
            for c in range(NC):
                st = st_ptr + (((s64 * tl.num_programs(0) + b) * NC + c) * E + e[:, None]) * N + n[None, :]
                tl.store(st, h, mask=m2)
                t0 = c * CHUNK
                t1 = tl.minimum(t0 + CHUNK, L)
                for t in range(t0, t1):
                    if HAS_ORDER:
                        p = tl.load(ord_ptr + s64 * so_s + b * so_b + t * so_l)
                    else:
                        p = t
                    if DT_GATHER:
                        td = p
                    else:
                        td = t
                    if B_GATHER:
                        tb = p
                    else:
                        tb = t
                    if C_GATHER:
                        tc = p
                    else:
                        tc = t
                    uv = tl.load(u_base + p * su_l, mask=em, other=0.0).to(FDT)
                    dt = tl.load(d_base + td * sd_l, mask=em, other=0.0).to(FDT)
                    if HAS_BIAS:
                        dt = dt + bias
                    if SOFTPLUS:
                        dt = _softplus(dt)
                    Bv = tl.load(B_base + tb * sB_l, mask=nm, other=0.0).to(FDT)
                    if HAS_BSTEP:
                        Bv += tl.load(bs_ptr + s64 * sbs_s + b * sbs_b + n * sbs_n + t * sbs_l,
                                      mask=nm, other=0.0).to(FDT)
                    Cv = tl.load(C_base + tc * sC_l, mask=nm, other=0.0).to(FDT)
                    h = tl.exp(dt[:, None] * A) * h + (dt * uv)[:, None] * Bv[None, :]
                    y = tl.sum(h * Cv[None, :], axis=1)
                    if HAS_D:
                        y += Dv * uv
                    last = s == S - 1
                    if ACC:  # directions summed in a fixed order through an fp32/fp64 buffer
                        y += tl.load(acc_ptr + row + p * ol, mask=em & (s > 0), other=0.0)
                        tl.store(acc_ptr + row + p * ol, y, mask=em & (s < S - 1))
                    if HAS_Z:
                        zv = tl.load(z_ptr + b * sz_b + e * sz_e + p * sz_l, mask=em & last, other=0.0).to(FDT)
                        y = y * zv * _sigmoid(zv)
                    tl.store(out_ptr + row + p * ol, y.to(out_ptr.dtype.element_ty), mask=em & last)
            tl.debug_barrier()  # the next direction reads what this one accumulated

    @triton.jit
    def _scan_bwd_kernel(
            u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ord_ptr, bs_ptr,
            gout_ptr, st_ptr, scr_ptr,
            gu_ptr, gdt_ptr, gB_ptr, gC_ptr, gbs_ptr, gz_ptr, gA_ptr, gD_ptr, gbias_ptr,
            gob, goe, gol, xb, xe, xl,
            su_s, su_b, su_e, su_l,
            sd_s, sd_b, sd_e, sd_l,
            sa_s, sa_e, sa_n,
            sB_s, sB_b, sB_g, sB_n, sB_l,
            sC_s, sC_b, sC_g, sC_n, sC_l,
            sD_s, sbias_s,
            sz_b, sz_e, sz_l,
            so_s, so_b, so_l,
            sbs_s, sbs_b, sbs_n, sbs_l,
            gu_s, gd_s, gB_s, gB_b, gB_g, gC_s, gC_b, gC_g,
            S, L, E, N, EG, CHUNK, NC,
            FDT: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
            SOFTPLUS: tl.constexpr, HAS_ORDER: tl.constexpr, DT_GATHER: tl.constexpr, B_GATHER: tl.constexpr,
            C_GATHER: tl.constexpr, HAS_BSTEP: tl.constexpr, U_RMW: tl.constexpr, D_RMW: tl.constexpr,
            BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        pe = tl.program_id(1)
        nb = tl.num_programs(0)
        e = pe * BLOCK_E + tl.arange(0, BLOCK_E)
        n = tl.arange(0, BLOCK_N)
        em = e < E
        nm = n < N
        m2 = em[:, None] & nm[None, :]
        g = (pe * BLOCK_E) // EG
        go_row = b * gob + e.to(tl.int64) * goe  # gout (B, E, L), strides (gob, goe, gol)
        row = b * xb + e.to(tl.int64) * xe  # gu, gdt (per direction), gz: (B, E, L), strides (xb, xe, xl)
        # this program's scratch: CHUNK states (BLOCK_E, BLOCK_N)
        scr = scr_ptr + ((b * tl.num_programs(1) + pe) * CHUNK * BLOCK_E + tl.arange(0, BLOCK_E)[:, None]) \
            * BLOCK_N + n[None, :]
        for s in range(S):
            s64 = b * 0 + s  # int64: s * (a direction's stride) may pass 2**31
            A = tl.load(A_ptr + s64 * sa_s + e[:, None] * sa_e + n[None, :] * sa_n, mask=m2, other=0.0).to(FDT)
            if HAS_D:
                Dv = tl.load(D_ptr + s64 * sD_s + e, mask=em, other=0.0).to(FDT)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + s64 * sbias_s + e, mask=em, other=0.0).to(FDT)
            u_base = u_ptr + s64 * su_s + b * su_b + e * su_e
            d_base = dt_ptr + s64 * sd_s + b * sd_b + e * sd_e
            B_base = B_ptr + s64 * sB_s + b * sB_b + g * sB_g + n * sB_n
            C_base = C_ptr + s64 * sC_s + b * sC_b + g * sC_g + n * sC_n
            gu_base = gu_ptr + s64 * gu_s + row
            gd_base = gdt_ptr + s64 * gd_s + row
            gB_base = gB_ptr + s64 * gB_s + b * gB_b + g * gB_g + n * L
            gC_base = gC_ptr + s64 * gC_s + b * gC_b + g * gC_g + n * L
            gA_acc = tl.zeros((BLOCK_E, BLOCK_N), dtype=FDT)
            gD_acc = tl.zeros((BLOCK_E,), dtype=FDT)
            gb_acc = tl.zeros((BLOCK_E,), dtype=FDT)
            carry = tl.zeros((BLOCK_E, BLOCK_N), dtype=FDT)  # exp(Δ_{t+1} A) λ_{t+1}
            last = s == S - 1
            for ci in range(NC):
                c = NC - 1 - ci
                t0 = c * CHUNK
                t1 = tl.minimum(t0 + CHUNK, L)
                # replay the chunk from its stored entry state; scratch[i] = state before step t0 + i
                h = tl.load(st_ptr + (((s64 * nb + b) * NC + c) * E + e[:, None]) * N + n[None, :], mask=m2,
                            other=0.0).to(FDT)
                for t in range(t0, t1):
                    tl.store(scr + (t - t0) * BLOCK_E * BLOCK_N, h)
                    if HAS_ORDER:
                        p = tl.load(ord_ptr + s64 * so_s + b * so_b + t * so_l)
                    else:
                        p = t
                    if DT_GATHER:
                        td = p
                    else:
                        td = t
                    if B_GATHER:
                        tb = p
                    else:
                        tb = t
                    uv = tl.load(u_base + p * su_l, mask=em, other=0.0).to(FDT)
                    dt = tl.load(d_base + td * sd_l, mask=em, other=0.0).to(FDT)
                    if HAS_BIAS:
                        dt = dt + bias
                    if SOFTPLUS:
                        dt = _softplus(dt)
                    Bv = tl.load(B_base + tb * sB_l, mask=nm, other=0.0).to(FDT)
                    if HAS_BSTEP:
                        Bv += tl.load(bs_ptr + s64 * sbs_s + b * sbs_b + n * sbs_n + t * sbs_l,
                                      mask=nm, other=0.0).to(FDT)
                    h = tl.exp(dt[:, None] * A) * h + (dt * uv)[:, None] * Bv[None, :]
                tl.debug_barrier()
                for i in range(t1 - t0):
                    t = t1 - 1 - i
                    hprev = tl.load(scr + (t - t0) * BLOCK_E * BLOCK_N)
                    if HAS_ORDER:
                        p = tl.load(ord_ptr + s64 * so_s + b * so_b + t * so_l)
                    else:
                        p = t
                    if DT_GATHER:
                        td = p
                    else:
                        td = t
                    if B_GATHER:
                        tb = p
                    else:
                        tb = t
                    if C_GATHER:
                        tc = p
                    else:
                        tc = t
                    uv = tl.load(u_base + p * su_l, mask=em, other=0.0).to(FDT)
                    dt_raw = tl.load(d_base + td * sd_l, mask=em, other=0.0).to(FDT)
                    if HAS_BIAS:
                        dt_raw = dt_raw + bias
                    if SOFTPLUS:
                        dt = _softplus(dt_raw)
                    else:
                        dt = dt_raw
                    Bv = tl.load(B_base + tb * sB_l, mask=nm, other=0.0).to(FDT)
                    if HAS_BSTEP:
                        Bv += tl.load(bs_ptr + s64 * sbs_s + b * sbs_b + n * sbs_n + t * sbs_l,
                                      mask=nm, other=0.0).to(FDT)
                    Cv = tl.load(C_base + tc * sC_l, mask=nm, other=0.0).to(FDT)
                    dA = tl.exp(dt[:, None] * A)
                    dtu = dt * uv
                    h = dA * hprev + dtu[:, None] * Bv[None, :]
                    go = tl.load(gout_ptr + go_row + p * gol, mask=em, other=0.0).to(FDT)
                    if HAS_Z:
                        zv = tl.load(z_ptr + b * sz_b + e * sz_e + p * sz_l, mask=em, other=0.0).to(FDT)
                        sz = _sigmoid(zv)
                        gy = go * zv * sz
                        ys = tl.sum(h * Cv[None, :], axis=1)
                        if HAS_D:
                            ys += Dv * uv
                        # Σ_s y_s accumulates in the gz buffer; the last direction turns it into gz
                        ys += tl.load(gz_ptr + row + p * xl, mask=em & (s > 0), other=0.0)
                        gzv = tl.where(last, go * ys * sz * (1.0 + zv * (1.0 - sz)), ys)
                        tl.store(gz_ptr + row + p * xl, gzv, mask=em)
                    else:
                        gy = go
                    gy = tl.where(em, gy, 0.0)
                    lam = gy[:, None] * Cv[None, :] + carry
                    lamB = tl.sum(lam * Bv[None, :], axis=1)
                    P = lam * dA * hprev
                    gdt = tl.sum(P * A, axis=1) + uv * lamB
                    gu = dt * lamB
                    if HAS_D:
                        gu += Dv * gy
                        gD_acc += gy * uv
                    gA_acc += dt[:, None] * P
                    if SOFTPLUS:
                        gdt = gdt * _sigmoid(dt_raw)
                    gdt = tl.where(em, gdt, 0.0)
                    if HAS_BIAS:
                        gb_acc += gdt
                    carry = dA * lam
                    if U_RMW:
                        gu += tl.load(gu_base + p * xl, mask=em & (s > 0), other=0.0)
                    tl.store(gu_base + p * xl, gu, mask=em)
                    if D_RMW:
                        gdt += tl.load(gd_base + td * xl, mask=em & (s > 0), other=0.0)
                    tl.store(gd_base + td * xl, gdt, mask=em)
                    gBv = tl.sum(dtu[:, None] * lam, axis=0)
                    gCv = tl.sum(gy[:, None] * h, axis=0)
                    tl.atomic_add(gB_base + tb, gBv, mask=nm)
                    tl.atomic_add(gC_base + tc, gCv, mask=nm)
                    if HAS_BSTEP:
                        tl.atomic_add(gbs_ptr + ((s64 * nb + b) * N + n) * L + t, gBv, mask=nm)
                tl.debug_barrier()  # before the scratch is overwritten by the previous chunk
            # per (batch row, direction) partial sums of the parameter gradients
            tl.store(gA_ptr + ((b * S + s) * E + e[:, None]) * N + n[None, :], gA_acc, mask=m2)
            if HAS_D:
                tl.store(gD_ptr + (b * S + s) * E + e, gD_acc, mask=em)
            if HAS_BIAS:
                tl.store(gbias_ptr + (b * S + s) * E + e, gb_acc, mask=em)


# ------------------------------------------------------------------------------------------------
# Launch
# ------------------------------------------------------------------------------------------------

def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


_TUNING = {'block_e': None, 'num_warps': None}


def set_triton_tuning(block_e: Optional[int] = None, num_warps: Optional[int] = None) -> None:
    """Override the kernels' channels per program (a power of two) and warps per program; None restores the
    heuristics (for benchmarking on a new GPU: ``benchmarks/gpu_check.py`` sweeps block_e)."""
    if block_e is not None and (block_e < 1 or block_e & (block_e - 1)):
        raise ValueError(f"block_e must be a power of two, got {block_e}")
    _TUNING['block_e'], _TUNING['num_warps'] = block_e, num_warps


def _block_e(bsz: int, dim: int, eg: int, groups: int, block_n: int, device: torch.device) -> int:
    if _TUNING['block_e'] is not None:
        return _TUNING['block_e'] if groups == 1 else min(_TUNING['block_e'], eg & -eg)
    cap = max(1, 1024 // block_n)
    if groups == 1:
        be = min(cap, _next_pow2(dim))
    else:  # a program's channels must share one group: the largest power of two dividing EG
        be = min(cap, eg & -eg)
    if device.type == 'cuda':  # enough programs to fill the GPU: at least ~4 per SM
        target = 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        while be > 8 and bsz * math.ceil(dim / be) < target:
            be //= 2
    return be


def _num_warps(block_e: int, block_n: int) -> int:
    if _TUNING['num_warps'] is not None:
        return _TUNING['num_warps']
    return max(1, min(8, block_e * block_n // 256))


def _alloc_bel(lead, bsz, dim, length, dtype, device, channels_last):
    """(*lead, B, E, L); with channels_last the memory is (*lead, B, L, E), as the models' (B, L, E) tensors
    viewed as (B, E, L): the kernels' per-step stores over a block of channels are then contiguous."""
    if channels_last:
        return torch.empty((*lead, bsz, length, dim), dtype=dtype, device=device).transpose(-1, -2)
    return torch.empty((*lead, bsz, dim, length), dtype=dtype, device=device)


def _fdt(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _strides(t: Optional[Tensor], k: int):
    return (0,) * k if t is None else tuple(t.stride())


def _resolve_chunk(S: int, length: int, chunk: Optional[int]) -> int:
    """Steps between stored states: ~sqrt(S*L) balances the stored states (S*L/chunk) against the backward's
    per-program scratch (chunk states)."""
    if chunk is None:
        chunk = max(4, math.ceil(math.sqrt(S * length)))
    return max(1, min(int(chunk), max(1, length)))


class _Problem:
    """Canonical views of one call: u/delta (Su, B, E, L), A (Sa, E, N), B/C (Sb, B, G, N, L), D/bias (Sx, E)."""

    def __init__(self, u, delta, A, B, C, D, z, bias, order, bstep, softplus, step_order, chunk):
        self.S = 1 if order is None else order.shape[0]
        self.u, self.delta, self.A, self.B, self.C = u, delta, A, B, C
        self.D, self.z, self.bias, self.order, self.bstep = D, z, bias, order, bstep
        self.softplus = bool(softplus)
        self.dt_gather = 'delta' not in step_order
        self.B_gather = 'B' not in step_order
        self.C_gather = 'C' not in step_order
        _, self.bsz, self.dim, self.length = u.shape
        self.groups, self.dstate = B.shape[2], A.shape[2]
        self.eg = self.dim // self.groups
        self.f = torch.float64 if (u.dtype == torch.float64 or A.dtype == torch.float64) else torch.float32
        self.block_n = _next_pow2(self.dstate)
        self.block_e = _block_e(self.bsz, self.dim, self.eg, self.groups, self.block_n, u.device)
        self.chunk = _resolve_chunk(self.S, self.length, chunk)
        self.nc = math.ceil(self.length / self.chunk)
        self.grid = (self.bsz, math.ceil(self.dim / self.block_e))
        self.channels_last = u.stride(3) != 1 and u.stride(2) == 1

    def alloc(self, lead, dtype):
        return _alloc_bel(lead, self.bsz, self.dim, self.length, dtype, self.u.device, self.channels_last)

    def _sstride(self, t: Optional[Tensor]) -> int:
        return 0 if t is None or t.shape[0] == 1 else t.stride(0)

    def common_args(self):
        u, d, A, B, C, D, z, bias, o, bs = (self.u, self.delta, self.A, self.B, self.C, self.D, self.z, self.bias,
                                            self.order, self.bstep)
        args = []
        args += [self._sstride(u), *u.stride()[1:]]
        args += [self._sstride(d), *d.stride()[1:]]
        args += [self._sstride(A), *A.stride()[1:]]
        args += [self._sstride(B), B.stride(1), B.stride(2), B.stride(3), B.stride(4)]
        args += [self._sstride(C), C.stride(1), C.stride(2), C.stride(3), C.stride(4)]
        args += [self._sstride(D), self._sstride(bias)]
        args += list(_strides(z, 3))
        args += list(_strides(o, 3))
        args += list(_strides(bs, 4))
        return args

    def sizes(self):
        return [self.S, self.length, self.dim, self.dstate, self.eg, self.chunk, self.nc]

    def flags(self):
        return dict(FDT=_fdt(self.f), HAS_D=self.D is not None, HAS_Z=self.z is not None,
                    HAS_BIAS=self.bias is not None, SOFTPLUS=self.softplus, HAS_ORDER=self.order is not None,
                    DT_GATHER=self.dt_gather, B_GATHER=self.B_gather, C_GATHER=self.C_gather,
                    HAS_BSTEP=self.bstep is not None, BLOCK_E=self.block_e, BLOCK_N=self.block_n)

    def ptrs(self):
        dummy = self.u
        return [self.u, self.delta, self.A, self.B, self.C,
                dummy if self.D is None else self.D, dummy if self.z is None else self.z,
                dummy if self.bias is None else self.bias, dummy if self.order is None else self.order,
                dummy if self.bstep is None else self.bstep]

    def forward(self):
        out = self.alloc((), self.u.dtype)
        acc = self.alloc((), self.f) if self.S > 1 else out
        assert acc.stride() == out.stride()
        states = torch.empty((self.S, self.bsz, self.nc, self.dim, self.dstate), dtype=self.f, device=self.u.device)
        _scan_fwd_kernel[self.grid](
            *self.ptrs(), out, acc, states, *out.stride(), *self.common_args(), *self.sizes(), **self.flags(),
            ACC=self.S > 1, num_warps=_num_warps(self.block_e, self.block_n))
        return out, states

    def backward(self, gout, states):
        dev, f = self.u.device, self.f
        bsz, dim, length, S = self.bsz, self.dim, self.length, self.S
        gu = self.alloc((self.u.shape[0],), f)
        gdt = self.alloc((self.delta.shape[0],), f)
        gB = torch.zeros(self.B.shape, dtype=f, device=dev)
        gC = torch.zeros(self.C.shape, dtype=f, device=dev)
        gbs = torch.zeros((S, bsz, self.dstate, length), dtype=f, device=dev) if self.bstep is not None else gu
        gz = self.alloc((), f) if self.z is not None else gu[0]
        assert gz.stride() == gu.stride()[1:] == gdt.stride()[1:]
        gA = torch.empty((bsz, S, dim, self.dstate), dtype=f, device=dev)
        gD = torch.empty((bsz, S, dim), dtype=f, device=dev) if self.D is not None else gA
        gbias = torch.empty((bsz, S, dim), dtype=f, device=dev) if self.bias is not None else gA
        scratch = torch.empty((self.grid[0] * self.grid[1] * self.chunk * self.block_e * self.block_n,),
                              dtype=f, device=dev)
        _scan_bwd_kernel[self.grid](
            *self.ptrs(), gout, states, scratch, gu, gdt, gB, gC, gbs, gz, gA, gD, gbias,
            *gout.stride(), *gz.stride(), *self.common_args(),
            gu.stride(0) if gu.shape[0] > 1 else 0, gdt.stride(0) if gdt.shape[0] > 1 else 0,
            gB.stride(0) if gB.shape[0] > 1 else 0, gB.stride(1), gB.stride(2),
            gC.stride(0) if gC.shape[0] > 1 else 0, gC.stride(1), gC.stride(2),
            *self.sizes(), **self.flags(),
            U_RMW=S > 1 and gu.shape[0] == 1, D_RMW=S > 1 and gdt.shape[0] == 1,
            num_warps=_num_warps(self.block_e, self.block_n))
        gA = gA.sum(0)  # (S, E, N)
        gD = gD.sum(0) if self.D is not None else None
        gbias = gbias.sum(0) if self.bias is not None else None
        if self.A.shape[0] == 1:
            gA = gA.sum(0, keepdim=True)
        if self.D is not None and self.D.shape[0] == 1:
            gD = gD.sum(0, keepdim=True)
        if self.bias is not None and self.bias.shape[0] == 1:
            gbias = gbias.sum(0, keepdim=True)
        return (gu, gdt, gA, gB, gC, gD, gz if self.z is not None else None, gbias,
                gbs if self.bstep is not None else None)


# The kernels as torch.library ops (opaque to torch.compile, with fake implementations and an autograd formula),
# like the PyTorch path's timm_ssm_prune::selective_scan.

def _step_order(dt_gather: bool, b_gather: bool, c_gather: bool):
    return tuple(n for n, gathered in zip(_STEP_NAMES, (dt_gather, b_gather, c_gather)) if not gathered)


def _channels_last(u: Tensor) -> bool:
    return u.stride(3) != 1 and u.stride(2) == 1


@torch.library.custom_op("timm_ssm_prune::triton_scan", mutates_args=())
def _triton_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                    z: Optional[Tensor], bias: Optional[Tensor], order: Optional[Tensor], bstep: Optional[Tensor],
                    softplus: bool, dt_gather: bool, b_gather: bool, c_gather: bool,
                    chunk: int) -> Tuple[Tensor, Tensor]:
    prob = _Problem(u, delta, A, B, C, D, z, bias, order, bstep, softplus,
                    _step_order(dt_gather, b_gather, c_gather), chunk)
    return prob.forward()


@_triton_scan_op.register_fake
def _triton_scan_fake(u, delta, A, B, C, D, z, bias, order, bstep, softplus, dt_gather, b_gather, c_gather, chunk):
    S = 1 if order is None else order.shape[0]
    _, bsz, dim, length = u.shape
    f = torch.float64 if (u.dtype == torch.float64 or A.dtype == torch.float64) else torch.float32
    nc = math.ceil(length / chunk)
    out = _alloc_bel((), bsz, dim, length, u.dtype, u.device, _channels_last(u))
    return out, u.new_empty((S, bsz, nc, dim, A.shape[2]), dtype=f)


@torch.library.custom_op("timm_ssm_prune::triton_scan_bwd", mutates_args=())
def _triton_scan_bwd_op(gout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                        z: Optional[Tensor], bias: Optional[Tensor], order: Optional[Tensor],
                        bstep: Optional[Tensor], states: Tensor, softplus: bool, dt_gather: bool, b_gather: bool,
                        c_gather: bool, chunk: int) -> List[Tensor]:
    prob = _Problem(u, delta, A, B, C, D, z, bias, order, bstep, softplus,
                    _step_order(dt_gather, b_gather, c_gather), chunk)
    grads = prob.backward(gout, states)
    return [u.new_empty(0) if g is None else g for g in grads]


@_triton_scan_bwd_op.register_fake
def _triton_scan_bwd_fake(gout, u, delta, A, B, C, D, z, bias, order, bstep, states, softplus, dt_gather, b_gather,
                          c_gather, chunk):
    S = 1 if order is None else order.shape[0]
    _, bsz, dim, length = u.shape
    f = states.dtype
    cl = _channels_last(u)
    bel = lambda lead: _alloc_bel(lead, bsz, dim, length, f, u.device, cl)  # noqa: E731
    none = u.new_empty(0)
    par = lambda t: none if t is None else u.new_empty(t.shape, dtype=f)  # noqa: E731  (S or 1 leading, reduced)
    return [bel((u.shape[0],)), bel((delta.shape[0],)), u.new_empty(A.shape, dtype=f),
            u.new_empty(B.shape, dtype=f), u.new_empty(C.shape, dtype=f), par(D),
            none if z is None else bel(()), par(bias),
            none if bstep is None else u.new_empty((S, bsz, A.shape[2], length), dtype=f)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, bias, order, bstep, softplus, dt_gather, b_gather, c_gather, chunk = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.cfg = (softplus, dt_gather, b_gather, c_gather, chunk)
    ctx.save_for_backward(u, delta, A, B, C, D, z, bias, order, bstep, output[1])


def _backward(ctx, gout, _gstates):
    u, delta, A, B, C, D, z, bias, order, bstep, states = ctx.saved_tensors
    grads = torch.ops.timm_ssm_prune.triton_scan_bwd(gout, u, delta, A, B, C, D, z, bias, order, bstep, states,
                                                      *ctx.cfg)
    out = [None if t is None else g.to(t.dtype) for g, t in zip(grads, (u, delta, A, B, C, D, z, bias))]
    gbs = None if bstep is None else grads[8].to(bstep.dtype)
    return (*out, None, gbs, None, None, None, None, None)


torch.library.register_autograd("timm_ssm_prune::triton_scan", _backward, setup_context=_setup_context)


def _run(u, delta, A, B, C, D, z, bias, order, bstep, softplus, step_order, chunk):
    """All tensors in canonical form (see _Problem). Returns (B, E, L) in u's dtype."""
    S = 1 if order is None else order.shape[0]
    chunk = _resolve_chunk(S, u.shape[-1], chunk)
    out, _ = torch.ops.timm_ssm_prune.triton_scan(
        u, delta, A, B, C, D, z, bias, order, bstep, bool(softplus), 'delta' not in step_order,
        'B' not in step_order, 'C' not in step_order, chunk)
    return out


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------

def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                          z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                          delta_softplus: bool = False, chunk: Optional[int] = None) -> Tensor:
    """:func:`timm_ssm_prune.ops.selective_scan` in Triton (forward and backward). ``chunk``: steps between
    the states the forward stores for the backward (default ~sqrt(L))."""
    from .scan import _check_args
    _check_args(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type == 'meta':  # shapes and FLOPs only: the registered op's fake implementation
        from .scan import _chunk_len
        return torch.ops.timm_ssm_prune.selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                                       _chunk_len(u, A))[0]
    _require(u.device)
    if u.shape[2] == 0:
        return u.new_empty(u.shape)
    Bc = (B if B.dim() == 4 else B.unsqueeze(1)).unsqueeze(0)
    Cc = (C if C.dim() == 4 else C.unsqueeze(1)).unsqueeze(0)
    y = _run(u.unsqueeze(0), delta.unsqueeze(0), A.unsqueeze(0), Bc, Cc,
             None if D is None else D.contiguous().unsqueeze(0), z,
             None if delta_bias is None else delta_bias.contiguous().unsqueeze(0),
             None, None, delta_softplus, (), chunk)
    return y




def _canon_gathered(u, delta, A, B, C, order, D, z, delta_bias, B_step, step_order):
    """Check the gathered variant's arguments; return canonical views (see _Problem) and S."""
    if not isinstance(order, Tensor) or order.dim() != 3 or order.dtype not in (torch.int64, torch.int32):
        raise ValueError("selective_scan_gathered: `order` must be an int64/int32 tensor (S, batch, length), got "
                         f"{getattr(order, 'shape', type(order))}")
    S, bsz, length = order.shape
    bad = [n for n in step_order if n not in _STEP_NAMES]
    if bad:
        raise ValueError(f"selective_scan_gathered: `step_order` names {bad}; allowed: {_STEP_NAMES}")

    def per_dir(name, t, base_dim):
        if t is None:
            return None
        if not isinstance(t, Tensor):
            raise ValueError(f"selective_scan_gathered: `{name}` must be a tensor, got {type(t).__name__}")
        if t.dim() == base_dim:
            return t.unsqueeze(0)
        if t.dim() == base_dim + 1 and t.shape[0] == S:
            return t
        raise ValueError(f"selective_scan_gathered: `{name}` must have {base_dim} dims (shared by the {S} "
                         f"directions) or {base_dim + 1} with a leading S={S}, got shape {tuple(t.shape)}")

    u4, d4 = per_dir('u', u, 3), per_dir('delta', delta, 3)
    A3 = per_dir('A', A, 2)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    B5, C5 = per_dir('B', B, 4), per_dir('C', C, 4)
    D2, b2 = per_dir('D', D, 1), per_dir('delta_bias', delta_bias, 1)
    dim, dstate = u4.shape[2], A3.shape[2]
    if u4.shape[1:] != (bsz, dim, length):
        raise ValueError(f"selective_scan_gathered: `u` must be ([S,] batch={bsz}, dim, length={length}) like "
                         f"`order`, got shape {tuple(u.shape)}")
    if d4.shape[1:] != u4.shape[1:] or d4.dtype != u4.dtype:
        raise ValueError(f"selective_scan_gathered: `delta` {tuple(delta.shape)} {delta.dtype} must match u's "
                         f"{tuple(u.shape)} {u.dtype}")
    if A3.shape[1] != dim or A3.dtype not in (torch.float32, torch.float64) or dstate > 256:
        raise ValueError(f"selective_scan_gathered: `A` must be ([S,] dim={dim}, d_state<=256) float32/float64, "
                         f"got {tuple(A.shape)} {A.dtype}")
    for name, t in (('B', B5), ('C', C5)):
        g = t.shape[2]
        if t.shape[1] != bsz or t.shape[3:] != (dstate, length) or dim % g or not t.is_floating_point():
            raise ValueError(f"selective_scan_gathered: `{name}` must be ([S,] batch={bsz}, [groups,] "
                             f"d_state={dstate}, length={length}), got {tuple(t.shape)}")
    if B5.shape[2] != C5.shape[2]:
        raise ValueError("selective_scan_gathered: `B` and `C` have different group counts")
    for name, t in (('D', D2), ('delta_bias', b2)):
        if t is not None and (t.shape[1:] != (dim,) or t.dtype not in (torch.float32, torch.float64)):
            raise ValueError(f"selective_scan_gathered: `{name}` must be ([S,] dim={dim},) float32/float64, "
                             f"got {tuple(t.shape)} {t.dtype}")
    if z is not None and (z.shape != (bsz, dim, length) or z.dtype != u4.dtype):
        raise ValueError(f"selective_scan_gathered: `z` must be (batch, dim, length) in u's dtype, got "
                         f"{tuple(z.shape)} {z.dtype}")
    if B_step is not None and (B_step.shape != (S, bsz, dstate, length) or not B_step.is_floating_point()):
        raise ValueError(f"selective_scan_gathered: `B_step` must be (S={S}, batch={bsz}, d_state={dstate}, "
                         f"length={length}), got {tuple(B_step.shape)}")
    for name, t in (('delta', d4), ('A', A3), ('B', B5), ('C', C5), ('D', D2), ('z', z), ('delta_bias', b2),
                    ('B_step', B_step), ('order', order)):
        if t is not None and t.device != u4.device:
            raise ValueError(f"selective_scan_gathered: `{name}` is on {t.device} but `u` is on {u4.device}")
    return u4, d4, A3, B5, C5, D2, b2, S


def selective_scan_gathered_ref(u, delta, A, B, C, order, D=None, z=None, delta_bias=None, delta_softplus=False,
                                B_step=None, step_order: Sequence[str] = (), backend: str = 'torch') -> Tensor:
    """What :func:`selective_scan_gathered` computes, as gather + :func:`selective_scan` + scatter-add in
    PyTorch (materialises the permuted copies; any device, float64 too; autograd through the torch op).
    The S directions run as one grouped scan call over S*E channels."""
    from .scan import selective_scan
    u4, d4, A3, B5, C5, D2, b2, S = _canon_gathered(u, delta, A, B, C, order, D, z, delta_bias, B_step,
                                                    tuple(step_order))
    _, bsz, dim, length = u4.shape
    order = order.long()

    def take(t, gather):  # (S or 1, B, ..., L) -> (S, B, ..., L) in step order
        t = t.expand(S, *t.shape[1:])
        if not gather:
            return t
        idx = order.view(S, bsz, *([1] * (t.dim() - 3)), length).expand(t.shape)
        return torch.gather(t, -1, idx)

    us = take(u4, True)
    ds = take(d4, 'delta' not in step_order)
    Bs = take(B5, 'B' not in step_order)
    Cs = take(C5, 'C' not in step_order)
    if B_step is not None:
        Bs = Bs + B_step.unsqueeze(2).to(Bs.dtype)
    groups = Bs.shape[2]
    fold = lambda t: t.transpose(0, 1).reshape(bsz, S * t.shape[2], *t.shape[3:])  # directions into channels
    Af = A3.expand(S, *A3.shape[1:]).reshape(S * dim, -1)
    Df = None if D2 is None else D2.expand(S, dim).reshape(S * dim)
    bf = None if b2 is None else b2.expand(S, dim).reshape(S * dim)
    Bf = Bs.transpose(0, 1).reshape(bsz, S * groups, *Bs.shape[3:])
    Cf = Cs.transpose(0, 1).reshape(bsz, S * groups, *Cs.shape[3:])
    y = selective_scan(fold(us), fold(ds), Af, Bf, Cf, Df, None, bf, delta_softplus, backend=backend)
    y = y.view(bsz, S, dim, length).transpose(0, 1)  # (S, B, E, L) in step order
    f = torch.float64 if y.dtype == torch.float64 else torch.float32
    idx = order.view(S, bsz, 1, length).expand(S, bsz, dim, length)
    out = torch.zeros((bsz, dim, length), dtype=f, device=y.device)
    for s in range(S):
        out = out.scatter_add(2, idx[s], y[s].to(f))
    if z is not None:
        zf = z.to(f)
        out = out * zf * torch.sigmoid(zf)
    return out.to(u4.dtype)


def selective_scan_gathered(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, order: Tensor,
                            D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                            delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                            B_step: Optional[Tensor] = None, step_order: Sequence[str] = (),
                            backend: str = 'auto', chunk: Optional[int] = None) -> Tensor:
    """S selective scans over one sequence, each visiting the positions in its own order; outputs summed
    back in sequence order, then gated. No permuted copy of any input or output is made.

    order: (S, batch, L) int64/int32, ``order[s, b, t]`` = the sequence position direction ``s`` visits at
        step ``t``. Each ``order[s, b]`` must be a permutation of 0..L-1 (not checked: a repeated position
        would race on the output write). Any strides (e.g. an ``expand``-ed (S, 1, L) order).
    u: (batch, E, L) shared by the directions, or (S, batch, E, L) one per direction; sequence order, read
        through the order: step t of direction s reads ``u[..., order[s, b, t]]``.
    delta: same shapes as u (before delta_bias / softplus); B, C: (batch, N, L), (batch, G, N, L) or, one per
        direction, (S, batch, G, N, L) (5-D). delta, B and C are read through the order too, unless named in
        ``step_order``: then step t reads index t (PlainMamba's official quirk Q2: ``step_order=('delta',
        'B', 'C')``).
    B_step: optional (S, batch, N, L), added to B at each step, indexed by step (PlainMamba's per-step
        direction term ``direction_Bs[codes]``).
    A: (E, N) or (S, E, N); D, delta_bias: (E,) or (S, E); float32 (float64).
    z: optional (batch, E, L) in sequence order.

    Returns (batch, E, L) in u's dtype (and u's memory layout)::

        y_s[t] = C_s[t]·h_s[t] + D_s u_s[order[s,b,t]]      (the recurrence of selective_scan, per direction)
        out[b, :, p] = silu(z[b, :, p]) · Σ_s y_s[t] where order[s, b, t] = p

    The directions are summed in float32 (float64) in the order s = 0, 1, ... (deterministic); gradients of
    B/C/B_step use atomic adds across channel blocks. ``backend``: 'triton' (the fused kernel; CUDA, or CPU
    under TRITON_INTERPRET=1), 'torch' (:func:`selective_scan_gathered_ref`: gather + selective_scan +
    scatter-add), 'auto' (Triton for CUDA tensors when it is available, else 'torch').
    """
    if backend not in ('auto', 'triton', 'torch'):
        raise ValueError(f"selective_scan_gathered: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    step_order = tuple(step_order)
    if backend == 'auto':
        backend = 'triton' if (u.is_cuda and triton_available(u.device)) else 'torch'
    if backend == 'torch' or u.device.type == 'meta':
        return selective_scan_gathered_ref(u, delta, A, B, C, order, D, z, delta_bias, delta_softplus, B_step,
                                           step_order, backend='auto' if u.is_cuda else 'torch')
    u4, d4, A3, B5, C5, D2, b2, S = _canon_gathered(u, delta, A, B, C, order, D, z, delta_bias, B_step,
                                                    step_order)
    _require(u4.device)
    if u4.shape[-1] == 0:
        return u4.new_empty(u4.shape[1:])
    return _run(u4, d4, A3, B5, C5, None if D2 is None else D2.contiguous(), z,
                None if b2 is None else b2.contiguous(), order, B_step, delta_softplus, step_order, chunk)
