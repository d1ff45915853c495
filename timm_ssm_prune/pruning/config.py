"""Prune configuration: where to prune, how many tokens to keep, how to score and how to re-order them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ['PruneConfig', 'PruneStage', 'IMPORTANCE_METRICS', 'ALIGNMENTS', 'keep_count', 'evenly_spaced_stages']

IMPORTANCE_METRICS = ('clip', 'l1', 'l2', 'sum', 'random')
ALIGNMENTS = ('aligned', 'naive', 'decay')


def keep_count(num_alive: int, keep_rate: float) -> int:
    """Tokens kept at a stage: ceil(keep_rate * num_alive) (method.md §1), robust to float round-off."""
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
    stages: Tuple[PruneStage, ...] = ()
    importance: str = 'clip'
    alignment: str = 'aligned'

    def __post_init__(self):
        if self.importance not in IMPORTANCE_METRICS:
            raise ValueError(f"importance must be one of {IMPORTANCE_METRICS}, got {self.importance!r}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
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
                    importance: str = 'clip', alignment: str = 'aligned') -> 'PruneConfig':
        """Build from model kwargs: ``prune_layers=(5, 10, 15), keep_rate=0.8`` (or one rate per stage).

        ``prune_layers=()`` (or ``[]``) means no pruning whatever ``keep_rate`` says (so it turns off a saved
        configuration); ``prune_layers=None`` with a keep rate below 1 is an error (where to prune?)."""
        prune_layers = _check_prune_layers(prune_layers)
        keep_rate = _check_keep_rate(keep_rate)
        if prune_layers is None or len(prune_layers) == 0:
            if prune_layers is None and keep_rate is not None and not _is_dense_rate(keep_rate):
                raise ValueError("keep_rate was given without prune_layers: say after which blocks to prune, "
                                 "e.g. prune_layers=(5, 10, 15)")
            return cls((), importance, alignment)
        if keep_rate is None:
            raise ValueError("prune_layers was given without keep_rate (or flops_reduction)")
        if isinstance(keep_rate, float):
            rates = (keep_rate,) * len(prune_layers)
        else:
            rates = keep_rate
            if len(rates) != len(prune_layers):
                raise ValueError(f"keep_rate has {len(rates)} entries but prune_layers has {len(prune_layers)}")
        return cls(tuple(PruneStage(b, r) for b, r in zip(prune_layers, rates)), importance, alignment)

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
            return dict(prune_layers=None, keep_rate=None, importance=self.importance, alignment=self.alignment)
        rates = list(self.keep_rates)
        return dict(prune_layers=list(self.prune_layers),
                    keep_rate=rates[0] if len(set(rates)) == 1 else rates,
                    importance=self.importance, alignment=self.alignment)

    def describe(self) -> str:
        if not self.enabled:
            return 'dense (no pruning)'
        stages = ', '.join(f"after block {s.after_block} keep {s.keep_rate:.4g}" for s in self.stages)
        return f"{stages}; importance={self.importance}, alignment={self.alignment}"


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
