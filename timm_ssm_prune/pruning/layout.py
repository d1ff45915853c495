"""Token layouts: where the tokens of the current sequence come from, and how a stage restricts them.

A layout describes one model's token sequence between two pruning stages. Every family has its own (PlainMamba's
snake scans on a 2-D grid, Vim's 1-D sequence with a class token); they share this interface, which is all the
reducer layer (``reducer.py``) and the stage loop (``stages.py``) use:

* ``index``: (B, n) position on the original patch grid of each prunable token, in sequence order (None: all of
  them, in raster order). Dense feature maps are written back through it.
* ``patches(t)``: the prunable tokens of a per-token tensor, without the tokens a stage must never drop (Vim's
  class token): those are not scored, selected or merged, and the layout decides where they go next
  (``with_patches`` puts them back around new patch tokens).
* ``restrict(keep, alignment, cls_position)``: the layout of the next stage, given ``keep`` (B, k), the indices
  (into the current prunable tokens) of the tokens kept, in their new sequence order, and the sequence index
  (B, k + p) into the current sequence that builds the next one (kept tokens and the protected ones).
* ``size``: (B, n) how many original patches each token stands for (None: one each); merging adds them up.
"""
from __future__ import annotations

from typing import Optional, Tuple

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ['TokenLayout', 'gather_tokens', 'scatter_to_grid', 'skipped_before', 'restrict_scan_order',
           'condensed_grid']


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, L, C), idx (B, k) -> (B, k, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_to_grid(tokens: Tensor, index: Optional[Tensor], canvas: Optional[Tensor]) -> Tensor:
    """Tokens (B, n, C) written at their original grid positions ``index`` (B, n) over ``canvas`` (B, G, C);
    ``index=None`` means the tokens are the whole grid in raster order."""
    if index is None:
        return tokens
    return canvas.scatter(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]), tokens)


def skipped_before(rank: Tensor) -> Tensor:
    """Pruned positions a dense scan passes just before each visited token: ``rank`` (..., n) holds the dense
    step of each visited token in visiting order (strictly increasing); returns (..., n) long."""
    return torch.diff(rank, dim=-1, prepend=torch.full_like(rank[..., :1], -1)) - 1


def restrict_scan_order(rank: Tensor, pos: Tensor) -> Tuple[Tensor, Tensor]:
    """How S dense scans visit the tokens at grid positions ``pos`` (hidden state alignment).

    rank: (S, G) long, the dense scan step of each of the G grid positions in each direction.
    pos:  (B, n) long, grid position of each current token (sequence order), unique per sample.
    Returns ``perm`` (S, B, n), the sequence index visited at each step (the dense order with the pruned
    positions skipped), and ``gaps`` (S, B, n), the pruned positions the dense scan passes before each step.
    """
    r = rank[:, pos]  # (S, B, n): dense step of each current token
    sorted_r, perm = torch.sort(r, dim=-1)
    return perm, skipped_before(sorted_r)


def condensed_grid(n: int) -> Tuple[int, int]:
    """Near-square (rows, cols) grid holding n tokens row by row (the last row may be partly empty)."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


class TokenLayout(ABC):
    """Interface shared by the families' layouts (see the module docstring)."""
    grid: Tuple[int, int]         # the original patch grid (dense feature maps)
    index: Optional[Tensor]       # (B, n) original grid position of each prunable token, or None
    size: Optional[Tensor]        # (B, n) original patches each token stands for, or None (one each)

    @property
    @abstractmethod
    def num_patches(self) -> int:
        """Number of prunable tokens in the current sequence."""

    def patches(self, t: Tensor) -> Tensor:
        """The prunable tokens of a per-token tensor t (B, L, ...) in sequence order (protected ones removed)."""
        return t

    def with_patches(self, t: Tensor, patches: Tensor) -> Tensor:
        """``t`` (B, L, C) with its prunable tokens replaced by ``patches`` (B, n, C) (protected ones kept)."""
        return patches

    def grid_positions(self, batch: int, device) -> Tensor:
        """(B, n, 2) long: (row, column) on the original grid of each prunable token."""
        h, w = self.grid
        index = self.index
        if index is None:
            index = torch.arange(h * w, device=device).expand(batch, -1)
        return torch.stack([torch.div(index, w, rounding_mode='floor'), index % w], dim=-1)

    def original_index(self, keep: Tensor) -> Tensor:
        """Original grid position of the kept tokens ``keep`` (B, k)."""
        return keep if self.index is None else torch.gather(self.index, 1, keep)

    def to_grid(self, patches: Tensor, canvas: Optional[Tensor]) -> Tensor:
        return scatter_to_grid(patches, self.index, canvas)

    @abstractmethod
    def restrict(self, keep: Tensor, alignment: str, cls_position: str = 'middle') -> Tuple['TokenLayout', Tensor]:
        """The next stage's layout and the sequence index that builds its sequence (see the module docstring)."""
