"""Causal depthwise conv1d (Vim's token mixer): causal-conv1d's CUDA kernel when available, F.conv1d otherwise."""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan import _BACKENDS

__all__ = ['causal_conv1d', 'causal_conv1d_available', 'CAUSAL_CONV1D_INSTALL_HINT']

CAUSAL_CONV1D_INSTALL_HINT = (
    "causal-conv1d CUDA kernels are not available. Install them on a CUDA machine with "
    "`pip install --no-build-isolation 'timm-ssm-prune[cuda]'`, or use backend='torch' / backend='auto'."
)


@functools.lru_cache(maxsize=None)
def _causal_conv1d_fn():
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # ImportError or a missing compiled extension
        return None
    return causal_conv1d_fn


def causal_conv1d_available() -> bool:
    return torch.cuda.is_available() and _causal_conv1d_fn() is not None


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: Optional[str] = None,
                  backend: str = 'auto') -> Tensor:
    """Depthwise causal conv over the last axis: out[..., t] = bias + Σ_k w[:, k] x[..., t - (W-1) + k].

    x (B, D, L); weight (D, W) or (D, 1, W) (an nn.Conv1d weight); bias (D,); activation None or 'silu'.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"causal_conv1d: backend must be one of {_BACKENDS}, got {backend!r}")
    if x.is_meta:  # shapes only (FLOP counting): the PyTorch conv, whatever the backend
        backend = 'torch'
    if activation not in (None, 'silu', 'swish'):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: `x` must be (batch, dim, length), got shape {tuple(x.shape)}")
    if weight.dim() == 3:
        if weight.shape[1] != 1:
            raise ValueError(f"causal_conv1d: `weight` must be depthwise (dim, 1, width), got {tuple(weight.shape)}")
        weight = weight[:, 0]
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: `weight` must be (dim={x.shape[1]}, width), got {tuple(weight.shape)}")
    if backend == 'cuda':
        if _causal_conv1d_fn() is None:
            raise RuntimeError(CAUSAL_CONV1D_INSTALL_HINT)
        if not x.is_cuda:
            raise ValueError(f"causal_conv1d: backend='cuda' needs CUDA tensors, got tensors on {x.device}")
    if backend == 'cuda' or (backend == 'auto' and x.is_cuda and _causal_conv1d_fn() is not None):
        return _causal_conv1d_fn()(x, weight, bias, activation=activation)
    width = weight.shape[1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])[..., :x.shape[-1]]
    return F.silu(out) if activation is not None else out
