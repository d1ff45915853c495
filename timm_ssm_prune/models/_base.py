"""Pieces shared by the model families: entrypoint helpers, input checks, SSM init, position-embedding resampling."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..pruning import PrunableMixin

__all__ = ['ModelFamily', 'StagedModelMixin', 'imagenet_cfg', 'resample_grid_embed', 'take_indices', 'to_2tuple',
           'ceil_div', 'conv_out', 'acc_dtype',
           'build_model', 'pruned_kwargs', 'animal_mnist_cfg', 'WEIGHTS_DIR', 'check_checkpoint_compatible',
           'check_image_input', 'init_ssm_params']


# Weights trained by this project and shipped inside the package (see benchmarks/train_animal_mnist.sh).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / 'weights'
# Animal-MNIST (grey 28x28): mean and std of the 8,000 training images (0-1 scale).
ANIMAL_MNIST_MEAN, ANIMAL_MNIST_STD = (0.2731,), (0.4058,)


TESTBED_NOTES = ('trained by timm-ssm-prune from scratch on 7,600 images of the Animal-MNIST (MIT) 8,000-image train '
                 'split (400 held out), benchmarks/train_testbed.py; see benchmarks/RESULTS.md')


def animal_mnist_cfg(arch: str, **kwargs) -> dict:
    """Pretrained cfg of a model trained here on Animal-MNIST (weights file inside the package)."""
    cfg = dict(file=str(WEIGHTS_DIR / f'{arch}.animal_mnist.safetensors'), num_classes=10, input_size=(1, 28, 28),
               crop_pct=1.0, interpolation='bilinear', mean=ANIMAL_MNIST_MEAN, std=ANIMAL_MNIST_STD,
               license='apache-2.0', notes='trained by timm-ssm-prune on Animal-MNIST (MIT) '
               '8,000-image train split; see benchmarks/RESULTS.md')
    cfg.update(kwargs)
    return cfg


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half/bfloat16/float32 (as the official code), float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def pruned_kwargs(defaults: dict, schedule: dict, kwargs: dict) -> dict:
    """Kwargs of a ``*_pruned`` entrypoint: the architecture ``defaults``, the default ``schedule`` unless the
    caller configures pruning itself (``prune_layers=()`` means no pruning; ``flops_reduction`` replaces the
    default keep rate), then the caller's kwargs."""
    out = dict(defaults)
    if 'flops_reduction' in kwargs:  # the default stages and options, a keep rate solved for the target
        out.update({k: v for k, v in schedule.items() if k != 'keep_rate'})
    elif 'prune_layers' not in kwargs or kwargs['prune_layers']:
        out.update(schedule)
    out.update(kwargs)
    # a default option that no longer applies once the caller changes another one is dropped, not an error:
    # e.g. reduction='prune' (the paper's method) on a name whose default merges, or alignment='naive' on a Vim
    # whose default puts the class token at its raster place
    given = set(kwargs)
    if out.get('reduction', 'prune') == 'prune':
        for k in ('merge_partner', 'merge_fraction'):
            if k not in given:
                out.pop(k, None)
    if out.get('reduction') == 'merge' and 'merge_fraction' not in given:
        out.pop('merge_fraction', None)
    if out.get('alignment') == 'naive' and 'cls_position' not in given:
        out.pop('cls_position', None)
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
        if where.startswith('file ') and ' of Hugging Face repo ' not in where:  # a local file: no network
            raise RuntimeError(f"pretrained weights for {variant} are not available: {where} does not exist or "
                               f"cannot be read. Fix: check the path given as pretrained_cfg_overlay=dict(file=...). "
                               f"Cause: {type(e).__name__}: {e}") from e
        raise RuntimeError(
            f"pretrained weights for {variant} are not available: {where}. Fix: go online (unset HF_HUB_OFFLINE) "
            f"or set HF_TOKEN if the repo needs one; put the file in the Hugging Face cache; or pass a local copy "
            f"(the official .pth or a converted .safetensors) as pretrained_cfg_overlay=dict(file='/path/to/weights'), "
            f"which goes through this package's checkpoint filter. Cause: {type(e).__name__}: {e}") from e


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
    from timm.models._features import feature_take_indices
    return feature_take_indices(num_blocks, indices)


def check_image_input(model, x: Tensor) -> None:
    """Clear errors for a batch the model cannot take: wrong rank/channels, or another size without
    ``dynamic_img_size``; a clear error under TorchScript tracing (not a supported export route)."""
    if torch.jit.is_tracing():
        from ..export import unsupported_route
        raise unsupported_route('TorchScript tracing (torch.jit.trace, torch.onnx.export(..., dynamo=False))')
    if x.dim() != 4 or x.shape[1] != model.in_chans:
        raise ValueError(f"expected images (B, {model.in_chans}, H, W), got shape {tuple(x.shape)}")
    img = tuple(x.shape[-2:])
    if img != model.img_size and not model.dynamic_img_size:
        raise ValueError(f"input size {img} does not match the model's img_size {model.img_size}; create the "
                         f"model with img_size={img} or dynamic_img_size=True")


@torch.no_grad()
def init_ssm_params(dt_proj: nn.Linear, A_log: Tensor, D: Tensor, dt_rank: int, bias_scale: float = 1.0,
                    dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
    """Mamba's initialisation of the step projection and the state matrix: dt_proj weight uniform in
    ±dt_rank^-1/2; its bias the inverse softplus of a step log-uniform in [dt_min, dt_max] (times
    ``bias_scale``); A = -(1..N) per channel (stored as log); D = 1."""
    std = dt_rank ** -0.5
    nn.init.uniform_(dt_proj.weight, -std, std)
    d_inner, d_state = A_log.shape
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp_min(1e-4)
    dt_proj.bias.copy_((dt + torch.log(-torch.expm1(-dt))) * bias_scale)
    A_log.copy_(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
    D.fill_(1.0)


def imagenet_cfg(family: dict, **kwargs) -> dict:
    """Pretrained cfg: the ImageNet-1k-at-224 fields, then the ``family``'s, then ``kwargs`` (later ones win)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return {'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 0.875,
            'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
            'classifier': 'head', 'license': 'apache-2.0', **family, **kwargs}


class StagedModelMixin(PrunableMixin):
    """The forward paths both families share, around the stage loop. A family defines ``_embed(x) -> (state,
    layout)`` (its token streams and their layout), ``_final(state)`` (the normalised output tokens),
    ``_intermediate(f, norm, dtype)`` (one dense feature map, optionally normalised) and ``final_norm`` (the
    attribute name of its final norm), plus ``forward_head``."""
    final_norm: str
    global_pools: Tuple[str, ...]

    def _init_common(self, num_classes: int, global_pool: str, in_chans: int, embed_dim: int, img_size,
                     dynamic_img_size: bool):
        """Attributes timm expects of every classifier, after checking the pooling and the image size."""
        self._check_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.img_size = to_2tuple(img_size)
        if min(self.img_size) < 1:
            raise ValueError(f"img_size must be positive, got {img_size!r}")
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

    def _check_pool(self, global_pool: str):
        if global_pool not in self.global_pools:
            raise ValueError(f"global_pool must be one of {self.global_pools}, got {global_pool!r}")

    def __prepare_scriptable__(self):  # torch.jit.script calls this first: say what to use instead
        from ..export import unsupported_route
        raise unsupported_route('TorchScript (torch.jit.script)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self._check_pool(global_pool)
            self.global_pool = global_pool
        ref = self.pos_embed
        self.head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype) \
            if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        state, layout = self._embed(x)
        state, layout, _ = self._run_stages(state, layout)
        return self._final(state, layout)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Union[int, List[int], None] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """Dense (B, C, H, W) maps (or NLC with output_fmt='NLC') of the selected blocks' outputs (patch tokens
        only). After a pruning stage, each pruned position holds its token's features from the stage where it was
        pruned. ``norm=True`` applies the final norm to each map."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = take_indices(len(self.layers), indices)
        state, layout = self._embed(x)
        batch, dtype, grid = x.shape[0], state[0].dtype, layout.grid
        stop = max_index + 1 if (stop_early or intermediates_only) else None
        state, layout, feats = self._run_stages(state, layout, stop=stop, take=take)
        feats = [self._intermediate(f, norm, dtype) for f in feats]
        if output_fmt == 'NCHW':
            feats = [f.transpose(1, 2).reshape(batch, -1, *grid) for f in feats]
        if intermediates_only:
            return feats
        return self._final(state, layout), feats

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take, max_index = take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            setattr(self, self.final_norm, nn.Identity())
        if prune_head:
            self.reset_classifier(0, '')
        return take


class ModelFamily:
    """Entrypoint helpers of one model family: the architectures (``archs``: variant -> kwargs), the default
    schedules of its ``*_pruned`` names, the model class and its checkpoint filter."""

    def __init__(self, model_cls, filter_fn, archs: dict, pruned_defaults: dict):
        self.model_cls, self.filter_fn = model_cls, filter_fn
        self.archs, self.pruned_defaults = archs, pruned_defaults

    def create(self, variant: str, pretrained: bool = False, **kwargs):
        return build_model(self.model_cls, variant, pretrained, self.filter_fn, **kwargs)

    def dense(self, arch: str, variant: str, pretrained: bool, kwargs: dict, **extra):
        return self.create(variant, pretrained, **dict(self.archs[arch], **extra, **kwargs))

    def pruned(self, arch: str, variant: str, pretrained: bool, kwargs: dict):
        return self.create(variant, pretrained, **pruned_kwargs(self.archs[arch], self.pruned_defaults[arch], kwargs))


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
