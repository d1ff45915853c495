"""The token-reduction layer: one ``TokenReducer`` module per pruning stage.

A model registers its reducers (``model.reducers``, one per stage, so ``model.named_modules()`` shows where the
stages are) and its stage loop calls the one after block ``after_block``:

    reduction = reducer(signal, layout)      # signal: the block's SSM output (B, L, E)
    x = reduction(x)                          # any per-token tensor (B, L, ...), e.g. Vim's hidden and residual
    layout = reduction.layout

The decision (scores, kept indices, next layout) is the module's output, so forward hooks see it
(``trace.trace_kept_tokens`` records the kept tokens that way). Tokens the layout protects (Vim's class
token) are never scored for selection; the layout's ``restrict`` puts them back in the next sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from .config import ALIGNMENTS, IMPORTANCE_METRICS, keep_count
from .importance import select_tokens, token_importance
from .layout import TokenLayout, gather_tokens

__all__ = ['TokenReducer', 'Reduction']


@dataclass
class Reduction:
    """What a stage decided. ``index`` (B, L') is the current-sequence position of each token of the next
    sequence (None: the sequence is unchanged); calling the reduction applies it to a per-token tensor."""
    layout: TokenLayout
    index: Optional[Tensor] = None
    keep: Optional[Tensor] = None      # (B, k) kept prunable tokens (indices into the stage's prunable tokens)
    scores: Optional[Tensor] = None    # (B, n) importance of the stage's prunable tokens

    def __call__(self, t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None or self.index is None:
            return t
        return gather_tokens(t, self.index)

    @property
    def kept_grid_index(self) -> Optional[Tensor]:
        """(B, k) original grid position of each token alive after the stage (None: all, raster order)."""
        return self.layout.index


class TokenReducer(nn.Module):
    """Keeps ``ceil(keep_rate * n)`` of the n prunable tokens, scored by ``importance`` on the block's SSM
    output and laid out by ``alignment`` ('aligned' and 'decay': kept tokens in their sequence order, scans
    follow the dense order; 'naive': ViT-style packing in descending-score order)."""

    def __init__(self, after_block: int, keep_rate: float, importance: str = 'clip', alignment: str = 'aligned'):
        super().__init__()
        if importance not in IMPORTANCE_METRICS:
            raise ValueError(f"importance must be one of {IMPORTANCE_METRICS}, got {importance!r}")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        self.after_block = after_block
        self.keep_rate = keep_rate
        self.importance = importance
        self.alignment = alignment

    def extra_repr(self) -> str:
        return (f"after_block={self.after_block}, keep_rate={self.keep_rate:.4g}, importance={self.importance}, "
                f"alignment={self.alignment}")

    def forward(self, signal: Tensor, layout: TokenLayout) -> Reduction:
        n = layout.num_patches
        k = keep_count(n, self.keep_rate)
        if k == n and self.alignment != 'naive':  # nothing to drop and no re-ordering: the sequence stays
            return Reduction(layout)
        scores = layout.patches(token_importance(signal, self.importance).unsqueeze(-1)).squeeze(-1)
        keep = select_tokens(scores, k, keep_order=self.alignment != 'naive')
        new_layout, index = layout.restrict(keep, self.alignment)
        return Reduction(new_layout, index, keep, scores)
