"""Pieces shared by the model families: pruning kwargs, the FLOPs-target solver, position-embedding resampling."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..pruning import PruneConfig, evenly_spaced_stages

__all__ = ['PrunableMixin', 'resample_grid_embed', 'take_indices', 'to_2tuple', 'ceil_div', 'conv_out', 'acc_dtype',
           'build_model', 'pruned_kwargs', 'animal_mnist_cfg', 'WEIGHTS_DIR', 'check_checkpoint_compatible']


# Weights trained by this project and shipped inside the package (see benchmarks/train_animal_mnist.sh).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / 'weights'
# Animal-MNIST (grey 28x28): mean and std of the 8,000 training images (0-1 scale).
ANIMAL_MNIST_MEAN, ANIMAL_MNIST_STD = (0.2731,), (0.4058,)


def animal_mnist_cfg(arch: str, **kwargs) -> dict:
    """Pretrained cfg of a model trained here on Animal-MNIST (weights file inside the package)."""
    return dict(file=str(WEIGHTS_DIR / f'{arch}.animal_mnist.safetensors'), num_classes=10, input_size=(1, 28, 28),
                crop_pct=1.0, interpolation='bilinear', mean=ANIMAL_MNIST_MEAN, std=ANIMAL_MNIST_STD,
                license='apache-2.0', notes='trained by timm-ssm-prune on Animal-MNIST (MIT) '
                '8,000-image train split; see benchmarks/RESULTS.md', **kwargs)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half/bfloat16/float32 (as the official code), float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def pruned_kwargs(defaults: dict, schedule: dict, kwargs: dict) -> dict:
    """Kwargs of a ``*_pruned`` entrypoint: the architecture ``defaults``, the default ``schedule`` unless the
    caller configures pruning itself (``prune_layers=()`` means no pruning; ``flops_reduction`` replaces the
    default keep rate), then the caller's kwargs."""
    out = dict(defaults)
    if 'flops_reduction' in kwargs:
        out['prune_layers'] = schedule['prune_layers']
    elif 'prune_layers' not in kwargs or kwargs['prune_layers']:
        out.update(schedule)
    out.update(kwargs)
    return out


def build_model(model_cls, variant: str, pretrained: bool, filter_fn, **kwargs):
    """timm's build_model_with_cfg with the feature-getter wrapper, and a clear error when weights are missing."""
    from timm.models import build_model_with_cfg
    out_indices = kwargs.pop('out_indices', 3)
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn,
                                    feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        if not pretrained or not _is_missing_file(e):
            raise
        where = _weights_location(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
        raise RuntimeError(
            f"pretrained weights for {variant} are not available: {where}. Fix: go online (unset HF_HUB_OFFLINE) "
            f"or set HF_TOKEN if the repo needs one; put the file in the Hugging Face cache; or pass "
            f"pretrained_cfg_overlay=dict(file='/path/to/weights') (or checkpoint_path=...). Cause: "
            f"{type(e).__name__}: {e}") from e


def _is_missing_file(e: BaseException) -> bool:
    names = set()
    while e is not None:
        names.add(type(e).__name__)
        if isinstance(e, FileNotFoundError):
            return True
        e = e.__cause__ or e.__context__
    return bool(names & {'LocalEntryNotFoundError', 'EntryNotFoundError', 'RepositoryNotFoundError',
                         'GatedRepoError', 'RevisionNotFoundError', 'OfflineModeIsEnabled', 'HfHubHTTPError'})


def _weights_location(variant: str, pretrained_cfg, overlay) -> str:
    """Where timm looked for the weights: the same cfg resolution as build_model_with_cfg (registry tag, a
    pretrained_cfg passed by hf-hub:/local-dir: names, the overlay)."""
    try:
        from timm.models._builder import resolve_pretrained_cfg
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg,
                                     pretrained_cfg_overlay=overlay).to_dict()
    except Exception:  # pragma: no cover - timm internals moved
        cfg = dict(overlay or {})
    if cfg.get('file'):
        return f"file {cfg['file']}"
    if cfg.get('hf_hub_id'):
        return f"file {cfg.get('hf_hub_filename') or 'model.safetensors'} of Hugging Face repo {cfg['hf_hub_id']}"
    if cfg.get('url'):
        return f"url {cfg['url']}"
    return 'no weight source in the pretrained config'


def to_2tuple(x) -> Tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


def resample_grid_embed(posemb: Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> Tensor:
    """Bicubic resize of a (1, H*W, C) grid embedding (align_corners=False, no antialias: as mmcls/Vim do)."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return posemb
    if posemb.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"position embedding has {posemb.shape[1]} rows, expected {old_grid[0]}x{old_grid[1]}")
    dim = posemb.shape[-1]
    grid = posemb.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.to(acc_dtype(grid.dtype)), size=new_grid, mode='bicubic', align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(posemb.dtype)


def take_indices(num_blocks: int, indices: Union[int, Sequence[int], None]) -> Tuple[List[int], int]:
    """timm's feature_take_indices: an int n means the last n blocks; negative indices count from the end."""
    try:
        from timm.models._features import feature_take_indices
        return feature_take_indices(num_blocks, indices)
    except ImportError:  # pragma: no cover - older/newer timm layouts
        if indices is None:
            indices = num_blocks
        if isinstance(indices, int):
            if not 0 < indices <= num_blocks:
                raise ValueError(f"last-n ({indices}) is out of range (1 to {num_blocks})")
            taken = [num_blocks - indices + i for i in range(indices)]
        else:
            taken = []
            for i in indices:
                idx = num_blocks + i if i < 0 else i
                if not 0 <= idx < num_blocks:
                    raise ValueError(f"feature index {idx} is out of range (0 to {num_blocks - 1})")
                taken.append(idx)
        return taken, max(taken)


class PrunableMixin:
    """Prune-configuration plumbing for a model with ``self.layers`` (blocks) and ``num_prunable_tokens``.

    Model kwargs (all optional; none is called ``pruned``, which timm reserves):
        prune_layers:    block counts after which to prune, e.g. (5, 10, 15)
        keep_rate:       float, or one float per stage, in (0, 1]
        importance:      'clip' | 'l1' | 'l2' | 'sum' | 'random'
        alignment:       'aligned' | 'naive' | 'decay'
        flops_reduction: e.g. 0.4 -> solve one keep rate for all stages (evenly spaced stages, 3 by default,
                         unless prune_layers is given) so that the model's FLOPs drop by 40 %
    """
    prune_cfg: PruneConfig
    default_flops_convention = 'mamba'

    def _init_pruning(self, prune_layers=None, keep_rate=None, importance='clip', alignment='aligned',
                      flops_reduction=None):
        self.prune_cfg = PruneConfig()
        self.set_pruning(prune_layers=prune_layers, keep_rate=keep_rate, importance=importance,
                         alignment=alignment, flops_reduction=flops_reduction)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def set_pruning(self, prune_layers=None, keep_rate=None, importance: str = 'clip', alignment: str = 'aligned',
                    flops_reduction: Optional[float] = None) -> PruneConfig:
        """(Re)configure token pruning in place; returns the validated configuration."""
        if flops_reduction is not None:
            if keep_rate is not None:
                raise ValueError("give either keep_rate or flops_reduction, not both")
            cfg = self._solve_flops_reduction(flops_reduction, prune_layers, importance, alignment)
        else:
            cfg = PruneConfig.from_kwargs(prune_layers, keep_rate, importance, alignment)
        cfg.validate(self.depth, self.num_prunable_tokens)
        self.prune_cfg = cfg
        return cfg

    def token_counts(self) -> List[int]:
        """Prunable tokens alive in the blocks before the first stage and after each stage (default grid)."""
        return self.prune_cfg.token_counts(self.num_prunable_tokens)

    def _solve_flops_reduction(self, target: float, prune_layers, importance: str, alignment: str) -> PruneConfig:
        from ..flops import count_flops
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= float(target) < 1.0:
            raise ValueError(f"flops_reduction must be in [0, 1), got {target!r}")
        if prune_layers is None:
            prune_layers = evenly_spaced_stages(self.depth, 3)
        prune_layers = tuple(prune_layers) if not isinstance(prune_layers, int) else (prune_layers,)
        input_size = (self.in_chans, *self.img_size)
        saved = self.prune_cfg
        try:
            self.prune_cfg = PruneConfig((), importance, alignment)
            dense = count_flops(self, input_size)

            cache = {}

            def reduction(rate: float) -> float:  # FLOPs depend on the rate only through the token counts
                cfg = PruneConfig.from_kwargs(prune_layers, rate, importance, alignment)
                key = tuple(cfg.token_counts(self.num_prunable_tokens))
                if key not in cache:
                    self.prune_cfg = cfg
                    cache[key] = 1.0 - count_flops(self, input_size) / dense
                return cache[key]

            lo = 1.0 / self.num_prunable_tokens  # keeps one token per stage
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
            best = _plateau_centre(best, prune_layers, self.num_prunable_tokens)
        finally:
            self.prune_cfg = saved
        return PruneConfig.from_kwargs(prune_layers, best, importance, alignment)

    def _init_check_size(self, grid: Tuple[int, int], what: str):
        if grid[0] < 1 or grid[1] < 1:
            raise ValueError(f"{what} gives an empty token grid {grid}")


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


def check_checkpoint_compatible(sd: dict, model, norm_key: str, family: str) -> None:
    """Raise a clear error when a (filtered) state dict is for another width or depth than ``model``."""
    dim = sd[norm_key].shape[0] if norm_key in sd else None
    depth = 1 + max((int(k.split('.')[1]) for k in sd if k.startswith('layers.')), default=-1)
    if (dim is not None and dim != model.embed_dim) or (depth and depth != len(model.layers)):
        raise ValueError(f"checkpoint does not match the model: it has embed_dim={dim}, depth={depth}; the model has "
                         f"embed_dim={model.embed_dim}, depth={len(model.layers)} (wrong {family} variant?)")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1
