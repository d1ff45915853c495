"""The stage loop shared by both families, and the model-side pruning plumbing (``PrunableMixin``).

A prunable model has ``self.layers`` (its blocks) and registers one ``TokenReducer`` per stage in
``self.reducers``. Each block is called as ``block(*state, layout, score) -> (*state, signal)``: ``state`` is
the model's per-token stream(s) (PlainMamba: ``[x]``; Vim: ``[hidden, residual]``), ``signal`` the block's
``ScanSignal`` when ``score`` names the importance metric of the stage that follows the block (so the block
computes only what that metric needs), else None. After such a block the stage's
reducer decides and the loop applies the decision to every tensor of the state.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

import torch
from timm.models import checkpoint
from torch import Tensor, nn

from .config import PruneConfig
from .layout import TokenLayout
from .reducer import TokenReducer
from .solver import solve_flops_reduction

__all__ = ['PrunableMixin']


class PrunableMixin:
    """Pruning for a model with ``self.layers`` (blocks), ``num_prunable_tokens``, ``in_chans``, ``img_size``.

    Model kwargs (all optional; none is called ``pruned``, which timm reserves):
        prune_layers:    block counts after which to prune, e.g. (5, 10, 15)
        keep_rate:       float, or one float per stage, in (0, 1]
        flops_reduction: e.g. 0.4 -> solve one keep rate for all stages (evenly spaced stages, 3 by default,
                         unless prune_layers is given) so that the model's FLOPs drop by 40 %
        importance, alignment, reduction, merge_fraction, merge_partner, cls_position, importance_seed:
                         how tokens are scored, laid out and reduced (see ``PruneConfig``)
    """
    default_flops_convention = 'mamba'
    grad_checkpointing: bool

    def _init_pruning(self, prune_layers=None, keep_rate=None, flops_reduction=None, **options):
        unknown = set(options) - set(PruneConfig().options)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {sorted(unknown)}; the pruning "
                            f"kwargs are prune_layers, keep_rate, flops_reduction, {', '.join(PruneConfig().options)}")
        self.set_pruning(prune_layers=prune_layers, keep_rate=keep_rate, flops_reduction=flops_reduction, **options)

    # ------------------------------------------------------------------------------------------ configuration
    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def prune_cfg(self) -> PruneConfig:
        return self._prune_cfg

    @prune_cfg.setter
    def prune_cfg(self, cfg: PruneConfig):
        if not isinstance(cfg, PruneConfig):
            raise TypeError(f"prune_cfg must be a PruneConfig, got {type(cfg).__name__}")
        self._prune_cfg = cfg
        self.reducers = nn.ModuleList(TokenReducer(s.after_block, s.keep_rate, **cfg.options) for s in cfg.stages)

    def set_pruning(self, prune_layers=None, keep_rate=None, flops_reduction: Optional[float] = None,
                    **options) -> PruneConfig:
        """(Re)configure token pruning in place; returns the validated configuration. ``options``: importance,
        alignment, reduction, merge_fraction, merge_partner, cls_position, importance_seed (``PruneConfig``)."""
        if flops_reduction is not None:
            if keep_rate is not None:
                raise ValueError("give either keep_rate or flops_reduction, not both")
            self._check_prune_cfg(PruneConfig((), **options))  # names a bad option before solving
            if not hasattr(self, '_prune_cfg'):
                self.prune_cfg = PruneConfig()
            cfg = solve_flops_reduction(self, flops_reduction, prune_layers, **options)
        else:
            cfg = PruneConfig.from_kwargs(prune_layers, keep_rate, **options)
        cfg.validate(self.depth, self.num_prunable_tokens)
        self._check_prune_cfg(cfg)
        self.prune_cfg = cfg
        return cfg

    def _check_prune_cfg(self, cfg: PruneConfig) -> None:
        """A family's own checks of a configuration (e.g. options that need a class token)."""

    @contextmanager
    def pruning(self, cfg: PruneConfig) -> Iterator[PruneConfig]:
        """Run a block of code with another prune configuration; the model's own is restored after it."""
        saved = self.prune_cfg
        self.prune_cfg = cfg
        try:
            yield cfg
        finally:
            self.prune_cfg = saved

    def pruning_disabled(self):
        """``with model.pruning_disabled():`` runs the model dense (e.g. to count its dense FLOPs)."""
        return self.pruning(PruneConfig((), **self.prune_cfg.options))

    def token_counts(self) -> List[int]:
        """Prunable tokens alive in the blocks before the first stage and after each stage (default grid)."""
        return self.prune_cfg.token_counts(self.num_prunable_tokens)

    # ------------------------------------------------------------------------------------------ the stage loop
    def _feature_tokens(self, state: Sequence[Optional[Tensor]]) -> Tensor:
        """The per-token tensor dense feature maps are made of (default: the first stream)."""
        return state[0]

    def _run_stages(self, state: List[Optional[Tensor]], layout: TokenLayout, stop: Optional[int] = None,
                    take: Sequence[int] = ()):
        """Run blocks [0, stop) with their stages; returns (state, layout, features of the ``take`` blocks).

        Features are (B, G, C) over the original grid: after a stage, a pruned position keeps its token's
        features from the stage where it was pruned."""
        at = {r.after_block - 1: r for r in self.reducers}
        want = set(take)
        feats, canvas = [], None
        for i, block in enumerate(self.layers[:stop]):
            reducer = at.get(i)
            args = (*state, layout, reducer.importance if reducer is not None else False)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                *state, signal = checkpoint(block, *args)
            else:
                *state, signal = block(*args)
            if reducer is not None:
                if want:
                    canvas = layout.to_grid(layout.patches(self._feature_tokens(state)), canvas)
                reduction = reducer(signal, layout)
                state = [reduction(t) for t in state]
                layout = reduction.layout
            if i in want:
                feats.append(layout.to_grid(layout.patches(self._feature_tokens(state)), canvas))
        return state, layout, feats
