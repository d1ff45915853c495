"""Prune configuration: where to prune, how many tokens to keep, how to score them, how to lay out the kept ones
and what becomes of the others (dropped, merged, or both)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ['PruneConfig', 'PruneStage', 'IMPORTANCE_METRICS', 'ALIGNMENTS', 'REDUCTIONS', 'CLS_POSITIONS',
           'MERGE_PARTNERS', 'keep_count', 'evenly_spaced_stages']

IMPORTANCE_METRICS = ('clip', 'l1', 'l2', 'sum', 'random', 'delta', 'cls')
ALIGNMENTS = ('aligned', 'naive', 'decay', 'packed')
REDUCTIONS = ('prune', 'merge', 'hybrid')
CLS_POSITIONS = ('middle', 'raster')
MERGE_PARTNERS = ('similar', 'nearest')
# The options beyond the paper, with their defaults (the paper's method); to_kwargs() writes only changed ones.
OPTION_DEFAULTS = dict(reduction='prune', merge_fraction=None, merge_partner=None, cls_position='middle',
                       importance_seed=None)
DEFAULT_MERGE_FRACTION, DEFAULT_MERGE_PARTNER = 0.5, 'similar'


def keep_count(num_alive: int, keep_rate: float) -> int:
    """Tokens kept at a stage: ceil(keep_rate * num_alive) (docs/method.md §1), robust to float round-off."""
    return min(num_alive, math.ceil(keep_rate * num_alive - 1e-9))


def evenly_spaced_stages(depth: int, num_stages: int = 3) -> Tuple[int, ...]:
    """Stage positions that split ``depth`` blocks into ``num_stages + 1`` equal runs (36 → 9, 18, 27)."""
    if not 1 <= num_stages < depth:
        raise ValueError(f"need 1 <= num_stages < depth, got num_stages={num_stages}, depth={depth}")
    return tuple(round(depth * (i + 1) / (num_stages + 1)) for i in range(num_stages))


@dataclass(frozen=True)
class PruneStage:
    """Prune after ``after_block`` blocks (1-based count: blocks 0..after_block-1 run on the incoming tokens,
    block ``after_block - 1`` provides the scores, blocks from ``after_block`` on run on the kept tokens)."""
    after_block: int
    keep_rate: float


@dataclass(frozen=True)
class PruneConfig:
    """Where to prune (``stages``) and how (docs/method.md):

    importance:      'clip' (the paper's Eq. 9) | 'l1' | 'l2' | 'sum' | 'random' | 'delta' (the scan's timescale) |
                     'cls' (Vim: the contribution to the class token through the scan)
    alignment:       'aligned' (ToP) | 'naive' (ViT-style packing in score order, the paper's baseline) |
                     'packed' (kept tokens condensed in their original order) | 'decay' (experimental)
    reduction:       'prune' (ToP: the others are dropped) | 'merge' (every other token is averaged into a kept
                     one) | 'hybrid' (the least important are dropped, the ``merge_fraction`` most important of
                     the others merged)
    merge_fraction:  'hybrid' only: the fraction of the not-kept tokens that are merged, in [0, 1] (default 0.5)
    merge_partner:   'merge'/'hybrid' only: 'similar' (the kept token with the most similar SSM output, the
                     default) | 'nearest' (the nearest kept token on the grid)
    cls_position:    Vim only: 'middle' (the paper's code) | 'raster' (the class token's original place)
    importance_seed: 'random' only: a seed for reproducible scores (None: torch's global generator)
    """
    stages: Tuple[PruneStage, ...] = ()
    importance: str = 'clip'
    alignment: str = 'aligned'
    reduction: str = 'prune'
    merge_fraction: Optional[float] = None
    merge_partner: Optional[str] = None
    cls_position: str = 'middle'
    importance_seed: Optional[int] = None

    def __post_init__(self):
        for name, allowed in (('importance', IMPORTANCE_METRICS), ('alignment', ALIGNMENTS),
                              ('reduction', REDUCTIONS), ('cls_position', CLS_POSITIONS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.merge_partner is not None and (not isinstance(self.merge_partner, str)
                                               or self.merge_partner not in MERGE_PARTNERS):
            raise ValueError(f"merge_partner must be one of {MERGE_PARTNERS}, got {self.merge_partner!r}")
        if self.merge_fraction is not None and (not _is_rate(self.merge_fraction)
                                                or not 0.0 <= float(self.merge_fraction) <= 1.0):
            raise ValueError(f"merge_fraction must be a number in [0, 1], got {self.merge_fraction!r}")
        if self.merge_fraction is not None and self.reduction != 'hybrid':
            raise ValueError(f"merge_fraction applies to reduction='hybrid' only (got reduction={self.reduction!r})")
        if self.merge_partner is not None and self.reduction == 'prune':
            raise ValueError("merge_partner applies to reduction='merge' or 'hybrid' only (got reduction='prune')")
        if self.cls_position != 'middle' and self.alignment == 'naive':
            raise ValueError("cls_position='raster' needs an order-keeping alignment ('aligned', 'packed', 'decay'); "
                             "'naive' packs the tokens in score order, where the class token has no raster place")
        if self.importance_seed is not None and (not _is_int(self.importance_seed) or self.importance != 'random'):
            raise ValueError(f"importance_seed is an integer for importance='random' only, got "
                             f"importance_seed={self.importance_seed!r} with importance={self.importance!r}")
        prev = 0
        for s in self.stages:
            if isinstance(s.keep_rate, bool) or not isinstance(s.keep_rate, (int, float)) \
                    or not 0.0 < float(s.keep_rate) <= 1.0:
                raise ValueError(f"keep_rate must be in (0, 1], got {s.keep_rate!r}")
            if isinstance(s.after_block, bool) or not isinstance(s.after_block, int):
                raise ValueError(f"prune_layers entries must be integers, got {s.after_block!r}")
            if s.after_block <= prev:
                raise ValueError(
                    f"prune_layers must be strictly increasing positive block counts, got "
                    f"{[st.after_block for st in self.stages]}")
            prev = s.after_block

    # -------------------------------------------------------------------------------------------- build
    @classmethod
    def from_kwargs(cls, prune_layers: Optional[Sequence[int]] = None,
                    keep_rate: Union[None, float, Sequence[float]] = None,
                    importance: str = 'clip', alignment: str = 'aligned', **options) -> 'PruneConfig':
        """Build from model kwargs: ``prune_layers=(5, 10, 15), keep_rate=0.8`` (or one rate per stage).

        ``prune_layers=()`` (or ``[]``) means no pruning whatever ``keep_rate`` says (so it turns off a saved
        configuration); ``prune_layers=None`` with a keep rate below 1 is an error (where to prune?)."""
        prune_layers = _check_prune_layers(prune_layers)
        keep_rate = _check_keep_rate(keep_rate)
        if prune_layers is None or len(prune_layers) == 0:
            if prune_layers is None and keep_rate is not None and not _is_dense_rate(keep_rate):
                raise ValueError("keep_rate was given without prune_layers: say after which blocks to prune, "
                                 "e.g. prune_layers=(5, 10, 15)")
            return cls((), importance, alignment, **options)
        if keep_rate is None:
            raise ValueError("prune_layers was given without keep_rate (or flops_reduction)")
        if isinstance(keep_rate, float):
            rates = (keep_rate,) * len(prune_layers)
        else:
            rates = keep_rate
            if len(rates) != len(prune_layers):
                raise ValueError(f"keep_rate has {len(rates)} entries but prune_layers has {len(prune_layers)}")
        return cls(tuple(PruneStage(b, r) for b, r in zip(prune_layers, rates)), importance, alignment, **options)

    # -------------------------------------------------------------------------------------------- query
    @property
    def prune_layers(self) -> Tuple[int, ...]:
        return tuple(s.after_block for s in self.stages)

    @property
    def keep_rates(self) -> Tuple[float, ...]:
        return tuple(s.keep_rate for s in self.stages)

    @property
    def enabled(self) -> bool:
        return len(self.stages) > 0

    @property
    def options(self) -> Dict[str, Any]:
        """Everything but the stages: the kwargs of a ``TokenReducer`` (and of ``from_kwargs``)."""
        return dict(importance=self.importance, alignment=self.alignment, reduction=self.reduction,
                    merge_fraction=self.merge_fraction, merge_partner=self.merge_partner,
                    cls_position=self.cls_position, importance_seed=self.importance_seed)

    @property
    def merge_share(self) -> float:
        """The fraction of the not-kept tokens that are merged (0: all dropped, 1: all merged)."""
        if self.reduction == 'prune':
            return 0.0
        if self.reduction == 'merge':
            return 1.0
        return DEFAULT_MERGE_FRACTION if self.merge_fraction is None else float(self.merge_fraction)

    def changed_options(self) -> Dict[str, Any]:
        """The options beyond the paper's that differ from their defaults."""
        return {k: getattr(self, k) for k, v in OPTION_DEFAULTS.items() if getattr(self, k) != v}

    def stage_at(self) -> Dict[int, int]:
        """Map: index of the scoring block (0-based) -> stage index."""
        return {s.after_block - 1: i for i, s in enumerate(self.stages)}

    def token_counts(self, num_tokens: int) -> List[int]:
        """Prunable tokens alive before the first stage and after each stage."""
        counts = [num_tokens]
        for s in self.stages:
            counts.append(keep_count(counts[-1], s.keep_rate))
        return counts

    def validate(self, depth: int, num_tokens: int, min_tokens: int = 1) -> None:
        """Check the stages against a model of ``depth`` blocks with ``num_tokens`` prunable tokens."""
        for s in self.stages:
            if not 1 <= s.after_block <= depth - 1:
                raise ValueError(
                    f"prune_layers entry {s.after_block} is outside the model's depth: pruning happens after "
                    f"block b (1-based), so 1 <= b <= {depth - 1} for a {depth}-block model")
        counts = self.token_counts(num_tokens)
        for i, (s, n) in enumerate(zip(self.stages, counts)):
            if s.keep_rate * n < min_tokens:  # ceil would silently keep more than the rate asks for
                raise ValueError(
                    f"too few tokens left: stage {i} (after block {s.after_block}) would keep {s.keep_rate} x {n} = "
                    f"{s.keep_rate * n:.2f} tokens, fewer than {min_tokens} (token counts {counts})")

    def to_kwargs(self) -> Dict[str, Any]:
        """Model kwargs that rebuild this configuration (JSON friendly)."""
        if not self.enabled:
            return dict(prune_layers=None, keep_rate=None, importance=self.importance, alignment=self.alignment,
                        **self.changed_options())
        rates = list(self.keep_rates)
        return dict(prune_layers=list(self.prune_layers),
                    keep_rate=rates[0] if len(set(rates)) == 1 else rates,
                    importance=self.importance, alignment=self.alignment, **self.changed_options())

    def describe(self) -> str:
        if not self.enabled:
            return 'dense (no pruning)'
        stages = ', '.join(f"after block {s.after_block} keep {s.keep_rate:.4g}" for s in self.stages)
        extra = ''.join(f", {k}={v}" for k, v in self.changed_options().items())
        return f"{stages}; importance={self.importance}, alignment={self.alignment}{extra}"


def _is_int(x) -> bool:
    return not isinstance(x, bool) and (isinstance(x, int) or hasattr(x, '__index__'))


def _is_rate(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float))


def _check_prune_layers(prune_layers) -> Optional[Tuple[int, ...]]:
    """None, or a tuple of ints (an int alone is one stage); anything else is named in the error."""
    if prune_layers is None:
        return None
    if _is_int(prune_layers):
        return (int(prune_layers),)
    if isinstance(prune_layers, (str, bytes)) or not isinstance(prune_layers, (tuple, list)):
        raise ValueError(f"prune_layers must be a block count or a list of block counts, e.g. (5, 10, 15); got "
                         f"{prune_layers!r} ({type(prune_layers).__name__})")
    bad = [b for b in prune_layers if not _is_int(b)]
    if bad:
        raise ValueError(f"prune_layers entries must be integers (1-based block counts), got {bad[0]!r} "
                         f"({type(bad[0]).__name__}) in {list(prune_layers)!r}")
    return tuple(int(b) for b in prune_layers)


def _check_keep_rate(keep_rate) -> Union[None, float, Tuple[float, ...]]:
    """None, a float, or a tuple of floats; strings, booleans and other types are named in the error."""
    if keep_rate is None:
        return None
    if _is_rate(keep_rate):
        return float(keep_rate)
    if isinstance(keep_rate, (tuple, list)) and all(_is_rate(r) for r in keep_rate):
        return tuple(float(r) for r in keep_rate)
    raise ValueError(f"keep_rate must be a number in (0, 1] or one number per stage, e.g. 0.8 or (0.8, 0.7); "
                     f"got {keep_rate!r} ({type(keep_rate).__name__})")


def _is_dense_rate(keep_rate) -> bool:
    if isinstance(keep_rate, float):
        return keep_rate == 1.0
    return all(r == 1.0 for r in keep_rate)
