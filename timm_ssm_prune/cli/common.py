"""Arguments and helpers shared by the subcommands (timm's flag names, timm's library parts).

Checkpoints: every ``--checkpoint`` / ``--resume`` / ``--initial-checkpoint`` goes through :func:`read_checkpoint`
(safetensors, or ``torch.load(weights_only=True)`` allowing only ``argparse.Namespace``) and :func:`load_weights`
(family check, the family's ``checkpoint_filter_fn``, strict load); every failure is a :class:`CliError` naming the
file and the cause. A checkpoint written by ``train`` records the model kwargs it was trained with (the full
pruning configuration) and its data config; :func:`create_model_from_args` builds the model with them unless an
explicit flag says otherwise (a notice is printed for each flag that overrides the checkpoint).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import timm
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.utils import ParseKwargs

from .errors import CliError

_logger = logging.getLogger('timm_ssm_prune')

ANIMAL_MNIST = 'animal-mnist'

# model kwargs that configure pruning (the rest configure the architecture or its input)
PRUNE_KWARGS = ('prune_layers', 'keep_rate', 'flops_reduction', 'importance', 'alignment')
FAMILY_NAMES = {'plainmamba': 'PlainMamba', 'vim': 'Vim'}
# where a training checkpoint keeps the (EMA) state dict: timm's CheckpointSaver, then upstream Vim / DeiT style
STATE_KEYS = ('state_dict', 'model')
EMA_STATE_KEYS = ('state_dict_ema', 'model_ema')
# the only non-tensor class allowed in a pickled checkpoint: training ``args`` (timm's and upstream Vim's)
ALLOWED_GLOBALS = (argparse.Namespace,)
# what a safetensors file written by ``train --save-safetensors`` stores in its metadata
SAFETENSORS_META_KEY = 'timm_ssm_prune'


def notice(msg: str) -> None:
    print(f"notice: {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ arguments

def add_model_args(p: argparse.ArgumentParser, default_model: Optional[str] = None):
    g = p.add_argument_group('model')
    g.add_argument('--model', '-m', default=default_model, required=default_model is None,
                   help='registered model name (timm + this package), or hf-hub:ORG/NAME / local-dir:PATH')
    g.add_argument('--pretrained', action='store_true', help='load the pretrained weights of the model tag')
    g.add_argument('--checkpoint', default='',
                   help="weights file (.pth/.pth.tar/.safetensors) to load; a checkpoint written by `train` also "
                        "brings its pruning configuration and data config (explicit flags override them)")
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


def add_data_args(p: argparse.ArgumentParser, split: str = 'val', split_flags=('--split',)):
    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default=None,
                   help=f"ImageFolder root with train/ and val/; '{ANIMAL_MNIST}' (or leaving it out for the "
                        f"package's Animal-MNIST models) fetches and prepares Animal-MNIST")
    g.add_argument('--dataset', default='', help="timm dataset name ('' = ImageFolder)")
    g.add_argument(*split_flags, dest='split', default=split, help=f'dataset split (default: {split})')
    g.add_argument('-b', '--batch-size', type=int, default=64)
    g.add_argument('-j', '--workers', type=int, default=0)
    g.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                   help='input image size (also builds the model for it: img_size=H (or (H, W)), in_chans=C)')
    g.add_argument('--mean', type=float, nargs='+', default=None)
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--interpolation', default='')
    g.add_argument('--crop-pct', type=float, default=None)
    g.add_argument('--num-samples', type=int, default=None, help='use N images spread evenly over the split')
    return g


def add_seed_arg(p: argparse.ArgumentParser):
    p.add_argument('--seed', type=int, default=None,
                   help="seed torch's global generator before the forward passes (what importance='random' "
                        "draws from); recorded in the results. Default: not seeded")


def seed_forward(args) -> Optional[int]:
    seed = getattr(args, 'seed', None)
    if seed is not None:
        torch.manual_seed(seed)
    return seed


# ------------------------------------------------------------------------------------------------ checkpoints

@dataclass
class Checkpoint:
    """A checkpoint file read by :func:`read_checkpoint`."""
    path: str
    obj: Dict[str, Any]
    model_kwargs: Optional[Dict[str, Any]] = None  # recorded by `train` (full pruning configuration)
    data_config: Optional[Dict[str, Any]] = None  # recorded by `train`
    arch: Optional[str] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    def state_dict(self, use_ema: bool = False) -> Dict[str, torch.Tensor]:
        keys = EMA_STATE_KEYS + STATE_KEYS if use_ema else STATE_KEYS
        for key in keys:
            inner = self.obj.get(key)
            if isinstance(inner, dict):
                sd = inner
                break
        else:
            sd = self.obj
        sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
        return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _cause(e: BaseException) -> str:
    text = ' '.join(str(e).split())
    if len(text) > 160:
        text = text[:157] + '...'
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') > 0


def read_checkpoint(path: str, what: str = 'checkpoint') -> Checkpoint:
    """Read a checkpoint file; every failure is a CliError naming the file and the cause."""
    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} not found: {path}")
    if not p.is_file():
        raise CliError(f"{what} {path} is not a file")
    size = p.stat().st_size
    if size == 0:
        raise CliError(f"cannot read {what} {path}: the file is empty")
    with open(p, 'rb') as f:
        head = f.read(16)
    meta: Dict[str, Any] = {}
    if p.suffix == '.safetensors' or _looks_like_safetensors(head):
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file
            obj: Any = load_file(str(p), device='cpu')
            with safe_open(str(p), framework='pt') as f:
                meta = dict(f.metadata() or {})
        except Exception as e:
            raise CliError(f"cannot read {what} {path}: not a valid safetensors file, truncated or corrupt "
                           f"({_cause(e)})") from e
    else:
        try:
            with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
                obj = torch.load(str(p), map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as e:
            if 'weights_only' in str(e).lower() or 'unsupported global' in str(e).lower():
                try:
                    unsafe = ', '.join(torch.serialization.get_unsafe_globals_in_checkpoint(str(p)))
                except Exception:
                    unsafe = ''
                raise CliError(f"refusing to load {what} {path}: it pickles objects outside the allow-list "
                               f"({unsafe or 'see torch.load'}); only tensors, containers and argparse.Namespace "
                               f"are accepted") from e
            raise CliError(f"cannot read {what} {path}: not a PyTorch checkpoint or a safetensors file "
                           f"({_cause(e)})") from e
        except RuntimeError as e:
            if head[:4] == b'PK\x03\x04':
                raise CliError(f"cannot read {what} {path}: the PyTorch file is truncated or corrupt "
                               f"({_cause(e)})") from e
            raise CliError(f"cannot read {what} {path}: not a PyTorch checkpoint or a safetensors file "
                           f"({_cause(e)})") from e
        except (EOFError, KeyError, ValueError, OSError, UnicodeDecodeError, IndexError, TypeError,
                AttributeError) as e:
            if head[:2] == b'\x80\x02' or head[:4] == b'PK\x03\x04':
                raise CliError(f"cannot read {what} {path}: the PyTorch file is truncated or corrupt "
                               f"({_cause(e)})") from e
            raise CliError(f"cannot read {what} {path}: not a PyTorch checkpoint or a safetensors file "
                           f"({_cause(e)})") from e
    if not isinstance(obj, dict):
        raise CliError(f"{what} {path} is not a checkpoint: it holds a {type(obj).__name__}, not a dict of tensors")
    ck = Checkpoint(path=str(path), obj=obj)
    if not ck.state_dict():
        raise CliError(f"{what} {path} is not a checkpoint: it holds no tensors (keys: {', '.join(list(obj)[:6])})")
    if meta.get(SAFETENSORS_META_KEY):
        try:
            meta = json.loads(meta[SAFETENSORS_META_KEY])
        except ValueError:
            meta = {}
        ck.model_kwargs, ck.data_config, ck.arch = meta.get('model_kwargs'), meta.get('data_config'), meta.get('arch')
    else:
        mk, dc = obj.get('model_kwargs'), obj.get('data_config')
        ck.model_kwargs = mk if isinstance(mk, dict) else None
        ck.data_config = dc if isinstance(dc, dict) else None
        ck.arch = obj.get('arch') if isinstance(obj.get('arch'), str) else None
    ck.meta = meta
    return ck


_VIM_KEY = re.compile(r'^(layers\.\d+\.mixer\.|.*\.A_b_log$|.*\.mixer\.(fwd|bwd)\.)')
_PLAINMAMBA_KEY = re.compile(r'^(backbone\.|layers\.\d+\.mamba\.)')


def checkpoint_family(keys) -> Optional[str]:
    """'vim' / 'plainmamba' from a state dict's keys (native or upstream naming), or None when neither."""
    vim = sum(1 for k in keys if _VIM_KEY.match(k))
    pm = sum(1 for k in keys if _PLAINMAMBA_KEY.match(k))
    if vim == pm:
        return None
    return 'vim' if vim > pm else 'plainmamba'


def model_family(model: torch.nn.Module) -> Optional[str]:
    mod = type(model).__module__.rsplit('.', 1)[-1]
    return mod if mod in FAMILY_NAMES else None


def _arch(model: torch.nn.Module) -> str:
    return (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__


def load_weights(model: torch.nn.Module, ck, use_ema: bool = False, strict: bool = True):
    """Load a checkpoint (a path or a :class:`Checkpoint`) into ``model``: family check, the family's
    ``checkpoint_filter_fn``, head size, strict load. Every failure is a CliError naming the file."""
    if not isinstance(ck, Checkpoint):
        ck = read_checkpoint(ck)
    path, arch = ck.path, _arch(model)
    sd = ck.state_dict(use_ema)
    fam_ck, fam_model = checkpoint_family(sd), model_family(model)
    if fam_ck and fam_model and fam_ck != fam_model:
        raise CliError(f"{path} is a {FAMILY_NAMES[fam_ck]} checkpoint, but --model {arch} is a "
                       f"{FAMILY_NAMES[fam_model]} model; pass a {FAMILY_NAMES[fam_ck]} model name"
                       + (f" (the checkpoint was trained as {ck.arch})" if ck.arch else ''))
    trained_as = f" (the checkpoint was trained as {ck.arch})" if ck.arch and ck.arch != arch else ''
    filt = getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)
    if filt is not None:
        try:
            sd = filt(sd, model)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            raise CliError(f"{path} does not match {arch}{trained_as}: {_cause(e)}") from e
    own = model.state_dict()
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or 'head'
    hw = f'{classifier}.weight'
    if hw in sd and hw in own and sd[hw].shape[0] != own[hw].shape[0]:
        n, m = sd[hw].shape[0], own[hw].shape[0]
        raise CliError(f"{path} has a {n}-class head, the model has {m} classes: pass --num-classes {n}")
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if shapes or (strict and (missing or unexpected)):
        parts = []
        for what, items in (('missing keys', missing), ('unexpected keys', unexpected),
                            ('shape mismatches (checkpoint vs model)', shapes)):
            if items:
                parts.append(f"{len(items)} {what} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
        raise CliError(f"{path} does not match {arch}{trained_as}: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=strict)
    return model


# ------------------------------------------------------------------------------------------------ model kwargs

def amp_dtype(args) -> Optional[torch.dtype]:
    return getattr(torch, args.amp_dtype) if getattr(args, 'amp', False) else None


def model_kwargs_from_args(args, **overrides) -> Dict[str, Any]:
    """The model kwargs the flags give explicitly."""
    kw: Dict[str, Any] = {}
    input_size = getattr(args, 'input_size', None)
    if input_size:
        c, h, w = input_size
        kw['img_size'] = h if h == w else (h, w)
        kw['in_chans'] = c
    if getattr(args, 'num_classes', None) is not None:
        kw['num_classes'] = args.num_classes
    if getattr(args, 'img_size', None) is not None:
        kw['img_size'] = args.img_size
    if getattr(args, 'in_chans', None) is not None:
        kw['in_chans'] = args.in_chans
    if getattr(args, 'gp', None):
        kw['global_pool'] = args.gp
    kw.update(getattr(args, 'model_kwargs', None) or {})
    kw.update(overrides)
    return kw


def _plain(v):
    """JSON-friendly copy (tuples -> lists), for records and comparisons."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def recorded_model_kwargs(model: torch.nn.Module, explicit: Dict[str, Any]) -> Dict[str, Any]:
    """What a checkpoint records: the user's non-pruning kwargs plus the model's full pruning configuration
    (``model.prune_cfg.to_kwargs()``; a dense model records ``prune_layers=[]``)."""
    kw = {k: v for k, v in explicit.items() if k not in PRUNE_KWARGS}
    if getattr(model, 'num_classes', None) is not None:
        kw.setdefault('num_classes', model.num_classes)
    cfg = getattr(model, 'prune_cfg', None)
    if cfg is not None:
        pk = dict(cfg.to_kwargs())
        if not cfg.enabled:
            pk['prune_layers'] = []
            pk.pop('keep_rate', None)
        kw.update({k: v for k, v in pk.items() if v is not None})
    return _plain(kw)


def merge_model_kwargs(recorded: Optional[Dict[str, Any]], explicit: Dict[str, Any], source: str) -> Dict[str, Any]:
    """The checkpoint's recorded kwargs, overridden by the explicit ones (a notice for each disagreement)."""
    if not recorded:
        return dict(explicit)
    kw = dict(recorded)
    dropped = []
    if 'flops_reduction' in explicit or ('prune_layers' in explicit and not explicit['prune_layers']):
        if 'keep_rate' in kw and 'keep_rate' not in explicit:  # a FLOPs target / no pruning replaces the rates
            dropped.append('keep_rate')
    if 'keep_rate' in explicit and 'flops_reduction' in kw and 'flops_reduction' not in explicit:
        dropped.append('flops_reduction')
    changes = []
    for k in dropped:
        changes.append(f"{k} (checkpoint: {kw.pop(k)!r}) dropped")
    for k, v in explicit.items():
        if k in recorded and _plain(recorded[k]) != _plain(v):
            changes.append(f"{k}={v!r} (checkpoint: {recorded[k]!r})")
        kw[k] = v
    if changes:
        notice(f"explicit model arguments override the configuration recorded in {source}: " + '; '.join(changes))
    return kw


def _pretrained_source(name: str) -> str:
    try:
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(name.split(':')[-1]) if not name.startswith(('hf-hub:', 'local-dir:')) else None
        cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else (cfg or {})
    except Exception:
        cfg = {}
    src = cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url')
    return str(src) if src else name


def _create(name: str, pretrained: bool, kw: Dict[str, Any]) -> torch.nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, **kw)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise CliError(f"unknown model {name!r}; see `timm-ssm-prune models` or timm.list_models()") from e
        if not pretrained:
            raise
        err = e
    except (TypeError, ValueError) as e:
        if not pretrained:
            raise CliError(f"bad model arguments for {name}: {_cause(e)}") from e
        err = e
    except Exception as e:  # download / file / filter failures of pretrained=True
        if not pretrained:
            raise
        err = e
    # pretrained=True failed: the arguments, or the weights?
    try:
        timm.create_model(name, pretrained=False, **kw)
    except (TypeError, ValueError) as e2:
        raise CliError(f"bad model arguments for {name}: {_cause(e2)}") from e2
    except Exception:
        pass
    raise CliError(f"cannot load the pretrained weights of {name} ({_pretrained_source(name)}): "
                   f"{_cause(err)}") from err


def create_model_from_args(args, checkpoint: Optional[str] = None, use_ema: Optional[bool] = None,
                           **overrides) -> torch.nn.Module:
    """timm.create_model with the CLI's flags. A ``--checkpoint`` that records model kwargs (written by ``train``)
    supplies them (explicit flags win, with a notice); its weights go through :func:`load_weights`. The
    checkpoint read is kept as ``args._checkpoint`` (its data config is used by :func:`data_config`)."""
    name = args.model
    explicit = model_kwargs_from_args(args, **overrides)
    path = args.checkpoint if checkpoint is None else checkpoint
    ck = read_checkpoint(path) if path else None
    args._checkpoint = ck
    kw = merge_model_kwargs(ck.model_kwargs if ck else None, explicit, path)
    model = _create(name, bool(getattr(args, 'pretrained', False)), kw)
    args._explicit_model_kwargs = explicit
    args._model_kwargs = kw
    if ck is not None:
        load_weights(model, ck, use_ema=getattr(args, 'use_ema', False) if use_ema is None else use_ema)
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


DATA_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


def data_config(args, model) -> Dict[str, Any]:
    """timm's resolve_data_config, with

    * the input size taken from the model itself when the flags don't give it (a model built with
      ``--model-kwargs img_size=... in_chans=...`` differs from its pretrained cfg);
    * the data config recorded in ``--checkpoint`` (written by ``train``) for every value no flag gives; a
      checkpoint without one falls back to the pretrained tag's normalisation with a warning.

    ``cfg['source']`` says where mean/std came from."""
    a = vars(args)
    cfg = resolve_data_config(a, model=model)
    given_size = bool(a.get('input_size')) or a.get('img_size') is not None or a.get('in_chans') is not None
    if not given_size and hasattr(model, 'img_size') and hasattr(model, 'in_chans'):
        cfg['input_size'] = (model.in_chans, *model.img_size)
    pcfg = getattr(model, 'pretrained_cfg', None) or {}
    tag = '.'.join(x for x in (pcfg.get('architecture'), pcfg.get('tag')) if x) or type(model).__name__
    source = f"pretrained config of {tag}"
    ck = a.get('_checkpoint')
    flag_norm = a.get('mean') is not None and a.get('std') is not None
    if ck is not None and ck.data_config:
        rec = ck.data_config
        for key in ('interpolation', 'mean', 'std', 'crop_pct', 'crop_mode'):
            if rec.get(key) is not None and not a.get(key):
                cfg[key] = tuple(rec[key]) if isinstance(rec[key], (list, tuple)) else rec[key]
        if rec.get('input_size') and not given_size:
            cfg['input_size'] = tuple(rec['input_size'])
        if not flag_norm:
            source = f"checkpoint {ck.path}"
    elif ck is not None and not flag_norm and not a.get('_warned_norm'):
        warn(f"{ck.path} records no data config; normalising with the {source} (mean {_fmt(cfg['mean'])}, "
             f"std {_fmt(cfg['std'])}); pass --mean/--std if the weights were trained on other data")
        try:
            args._warned_norm = True
        except AttributeError:
            pass
    if flag_norm:
        source = 'flags --mean/--std'
    in_chans = cfg['input_size'][0]
    for key in ('mean', 'std'):
        vals = tuple(cfg[key])
        if len(vals) != in_chans:  # e.g. ImageNet RGB statistics for a grey-scale model
            cfg[key] = (sum(vals) / len(vals),) * in_chans
    cfg['source'] = source
    return cfg


def _fmt(vals) -> str:
    return '(' + ', '.join(f'{v:.4g}' for v in vals) + ')'


def data_config_record(cfg: Dict[str, Any], model: Optional[torch.nn.Module] = None) -> Dict[str, Any]:
    """The data config as recorded in checkpoints and results files."""
    out = {k: _plain(cfg.get(k)) for k in DATA_KEYS if cfg.get(k) is not None}
    if model is not None and getattr(model, 'num_classes', None) is not None:
        out['num_classes'] = int(model.num_classes)
    if cfg.get('source'):
        out['source'] = cfg['source']
    return out


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
        persistent_workers=args.workers > 0,
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


__all__ = ['CliError', 'Checkpoint', 'read_checkpoint', 'load_weights', 'checkpoint_family', 'model_family',
           'create_model_from_args', 'model_kwargs_from_args', 'recorded_model_kwargs', 'merge_model_kwargs',
           'data_config', 'data_config_record', 'create_eval_loader', 'add_model_args', 'add_data_args',
           'add_seed_arg', 'seed_forward', 'prepare_model', 'resolve_data_dir', 'write_json', 'amp_dtype']
