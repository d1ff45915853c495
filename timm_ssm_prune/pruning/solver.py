"""Solve a keep rate for a FLOPs target with the package's own FLOPs counter."""
from __future__ import annotations

from typing import Optional, Sequence

from .config import PruneConfig, evenly_spaced_stages

__all__ = ['solve_flops_reduction']


def solve_flops_reduction(model, target: float, prune_layers: Optional[Sequence[int]] = None,
                          **options) -> PruneConfig:
    """The configuration with stages after ``prune_layers`` (three evenly spaced by default) and one keep rate
    for all of them whose FLOPs (``count_flops`` at the model's input size) are ``target`` below the dense
    model's; the rate is the centre of the plateau of rates giving the same token counts, rounded short.

    ``model`` is a prunable model of this package (``num_prunable_tokens``, ``depth``, ``pruning(cfg)``); its
    own configuration is left as it was. ``options`` (importance, alignment, reduction, ...) are those of
    ``PruneConfig``: each method gets its own keep rate (e.g. merging adds a little work)."""
    from ..flops import count_flops
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= float(target) < 1.0:
        raise ValueError(f"flops_reduction must be in [0, 1), got {target!r}")
    if prune_layers is None:
        prune_layers = evenly_spaced_stages(model.depth, 3)
    prune_layers = tuple(prune_layers) if not isinstance(prune_layers, int) else (prune_layers,)
    num_tokens = model.num_prunable_tokens
    input_size = (model.in_chans, *model.img_size)
    with model.pruning_disabled():
        dense = count_flops(model, input_size)
    cache = {}

    def reduction(rate: float) -> float:  # FLOPs depend on the rate only through the token counts
        cfg = PruneConfig.from_kwargs(prune_layers, rate, **options)
        key = tuple(cfg.token_counts(num_tokens))
        if key not in cache:
            with model.pruning(cfg):
                cache[key] = 1.0 - count_flops(model, input_size) / dense
        return cache[key]

    lo = 1.0 / num_tokens  # keeps one token per stage
    if reduction(lo) < target:
        raise ValueError(f"flops_reduction={target} is out of reach with stages after blocks "
                         f"{list(prune_layers)}: at most {reduction(lo):.3f}")
    hi = 1.0
    for _ in range(30):  # reduction(rate) falls as rate grows; bracket the rate reaching the target
        mid = 0.5 * (lo + hi)
        if reduction(mid) >= target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda r: abs(reduction(r) - target))
    best = _plateau_centre(best, prune_layers, num_tokens)
    return PruneConfig.from_kwargs(prune_layers, best, **options)


def _plateau_centre(rate: float, prune_layers, num_tokens: int) -> float:
    """A short, round keep rate giving the same token counts as ``rate``, away from the edges of its plateau
    (token counts are a step function of the rate; a rate on a step edge is fragile)."""
    def counts(r):
        return PruneConfig.from_kwargs(prune_layers, r).token_counts(num_tokens)

    target = counts(rate)

    def edge(inside: float, outside: float) -> float:
        for _ in range(50):
            mid = 0.5 * (inside + outside)
            if counts(mid) == target:
                inside = mid
            else:
                outside = mid
        return inside

    left, right = edge(rate, 1e-9), edge(rate, 1.0) if counts(1.0) != target else 1.0
    centre = 0.5 * (left + right)
    for digits in range(2, 8):
        r = round(centre, digits)
        if left <= r <= right and counts(r) == target:
            return r
    return centre
