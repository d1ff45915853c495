"""PlainMamba (Yang et al., BMVC 2024, arXiv:2403.17695) with token pruning (ToP, arXiv:2409.18962).

A re-implementation in plain PyTorch of the official mmcls model (github ChenhongyiYang/PlainMamba), exact to
its released checkpoints ``l1.pth`` / ``l2.pth`` / ``l3.pth``:

* stem: conv7x7/2 + BN + ReLU, 1 (L1) or 2 (L2/L3) conv3x3 + BN + ReLU, zero pad right/bottom to a multiple
  of 8, conv8x8/8 projection, learned absolute position embedding (bicubic-resized for other grids);
* ``depth`` layers of x = x + DropPath(Mixer(LN(x))), L1's layer 0 then replaces x by GELU(BN(DWConv3x3(x)));
* the mixer: in_proj (bias) -> depthwise 7x7 conv + SiLU -> x_proj -> dt/B/C, four snake scans
  (row snake, its reverse, column snake, its reverse) with a learned per-direction term ``direction_Bs``
  added to B, summed (not averaged) and gated by SiLU(z), out_proj (bias);
* final LayerNorm (eps 1e-6), mean pooling over tokens, linear head.

Two quirks of the released code are reproduced (``official_quirks=True``, the default, needed for the
released weights): (Q1) dt_proj's bias is added inside dt_proj and again as the scan's delta_bias, and
(Q2) only u is permuted into each scan order, delta/B/C stay in raster order.

Token pruning (``prune_layers``, ``keep_rate``, ...; see ``PrunableMixin``) runs through the same layers:
after a stage the sequence holds only the kept tokens; every layer computes on them alone; the
per-direction scan orders, direction codes and grid positions are built once per stage (alignment).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from timm.layers import DropPath, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from ..ops import decay_selective_scan, selective_scan
from ..ops.triton_scan import gathered_scan_applies, selective_scan_gathered
from ..pruning import ScanSignal, TokenLayout, condensed_grid, restrict_scan_order
from ._base import (ModelFamily, StagedModelMixin, acc_dtype, animal_mnist_cfg, ceil_div, check_checkpoint_compatible,
                    check_image_input, conv_out, imagenet_cfg, init_ssm_params, resample_grid_embed, TESTBED_NOTES)
from ._loading import unwrap_checkpoint
from .facts import FACTS, pruned_defaults

__all__ = ['PlainMamba', 'checkpoint_filter_fn', 'snake_scan_tables']

NUM_DIRECTIONS = 4


# ------------------------------------------------------------------------------------------------
# Scan orders
# ------------------------------------------------------------------------------------------------

def snake_scan_tables(height: int, width: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four PlainMamba scan orders of an H x W grid (grid index r*W + c), cached (built afresh while
    torch.export / torch.compile trace: a cache filled then would hand traced tensors to later eager calls).

    Returns (order, rank, code_at_pos, code_at_step), each (4, H*W) long:
      order[d, l]        grid position visited at step l of direction d
      rank[d, p]         step at which direction d visits grid position p (the inverse permutation)
      code_at_step[d, l] direction code of step l: 0 start, 1 right, 2 left, 3 up, 4 down (the move that led
                         to it), indexing ``direction_Bs``
      code_at_pos[d, p]  the same code, indexed by grid position
    Directions: 0 row snake from (0, 0); 1 its exact reverse; 2 column snake from (0, 0); 3 its reverse.
    """
    if torch.compiler.is_compiling():
        if isinstance(height, int) and isinstance(width, int):  # torch.compile: constants, not traced step by step
            return _snake_scan_tables_constant(height, width)
        return _snake_scan_tables.__wrapped__(height, width)
    return _snake_scan_tables(height, width)


@torch.compiler.assume_constant_result
def _snake_scan_tables_constant(height: int, width: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _snake_scan_tables.__wrapped__(height, width)


@functools.lru_cache(maxsize=64)
def _snake_scan_tables(height: int, width: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    rows = []
    for r in range(height):
        cols = range(width) if r % 2 == 0 else range(width - 1, -1, -1)
        rows.extend(r * width + c for c in cols)
    cols_snake = []
    for c in range(width):
        rs = range(height) if c % 2 == 0 else range(height - 1, -1, -1)
        cols_snake.extend(r * width + c for r in rs)
    orders = [rows, rows[::-1], cols_snake, cols_snake[::-1]]

    def move_code(a: int, b: int) -> int:
        ra, ca, rb, cb = a // width, a % width, b // width, b % width  # no divmod: torch.compile traces this
        return {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}[(rb - ra, cb - ca)]

    order = torch.tensor(orders, dtype=torch.long)
    code_at_step = torch.tensor([[0] + [move_code(o[i - 1], o[i]) for i in range(1, len(o))] for o in orders],
                                dtype=torch.long)
    rank = torch.argsort(order, dim=1)
    code_at_pos = torch.gather(code_at_step, 1, rank)
    return order, rank, code_at_pos, code_at_step


@dataclass
class SnakeLayout(TokenLayout):
    """PlainMamba's tokens: where they sit on the grid the mixer sees, and how each scan direction visits them.

    grid:     (H, W) original patch grid (dense feature maps)
    index:    (B, n) original grid position of each token, or None (all, raster order)
    scan_grid: (H', W') grid seen by the 2-D convolutions and the scan orders: the original grid, or a condensed
              one after a 'naive' stage
    pos:      (B, n) position of each token on ``scan_grid``, or None (the full grid in raster order)
    gather:   (4*B*n,) row of the flattened (B*n) sequence visited at each scan step, direction-major
    perm:     (4, B, n) sequence index visited at each scan step (``gather`` without the batch offsets): the
              position map of the Triton scan ``selective_scan_gathered``; None: derived from ``gather``
    codes:    (4, B, n) direction code at each scan step
    gaps:     (4, B, n) pruned positions skipped before each scan step, or None (no 'decay')
    flat_pos: (B*n,) flattened grid row of each token (b*H'*W' + pos), for scatter/gather around the conv
    """
    grid: Tuple[int, int]
    index: Optional[Tensor]
    scan_grid: Tuple[int, int]
    pos: Optional[Tensor]
    gather: Tensor
    codes: Tensor
    gaps: Optional[Tensor] = None
    flat_pos: Optional[Tensor] = None
    size: Optional[Tensor] = None
    perm: Optional[Tensor] = None

    @property
    def num_patches(self) -> int:
        return self.codes.shape[-1]

    def scan_perm(self) -> Tensor:
        """(4, B, n) sequence index visited at each scan step of each direction."""
        if self.perm is not None:
            return self.perm
        S, batch, n = self.codes.shape
        offs = torch.arange(batch, device=self.gather.device).view(1, batch, 1) * n
        return self.gather.view(S, batch, n) - offs

    @classmethod
    def dense(cls, batch: int, grid: Tuple[int, int], device) -> 'SnakeLayout':
        order, _, _, code_at_step = (t.to(device) for t in snake_scan_tables(*grid))
        offs = torch.arange(batch, device=device).view(1, batch, 1) * (grid[0] * grid[1])
        gather = (order.unsqueeze(1) + offs).reshape(-1)
        return cls(grid, None, grid, None, gather, code_at_step.unsqueeze(1).expand(-1, batch, -1),
                   perm=order.unsqueeze(1).expand(-1, batch, -1))

    @classmethod
    def sparse(cls, grid: Tuple[int, int], index: Tensor, scan_grid: Tuple[int, int], pos: Tensor,
               with_gaps: bool = False) -> 'SnakeLayout':
        """Tokens at ``scan_grid`` positions ``pos`` (B, n), in sequence order; each scan visits them in its dense
        order on that grid (hidden state alignment)."""
        _, rank, code_at_pos, _ = (t.to(pos.device) for t in snake_scan_tables(*scan_grid))
        batch, n = pos.shape
        perm, gaps = restrict_scan_order(rank, pos)
        codes = torch.gather(code_at_pos[:, pos], 2, perm)  # each kept token keeps its own code
        offs = torch.arange(batch, device=pos.device).view(1, batch, 1) * n
        gather = (perm + offs).reshape(-1)
        flat_pos = (pos + torch.arange(batch, device=pos.device).view(batch, 1) * (scan_grid[0] * scan_grid[1]))
        return cls(grid, index, scan_grid, pos, gather, codes, gaps if with_gaps else None, flat_pos.reshape(-1),
                   perm=perm)

    def restrict(self, keep: Tensor, alignment: str, cls_position: str = 'middle') -> Tuple['SnakeLayout', Tensor]:
        index = self.original_index(keep)
        if alignment in ('naive', 'packed'):  # ViT-style: the kept tokens, in the given order (score order for
            k = keep.shape[1]                  # 'naive', sequence order for 'packed'), row by row on a smaller grid
            return SnakeLayout.sparse(self.grid, index, condensed_grid(k),
                                      torch.arange(k, device=keep.device).expand(keep.shape[0], -1)), keep
        # aligned / decay: tokens keep their grid positions and the dense scan orders
        return SnakeLayout.sparse(self.grid, index, self.grid, index, with_gaps=alignment == 'decay'), keep

    def conv(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """Apply a 2-D map ``fn`` (B, C, H, W) -> (B, C, H, W) to tokens x (B, n, C) at their grid positions;
        grid cells without a token are zero."""
        batch, n, chans = x.shape
        h, w = self.scan_grid
        if self.pos is None:
            out = fn(x.transpose(1, 2).reshape(batch, chans, h, w))
            return out.flatten(2).transpose(1, 2)
        canvas = x.new_zeros(batch * h * w, chans)
        canvas.index_copy_(0, self.flat_pos, x.reshape(batch * n, chans))
        out = fn(canvas.view(batch, h, w, chans).permute(0, 3, 1, 2))
        return out.permute(0, 2, 3, 1).reshape(batch * h * w, chans)[self.flat_pos].reshape(batch, n, chans)


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------

class PlainMamba2D(nn.Module):
    """The PlainMamba mixer (official key names: in_proj, conv2d, x_proj, dt_proj, A_log, D, direction_Bs,
    out_proj)."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, dt_rank: Optional[int] = None,
                 conv_size: int = 7, official_quirks: bool = True, scan_backend: str = 'auto',
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim, self.d_state = dim, d_state
        self.d_inner = expand * dim
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.official_quirks = official_quirks
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=True, **dd)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, conv_size, padding=conv_size // 2,
                                groups=self.d_inner, bias=True, **dd)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, **dd))
        self.D = nn.Parameter(torch.empty(self.d_inner, **dd))
        self.direction_Bs = nn.Parameter(torch.empty(NUM_DIRECTIONS + 1, d_state, **dd))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=True, **dd)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1):
        if self.A_log.is_meta:
            return
        for lin in (self.in_proj, self.x_proj, self.out_proj):
            trunc_normal_(lin.weight, std=.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        # With Q1 the bias enters twice: halve it so that the effective step starts in [dt_min, dt_max].
        init_ssm_params(self.dt_proj, self.A_log, self.D, self.dt_rank, 0.5 if self.official_quirks else 1.0,
                        dt_min, dt_max)
        trunc_normal_(self.direction_Bs, std=.02)

    def effective_dt_bias(self) -> Tensor:
        """The token-independent part of the pre-softplus step (2 x bias with quirk Q1)."""
        b = self.dt_proj.bias.to(acc_dtype(self.dt_proj.bias.dtype))
        return 2 * b if self.official_quirks else b

    def forward(self, x: Tensor, layout: SnakeLayout,
                return_ssm: Union[bool, str] = False) -> Tuple[Tensor, Optional[ScanSignal]]:
        """x (B, n, C) tokens in sequence order; returns (out (B, n, C), the scan signal or None). The signal's y
        (B, n, E) is the sum of the four directions at each token's position, gated: what importance is scored on;
        its timescale is computed when ``return_ssm`` is True or 'delta' (the importance metric to be scored)."""
        batch, n, _ = x.shape
        E, N, R, S = self.d_inner, self.d_state, self.dt_rank, NUM_DIRECTIONS
        xi, z = self.in_proj(x).chunk(2, dim=-1)
        xc = F.silu(layout.conv(xi, self.conv2d))  # (B, n, E), sequence order
        dt, Bm, Cm = self.x_proj(xc).split([R, N, N], dim=-1)
        dt = self.dt_proj(dt) if self.official_quirks else F.linear(dt, self.dt_proj.weight)  # Q1
        f = acc_dtype(self.A_log.dtype)
        A = -torch.exp(self.A_log.to(f))
        delta_bias = self.dt_proj.bias.to(f)

        rows = layout.gather  # (S*B*n,) sequence row visited at each scan step
        dir_term = self.direction_Bs[layout.codes].to(Bm.dtype)  # (S, B, n, N): by scan step
        if layout.gaps is None and gathered_scan_applies(self.scan_backend, xc):
            # The Triton scan reads the tokens through each direction's visiting order (with Q2, dt/B/C by step)
            # and adds the four outputs back at the positions visited, then gates: no permuted copies.
            y_seq = selective_scan_gathered(
                xc.transpose(1, 2), dt.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2),
                layout.scan_perm(), D=self.D.to(f), z=z.transpose(1, 2), delta_bias=delta_bias,
                delta_softplus=True, B_step=dir_term.transpose(2, 3),
                step_order=('delta', 'B', 'C') if self.official_quirks else (), backend='triton').transpose(1, 2)
            dts = None
        else:
            u = xc.reshape(batch * n, E)[rows].reshape(S * batch, n, E)
            if self.official_quirks:  # Q2: only u follows the scan order; dt, B, C stay in sequence order
                dts = dt.unsqueeze(0).expand(S, -1, -1, -1).reshape(S * batch, n, E)
                Bs = (Bm.unsqueeze(0) + dir_term).reshape(S * batch, n, N)
                Cs = Cm.unsqueeze(0).expand(S, -1, -1, -1).reshape(S * batch, n, N)
            else:
                dts = dt.reshape(batch * n, E)[rows].reshape(S * batch, n, E)
                Bs = (Bm.reshape(batch * n, N)[rows].reshape(S, batch, n, N) + dir_term).reshape(S * batch, n, N)
                Cs = Cm.reshape(batch * n, N)[rows].reshape(S * batch, n, N)

            if layout.gaps is not None:  # 'decay' alignment after a pruning stage
                y = decay_selective_scan(u.transpose(1, 2), dts.transpose(1, 2), A, Bs.transpose(1, 2),
                                         Cs.transpose(1, 2), self.D, None, delta_bias, self.effective_dt_bias(),
                                         layout.gaps.reshape(S * batch, 1, n), self.scan_backend)
            else:
                y = selective_scan(u.transpose(1, 2), dts.transpose(1, 2), A, Bs.transpose(1, 2),
                                   Cs.transpose(1, 2), self.D.to(f), None, delta_bias, True,
                                   backend=self.scan_backend)
            # back to sequence order, summing the four directions
            y_seq = y.new_zeros(batch * n, E).index_add_(0, rows, y.transpose(1, 2).reshape(S * batch * n, E))
            y_seq = y_seq.reshape(batch, n, E) * F.silu(z)
        signal = None
        if return_ssm:
            timescale = None
            if return_ssm in (True, 'delta'):  # the step each token's input is written with, mean over E and S
                with torch.no_grad():
                    if dts is None:  # the gathered scan: the same steps, from dt in sequence order
                        step = F.softplus(dt.to(f) + delta_bias).mean(-1)  # (B, n)
                        step = (step.unsqueeze(0).expand(S, -1, -1) if self.official_quirks
                                else step.reshape(batch * n)[rows]).reshape(S * batch * n)
                    else:
                        step = F.softplus(dts.to(f) + delta_bias).mean(-1).reshape(S * batch * n)  # by scan step
                    timescale = step.new_zeros(batch * n).index_add_(0, rows, step).reshape(batch, n) / S
            signal = ScanSignal(y_seq.detach(), timescale)
        return self.out_proj(y_seq), signal


class PlainMambaLayer(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0., with_dwconv: bool = False, device=None, dtype=None,
                 **mixer_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = nn.LayerNorm(dim, eps=1e-5, **dd)
        self.mamba = PlainMamba2D(dim, **mixer_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.dw = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd),
            nn.BatchNorm2d(dim, **dd),
            nn.GELU(),
        ) if with_dwconv else None

    def forward(self, x: Tensor, layout: SnakeLayout, return_ssm: Union[bool, str] = False):
        out, ssm = self.mamba(self.norm(x), layout, return_ssm)
        x = x + self.drop_path(out)
        if self.dw is not None:  # replaces x, no residual (official L1 layer 0)
            x = layout.conv(x, self.dw)
        return x, ssm


class ConvPatchEmbed(nn.Module):
    """Shunted-style stem: conv7x7/2-BN-ReLU, ``num_convs`` x conv3x3-BN-ReLU, pad to a multiple of
    patch/2 (right/bottom), conv (patch/2) x (patch/2) stride patch/2."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 192, num_convs: int = 1, patch_size: int = 16,
                 stem_dim: int = 64, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if patch_size % 2:
            raise ValueError(f"patch_size must be even, got {patch_size}")
        self.half = patch_size // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_dim, 7, stride=2, padding=3, bias=False, **dd),
            nn.BatchNorm2d(stem_dim, **dd),
            nn.ReLU(inplace=True),
        )
        convs = []
        for _ in range(num_convs):
            convs += [nn.Conv2d(stem_dim, stem_dim, 3, padding=1, bias=False, **dd),
                      nn.BatchNorm2d(stem_dim, **dd), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*convs)
        self.projection = nn.Conv2d(stem_dim, embed_dim, self.half, stride=self.half, **dd)

    def grid_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        return tuple(ceil_div(conv_out(s, 7, 2, 3), self.half) for s in img_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(self.stem(x))
        ph, pw = (-x.shape[-2]) % self.half, (-x.shape[-1]) % self.half
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.projection(x)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

class PlainMamba(StagedModelMixin, nn.Module):
    default_flops_convention = 'mamba'
    final_norm = 'ln1'
    global_pools = ('avg', '')

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            expand: int = 2,
            conv_size: int = 7,
            num_convs_patch_embed: int = 1,
            stem_dim: int = 64,
            layers_with_dwconv: Sequence[int] = (),
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            official_quirks: bool = True,
            dynamic_img_size: bool = False,
            scan_backend: str = 'auto',
            device=None,
            dtype=None,
            **pruning,
    ):
        super().__init__()
        self._init_common(num_classes, global_pool, in_chans, embed_dim, img_size, dynamic_img_size)
        dd = dict(device=device, dtype=dtype)

        self.patch_embed = ConvPatchEmbed(in_chans, embed_dim, num_convs_patch_embed, patch_size, stem_dim, **dd)
        self.grid_size = self.patch_embed.grid_size(self.img_size)
        self.num_prunable_tokens = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prunable_tokens, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList([
            PlainMambaLayer(embed_dim, drop_path=dpr[i], with_dwconv=i in tuple(layers_with_dwconv),
                            d_state=d_state, expand=expand, conv_size=conv_size, official_quirks=official_quirks,
                            scan_backend=scan_backend, **dd)
            for i in range(depth)
        ])
        self.ln1 = nn.LayerNorm(embed_dim, eps=1e-6, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f'layers.{i}', num_chs=embed_dim, reduction=patch_size)
                             for i in range(depth)]
        if not self.pos_embed.is_meta:
            trunc_normal_(self.pos_embed, std=.02)
            if isinstance(self.head, nn.Linear):
                trunc_normal_(self.head.weight, std=.02)
                nn.init.zeros_(self.head.bias)
        self._init_pruning(**pruning)

    # -------------------------------------------------------------------------------- timm contract
    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed', '*.A_log', '*.D', '*.direction_Bs'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r'^pos_embed|^patch_embed', blocks=[(r'^layers\.(\d+)', None), (r'^ln1', (99999,))])

    # -------------------------------------------------------------------------------- forward
    def _embed(self, x: Tensor) -> Tuple[List[Tensor], SnakeLayout]:
        check_image_input(self, x)
        x = self.patch_embed(x)
        grid = tuple(x.shape[-2:])
        pos = resample_grid_embed(self.pos_embed, self.grid_size, grid)
        x = self.pos_drop(x.flatten(2).transpose(1, 2) + pos)
        return [x], SnakeLayout.dense(x.shape[0], grid, x.device)

    def _final(self, state: List[Tensor], layout: SnakeLayout) -> Tensor:
        """(B, n, C) normalised tokens; n = tokens kept after the last stage (all tokens when dense)."""
        return self.ln1(state[0])

    def _intermediate(self, f: Tensor, norm: bool, dtype: torch.dtype) -> Tensor:
        return self.ln1(f) if norm else f

    def _check_prune_cfg(self, cfg):
        if cfg.cls_position != 'middle' or cfg.importance == 'cls':
            raise ValueError("cls_position and importance='cls' apply to Vim (its class token); PlainMamba has no "
                             "class token")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


# ------------------------------------------------------------------------------------------------
# Checkpoints, configs, registration
# ------------------------------------------------------------------------------------------------

def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: PlainMamba) -> Dict[str, Tensor]:
    """Official mmcls checkpoint (``backbone.*``, ``head.fc.*``, optionally inside ``state_dict``) -> model keys.
    Drops ``ema_*`` buffers and bicubic-resizes ``pos_embed`` to the model's grid. Idempotent on converted dicts."""
    sd = unwrap_checkpoint(state_dict, ('state_dict', 'model'))
    out = {}
    for k, v in sd.items():
        if k.startswith('ema_') or k.startswith('module.ema_'):
            continue
        if k.startswith('module.'):
            k = k[len('module.'):]
        if k.startswith('backbone.'):
            k = k[len('backbone.'):]
        elif k.startswith('head.fc.'):
            k = 'head.' + k[len('head.fc.'):]
        if k.startswith('norm_layer'):  # downstream (seg) extra norms, not part of the classifier
            continue
        out[k] = v
    check_checkpoint_compatible(out, model, 'ln1.weight', 'PlainMamba')
    # Official checkpoints hold a square grid (14x14): resample it whenever the model's grid differs, even with
    # the same number of rows (e.g. a 7x28 model); a converted dict with the model's row count is kept as is.
    official = any(k.startswith(('backbone.', 'module.backbone.')) for k in sd)
    if 'pos_embed' in out:
        n = out['pos_embed'].shape[1]
        side = int(round(math.sqrt(n)))
        square = side * side == n
        if n != model.pos_embed.shape[1] or (official and square and (side, side) != tuple(model.grid_size)):
            if not square:
                raise ValueError(f"checkpoint pos_embed has {n} rows, not a square grid; cannot resample")
            out['pos_embed'] = resample_grid_embed(out['pos_embed'], (side, side), model.grid_size)
    return out


_FAMILY_CFG = dict(
    fixed_input_size=False, first_conv='patch_embed.stem.0', paper_ids='arXiv:2403.17695',
    paper_name='PlainMamba: Improving Non-Hierarchical Mamba in Visual Recognition',
    origin_url='https://github.com/ChenhongyiYang/PlainMamba')


def _cfg(**kwargs):
    return imagenet_cfg(_FAMILY_CFG, **kwargs)


def _upstream_cfgs(v: str) -> dict:
    facts = FACTS[f'plainmamba_{v}']
    hub = dict(hf_hub_id=facts.hub[0], hf_hub_filename=facts.hub[1])
    return {
        f'plainmamba_{v}.in1k': _cfg(**hub, notes=f'official weights, ImageNet-1k top-1 {facts.top1}'),
        f'plainmamba_{v}_pruned.in1k': _cfg(
            **hub, notes='dense official weights; training-free token pruning (ToP, arXiv:2409.18962)'),
    }


default_cfgs = generate_default_cfgs({
    **_upstream_cfgs('l1'), **_upstream_cfgs('l2'), **_upstream_cfgs('l3'),
    'plainmamba_mini.animal_mnist': _cfg(**animal_mnist_cfg('plainmamba_mini')),
    'plainmamba_d12_mini.animal_mnist': _cfg(**animal_mnist_cfg('plainmamba_d12_mini', notes=TESTBED_NOTES)),
})

# Architecture of each variant (official arch_zoo).
_ARCHS = {
    'l1': dict(embed_dim=192, depth=24, num_convs_patch_embed=1, layers_with_dwconv=(0,)),
    'l2': dict(embed_dim=384, depth=24, num_convs_patch_embed=2, layers_with_dwconv=()),
    'l3': dict(embed_dim=448, depth=36, num_convs_patch_embed=2, layers_with_dwconv=()),
    # the project's small model for Animal-MNIST: 28x28 grey input, a 14x14 token grid (stride 2), as at 224/16
    'mini': dict(embed_dim=32, depth=6, d_state=16, num_convs_patch_embed=1, stem_dim=32, patch_size=2,
                 img_size=28, layers_with_dwconv=()),
}
# the testbed (benchmarks/train_testbed.py): the mini at 12 blocks, trained from scratch to convergence
_ARCHS['d12_mini'] = dict(_ARCHS['mini'], depth=12)
# Default schedules of the *_pruned variants (models/facts.py; tests/test_pruning.py checks their FLOPs cut).
PRUNED_DEFAULTS = pruned_defaults('plainmamba_')

_family = ModelFamily(PlainMamba, checkpoint_filter_fn, _ARCHS, PRUNED_DEFAULTS)


@register_model
def plainmamba_l1(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L1 with the official weights (numbers: README model table, models/facts.py)."""
    return _family.dense('l1', 'plainmamba_l1', pretrained, kwargs)


@register_model
def plainmamba_l2(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L2 with the official weights (numbers: README model table, models/facts.py)."""
    return _family.dense('l2', 'plainmamba_l2', pretrained, kwargs)


@register_model
def plainmamba_l3(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L3 with the official weights (numbers: README model table, models/facts.py)."""
    return _family.dense('l3', 'plainmamba_l3', pretrained, kwargs)


@register_model
def plainmamba_mini(pretrained: bool = False, **kwargs) -> PlainMamba:
    """A 97K-parameter PlainMamba for 28x28 grey images (14x14 tokens), trained here on Animal-MNIST."""
    return _family.dense('mini', 'plainmamba_mini', pretrained, kwargs)


@register_model
def plainmamba_d12_mini(pretrained: bool = False, **kwargs) -> PlainMamba:
    """The PlainMamba testbed: plainmamba_mini at 12 blocks (176K parameters), trained here from scratch to
    convergence on Animal-MNIST (benchmarks/train_testbed.py); the paper's tables run on it (benchmarks/RESULTS.md)."""
    return _family.dense('d12_mini', 'plainmamba_d12_mini', pretrained, kwargs)


@register_model
def plainmamba_l1_pruned(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L1 with ToP token pruning (default schedule: models/facts.py); loads the dense official weights."""
    return _family.pruned('l1', 'plainmamba_l1_pruned', pretrained, kwargs)


@register_model
def plainmamba_l2_pruned(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L2 with ToP token pruning (default schedule: models/facts.py); loads the dense official weights."""
    return _family.pruned('l2', 'plainmamba_l2_pruned', pretrained, kwargs)


@register_model
def plainmamba_l3_pruned(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L3 with ToP token pruning (default schedule: models/facts.py); loads the dense official weights."""
    return _family.pruned('l3', 'plainmamba_l3_pruned', pretrained, kwargs)
