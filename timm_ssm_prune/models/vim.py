"""Vision Mamba / Vim (Zhu et al., ICML 2024, arXiv:2401.09417) with token pruning (ToP, arXiv:2409.18962).

A plain-PyTorch re-implementation of the released "midclstok" models (github hustvl/Vim, its forked mamba-ssm
1.1.1 "bimamba v2"), exact to the checkpoints on ``hustvl/Vim-{tiny,small,base}-midclstok``:

* patch embedding conv (patch 16, stride 16, or 8 for the "+" fine-tunes), class token inserted in the middle
  of the sequence (index M//2 of M+1 tokens), learned absolute position embedding;
* 24 blocks with fused add + RMSNorm (eps 1e-5, residual kept in fp32):
  residual = residual + DropPath(hidden); hidden = Mixer(RMSNorm(residual));
* the bidirectional mixer: shared in_proj (no bias) -> x, z; a forward branch on x and a backward branch on
  the reversed sequence, each with its own causal depthwise conv1d (width 4) + SiLU, x_proj, dt_proj (its bias
  is the scan's delta_bias), A, D; each branch's scan is gated by SiLU(z) (z reversed for the backward one);
  out = out_proj((y_fwd + flip(y_bwd)) / 2) (no bias). Both branches run as one grouped scan call;
* final norm_f(residual + hidden), head on the class token.

The official checkpoints name the backward branch ``*_b`` (A_b_log, D_b, conv1d_b, x_proj_b, dt_proj_b); here
the branches are modules ``mixer.fwd`` and ``mixer.bwd`` and ``checkpoint_filter_fn`` renames the keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from timm.layers import DropPath, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from ..ops import causal_conv1d, decay_selective_scan, selective_scan
from ..ops.triton_scan import gathered_scan_applies, selective_scan_gathered
from ..pruning import ScanSignal, TokenLayout, add_token_work, gather_tokens, skipped_before
from ._base import (ModelFamily, StagedModelMixin, acc_dtype, animal_mnist_cfg, check_checkpoint_compatible,
                    check_image_input, imagenet_cfg, init_ssm_params, resample_grid_embed, TESTBED_NOTES)
from ._loading import unwrap_checkpoint
from .facts import FACTS, pruned_defaults

__all__ = ['Vim', 'checkpoint_filter_fn']


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32, or float64 for float64 inputs (mamba-ssm's
    RMSNorm, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(acc_dtype(x.dtype))
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(xf.dtype)
        return out.to(x.dtype)


@dataclass
class VimLayout(TokenLayout):
    """The current token sequence: patch tokens in sequence order with the class token at ``cls_pos``.

    grid:      original patch grid
    n:         number of patch tokens
    index:     (B, n) original patch index (raster) of each patch token in sequence order, None = all, raster
    gaps:      (2, B, n + 1) pruned patches skipped before each token by the forward scan and (in the reversed
               sequence's order) by the backward scan; None unless alignment='decay' after a stage
    cls_index: (B,) sequence position of the class token when it is not in the middle (cls_position='raster')
    size:      (B, n) original patches each token stands for (merging), None = one each
    """
    grid: Tuple[int, int]
    n: int
    index: Optional[Tensor] = None
    gaps: Optional[Tensor] = None
    cls_index: Optional[Tensor] = None
    size: Optional[Tensor] = None

    @property
    def num_patches(self) -> int:
        return self.n

    @property
    def cls_pos(self) -> Union[int, Tensor]:
        """The class token's sequence position: n // 2 (the middle), or (B,) per sample."""
        return self.n // 2 if self.cls_index is None else self.cls_index

    def _patch_seq(self, batch: int, device) -> Tensor:
        """(B, n) sequence position of each patch token."""
        j = torch.arange(self.n, device=device).expand(batch, -1)
        return j + (j >= self.cls_index.unsqueeze(1)).long()

    def patches(self, t: Tensor) -> Tensor:
        if self.cls_index is None:
            return split_cls(t, self.n // 2)[0]
        return gather_tokens(t, self._patch_seq(t.shape[0], t.device))

    def cls_token(self, t: Tensor) -> Tensor:
        """(B, 1, C): the class token of a per-token tensor t (B, n + 1, C)."""
        if self.cls_index is None:
            return t[:, self.n // 2:self.n // 2 + 1]
        return gather_tokens(t, self.cls_index.unsqueeze(1))

    def with_patches(self, t: Tensor, patches: Tensor) -> Tensor:
        return _place_cls(patches, self.cls_token(t), self.cls_index)

    def with_cls_in_middle(self, t: Tensor) -> Tensor:
        """t (B, n + 1, C) re-ordered so that the class token is in the middle (where the head reads it)."""
        if self.cls_index is None:
            return t
        return insert_cls(self.patches(t), self.cls_token(t))

    def restrict(self, keep: Tensor, alignment: str, cls_position: str = 'middle') -> Tuple['VimLayout', Tensor]:
        """Kept patches in the given order ('packed' is 'aligned' here: Vim's scans are 1-D), the class token back
        in the middle of the kept sequence (the paper's code) or at its original raster place
        (``cls_position='raster'``, order-keeping alignments); 'decay' adds the scan gaps of the kept patches."""
        index = self.original_index(keep)
        batch, k = keep.shape
        old_cls = self.cls_pos if self.cls_index is None else self.cls_index.unsqueeze(1)
        seq = keep + (keep >= old_cls).long()  # sequence position of each kept patch
        cls_seq = torch.full_like(keep[:, :1], self.n // 2) if self.cls_index is None else self.cls_index[:, None]
        total = self.grid[0] * self.grid[1]
        if cls_position == 'raster':
            cls_index = (index < total // 2).sum(1)  # kept patches before the class token's place
            seq = _place_cls(seq.unsqueeze(-1), cls_seq.unsqueeze(-1), cls_index).squeeze(-1)
            gaps = None
            if alignment == 'decay':  # dense ranks: patch p -> p (+1 after the class token), class token total//2
                rank = index + (index >= total // 2).long()
                rank = _place_cls(rank.unsqueeze(-1), torch.full_like(rank[:, :1], total // 2).unsqueeze(-1),
                                  cls_index).squeeze(-1)
                gaps = _scan_gaps(rank, total + 1)
            return VimLayout(self.grid, k, index, gaps, cls_index), seq
        seq = insert_cls(seq.unsqueeze(-1), cls_seq.unsqueeze(-1)).squeeze(-1)
        gaps = _middle_cls_gaps(index, total) if alignment == 'decay' else None
        return VimLayout(self.grid, k, index, gaps), seq


def _place_cls(patches: Tensor, cls: Tensor, cls_index: Optional[Tensor]) -> Tensor:
    """patches (B, n, C) with the class token cls (B, 1, C) inserted at position ``cls_index`` (B,) of each
    sample (None: the middle, n // 2)."""
    if cls_index is None:
        return insert_cls(patches, cls)
    batch, n = patches.shape[:2]
    j = torch.arange(n + 1, device=patches.device).expand(batch, -1)
    ci = cls_index.unsqueeze(1)
    src = (j - (j > ci).long()).clamp(max=n - 1)  # patch feeding each output slot (unused at the class slot)
    out = gather_tokens(patches, src)
    return torch.where((j == ci).unsqueeze(-1), cls.expand(-1, n + 1, -1), out)


def split_cls(x: Tensor, cls_pos: int) -> Tuple[Tensor, Tensor]:
    """(B, n+1, C) -> patches (B, n, C), class token (B, 1, C)."""
    return torch.cat([x[:, :cls_pos], x[:, cls_pos + 1:]], dim=1), x[:, cls_pos:cls_pos + 1]


def insert_cls(patches: Tensor, cls: Tensor) -> Tensor:
    p = patches.shape[1] // 2
    return torch.cat([patches[:, :p], cls, patches[:, p:]], dim=1)


class VimBranch(nn.Module):
    """One scan direction of the bidirectional mixer: conv1d, x_proj, dt_proj, A_log, D."""

    def __init__(self, d_inner: int, d_state: int, dt_rank: int, d_conv: int = 4, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True, **dd)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True, **dd)  # bias = the scan's delta_bias
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state, **dd))
        self.D = nn.Parameter(torch.empty(d_inner, **dd))

    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1):
        init_ssm_params(self.dt_proj, self.A_log, self.D, self.dt_rank, 1.0, dt_min, dt_max)

    def forward(self, x: Tensor, backend: str, reverse: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, E, L) -> u (B, E, L), delta (B, E, L) (before bias/softplus), B (B, N, L), C (B, N, L).
        ``reverse``: the branch run on x.flip(-1), its outputs flipped back to x's order (computed in x's order:
        the reversed causal conv is the right-padded conv with the flipped kernel)."""
        if reverse:
            width = self.conv1d.weight.shape[-1]
            u = F.silu(F.conv1d(F.pad(x, (0, width - 1)), self.conv1d.weight.flip(-1), self.conv1d.bias,
                                groups=x.shape[1]))
        else:
            u = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, activation='silu', backend=backend)
        dt, Bm, Cm = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)
        return u, delta.transpose(1, 2), Bm.transpose(1, 2), Cm.transpose(1, 2)


class BiMambaMixer(nn.Module):
    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, dt_rank: Optional[int] = None,
                 d_conv: int = 4, scan_backend: str = 'auto', device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.d_inner = expand * dim
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False, **dd)
        self.fwd = VimBranch(self.d_inner, d_state, self.dt_rank, d_conv, **dd)
        self.bwd = VimBranch(self.d_inner, d_state, self.dt_rank, d_conv, **dd)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False, **dd)

    def forward(self, x: Tensor, gaps: Optional[Tensor] = None, return_ssm: Union[bool, str] = False,
                cls_pos: Union[None, int, Tensor] = None) -> Tuple[Tensor, Optional[ScanSignal]]:
        """x (B, L, C) -> (out (B, L, C), the scan signal or None). With ``return_ssm``: the gated SSM output
        averaged over both directions (B, L, E); each token's timescale (``return_ssm`` True or 'delta', the
        importance metric to be scored); given the class token's position ``cls_pos`` (and True or 'cls'), each
        token's contribution to the class token's output (``class_attention``)."""
        E = self.d_inner
        xi, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        uf, df, Bf, Cf = self.fwd(xi, self.scan_backend)
        if gaps is None and gathered_scan_applies(self.scan_backend, xi):
            return self._forward_gathered(x, xi, z, (uf, df, Bf, Cf), return_ssm, cls_pos)
        ub, db, Bb, Cb = self.bwd(xi.flip(-1), self.scan_backend)
        # both directions in one scan: channels [0, E) forward, [E, 2E) backward (groups of B/C)
        u = torch.cat([uf, ub], dim=1)
        delta = torch.cat([df, db], dim=1)
        Bs = torch.stack([Bf, Bb], dim=1)
        Cs = torch.stack([Cf, Cb], dim=1)
        zz = torch.cat([z, z.flip(-1)], dim=1)
        _, A, D, bias = self._scan_params()
        if gaps is not None:  # 'decay' alignment after a pruning stage
            g = torch.stack([gaps[0], gaps[1].flip(-1)], dim=1).repeat_interleave(E, dim=1)  # (B, 2E, L)
            y = decay_selective_scan(u, delta, A, Bs, Cs, D, zz, bias, bias, g, backend=self.scan_backend)
        else:
            y = selective_scan(u, delta, A, Bs, Cs, D, zz, bias, True, backend=self.scan_backend)
        y = ((y[:, :E] + y[:, E:].flip(-1)) / 2).transpose(1, 2)  # (B, L, E)
        signal = None
        if return_ssm:
            signal = self._scan_signal(x, z, y, u, delta, A, bias, Bf, Cf, Bb, Cb, return_ssm, cls_pos)
        return self.out_proj(y), signal

    def _scan_params(self) -> Tuple[torch.dtype, Tensor, Tensor, Tensor]:
        """Both branches' A (2E, N), D and delta_bias (2E,) in the scan's float dtype f: forward, then backward."""
        f = acc_dtype(self.fwd.A_log.dtype)
        A = -torch.exp(torch.cat([self.fwd.A_log, self.bwd.A_log]).to(f))
        D = torch.cat([self.fwd.D, self.bwd.D]).to(f)
        bias = torch.cat([self.fwd.dt_proj.bias, self.bwd.dt_proj.bias]).to(f)
        return f, A, D, bias

    def _forward_gathered(self, x: Tensor, xi: Tensor, z: Tensor, fwd: Tuple[Tensor, Tensor, Tensor, Tensor],
                          return_ssm: Union[bool, str], cls_pos) -> Tuple[Tensor, Optional[ScanSignal]]:
        """The Triton path (no 'decay' gaps): the backward branch computed in sequence order and both directions
        run by ``selective_scan_gathered`` with the orders (identity, reversed), summed in sequence order and
        gated by SiLU(z): no flipped copies (the signal, when asked for, is computed from the flipped ones)."""
        E = self.d_inner
        batch, length = x.shape[:2]
        uf, df, Bf, Cf = fwd
        ub, db, Bb, Cb = self.bwd(xi, self.scan_backend, reverse=True)  # sequence order
        _, A, D, bias = self._scan_params()
        cl = lambda a, b: torch.stack([a.transpose(-1, -2), b.transpose(-1, -2)]).transpose(-1, -2)  # noqa: E731
        ar = torch.arange(length, device=x.device)
        order = torch.stack([ar, ar.flip(0)]).view(2, 1, length).expand(2, batch, length)
        y = selective_scan_gathered(cl(uf, ub), cl(df, db), A.view(2, E, -1), cl(Bf, Bb).unsqueeze(2),
                                    cl(Cf, Cb).unsqueeze(2), order, D=D.view(2, E), z=z, delta_bias=bias.view(2, E),
                                    delta_softplus=True, backend='triton')
        y = (y / 2).transpose(1, 2)  # (B, L, E)
        signal = None
        if return_ssm:  # the same quantities as the other path: the backward branch in its own (reversed) order
            with torch.no_grad():
                u = torch.cat([uf, ub.flip(-1)], dim=1)
                delta = torch.cat([df, db.flip(-1)], dim=1)
            signal = self._scan_signal(x, z, y, u, delta, A, bias, Bf, Cf, Bb.flip(-1), Cb.flip(-1), return_ssm,
                                       cls_pos)
        return self.out_proj(y), signal

    def _scan_signal(self, x, z, y, u, delta, A, bias, Bf, Cf, Bb, Cb, return_ssm, cls_pos) -> ScanSignal:
        """The scan signal: u, delta (B, 2E, L), A (2E, N), bias (2E,), the branches' B and C (B, N, L); the
        backward branch's quantities in the reversed sequence's order (its scan's)."""
        E = self.d_inner
        f = A.dtype
        with torch.no_grad():  # the step each token's input is written with, averaged over channels and directions
            timescale = attn = None
            want_delta = return_ssm in (True, 'delta')
            want_cls = return_ssm in (True, 'cls') and cls_pos is not None
            if want_delta or want_cls:  # other metrics score y alone: no step needed
                step = F.softplus(delta.to(f) + bias[:, None])  # (B, 2E, L), the backward half reversed
            if want_delta:
                timescale = (step[:, :E].mean(1) + step[:, E:].mean(1).flip(-1)) / 2
            if want_cls:
                c = torch.as_tensor(cls_pos, device=x.device).expand(x.shape[0])
                gate = F.silu(torch.gather(z.to(f), 2, c.view(-1, 1, 1).expand(-1, E, 1)).squeeze(-1))  # (B, E)
                attn = class_attention_both(u.to(f), step, A, Bf.to(f), Cf.to(f), Bb.to(f), Cb.to(f), gate, c)
            return ScanSignal(y.detach(), timescale, attn)


def class_attention(u: Tensor, step: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, gate: Tensor, c: Tensor,
                    chunk: int = 64) -> Tensor:
    """How much each token contributes to the class token's output in one scan direction (the scan's "hidden
    attention", Ali et al., arXiv:2403.01590): token j < c reaches the class token's output through

        w[j, e] = Σ_n C[c, n] · exp(A[e, n] · Σ_{t=j+1..c} Δ[t, e]) · Δ[j, e] · B[j, n]

    and contributes w[j, e] · u[j, e] · SiLU(z[c, e]) to channel e. Returns (B, L): Σ_e |that| for j < c, 0 for
    j >= c (the class token itself and the tokens the direction reaches only after it).

    u, step (= Δ): (B, E, L); A: (E, N); Bm, Cm: (B, N, L); gate: (B, E); c: (B,) long, the class token's place.
    """
    batch, E, length = u.shape
    decay = _sum_to(step, c)  # Σ_{t=j+1..c} Δ_t for j <= c
    c_cls = torch.gather(Cm, 2, c.view(-1, 1, 1).expand(-1, Cm.shape[1], 1)).squeeze(-1)  # (B, N)
    cb = c_cls.unsqueeze(-1) * Bm  # (B, N, L): C[c] ⊙ B[j]
    out = u.new_zeros(batch, length)
    for e0 in range(0, E, chunk):  # (B, e, L, N) at a time
        sl = slice(e0, e0 + chunk)
        kernel = torch.exp(A[sl, None, :] * decay[:, sl, :, None])  # (B, e, L, N)
        w = torch.einsum('belN,bNl->bel', kernel, cb) * step[:, sl]
        out += (w * u[:, sl] * gate[:, sl, None]).abs().sum(1)
    before = torch.arange(length, device=u.device).unsqueeze(0) < c.unsqueeze(1)
    return torch.where(before, out, torch.zeros_like(out))


def _sum_to(step: Tensor, c: Tensor) -> Tensor:
    """Σ_{t=j+1..c} step[t] for every j <= c (0 for j > c); step (B, E, L), c (B,) long."""
    cum = step.cumsum(-1)
    return (torch.gather(cum, 2, c.view(-1, 1, 1).expand(-1, step.shape[1], 1)) - cum).clamp_min(0)


def class_attention_both(u: Tensor, step: Tensor, A: Tensor, Bf: Tensor, Cf: Tensor, Bb: Tensor, Cb: Tensor,
                         gate: Tensor, c: Tensor) -> Tensor:
    """Both scan directions' ``class_attention`` summed in sequence order, the fast form the mixer uses:

        class_attention(forward half, c) + class_attention(backward half, L - 1 - c).flip(-1)

    The forward scan reaches the class token only from the tokens before it and the backward scan only from those
    after it, so every token needs the kernel of one direction, never both; and the sum over the state index n runs
    as a loop of (B, E, L) operations instead of one (B, E, L, N) tensor, which stays in cache (2.8-5.4x faster than
    the reference on one CPU thread at vim_mini to Vim-S sizes, benchmarks/results/bench_cls_score.txt).

    u, step: (B, 2E, L), A: (2E, N): forward channels, then backward ones, the backward half in its scan's
    (reversed) order; Bf, Cf / Bb, Cb: (B, N, L) of each direction, in its own order; gate (B, E); c (B,) long."""
    E = u.shape[1] // 2
    length = u.shape[-1]
    rc = length - 1 - c  # the class token's place in the backward scan's order
    pos = torch.arange(length, device=u.device)
    before, after = pos < c.unsqueeze(1), pos > c.unsqueeze(1)  # (B, L) in sequence order
    fwd = before.unsqueeze(1)

    def pick(f: Tensor, b: Tensor) -> Tensor:  # the forward direction's value before c, the backward's after
        return torch.where(fwd, f, b.flip(-1))

    def at(m: Tensor, i: Tensor) -> Tensor:  # (B, N, L) -> (B, N, 1), the column of each sample's class token
        return torch.gather(m, 2, i.view(-1, 1, 1).expand(-1, m.shape[1], 1))

    add_token_work('score', u.shape[0] * E * length * A.shape[1])  # the loop's multiply-adds (FLOPs counter)
    decay = pick(_sum_to(step[:, :E], c), _sum_to(step[:, E:], rc))  # (B, E, L)
    cb = pick(at(Cf, c) * Bf, at(Cb, rc) * Bb)  # (B, N, L): C[class] ⊙ B[j] of the direction reaching j
    w = torch.zeros_like(decay)
    for n in range(A.shape[1]):  # w = Σ_n exp(A[e, n] · decay) · C[class, n] · B[j, n]
        kernel = torch.where(fwd, A[:E, n, None], A[E:, n, None]).mul_(decay).exp_()
        w.addcmul_(kernel, cb[:, n, None, :])
    out = (w * pick(step[:, :E], step[:, E:]) * pick(u[:, :E], u[:, E:]) * gate[:, :, None]).abs().sum(1)
    return torch.where(before | after, out, torch.zeros_like(out))


class VimBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0., device=None, dtype=None, **mixer_kwargs):
        super().__init__()
        self.norm = RMSNorm(dim, eps=1e-5, device=device, dtype=dtype)
        self.mixer = BiMambaMixer(dim, device=device, dtype=dtype, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, hidden: Tensor, residual: Optional[Tensor], layout: VimLayout,
                return_ssm: Union[bool, str] = False):
        acc = acc_dtype(hidden.dtype)
        residual = hidden.to(acc) if residual is None else residual + self.drop_path(hidden).to(acc)
        hidden, ssm = self.mixer(self.norm(residual).to(hidden.dtype), layout.gaps, return_ssm, layout.cls_pos)
        return hidden, residual, ssm


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, device=None, dtype=None):
        super().__init__()
        self.patch_size, self.stride = patch_size, stride
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, device=device, dtype=dtype)

    def grid_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        return tuple((s - self.patch_size) // self.stride + 1 for s in img_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Vim(StagedModelMixin, nn.Module):
    default_flops_convention = 'localmamba'
    final_norm = 'norm_f'
    global_pools = ('token', 'avg', '')
    # LocalMamba's counter (the published Vim FLOPs) counts conv1d/x_proj/dt_proj once per layer.
    flops_skip = {'localmamba': ('layers.*.mixer.bwd',)}

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: Optional[int] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            expand: int = 2,
            d_conv: int = 4,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            scan_backend: str = 'auto',
            dynamic_img_size: bool = False,
            device=None,
            dtype=None,
            **pruning,
    ):
        stride = stride or patch_size
        super().__init__()
        self._init_common(num_classes, global_pool, in_chans, embed_dim, img_size, dynamic_img_size)
        dd = dict(device=device, dtype=dtype)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, stride, **dd)
        self.grid_size = self.patch_embed.grid_size(self.img_size)
        if min(self.grid_size) < 1:
            raise ValueError(f"img_size {self.img_size} is smaller than the patch size {patch_size}: no token grid")
        self.num_prunable_tokens = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prunable_tokens + 1, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth).tolist()  # official: block i uses dpr[i]
        self.layers = nn.ModuleList([
            VimBlock(embed_dim, drop_path=dpr[i], d_state=d_state, expand=expand, d_conv=d_conv,
                     scan_backend=scan_backend, **dd)
            for i in range(depth)
        ])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, eps=1e-5, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f'layers.{i}', num_chs=embed_dim, reduction=stride) for i in range(depth)]
        if not self.pos_embed.is_meta:
            self._init_weights(depth)
        self._init_pruning(**pruning)

    @torch.no_grad()
    def _init_weights(self, depth: int):
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(depth)
            layer.mixer.fwd.reset_parameters()
            layer.mixer.bwd.reset_parameters()

    # -------------------------------------------------------------------------------- timm contract
    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed', 'cls_token', '*.A_log', '*.D'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r'^cls_token|^pos_embed|^patch_embed',
                    blocks=[(r'^layers\.(\d+)', None), (r'^norm_f', (99999,))])

    # -------------------------------------------------------------------------------- forward
    def _pos_embed(self, grid: Tuple[int, int]) -> Tensor:
        if tuple(grid) == tuple(self.grid_size):
            return self.pos_embed
        return resample_mid_cls_embed(self.pos_embed, self.grid_size, grid)

    def _embed(self, x: Tensor) -> Tuple[List[Optional[Tensor]], VimLayout]:
        check_image_input(self, x)
        x = self.patch_embed(x)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        x = insert_cls(x, self.cls_token.expand(x.shape[0], -1, -1))
        x = self.pos_drop(x + self._pos_embed(grid))
        return [x, None], VimLayout(grid, grid[0] * grid[1])

    def _feature_tokens(self, state):
        hidden, residual = state
        return residual + hidden

    def _final(self, state: List[Tensor], layout: VimLayout) -> Tensor:
        """(B, n + 1, C) normalised tokens with the class token in the middle (index n // 2): the final fused
        add + RMSNorm of the residual stream."""
        hidden, residual = state
        out = self.norm_f(residual + self.drop_path(hidden).to(residual.dtype)).to(hidden.dtype)
        return layout.with_cls_in_middle(out)

    def _intermediate(self, f: Tensor, norm: bool, dtype: torch.dtype) -> Tensor:
        """A patch-token map of the residual stream (class token removed), norm_f applied when ``norm``."""
        return self.norm_f(f).to(dtype) if norm else f.to(dtype)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        cls_pos = (x.shape[1] - 1) // 2
        if self.global_pool == 'token':
            x = x[:, cls_pos]
        elif self.global_pool == 'avg':
            x = split_cls(x, cls_pos)[0].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def _scan_gaps(rank: Tensor, n_total: int) -> Tensor:
    """(2, B, n) positions skipped before each token by the forward scan (row 0) and by the backward scan (row 1),
    both indexed by sequence position; ``rank`` (B, n) is each token's place in the dense order of ``n_total``
    positions (increasing along the sequence)."""
    return torch.stack([skipped_before(rank), skipped_before((n_total - 1 - rank).flip(-1)).flip(-1)])


def _middle_cls_gaps(index: Tensor, n_total: int) -> Tensor:
    """(2, B, k + 1) scan gaps of kept patches ``index`` (B, k) with the class token inserted in the middle with 0
    (the class token is not part of the dense order here, as in the paper's sequence)."""
    g = _scan_gaps(index, n_total).permute(1, 2, 0)  # (B, k, 2)
    return insert_cls(g, torch.zeros_like(g[:, :1])).permute(2, 0, 1)


def resample_mid_cls_embed(posemb: Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> Tensor:
    """Resize a (1, M+1, C) embedding whose row M//2 belongs to the middle class token."""
    patches, cls = split_cls(posemb, (posemb.shape[1] - 1) // 2)
    return insert_cls(resample_grid_embed(patches, old_grid, new_grid), cls)


# ------------------------------------------------------------------------------------------------
# Official checkpoints (key renames, EMA, pos_embed), pretrained cfgs, entrypoints
# ------------------------------------------------------------------------------------------------

_RENAMES = (
    ('mixer.A_b_log', 'mixer.bwd.A_log'), ('mixer.D_b', 'mixer.bwd.D'), ('mixer.conv1d_b.', 'mixer.bwd.conv1d.'),
    ('mixer.x_proj_b.', 'mixer.bwd.x_proj.'), ('mixer.dt_proj_b.', 'mixer.bwd.dt_proj.'),
    ('mixer.A_log', 'mixer.fwd.A_log'), ('mixer.D', 'mixer.fwd.D'), ('mixer.conv1d.', 'mixer.fwd.conv1d.'),
    ('mixer.x_proj.', 'mixer.fwd.x_proj.'), ('mixer.dt_proj.', 'mixer.fwd.dt_proj.'),
)


def checkpoint_filter_fn(state_dict: Dict, model: Vim, use_ema: Optional[bool] = None) -> Dict[str, Tensor]:
    """Official Vim checkpoint ({'model', 'model_ema', 'optimizer', 'args', ...}) -> model keys.

    Takes ``model`` (what Vim's ``main.py --eval --resume`` evaluates first), or ``model_ema`` for the ``*_ema``
    pretrained tags; renames the backward-branch keys; drops rope buffers; resamples pos_embed (keeping the
    middle class token's row). Idempotent on already converted dicts."""
    if use_ema is None:
        tag = (getattr(model, 'pretrained_cfg', None) or {}).get('tag') or ''
        use_ema = tag.endswith('ema')
    sd = unwrap_checkpoint(state_dict, ('model_ema', 'model') if use_ema else ('model', 'state_dict'))
    out = {}
    for k, v in sd.items():
        if k.startswith('module.'):
            k = k[len('module.'):]
        if k.startswith('rope.'):
            continue
        if '.mixer.' in k and '.mixer.fwd.' not in k and '.mixer.bwd.' not in k:
            for old, new in _RENAMES:
                if f'.{old}' in f'.{k}':
                    k = k.replace(old, new, 1)
                    break
        out[k] = v
    check_checkpoint_compatible(out, model, 'norm_f.weight', 'Vim')
    if 'pos_embed' in out and out['pos_embed'].shape[1] != model.pos_embed.shape[1]:
        m = out['pos_embed'].shape[1] - 1
        side = int(round(math.sqrt(m)))
        if side * side != m:
            raise ValueError(f"checkpoint pos_embed has {m} patch rows, not a square grid; cannot resample")
        out['pos_embed'] = resample_mid_cls_embed(out['pos_embed'], (side, side), model.grid_size)
    return out


_FAMILY_CFG = dict(
    fixed_input_size=True, first_conv='patch_embed.proj', paper_ids='arXiv:2401.09417',
    paper_name='Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model',
    origin_url='https://github.com/hustvl/Vim')


def _hub_cfgs(name: str, weights_of: str, pruned: bool = False):
    """The ``.in1k`` (checkpoint["model"]) and ``.in1k_ema`` (checkpoint["model_ema"]) tags of ``name``, whose
    weights are those of the registered model ``weights_of``."""
    facts = FACTS[weights_of]
    note = f'official weights (checkpoint["model"]), ImageNet-1k top-1 {facts.top1}'
    if pruned:
        note = 'dense official weights; training-free token pruning (ToP, arXiv:2409.18962)'
    hub = dict(hf_hub_id=facts.hub[0], hf_hub_filename=facts.hub[1])
    return {
        f'{name}.in1k': imagenet_cfg(_FAMILY_CFG, **hub, notes=note),
        f'{name}.in1k_ema': imagenet_cfg(_FAMILY_CFG, **hub,
                                         notes=note.replace('checkpoint["model"]', 'checkpoint["model_ema"]')),
    }


_UPSTREAM = ('vim_tiny_patch16_224', 'vim_small_patch16_224', 'vim_base_patch16_224',
             'vim_tiny_patch16_stride8_224', 'vim_small_patch16_stride8_224')
default_cfgs = generate_default_cfgs({
    **{k: v for name in _UPSTREAM for k, v in _hub_cfgs(name, name).items()},
    **{k: v for name in _UPSTREAM[:3] for k, v in _hub_cfgs(f'{name}_pruned', name, pruned=True).items()},
    'vim_mini.animal_mnist': imagenet_cfg(_FAMILY_CFG, **animal_mnist_cfg('vim_mini'), fixed_input_size=False),
    'vim_d12_mini.animal_mnist': imagenet_cfg(_FAMILY_CFG, **animal_mnist_cfg('vim_d12_mini', notes=TESTBED_NOTES),
                                              fixed_input_size=False),
})

_ARCHS = {
    'tiny': dict(embed_dim=192, depth=24),
    'small': dict(embed_dim=384, depth=24),
    'base': dict(embed_dim=768, depth=24),
    # the project's small model for Animal-MNIST: 28x28 grey input, a 14x14 token grid (patch 2), as at 224/16
    'mini': dict(embed_dim=32, depth=6, d_state=16, patch_size=2, img_size=28),
}
# the testbed (benchmarks/train_testbed.py): the mini at 12 blocks, trained from scratch to convergence
_ARCHS['d12_mini'] = dict(_ARCHS['mini'], depth=12)
# The paper's schedules (models/facts.py): Vim-T after blocks 10, 20; Vim-S / Vim-B after 5, 10, 15; keep 0.8.
PRUNED_DEFAULTS = pruned_defaults('vim_')

_family = ModelFamily(Vim, checkpoint_filter_fn, _ARCHS, PRUNED_DEFAULTS)


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-Ti, middle class token, with the official weights (numbers: models/facts.py)."""
    return _family.dense('tiny', 'vim_tiny_patch16_224', pretrained, kwargs)


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-S, middle class token, with the official weights (numbers: models/facts.py)."""
    return _family.dense('small', 'vim_small_patch16_224', pretrained, kwargs)


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-B, middle class token, with the official weights (numbers: models/facts.py)."""
    return _family.dense('base', 'vim_base_patch16_224', pretrained, kwargs)


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-Ti+: the stride-8 fine-tune (27x27 tokens) with the official weights."""
    return _family.dense('tiny', 'vim_tiny_patch16_stride8_224', pretrained, kwargs, stride=8)


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-S+: the stride-8 fine-tune (27x27 tokens) with the official weights."""
    return _family.dense('small', 'vim_small_patch16_stride8_224', pretrained, kwargs, stride=8)


@register_model
def vim_mini(pretrained: bool = False, **kwargs) -> Vim:
    """An 89K-parameter Vim for 28x28 grey images (14x14 tokens + class token), trained here on Animal-MNIST."""
    return _family.dense('mini', 'vim_mini', pretrained, kwargs)


@register_model
def vim_d12_mini(pretrained: bool = False, **kwargs) -> Vim:
    """The Vim testbed: vim_mini at 12 blocks (172K parameters), trained here from scratch to convergence on
    Animal-MNIST (benchmarks/train_testbed.py); the paper's tables run on it (benchmarks/RESULTS.md)."""
    return _family.dense('d12_mini', 'vim_d12_mini', pretrained, kwargs)


@register_model
def vim_tiny_patch16_224_pruned(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-Ti with ToP pruning (default schedule: models/facts.py); loads the dense official weights."""
    return _family.pruned('tiny', 'vim_tiny_patch16_224_pruned', pretrained, kwargs)


@register_model
def vim_small_patch16_224_pruned(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-S with ToP pruning (default schedule: models/facts.py); loads the dense official weights."""
    return _family.pruned('small', 'vim_small_patch16_224_pruned', pretrained, kwargs)


@register_model
def vim_base_patch16_224_pruned(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-B with ToP pruning (default schedule: models/facts.py); loads the dense official weights."""
    return _family.pruned('base', 'vim_base_patch16_224_pruned', pretrained, kwargs)
