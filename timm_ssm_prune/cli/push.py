"""``timm-ssm-prune push``: validate a converted model folder and upload it to the Hugging Face Hub.

    timm-ssm-prune push --model-dir converted/plainmamba_l1 --repo-id ORG/NAME --dry-run
    timm-ssm-prune push --model-dir converted/plainmamba_l1 --repo-id ORG/NAME [--private] [--revision BRANCH]

Checks before anything is uploaded: ``config.json`` parses and names a registered architecture; a weights file is
present (``model.safetensors``, or ``pytorch_model.bin`` read with the allow-listed loader only) and loads strictly
into ``timm.create_model(architecture, **model_args)``; ``README.md`` has front matter with ``library_name: timm``.
Then ``HfApi().create_repo(exist_ok=True)`` and ``HfApi().upload_folder`` of the validated files. Once uploaded, the
folder loads with ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` (after ``import timm_ssm_prune``).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .common import CliError

# The weight files timm's hf-hub: loader looks for (filename pytorch_model.bin -> model.safetensors first).
WEIGHT_NAMES = ('model.safetensors', 'pytorch_model.bin')
WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.pth', '.pt', '.tar', '.ckpt', '.pkl', '.pickle', '.npz', '.h5')
_REPO_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$')


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument('--model-dir', required=True, help='folder with config.json, model.safetensors, README.md '
                                                      '(from `timm-ssm-prune convert`)')
    p.add_argument('--repo-id', required=True, help='target Hugging Face model repo, ORG/NAME')
    p.add_argument('--dry-run', action='store_true', help='validate and list what would be uploaded; upload nothing')
    p.add_argument('--private', action='store_true', help='create the repo as private (if it does not exist)')
    p.add_argument('--token', default=None, help='Hugging Face token (default: $HF_TOKEN or the cached login)')
    p.add_argument('--revision', default=None, help='branch to push to (created if missing; default: main)')
    p.add_argument('--commit-message', default=None, help='commit message (default: "Upload <architecture>")')


def _size(n: int) -> str:
    for unit in ('B', 'kB', 'MB', 'GB'):
        if n < 1000 or unit == 'GB':
            return f"{n:.0f} {unit}" if unit == 'B' else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n} B"  # pragma: no cover


def _read_config(d: Path) -> Dict[str, Any]:
    path = d / 'config.json'
    if not path.is_file():
        raise CliError(f"{d} has no config.json (create the folder with `timm-ssm-prune convert`)")
    try:
        cfg = json.loads(path.read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise CliError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get('architecture'), str):
        raise CliError(f"{path} has no 'architecture' string (not a timm hub config)")
    if not isinstance(cfg.get('model_args', {}), dict) or not isinstance(cfg.get('pretrained_cfg', {}), dict):
        raise CliError(f"{path}: 'model_args' and 'pretrained_cfg' must be objects")
    return cfg


def _weights_file(d: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (d / name).is_file():
            return d / name
    others = sorted(p.name for p in d.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    hint = f" (found {', '.join(others)}, which hf-hub: loading does not look for)" if others else ''
    raise CliError(f"{d} has no model.safetensors{hint}; create it with `timm-ssm-prune convert --model NAME "
                   f"--checkpoint FILE --out {d}`")


def _load_weights(path: Path) -> Dict[str, Any]:
    from ..models._loading import load_checkpoint_file
    try:
        sd = load_checkpoint_file(path)
    except pickle.UnpicklingError as e:
        raise CliError(f"{path}: {e}") from e
    except Exception as e:
        raise CliError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if not isinstance(sd, dict) or not all(hasattr(v, 'shape') for v in sd.values()):
        raise CliError(f"{path} is not a flat state dict of tensors (convert it with `timm-ssm-prune convert`)")
    return sd


def validate_model_dir(d: Path) -> Tuple[Dict[str, Any], List[Path], List[str]]:
    """Check a folder before upload. Returns (config, files to upload, notes); raises CliError on a problem."""
    import timm
    from .. import hub

    if not d.is_dir():
        raise CliError(f"--model-dir {d} is not a folder")
    cfg = _read_config(d)
    arch = cfg['architecture']
    if not timm.is_model(arch):
        raise CliError(f"config.json architecture {arch!r} is not a registered timm model "
                       f"(this package registers: {', '.join(hub.package_models())})")
    weights = _weights_file(d)
    notes = []
    if weights.suffix != '.safetensors':
        notes.append(f"{weights.name} is a pickle (read with the allow-listed loader); model.safetensors is "
                     f"preferred")
    sd = _load_weights(weights)

    try:
        model = hub.create_from_config(cfg, device='meta')
    except Exception as e:
        raise CliError(f"config.json does not build {arch}: {type(e).__name__}: {e}") from e
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {w} ({', '.join(x[:4])}{', ...' if len(x) > 4 else ''})"
                 for w, x in (('missing keys', missing), ('unexpected keys', unexpected),
                              ('shape mismatches', shapes)) if x]
        hint = ''
        if any(k.startswith(('backbone.', 'model.', 'module.')) for k in sd) or 'model' in sd:
            hint = ' (official checkpoint keys? run `timm-ssm-prune convert` first)'
        raise CliError(f"{weights.name} does not load strictly into {arch} with config.json's model_args: "
                       f"{'; '.join(parts)}{hint}")
    model.load_state_dict(sd, strict=True, assign=True)
    prune = getattr(model, 'prune_cfg', None)
    if prune is not None:
        notes.append(f"architecture {arch}, {len(sd)} tensors load strictly; pruning: {prune.describe()}")

    readme = d / 'README.md'
    if not readme.is_file():
        raise CliError(f"{d} has no README.md model card (convert writes one)")
    meta = hub.parse_front_matter(readme.read_text(encoding='utf-8'))
    if meta is None:
        raise CliError(f"{readme} has no YAML front matter (a block between '---' lines at the top)")
    if meta.get('library_name') != 'timm':
        raise CliError(f"{readme} front matter must say 'library_name: timm' (found {meta.get('library_name')!r})")
    tags = meta.get('tags') or []
    if 'transformers' in tags:
        notes.append("warning: the card's tags claim 'transformers'; these models load with timm, not transformers")

    files = [d / 'config.json', readme, weights]
    for p in sorted(d.rglob('*')):
        rel = p.relative_to(d)
        if not p.is_file() or p in files or any(part.startswith('.') for part in rel.parts):
            continue
        if p.name.endswith(WEIGHT_SUFFIXES):
            notes.append(f"not uploading {rel} (only {weights.name} is uploaded as weights)")
            continue
        files.append(p)
    return cfg, files, notes


def resolve_token(explicit=None):
    if explicit:
        return explicit
    if os.environ.get('HF_TOKEN'):
        return os.environ['HF_TOKEN']
    import huggingface_hub
    try:
        return huggingface_hub.get_token()
    except Exception:
        return None


def run(args) -> int:
    d = Path(args.model_dir)
    repo_id = args.repo_id
    if not _REPO_ID.match(repo_id or '') or '--' in repo_id or '..' in repo_id:
        raise CliError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    cfg, files, notes = validate_model_dir(d)
    revision = args.revision or 'main'
    visibility = 'private' if args.private else 'default visibility'
    print(f"validated {d}: {cfg['architecture']}")
    for n in notes:
        print(f"  {n}")
    token = None
    if not args.dry_run:
        token = resolve_token(args.token)
        if not token:
            raise CliError("no Hugging Face token: pass --token T, set HF_TOKEN, or log in once with "
                           "`hf auth login` (`huggingface-cli login` in older huggingface_hub); a write token is "
                           "needed to upload. Use --dry-run to validate without uploading")
        import huggingface_hub
        if getattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False):
            raise CliError("HF_HUB_OFFLINE is set: unset it to upload (or use --dry-run)")
    total = sum(p.stat().st_size for p in files)
    verb = 'would upload' if args.dry_run else 'uploading'
    print(f"{verb} to https://huggingface.co/{repo_id} (model repo, revision {revision}, {visibility}):")
    width = max(len(str(p.relative_to(d))) for p in files)
    for p in files:
        print(f"  {str(p.relative_to(d)):<{width}}  {_size(p.stat().st_size):>9}")
    print(f"  {len(files)} files, {_size(total)}")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return 0

    import huggingface_hub
    api = huggingface_hub.HfApi(token=token)
    message = args.commit_message or f"Upload {cfg['architecture']} (timm-ssm-prune)"
    try:
        api.create_repo(repo_id, repo_type='model', private=True if args.private else None, exist_ok=True)
        if args.revision:
            api.create_branch(repo_id, branch=args.revision, repo_type='model', exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(d), repo_type='model', revision=args.revision,
                                 allow_patterns=[p.relative_to(d).as_posix() for p in files],
                                 commit_message=message)
    except Exception as e:
        raise CliError(f"upload to {repo_id} failed: {type(e).__name__}: {e}") from e
    url = getattr(info, 'commit_url', None) or f"https://huggingface.co/{repo_id}"
    print(f"uploaded {len(files)} files to {repo_id}: {url}")
    print(f"load with: import timm_ssm_prune, timm; timm.create_model('hf-hub:{repo_id}', pretrained=True)")
    return 0
