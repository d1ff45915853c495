"""Arguments and helpers shared by the subcommands (timm's flag names, timm's library parts)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import timm
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.utils import ParseKwargs

_logger = logging.getLogger('timm_ssm_prune')

ANIMAL_MNIST = 'animal-mnist'


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# ------------------------------------------------------------------------------------------------ arguments

def add_model_args(p: argparse.ArgumentParser, default_model: Optional[str] = None):
    g = p.add_argument_group('model')
    g.add_argument('--model', '-m', default=default_model, required=default_model is None,
                   help='registered model name (timm + this package), or hf-hub:ORG/NAME / local-dir:PATH')
    g.add_argument('--pretrained', action='store_true', help='load the pretrained weights of the model tag')
    g.add_argument('--checkpoint', default='', help='weights file (.pth/.pth.tar/.safetensors) to load')
    g.add_argument('--use-ema', action='store_true', help="use the EMA weights of a training checkpoint")
    g.add_argument('--num-classes', type=int, default=None)
    g.add_argument('--img-size', type=int, default=None)
    g.add_argument('--in-chans', type=int, default=None)
    g.add_argument('--gp', default=None, help='global pool override')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='extra model kwargs, e.g. prune_layers="(5,10,15)" keep_rate=0.8 alignment=naive')
    g.add_argument('--device', default='cpu')
    g.add_argument('--amp', action='store_true', help='mixed precision (autocast)')
    g.add_argument('--amp-dtype', default='bfloat16', choices=['bfloat16', 'float16'])
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--torchcompile', nargs='?', const='inductor', default=None, help='torch.compile backend')
    return g


def add_data_args(p: argparse.ArgumentParser, split: str = 'val'):
    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default=None,
                   help=f"ImageFolder root with train/ and val/; '{ANIMAL_MNIST}' (or leaving it out for the "
                        f"package's Animal-MNIST models) fetches and prepares Animal-MNIST")
    g.add_argument('--dataset', default='', help="timm dataset name ('' = ImageFolder)")
    g.add_argument('--split', default=split)
    g.add_argument('-b', '--batch-size', type=int, default=64)
    g.add_argument('-j', '--workers', type=int, default=0)
    g.add_argument('--mean', type=float, nargs='+', default=None)
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--interpolation', default='')
    g.add_argument('--crop-pct', type=float, default=None)
    g.add_argument('--num-samples', type=int, default=None, help='use N images spread evenly over the split')
    return g


# ------------------------------------------------------------------------------------------------ model

def amp_dtype(args) -> Optional[torch.dtype]:
    return getattr(torch, args.amp_dtype) if getattr(args, 'amp', False) else None


def model_kwargs_from_args(args, **overrides) -> Dict[str, Any]:
    kw: Dict[str, Any] = {}
    if args.num_classes is not None:
        kw['num_classes'] = args.num_classes
    if args.img_size is not None:
        kw['img_size'] = args.img_size
    if args.in_chans is not None:
        kw['in_chans'] = args.in_chans
    if getattr(args, 'gp', None):
        kw['global_pool'] = args.gp
    kw.update(args.model_kwargs or {})
    kw.update(overrides)
    return kw


def create_model_from_args(args, **overrides) -> torch.nn.Module:
    """timm.create_model with the CLI's flags; --checkpoint goes through the model family's checkpoint filter."""
    name = args.model
    kw = model_kwargs_from_args(args, **overrides)
    try:
        model = timm.create_model(name, pretrained=args.pretrained, **kw)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise CliError(f"unknown model {name!r}; see `timm-ssm-prune models` or timm.list_models()") from e
        raise
    except (TypeError, ValueError) as e:
        raise CliError(f"bad model arguments for {name}: {e}") from e
    if args.checkpoint:
        load_weights(model, args.checkpoint, use_ema=getattr(args, 'use_ema', False))
    return model


def load_weights(model: torch.nn.Module, path: str, use_ema: bool = False, strict: bool = True):
    """Load a training checkpoint (timm CheckpointSaver, upstream official file or safetensors) into ``model``."""
    from ..models._loading import load_checkpoint_file, unwrap_checkpoint
    if not Path(path).is_file():
        raise CliError(f"checkpoint not found: {path}")
    obj = load_checkpoint_file(path)
    keys = ('state_dict_ema', 'model_ema', 'state_dict', 'model') if use_ema else ('state_dict', 'model')
    sd = unwrap_checkpoint(obj, keys)
    sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
    filt = getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)
    if filt is not None:
        sd = filt(sd, model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise CliError(f"checkpoint {path} does not match {type(model).__name__}: missing keys {missing[:5]}"
                       f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                       f"{'...' if len(unexpected) > 5 else ''}")
    return model


def prepare_model(model: torch.nn.Module, args) -> torch.nn.Module:
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CliError("--device cuda was given but no CUDA device is available")
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)
    return model


# ------------------------------------------------------------------------------------------------ data

def resolve_data_dir(args, model: Optional[torch.nn.Module] = None) -> str:
    data_dir = args.data_dir
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if data_dir in (None, '', ANIMAL_MNIST):
        if data_dir is None and 'animal' not in str(cfg.get('tag', '')) and args.dataset == '':
            raise CliError("--data-dir is required (an ImageFolder root with train/ and val/, or 'animal-mnist')")
        from ..data import prepare_animal_mnist
        return str(prepare_animal_mnist())
    if args.dataset == '' and not Path(data_dir).is_dir():
        raise CliError(f"data directory not found: {data_dir}")
    return data_dir


def data_config(args, model) -> Dict[str, Any]:
    """timm's resolve_data_config, with the input size taken from the model itself when the flags don't give
    it (a model built with --model-kwargs img_size=... in_chans=... differs from its pretrained cfg)."""
    cfg = resolve_data_config(vars(args), model=model)
    if args.img_size is None and args.in_chans is None and hasattr(model, 'img_size') and hasattr(model, 'in_chans'):
        cfg['input_size'] = (model.in_chans, *model.img_size)
    in_chans = cfg['input_size'][0]
    for key in ('mean', 'std'):
        vals = tuple(cfg[key])
        if len(vals) != in_chans:  # e.g. ImageNet RGB statistics for a grey-scale model
            cfg[key] = (sum(vals) / len(vals),) * in_chans
    return cfg


def create_eval_loader(args, model, split: Optional[str] = None, batch_size: Optional[int] = None):
    root = resolve_data_dir(args, model)
    split = split or args.split
    cfg = data_config(args, model)
    in_chans = cfg['input_size'][0]
    try:
        ds = create_dataset(args.dataset, root=root, split=split, is_training=False,
                            input_img_mode='L' if in_chans == 1 else 'RGB')
    except (FileNotFoundError, RuntimeError, AssertionError) as e:
        raise CliError(f"cannot read split {split!r} of {root}: {e}") from e
    loader = create_loader(
        ds, input_size=cfg['input_size'], batch_size=batch_size or args.batch_size, is_training=False,
        interpolation=cfg['interpolation'], mean=cfg['mean'], std=cfg['std'], crop_pct=cfg['crop_pct'],
        crop_mode=cfg.get('crop_mode'), num_workers=args.workers, use_prefetcher=False,
        device=torch.device(args.device), distributed=getattr(args, 'distributed', False),
    )
    if args.num_samples and args.num_samples < len(ds):  # evenly spread, so every class stays represented
        n = args.num_samples
        subset = torch.utils.data.Subset(ds, [i * len(ds) // n for i in range(n)])
        loader = torch.utils.data.DataLoader(subset, batch_size=loader.batch_size, shuffle=False,
                                             num_workers=args.workers, collate_fn=loader.collate_fn)
    return loader, cfg


def write_json(obj, path: Optional[str]):
    text = json.dumps(obj, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + '\n')
    return text


def is_interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get('CI')
