"""Record which tokens a pruned model keeps at each stage of a forward pass."""
from __future__ import annotations

from contextlib import contextmanager
from typing import List, Optional

import torch
from torch import Tensor, nn

__all__ = ['trace_kept_tokens', 'kept_masks']


@contextmanager
def trace_kept_tokens(model: nn.Module):
    """Yields a list that a forward pass fills with, per pruning stage, the original grid index (B, k) of the kept
    tokens (None for a stage that kept everything). Forward hooks on the model's reducer layers record them."""
    from .reducer import TokenReducer
    reducers = [m for m in model.modules() if isinstance(m, TokenReducer)]
    if not hasattr(model, 'reducers'):
        raise TypeError(f"{type(model).__name__} is not a prunable model of this package")
    record: List[Optional[Tensor]] = []

    def hook(module, args, reduction):
        index = reduction.kept_grid_index
        record.append(None if index is None else index.detach().cpu())

    handles = [r.register_forward_hook(hook) for r in reducers]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def kept_masks(record: List[Optional[Tensor]], batch: int, num_tokens: int) -> Tensor:
    """(stages, B, num_tokens) bool: token alive after each stage."""
    masks = []
    alive = torch.ones(batch, num_tokens, dtype=torch.bool)
    for index in record:
        if index is not None:
            alive = torch.zeros(batch, num_tokens, dtype=torch.bool).scatter_(1, index, True)
        masks.append(alive.clone())
    return torch.stack(masks) if masks else torch.ones(0, batch, num_tokens, dtype=torch.bool)
