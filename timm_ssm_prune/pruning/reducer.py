"""The token-reduction layer: one ``TokenReducer`` module per pruning stage.

A model registers its reducers (``model.reducers``, one per stage, so ``model.named_modules()`` shows where the
stages are) and its stage loop calls the one after block ``after_block``:

    reduction = reducer(signal, layout)      # signal: the block's ScanSignal (SSM output, timescale)
    x = reduction(x)                          # any per-token tensor (B, L, ...), e.g. Vim's hidden and residual
    layout = reduction.layout

The decision (scores, kept indices, merge partners, next layout) is the module's output, so forward hooks see it
(``trace.trace_kept_tokens`` records the kept tokens that way). Tokens the layout protects (Vim's class token)
are never scored for selection nor merged; the layout's ``restrict`` puts them back in the next sequence.

Reductions (docs/method.md §7):

* ``prune`` (ToP): the tokens not kept are dropped.
* ``merge``: every token not kept is folded into a kept one, its *partner* (``merge_partner``: the kept token
  with the most similar SSM output, cosine similarity; or the nearest kept token on the patch grid), as a
  size-weighted average: each token carries a size (the number of original patches it stands for, 1 at the
  start, as ToMe's proportional attention), the partner becomes Σ size·x / Σ size over itself and the tokens
  folded into it, and its size the sum. Kept tokens keep their aligned positions.
* ``hybrid``: of the tokens not kept, the ``merge_fraction`` with the highest scores are merged, the rest dropped.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PruneConfig, keep_count
from .importance import ScanSignal, select_tokens, token_importance, top_indices
from .layout import TokenLayout, gather_tokens

__all__ = ['TokenReducer', 'Reduction', 'MergePlan', 'merge_average', 'record_token_work', 'add_token_work']

_STATE = threading.local()


@contextmanager
def record_token_work(log: List[Tuple[str, int]]):
    """Append (kind, multiply-accumulates per forward) for the token-reduction work done in this thread outside
    matmuls (FLOPs): 'merge' for the weighted averaging of merged tokens, 'score' for importance scores that run
    as elementwise loops (Vim's class attention)."""
    prev = getattr(_STATE, 'work', None)
    _STATE.work = log
    try:
        yield log
    finally:
        _STATE.work = prev


def add_token_work(kind: str, macs: int) -> None:
    """Record ``macs`` multiply-accumulates of ``kind`` while ``record_token_work`` is active (else nothing)."""
    log = getattr(_STATE, 'work', None)
    if log is not None:
        log.append((kind, int(macs)))


def merge_average(patches: Tensor, keep: Tensor, merged: Tensor, partner: Tensor, w_keep: Tensor,
                  w_merged: Tensor) -> Tensor:
    """Weighted average of each kept token with the tokens merged into it.

    patches (B, n, C); keep (B, k) and merged (B, m) index the n tokens; partner (B, m) gives, for each merged
    token, the position (0..k-1) in ``keep`` of the token it is folded into; w_keep (B, k) and w_merged (B, m)
    are the weights (sizes). Returns (B, k, C): (w_i x_i + Σ_{j→i} w_j x_j) / (w_i + Σ_{j→i} w_j).
    """
    dtype = patches.dtype
    w_keep, w_merged = w_keep.to(dtype), w_merged.to(dtype)
    numer = gather_tokens(patches, keep) * w_keep.unsqueeze(-1)
    numer = numer.scatter_add(1, partner.unsqueeze(-1).expand(-1, -1, patches.shape[-1]),
                              gather_tokens(patches, merged) * w_merged.unsqueeze(-1))
    denom = w_keep.scatter_add(1, partner, w_merged)
    add_token_work('merge', patches.shape[0] * (keep.shape[1] + merged.shape[1]) * patches.shape[-1])
    return numer / denom.unsqueeze(-1)


@dataclass
class MergePlan:
    """Which tokens fold into which kept token, and with what weights (see ``merge_average``)."""
    merged: Tensor      # (B, m) indices into the stage's prunable tokens
    partner: Tensor     # (B, m) position in ``keep`` of each one's partner
    w_keep: Tensor      # (B, k) sizes of the kept tokens before the merge
    w_merged: Tensor    # (B, m) sizes of the merged tokens


@dataclass
class Reduction:
    """What a stage decided. ``index`` (B, L') is the current-sequence position of each token of the next
    sequence (None: the sequence is unchanged); calling the reduction applies it to a per-token tensor."""
    layout: TokenLayout
    index: Optional[Tensor] = None
    keep: Optional[Tensor] = None      # (B, k) kept prunable tokens (indices into the stage's prunable tokens)
    scores: Optional[Tensor] = None    # (B, n) importance of the stage's prunable tokens
    source: Optional[TokenLayout] = None  # the layout the stage started from
    merge: Optional[MergePlan] = None

    def __call__(self, t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None or self.index is None:
            return t
        out = gather_tokens(t, self.index)
        if self.merge is not None:
            m = self.merge
            merged = merge_average(self.source.patches(t), self.keep, m.merged, m.partner, m.w_keep, m.w_merged)
            out = self.layout.with_patches(out, merged)
        return out

    @property
    def kept_grid_index(self) -> Optional[Tensor]:
        """(B, k) original grid position of each token alive after the stage (None: all, raster order)."""
        return self.layout.index


class TokenReducer(nn.Module):
    """Keeps ``ceil(keep_rate * n)`` of the n prunable tokens, scored by ``importance`` on the block's scan signal
    and laid out by ``alignment`` ('aligned' and 'decay': kept tokens in their sequence order, scans follow the
    dense order; 'packed': in their order on a condensed layout; 'naive': ViT-style packing in descending-score
    order); ``reduction`` says what happens to the others (dropped, merged, or both). The options are those of
    ``PruneConfig``."""

    def __init__(self, after_block: int, keep_rate: float, importance: str = 'clip', alignment: str = 'aligned',
                 reduction: str = 'prune', merge_fraction: Optional[float] = None,
                 merge_partner: Optional[str] = None, cls_position: str = 'middle',
                 importance_seed: Optional[int] = None):
        super().__init__()
        self.cfg = PruneConfig((), importance, alignment, reduction, merge_fraction, merge_partner, cls_position,
                               importance_seed)  # validates the options
        self.after_block = after_block
        self.keep_rate = keep_rate
        self.importance, self.alignment, self.reduction = importance, alignment, reduction
        self.merge_share = self.cfg.merge_share
        self.merge_partner = merge_partner or 'similar'
        self.cls_position = cls_position
        self.importance_seed = importance_seed
        self._calls = 0  # forward passes so far: with importance_seed, each draws from its own seeded generator

    def extra_repr(self) -> str:
        extra = ''.join(f", {k}={v}" for k, v in self.cfg.changed_options().items())
        return (f"after_block={self.after_block}, keep_rate={self.keep_rate:.4g}, importance={self.importance}, "
                f"alignment={self.alignment}{extra}")

    def _generator(self) -> Optional[torch.Generator]:
        if self.importance_seed is None:
            return None
        g = torch.Generator().manual_seed(int(self.importance_seed) + 7919 * self.after_block + 104729 * self._calls)
        self._calls += 1
        return g

    def forward(self, signal, layout: TokenLayout) -> Reduction:
        if not isinstance(signal, ScanSignal):
            signal = ScanSignal(signal)
        n = layout.num_patches
        k = keep_count(n, self.keep_rate)
        if k == n and self.alignment not in ('naive', 'packed'):  # nothing dropped, order kept: no change
            return Reduction(layout)
        scores = token_importance(signal.y, self.importance, self._generator(), signal.timescale,
                                  signal.class_attention)  # (B, L)
        scores = layout.patches(scores.unsqueeze(-1)).squeeze(-1)
        keep = select_tokens(scores, k, keep_order=self.alignment != 'naive')
        new_layout, index = layout.restrict(keep, self.alignment, self.cls_position)
        plan = self._merge_plan(scores, keep, signal.y, layout) if self.merge_share > 0 and k < n else None
        if plan is not None:
            new_layout.size = plan.w_keep.scatter_add(1, plan.partner, plan.w_merged)
        elif layout.size is not None:
            new_layout.size = torch.gather(layout.size, 1, keep)
        return Reduction(new_layout, index, keep, scores, layout, plan)

    @torch.no_grad()
    def _merge_plan(self, scores: Tensor, keep: Tensor, y: Tensor, layout: TokenLayout) -> Optional[MergePlan]:
        batch, n = scores.shape
        k = keep.shape[1]
        dropped = torch.ones(batch, n, dtype=torch.bool, device=scores.device).scatter(1, keep, False)
        # the not-kept tokens, highest score first (ties to the lower index); the top share is merged
        m = round(self.merge_share * (n - k))
        if m == 0:
            return None
        merged = top_indices(scores.masked_fill(~dropped, float('-inf')), m)
        if self.merge_partner == 'similar':
            yn = F.normalize(layout.patches(y).detach().float(), dim=-1)
            sim = torch.bmm(gather_tokens(yn, merged), gather_tokens(yn, keep).transpose(1, 2))  # (B, m, k)
            partner = sim.argmax(-1)
        else:  # nearest kept token on the original grid (squared distance; ties to the first in keep order)
            pos = layout.grid_positions(batch, scores.device).float()  # (B, n, 2)
            d = torch.cdist(gather_tokens(pos, merged), gather_tokens(pos, keep))
            partner = d.argmin(-1)
        size = layout.size if layout.size is not None else scores.new_ones(batch, n)
        return MergePlan(merged, partner, torch.gather(size, 1, keep), torch.gather(size, 1, merged))
