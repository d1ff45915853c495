"""Pruning-aware hidden state alignment (method.md §3): token positions and per-direction scan orders.

A scan direction is described on a grid by ``rank``: the step at which the dense scan visits each grid
position. Restricting it to the kept positions gives the order in which the aligned scan visits the kept
tokens (the dense order with pruned positions skipped), and ``gaps``: how many pruned positions the dense
scan would have passed since the previous kept token (used by the 'decay' alignment).

'naive' alignment (the ViT-style baseline) reuses the same machinery on a condensed grid: the kept tokens,
in descending-score order, are laid row by row on a smaller near-square grid, and the scan orders,
direction codes and convolutions of that grid apply.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

__all__ = ['ScanOrder', 'restrict_scan_order', 'condensed_grid', 'gather_tokens']


@dataclass
class ScanOrder:
    """Visiting order of the current tokens for S scan directions.

    perm:  (S, B, n) sequence index visited at each scan step
    inv:   (S, B, n) scan step at which each sequence index is visited
    gaps:  (S, B, n) pruned grid positions skipped just before each scan step (0 everywhere when dense)
    """
    perm: Tensor
    inv: Tensor
    gaps: Tensor


def restrict_scan_order(rank: Tensor, pos: Tensor) -> ScanOrder:
    """Order in which S dense scans visit the tokens at grid positions ``pos``.

    rank: (S, G) long, dense scan step of each of the G grid positions in each direction.
    pos:  (B, n) long, grid position of each current token (sequence order), unique per sample.
    """
    r = rank[:, pos]  # (S, B, n): dense step of each current token
    sorted_r, perm = torch.sort(r, dim=-1)
    inv = torch.argsort(perm, dim=-1)
    gaps = torch.diff(sorted_r, dim=-1, prepend=torch.full_like(sorted_r[..., :1], -1)) - 1
    return ScanOrder(perm=perm, inv=inv, gaps=gaps)


def condensed_grid(n: int) -> Tuple[int, int]:
    """Near-square (rows, cols) grid holding n tokens row by row (the last row may be partly empty)."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, L, C), idx (B, k) -> (B, k, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
