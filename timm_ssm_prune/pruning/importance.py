"""Token importance from a block's SSM output (the paper's Eq. 9 and its ablations) and top-k selection."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .config import IMPORTANCE_METRICS

__all__ = ['token_importance', 'select_tokens', 'ScanSignal']


class ScanSignal(NamedTuple):
    """What a block hands its stage's reducer: the SSM output ``y`` (B, L, E) (all scan directions combined at
    each token's own position, gate applied), the ``timescale`` (B, L): the mean over channels and scan
    directions of the step softplus(Δ) with which each token's input is written into the state, and, for a model
    with a class token, ``class_attention`` (B, L): each token's contribution to the class token's output."""
    y: Tensor
    timescale: Optional[Tensor] = None
    class_attention: Optional[Tensor] = None


@torch.no_grad()
def token_importance(y: Tensor, metric: str = 'clip', generator: Optional[torch.Generator] = None,
                     timescale: Optional[Tensor] = None, class_attention: Optional[Tensor] = None) -> Tensor:
    """Score each token of ``y`` (B, L, E), the SSM output before the output projection (all scan directions
    combined at the token's own position, gate applied). Returns (B, L) float32 scores, no gradient.

    clip:   Σ_e max(0, y_e)     (default, the paper's Eq. 9)
    l1:     Σ_e |y_e|
    l2:     ‖y‖₂
    sum:    Σ_e y_e             ("w/o clip")
    random: uniform noise       (baseline; from ``generator`` when given, else torch's global generator)
    delta:  ``timescale`` (B, L), the mean step softplus(Δ) of the token (see ``ScanSignal``): a token with a
            large step writes strongly into the state and forgets the past (MTR, arXiv:2507.14042)
    cls:    ``class_attention`` (B, L), how much the token contributes to the class token's output through the
            scan (Vim; the analogue of EViT's class-attention token selection in ViTs, arXiv:2202.07800)
    """
    if metric not in IMPORTANCE_METRICS:
        raise ValueError(f"importance must be one of {IMPORTANCE_METRICS}, got {metric!r}")
    if y.dim() != 3:
        raise ValueError(f"token_importance expects (batch, tokens, channels), got shape {tuple(y.shape)}")
    if metric == 'delta':
        if timescale is None or timescale.shape != y.shape[:2]:
            raise ValueError(f"importance='delta' needs the block's timescale of shape {tuple(y.shape[:2])}, got "
                             f"{None if timescale is None else tuple(timescale.shape)}")
        return timescale.detach().float()
    if metric == 'cls':
        if class_attention is None or class_attention.shape != y.shape[:2]:
            raise ValueError("importance='cls' needs a class token (Vim): the block's contribution to it was not "
                             "computed")
        return class_attention.detach().float()
    if metric == 'random' and generator is not None:
        return torch.rand(y.shape[:2], generator=generator, device=generator.device).to(y.device)
    y = y.detach().float()
    if metric == 'clip':
        return y.clamp_min(0).sum(-1)
    if metric == 'l1':
        return y.abs().sum(-1)
    if metric == 'l2':
        return y.pow(2).sum(-1).sqrt()
    if metric == 'sum':
        return y.sum(-1)
    return torch.rand(y.shape[:2], generator=generator, device=y.device)


def top_indices(scores: Tensor, k: int) -> Tensor:
    """Indices (B, k) of the k largest scores of each sample, largest first, ties to the lower index: a stable
    descending sort, or under ONNX export (which has no stable sort) TopK, whose ties go to the lower index."""
    if torch.onnx.is_in_onnx_export():
        return torch.topk(scores, k, dim=-1, largest=True, sorted=True).indices
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]


@torch.no_grad()
def select_tokens(scores: Tensor, k: int, keep_order: bool) -> Tensor:
    """Indices (B, k) of the k highest-scoring tokens of each sample; ties go to the lower index.

    keep_order=True returns them in ascending index order (the sequence order they had), False in
    descending-score order (ViT-style packing).
    """
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"cannot keep {k} of {scores.shape[-1]} tokens")
    order = top_indices(scores, k)
    if keep_order:
        order = torch.sort(order, dim=-1).values
    return order
