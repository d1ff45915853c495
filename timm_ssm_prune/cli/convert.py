"""``timm-ssm-prune convert``: an official checkpoint -> ``model.safetensors`` + ``config.json`` + ``README.md``.

    timm-ssm-prune convert --model plainmamba_l1 --checkpoint l1.pth --out converted/plainmamba_l1
    timm-ssm-prune convert --model vim_small_patch16_224_pruned --checkpoint vim_s_midclstok_80p5acc.pth \\
        --out converted/vim_s_pruned --model-kwargs keep_rate=0.7

The checkpoint is read with the allow-listed loader (tensors, containers and argparse.Namespace only; nothing
else in a pickle is ever executed), mapped to the model's keys by the model family's ``checkpoint_filter_fn`` and
loaded strictly into ``timm.create_model(NAME, **kwargs)``. The folder is then verified: the model is rebuilt with
``timm.create_model('local-dir:' + OUT, pretrained=True)`` and its logits on a fixed random input are compared with
those of the model loaded from the original file.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import pickle
import sys
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor

from .common import CliError

OUTPUT_FILES = ('model.safetensors', 'config.json', 'README.md')


def add_arguments(p: argparse.ArgumentParser):
    from timm.utils import ParseKwargs
    p.add_argument('--model', '-m', required=True,
                   help='registered model name, optionally with a tag (e.g. vim_tiny_patch16_224.in1k_ema)')
    p.add_argument('--checkpoint', required=True,
                   help='the official checkpoint file (.pth / .pth.tar / .safetensors) to convert')
    p.add_argument('--out', '-o', required=True, help='output folder')
    p.add_argument('--use-ema', action='store_true',
                   help="Vim: take the checkpoint's model_ema entry (default: model, or the tag's choice)")
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--in-chans', type=int, default=None)
    p.add_argument('--gp', default=None, help='global pool override')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='extra model kwargs (recorded in config.json), e.g. prune_layers="(5,10,15)" keep_rate=0.8')
    p.add_argument('--repo-id', default=None,
                   help='ORG/NAME the folder will be published as (only used in the model card)')
    p.add_argument('--atol', type=float, default=1e-5,
                   help='largest allowed max |logit difference| in the verification (default 1e-5)')
    p.add_argument('--overwrite', action='store_true', help='replace existing output files in --out')


def _model_kwargs(args) -> dict:
    kw = {}
    if args.num_classes is not None:
        kw['num_classes'] = args.num_classes
    if args.img_size is not None:
        kw['img_size'] = args.img_size
    if args.in_chans is not None:
        kw['in_chans'] = args.in_chans
    if args.gp:
        kw['global_pool'] = args.gp
    kw.update(args.model_kwargs or {})
    return kw


def create_model(name: str, **kwargs) -> torch.nn.Module:
    import timm
    if name.startswith(('hf-hub:', 'local-dir:')):
        raise CliError(f"--model must be a registered architecture (e.g. plainmamba_l1), not {name!r}")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise CliError(f"unknown model {name!r}; see `timm-ssm-prune models`") from e
        raise
    except (TypeError, ValueError) as e:
        raise CliError(f"bad model arguments for {name}: {e}") from e


def filter_fn_of(model: torch.nn.Module):
    """The ``checkpoint_filter_fn`` of the module that defines ``model``'s class (the model family)."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, 'checkpoint_filter_fn', None)
    if fn is None:
        raise CliError(f"{type(model).__name__} ({type(model).__module__}) has no checkpoint_filter_fn; "
                       f"convert handles this package's models only")
    return fn


def load_official(model: torch.nn.Module, path: Path, use_ema: bool = False) -> None:
    """Allow-listed load of ``path``, the family's filter, then a strict load into ``model`` (CliError on failure)."""
    from ..models._loading import load_checkpoint_file
    if not path.is_file():
        raise CliError(f"checkpoint not found: {path}")
    try:
        obj = load_checkpoint_file(path)
    except pickle.UnpicklingError as e:
        raise CliError(str(e)) from e
    except Exception as e:  # corrupt file, not a checkpoint at all
        raise CliError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    fn = filter_fn_of(model)
    kwargs = {}
    if use_ema:
        if 'use_ema' not in inspect.signature(fn).parameters:
            raise CliError(f"--use-ema is not supported for {type(model).__name__} checkpoints")
        kwargs['use_ema'] = True
    try:
        sd = fn(obj, model, **kwargs)
    except (ValueError, KeyError, TypeError) as e:
        raise CliError(f"{path} does not match {model.pretrained_cfg.get('architecture')}: {e}") from e
    result = _load_strict(model, sd)
    if result:
        raise CliError(f"{path} does not match {model.pretrained_cfg.get('architecture')} "
                       f"(with the given --model-kwargs): {result}")


def _load_strict(model: torch.nn.Module, sd: Dict[str, Tensor]) -> str:
    """Strict load; returns '' on success, else a short description of the mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for what, items in (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', shapes)):
            if items:
                parts.append(f"{len(items)} {what} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})")
        return '; '.join(parts)
    model.load_state_dict(sd, strict=True)
    return ''


def export_state_dict(model: torch.nn.Module) -> Dict[str, Tensor]:
    """What goes into model.safetensors: the model's state dict, contiguous CPU tensors."""
    return {k: v.detach().to('cpu').contiguous() for k, v in model.state_dict().items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def known_releases() -> Dict[str, str]:
    """sha256 -> description of the weight files whose provenance this package knows: the Animal-MNIST weights it
    ships (``timm_ssm_prune/weights/``). A converted file matching none is "user-supplied"."""
    out = {}
    for path in sorted((Path(__file__).resolve().parent.parent / 'weights').glob('*.safetensors')):
        out[sha256(path)] = f"the {path.name} release shipped with timm-ssm-prune (trained on Animal-MNIST)"
    return out


def fixed_input(model: torch.nn.Module, batch: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, model.in_chans, *model.img_size, generator=g)


def verify(out_dir: Path, ref: torch.nn.Module, atol: float) -> float:
    """Rebuild from ``out_dir`` via ``local-dir:`` and compare with ``ref``; returns max |logit diff|."""
    import timm
    try:
        rebuilt = timm.create_model('local-dir:' + str(out_dir), pretrained=True).eval()
    except Exception as e:
        raise CliError(f"verification failed: timm.create_model('local-dir:{out_dir}', pretrained=True) raised "
                       f"{type(e).__name__}: {e}") from e
    if type(rebuilt) is not type(ref):
        raise CliError(f"verification failed: {out_dir} rebuilds a {type(rebuilt).__name__}, not a "
                       f"{type(ref).__name__}")
    if getattr(rebuilt, 'prune_cfg', None) != getattr(ref, 'prune_cfg', None):
        raise CliError(f"verification failed: the folder rebuilds prune configuration "
                       f"{rebuilt.prune_cfg.describe()}, the converted model has {ref.prune_cfg.describe()}")
    x = fixed_input(ref)
    with torch.no_grad():
        a, b = ref.eval()(x), rebuilt(x)
    if a.shape != b.shape:
        raise CliError(f"verification failed: logits shape {tuple(b.shape)} from {out_dir}, "
                       f"{tuple(a.shape)} from the original checkpoint")
    diff = (a.float() - b.float()).abs().max().item()
    print(f"verify: max |logit difference| local-dir vs original checkpoint = {diff:.3e} "
          f"(input {tuple(x.shape)}, seed 0)")
    if not diff <= atol:
        raise CliError(f"verification failed: max |logit difference| {diff:.3e} > {atol:g} between "
                       f"timm.create_model('local-dir:{out_dir}', pretrained=True) and the model loaded from the "
                       f"original checkpoint; the folder is not a faithful conversion")
    return diff


def run(args) -> int:
    from safetensors.torch import save_file
    from .. import hub

    src = Path(args.checkpoint)
    out = Path(args.out).resolve()
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a folder")
    existing = [n for n in OUTPUT_FILES if (out / n).exists()]
    if existing and not args.overwrite:
        raise CliError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them")

    model = create_model(args.model, **_model_kwargs(args)).eval()
    arch = model.pretrained_cfg.get('architecture', args.model)
    load_official(model, src, use_ema=args.use_ema)
    n_tensors = len(model.state_dict())
    print(f"loaded {src} into {arch}: {n_tensors} tensors, strict"
          + (f"; pruning {model.prune_cfg.describe()}" if model.prune_cfg.enabled else ''))

    config = hub.hub_config(model)
    digest = sha256(src)
    release = known_releases().get(digest)
    if release:
        converted_from = f"`{src.name}` (sha256 `{digest}`): {release}"
    else:
        converted_from = (f"`{src.name}` (sha256 `{digest}`): user-supplied weights (the sha256 matches no known "
                          f"release, so the card states no dataset or accuracy)")
    print(f"weights: {release or 'user-supplied (the sha256 matches no known release; no dataset/accuracy claim)'}")
    card = hub.render_model_card(model, config, weights="`model.safetensors` in this folder (native timm keys)",
                                 repo_id=args.repo_id, converted_from=converted_from, known_weights=bool(release))

    out.mkdir(parents=True, exist_ok=True)
    save_file(export_state_dict(model), str(out / 'model.safetensors'), metadata={'format': 'pt'})
    (out / 'config.json').write_text(hub.config_json_text(config), encoding='utf-8')
    (out / 'README.md').write_text(card, encoding='utf-8')
    for name in OUTPUT_FILES:
        print(f"wrote {out / name} ({(out / name).stat().st_size:,} bytes)")

    verify(out, model, args.atol)
    print(f"converted {src} -> {out}: OK")
    return 0
