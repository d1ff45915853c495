"""`timm-ssm-prune train`: train or fine-tune a (pruned) model with timm's library parts.

Runs single-process or under ``torchrun`` (DDP; gloo on CPU, nccl on CUDA). With ``--distill`` the loss adds a
KL term to a frozen dense teacher: the student's own initial weights (``--pretrained`` / ``--initial-checkpoint`` /
the seeded initialisation) with pruning switched off, or ``--teacher-checkpoint``'s (the paper's fine-tuning uses
no distillation; this is an option). The checkpoints record where the teacher came from and the sha256 of its
weights; ``--resume`` rebuilds the teacher from that record (not from the resumed, fine-tuned weights) and stops with
an error if it cannot be rebuilt or its sha256 differs.

    timm-ssm-prune train --model plainmamba_l1_pruned --pretrained --data-dir DIR --epochs 30 --lr 1e-4
    torchrun --nproc_per_node 2 -m timm_ssm_prune train --model ... --data-dir DIR
    timm-ssm-prune train ... --resume output/train/RUN/last.pth.tar      # continue where it stopped

Output: each run writes to its own folder ``--output``/``--experiment`` (default experiment name:
``<date>-<time>-<model>-<img size>``, timm's), never into an existing run: an existing folder gets a ``-1``,
``-2``, ... suffix (timm's ``get_outdir(..., inc=True)``). ``--resume`` without ``--experiment`` continues in the
resumed checkpoint's own run folder (summary.csv and history.json continue from the resumed epoch).

Checkpoints (``last.pth.tar`` every epoch, ``model_best.pth.tar``) hold timm's keys (``epoch``, ``arch``,
``state_dict``, ``optimizer``, ``version``, ``args``, ``state_dict_ema``, ``metric``) plus ``scheduler``,
``num_updates``, ``best_metric``/``best_epoch``, the RNG states, ``teacher`` (with ``--distill``: its source and
sha256), ``model_kwargs`` (the model's full pruning configuration and the other kwargs given) and ``data_config``
(mean, std, input size, interpolation, crop_pct, num_classes): ``validate``/``benchmark``/``flops``/``visualize
--checkpoint`` rebuild the same model from them.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import logging
import math
import os
import random
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup, create_dataset, create_loader
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import AverageMeter, ModelEmaV3, NativeScaler, get_outdir, random_seed, update_summary
from tqdm import tqdm

from .common import (SAFETENSORS_META_KEY, CliError, _create, _pretrained_source, add_data_args, add_model_args,
                     amp_dtype, create_eval_loader, create_model_from_args, data_config, data_config_record,
                     load_weights, notice, read_checkpoint, recorded_model_kwargs, resolve_data_dir)
from .validate import evaluate

_logger = logging.getLogger('timm_ssm_prune.train')


def add_arguments(p):
    add_model_args(p)
    add_data_args(p, split='train', split_flags=('--train-split', '--split'))
    p.add_argument('--val-split', default='val')
    p.add_argument('--initial-checkpoint', default='',
                   help='initialise the model from this checkpoint (weights only; same as --checkpoint)')
    p.add_argument('--resume', default='',
                   help='resume a run from its checkpoint: model, optimizer, LR schedule, EMA, epoch, best metric')
    p.add_argument('--no-resume-opt', action='store_true',
                   help='with --resume: restore the model and epoch but not the optimizer / scheduler state')
    p.add_argument('--no-val', action='store_true', help='skip validation after each epoch')
    g = p.add_argument_group('optimisation')
    g.add_argument('--epochs', type=int, default=10)
    g.add_argument('--opt', default='adamw')
    g.add_argument('--lr', type=float, default=1e-3)
    g.add_argument('--weight-decay', type=float, default=0.05)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--clip-grad', type=float, default=None)
    g.add_argument('--layer-decay', type=float, default=None)
    g.add_argument('--sched', default='cosine')
    g.add_argument('--warmup-epochs', type=int, default=0)
    g.add_argument('--warmup-lr', type=float, default=1e-6)
    g.add_argument('--min-lr', type=float, default=1e-6)
    g.add_argument('--drop', type=float, default=0.0, help='dropout before the head')
    g.add_argument('--drop-path', type=float, default=None)
    g.add_argument('--grad-checkpointing', action='store_true')
    g.add_argument('--steps-per-epoch', type=int, default=None, help='cap the optimiser steps of each epoch')
    g = p.add_argument_group('augmentation and regularisation')
    g.add_argument('--no-aug', action='store_true')
    g.add_argument('--scale', type=float, nargs=2, default=(0.08, 1.0))
    g.add_argument('--ratio', type=float, nargs=2, default=(3. / 4., 4. / 3.))
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--color-jitter', type=float, default=0.0)
    g.add_argument('--aa', default=None, help='auto-augment policy, e.g. rand-m9-mstd0.5')
    g.add_argument('--reprob', type=float, default=0.0)
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--mixup', type=float, default=0.0)
    g.add_argument('--cutmix', type=float, default=0.0)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--model-ema', action='store_true')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g = p.add_argument_group('distillation from the dense teacher')
    g.add_argument('--distill', action='store_true',
                   help='add KL(student || dense teacher) with the initial weights and pruning off')
    g.add_argument('--teacher-checkpoint', default='',
                   help="with --distill: the teacher's weights from this file instead of the initial weights; with "
                        "--resume: the file holding the run's teacher (its sha256 is checked)")
    g.add_argument('--distill-weight', type=float, default=0.5, help='weight of the KL term (task: 1 - weight)')
    g.add_argument('--kd-temperature', type=float, default=1.0)
    g = p.add_argument_group('output')
    g.add_argument('--output', default='output/train', help='base folder; each run writes to OUTPUT/EXPERIMENT')
    g.add_argument('--experiment', default='',
                   help='name of the run folder (default: <date>-<time>-<model>-<img size>); an existing folder '
                        'is never overwritten (a -1, -2, ... suffix is added)')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--log-interval', type=int, default=50)
    g.add_argument('--save-safetensors', default='', help='also write the final weights (EMA if used) here')
    g.add_argument('--no-progress', action='store_true')


def _setup_distributed(args):
    args.world_size = int(os.environ.get('WORLD_SIZE', '1'))
    args.rank = int(os.environ.get('RANK', '0'))
    args.local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    args.distributed = args.world_size > 1
    if args.distributed:
        backend = 'nccl' if args.device.startswith('cuda') else 'gloo'
        if args.device.startswith('cuda'):
            args.device = f'cuda:{args.local_rank}'
            torch.cuda.set_device(args.device)
        torch.distributed.init_process_group(backend=backend)
    return args


def _kd_loss(student_logits, teacher_logits, temperature: float):
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction='batchmean', log_target=True) * t * t


def _safe_model_name(name: str) -> str:
    name = name.split(':')[-1]
    return ''.join(c if c.isalnum() else '_' for c in name).rstrip('_')


def _run_dir(args, cfg, resume_path: str) -> Path:
    """timm's run folder: OUTPUT/EXPERIMENT, never an existing one (``get_outdir(inc=True)``), except the folder
    of the resumed checkpoint, which the resumed run continues."""
    base = args.output or 'output/train'
    resume_dir = Path(resume_path).resolve().parent if resume_path else None
    is_run_dir = resume_dir is not None and any((resume_dir / f).is_file() for f in ('summary.csv', 'args.json'))
    if args.experiment:
        exp = args.experiment
    elif is_run_dir:
        return resume_dir
    else:
        exp = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), _safe_model_name(args.model),
                        str(cfg['input_size'][-1])])
    if is_run_dir and (Path(base) / exp).resolve() == resume_dir:
        return resume_dir
    return Path(get_outdir(base, exp, inc=True))


def _rng_state():
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=random.getstate(),
                numpy=(np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])))


def _set_rng_state(state) -> None:
    torch.set_rng_state(state['torch'])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state['python']))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _trim_summary(path: Path, start_epoch: int) -> None:
    """Keep the header and the rows of epochs before ``start_epoch`` (a resumed run rewrites the later ones)."""
    if not path.is_file():
        return
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and r[0].strip().isdigit() and int(r[0]) < start_epoch]
    with open(path, 'w', newline='') as f:
        csv.writer(f).writerows(keep)


def _clean_args(args) -> argparse.Namespace:
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith('_')})


def _save_atomic(state, path: Path) -> None:
    tmp = path.with_name(path.name + '.tmp')
    torch.save(state, tmp)
    os.replace(tmp, path)


def run(args):
    args = _setup_distributed(args)
    is_main = args.rank == 0
    random_seed(args.seed, args.rank)
    dev = torch.device(args.device)
    if args.initial_checkpoint:
        if args.checkpoint and args.checkpoint != args.initial_checkpoint:
            raise CliError("give either --initial-checkpoint or --checkpoint, not both")
        args.checkpoint = args.initial_checkpoint
    if args.resume and args.checkpoint:
        raise CliError("--resume restores the weights itself: drop --checkpoint / --initial-checkpoint")
    extra = {}
    if args.drop_path is not None:
        extra['drop_path_rate'] = args.drop_path
    if args.drop:
        extra['drop_rate'] = args.drop
    # --resume: the model is rebuilt with the kwargs the checkpoint records (explicit flags still win)
    model = create_model_from_args(args, checkpoint=args.resume or args.checkpoint, use_ema=False, **extra)
    ckpt = args._checkpoint
    resume = ckpt if args.resume else None
    if resume is not None and 'epoch' not in resume.obj:
        raise CliError(f"cannot resume from {resume.path}: it holds no training state (no 'epoch'); use "
                       f"--initial-checkpoint to start a new run from its weights")
    record_kwargs = recorded_model_kwargs(model, args._model_kwargs)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(dev)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    teacher, teacher_record = None, None
    if args.distill:
        teacher, teacher_record = _build_teacher(model, args, resume)
    elif args.teacher_checkpoint:
        raise CliError("--teacher-checkpoint is the teacher of --distill: add --distill or drop it")

    root = resolve_data_dir(args, model)
    cfg = data_config(args, model)
    in_chans = cfg['input_size'][0]
    try:
        ds_train = create_dataset(args.dataset, root=root, split=args.split, is_training=True,
                                  input_img_mode='L' if in_chans == 1 else 'RGB', seed=args.seed)
    except (FileNotFoundError, RuntimeError, AssertionError) as e:
        raise CliError(f"cannot read split {args.split!r} of {root}: {e}") from e
    num_classes = getattr(model, 'num_classes', None)
    n_data_classes = len(getattr(getattr(ds_train, 'reader', None), 'class_to_idx', {}) or {}) or None
    if n_data_classes and num_classes and n_data_classes > num_classes:
        raise CliError(f"the data has {n_data_classes} classes but the model has num_classes={num_classes}; "
                       f"pass --num-classes {n_data_classes}")
    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                         switch_prob=args.mixup_switch_prob, label_smoothing=args.smoothing,
                         num_classes=num_classes)
    loader_train = create_loader(
        ds_train, input_size=cfg['input_size'], batch_size=args.batch_size, is_training=True, no_aug=args.no_aug,
        re_prob=args.reprob, scale=args.scale, ratio=args.ratio, hflip=args.hflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, interpolation=cfg['interpolation'], mean=cfg['mean'], std=cfg['std'],
        num_workers=args.workers, distributed=args.distributed, use_prefetcher=False, device=dev,
        persistent_workers=args.workers > 0,
    )
    loader_val = None
    if not args.no_val:
        vargs = copy.copy(args)
        vargs.data_dir = root
        loader_val, _ = create_eval_loader(vargs, model, split=args.val_split)
    data_record = data_config_record(cfg, model)
    data_record.pop('source', None)

    try:
        optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                        momentum=args.momentum, layer_decay=args.layer_decay)
    except (ValueError, AssertionError) as e:
        raise CliError(f"bad optimizer settings (--opt {args.opt}): {e}") from e
    updates_per_epoch = len(loader_train) if args.steps_per_epoch is None else \
        min(len(loader_train), args.steps_per_epoch)
    if updates_per_epoch == 0:
        raise CliError(f"the training split has fewer images ({len(ds_train)}) than one batch "
                       f"({args.batch_size} x {args.world_size} processes)")
    # per-update schedule (warm-up and decay move every step, not once per epoch)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr, min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    dtype = amp_dtype(args)
    scaler = NativeScaler() if dtype == torch.float16 and dev.type == 'cuda' else None

    model_ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    start_epoch, step, best_metric, best_epoch = 0, 0, None, None
    if resume is not None:
        start_epoch, step, best_metric, best_epoch = _resume(resume, model, optimizer, scheduler, model_ema, scaler,
                                                             updates_per_epoch, args)
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == 'cuda' else None)
    unwrapped = model.module if args.distributed else model
    if mixup_fn is not None:
        criterion = SoftTargetCrossEntropy()
    elif args.smoothing:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()

    out_dir = None
    history = []
    if is_main:
        out_dir = _run_dir(args, cfg, args.resume)
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"run folder: {out_dir}" + (f" (resuming at epoch {start_epoch})" if resume is not None else ''),
              flush=True)
        (out_dir / 'args.json').write_text(json.dumps(vars(_clean_args(args)), indent=2, default=str))
        if resume is not None:
            _trim_summary(out_dir / 'summary.csv', start_epoch)
            if (out_dir / 'history.json').is_file():
                history = [r for r in json.loads((out_dir / 'history.json').read_text())
                           if r.get('epoch', 0) < start_epoch]

    def checkpoint_state(epoch, metric):
        state = OrderedDict(
            epoch=epoch, arch=args.model, state_dict=unwrapped.state_dict(), optimizer=optimizer.state_dict(),
            version=2, args=_clean_args(args), metric=metric, scheduler=scheduler.state_dict(),
            num_updates=step, updates_per_epoch=updates_per_epoch, best_metric=best_metric, best_epoch=best_epoch,
            model_kwargs=record_kwargs, data_config=data_record,
            pruning=unwrapped.prune_cfg.describe() if hasattr(unwrapped, 'prune_cfg') else None,
        )
        if teacher_record is not None:
            state['teacher'] = teacher_record
        if model_ema is not None:
            state['state_dict_ema'] = model_ema.module.state_dict()
        if scaler is not None:
            state[scaler.state_dict_key] = scaler.state_dict()
        if not args.distributed:
            state['rng_state'] = _rng_state()
        return state

    for epoch in range(start_epoch, num_epochs):
        if args.distributed and hasattr(loader_train.sampler, 'set_epoch'):
            loader_train.sampler.set_epoch(epoch)
        model.train()
        loss_m = AverageMeter()
        t0 = time.perf_counter()
        bar = tqdm(loader_train, total=updates_per_epoch, desc=f'epoch {epoch}', leave=False,
                   disable=True if (args.no_progress or not is_main) else None)
        for i, (x, y) in enumerate(bar):
            if i >= updates_per_epoch:
                break
            x, y = x.to(dev), y.to(dev)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if mixup_fn is not None:
                x, y = mixup_fn(x, y)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                out = model(x)
                loss = criterion(out, y)
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = (1 - args.distill_weight) * loss + args.distill_weight * _kd_loss(
                        out.float(), t_out.float(), args.kd_temperature)
            if not math.isfinite(loss.item()):
                raise CliError(f"loss is {loss.item()} at epoch {epoch} step {i}: lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler(loss, optimizer, clip_grad=args.clip_grad, parameters=model.parameters())
            else:
                loss.backward()
                if args.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
                optimizer.step()
            if model_ema is not None:
                model_ema.update(unwrapped, step=step)
            step += 1
            scheduler.step_update(num_updates=step)
            loss_m.update(loss.item(), x.shape[0])
            bar.set_postfix(loss=f'{loss_m.avg:.4f}', lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if is_main and args.log_interval and (i + 1) % args.log_interval == 0:
                _logger.info(f"epoch {epoch} step {i + 1}/{updates_per_epoch} loss {loss_m.avg:.4f}")
        scheduler.step(epoch + 1)
        train_time = time.perf_counter() - t0
        row = OrderedDict(epoch=epoch, train_loss=loss_m.avg, lr=optimizer.param_groups[0]['lr'],
                          train_img_per_s=loss_m.count * args.world_size / max(train_time, 1e-9))
        if loader_val is not None:
            metrics = _evaluate_all(unwrapped, loader_val, dev, dtype, args)
            row.update({f'val_{k}': v for k, v in metrics.items()})
            if model_ema is not None:
                ema_metrics = _evaluate_all(model_ema.module, loader_val, dev, dtype, args)
                row.update({f'ema_val_{k}': v for k, v in ema_metrics.items()})
        history.append(row)
        metric = row.get('ema_val_top1', row.get('val_top1', -row['train_loss']))
        improved = best_metric is None or metric > best_metric
        if improved:
            best_metric, best_epoch = metric, epoch
        if is_main:
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            summary = out_dir / 'summary.csv'
            update_summary(epoch, {'loss': row['train_loss']},
                           {k[4:]: v for k, v in row.items() if k.startswith('val_')} or {'top1': 0.0},
                           str(summary), lr=row['lr'],
                           write_header=not summary.is_file() or summary.stat().st_size == 0)
            (out_dir / 'history.json').write_text(json.dumps(history, indent=1))
            state = checkpoint_state(epoch, metric)
            _save_atomic(state, out_dir / 'last.pth.tar')
            if improved:
                _save_atomic(state, out_dir / 'model_best.pth.tar')
    if is_main:
        final = model_ema.module if model_ema is not None else unwrapped
        (out_dir / 'history.json').write_text(json.dumps(history, indent=1))
        if best_epoch is not None:
            print(f"best metric {best_metric:.4f} (epoch {best_epoch}); checkpoints in {out_dir}", flush=True)
        if args.save_safetensors:
            from safetensors.torch import save_file
            Path(args.save_safetensors).parent.mkdir(parents=True, exist_ok=True)
            meta = json.dumps(dict(arch=args.model, model_kwargs=record_kwargs, data_config=data_record))
            save_file({k: v.detach().contiguous().cpu() for k, v in final.state_dict().items()},
                      args.save_safetensors, metadata={'format': 'pt', SAFETENSORS_META_KEY: meta})
    if args.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def _state_sha256(model) -> str:
    """sha256 of a model's state dict: names, dtypes, shapes and values (not the device or memory format)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        v = v.detach().cpu().contiguous()
        h.update(f'{k} {v.dtype} {tuple(v.shape)};'.encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _teacher_origin(rec) -> str:
    if rec['source'] == 'checkpoint':
        return rec['path']
    if rec['source'] == 'pretrained':
        return f"the pretrained weights of {rec['model']} ({rec['weights']})"
    return f"the initialisation of {rec['model']} with --seed {rec['seed']}"


def _build_teacher(model, args, resume):
    """The frozen dense teacher of ``--distill`` and its record (source and sha256, kept in every checkpoint).

    A new run's teacher is the student's initial weights with pruning off (or ``--teacher-checkpoint``'s). The model
    of a resumed run holds the fine-tuned weights, so its teacher is rebuilt from the resumed checkpoint's record:
    the same file, the same pretrained weights, or the same seeded initialisation; its sha256 must match."""
    if not getattr(model, 'prune_cfg', None) or not model.prune_cfg.enabled:
        raise CliError("--distill needs a pruned student (the teacher is the same model without pruning)")
    recorded = resume.obj.get('teacher') if resume is not None else None
    if not isinstance(recorded, dict) or recorded.get('source') not in ('checkpoint', 'pretrained', 'init'):
        recorded = None
    if resume is not None and recorded is None and not args.teacher_checkpoint:
        raise CliError(f"{resume.path} records no distillation teacher (the run was started without --distill, or "
                       f"by an older version): pass --teacher-checkpoint FILE with the dense teacher's weights "
                       f"(e.g. the run's --initial-checkpoint)")
    if args.teacher_checkpoint:
        rec = dict(source='checkpoint', path=os.path.abspath(args.teacher_checkpoint))
    elif recorded is not None:
        rec = {k: recorded[k] for k in ('source', 'path', 'model', 'weights', 'seed') if k in recorded}
    elif args.checkpoint:
        rec = dict(source='checkpoint', path=os.path.abspath(args.checkpoint))
    elif args.pretrained:
        rec = dict(source='pretrained', model=args.model, weights=_pretrained_source(args.model), seed=args.seed)
    else:
        rec = dict(source='init', model=args.model, seed=args.seed)
    old_sha = recorded.get('sha256') if recorded is not None else None
    fix = "pass --teacher-checkpoint FILE with the run's teacher weights" + (
        f" (sha256 {old_sha[:12]}...)" if old_sha else '')
    teacher = copy.deepcopy(model)  # a new run's model holds the initial weights already
    if args.teacher_checkpoint:
        load_weights(teacher, read_checkpoint(rec['path'], 'teacher checkpoint'))
    elif resume is not None:  # rebuild the recorded teacher (a new run's student holds the initial weights)
        try:
            if rec['source'] == 'checkpoint':
                load_weights(teacher, read_checkpoint(rec['path'], 'initial checkpoint'))
            else:  # the first run's seeded creation (a new head on pretrained weights is drawn from it too)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(rec['seed'] + args.rank)
                    src = _create(rec['model'], rec['source'] == 'pretrained', args._model_kwargs)
                teacher.load_state_dict(src.state_dict())
        except (CliError, RuntimeError, KeyError, TypeError) as e:
            raise CliError(f"cannot rebuild the distillation teacher of {resume.path} from {_teacher_origin(rec)} "
                           f"({e}): restore it, or {fix}") from e
    teacher.set_pruning()
    teacher.eval().requires_grad_(False)
    rec['sha256'] = _state_sha256(teacher)
    # under DDP a seeded teacher differs between processes (seed + rank); the checkpoint records rank 0's
    if old_sha and rec['sha256'] != old_sha and (rec['source'] == 'checkpoint' or args.rank == 0):
        sha = f"weights sha256 {rec['sha256'][:12]}..., the run's teacher {old_sha[:12]}..."
        if args.teacher_checkpoint:
            raise CliError(f"--teacher-checkpoint {args.teacher_checkpoint} is not the distillation teacher "
                           f"{resume.path} was trained with ({sha} from {_teacher_origin(recorded)}): pass the file "
                           f"with the run's teacher weights")
        raise CliError(f"{_teacher_origin(rec)} changed since {resume.path} was trained with it as the distillation "
                       f"teacher ({sha}): restore the original, or pass --teacher-checkpoint FILE holding it")
    return teacher, rec


def _resume(ck, model, optimizer, scheduler, model_ema, scaler, updates_per_epoch, args):
    """Restore a run from ``ck`` (the model weights are already loaded); returns (start epoch, optimizer steps
    done, best metric, best epoch)."""
    obj = ck.obj
    epoch = int(obj['epoch'])
    start_epoch = epoch + 1 if int(obj.get('version', 1)) > 1 else epoch  # timm: version 2 saves the finished one
    step = int(obj.get('num_updates', start_epoch * updates_per_epoch))
    saved_upe = obj.get('updates_per_epoch')
    if saved_upe is not None and int(saved_upe) != updates_per_epoch:
        notice(f"{ck.path} was saved with {saved_upe} updates per epoch, this run has {updates_per_epoch} "
               f"(batch size or data changed): the LR schedule continues from update {step}")
    if not args.no_resume_opt:
        if 'optimizer' not in obj:
            raise CliError(f"cannot resume from {ck.path}: it holds no optimizer state (pass --no-resume-opt "
                           f"to restore only the weights and the epoch)")
        try:
            optimizer.load_state_dict(obj['optimizer'])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CliError(f"cannot resume from {ck.path}: its optimizer state does not fit this run's optimizer "
                           f"(--opt {args.opt}): {e}") from e
        if isinstance(obj.get('scheduler'), dict):
            scheduler.load_state_dict(obj['scheduler'])
        if scaler is not None and scaler.state_dict_key in obj:
            scaler.load_state_dict(obj[scaler.state_dict_key])
    scheduler.step(start_epoch)
    scheduler.step_update(num_updates=step)
    if model_ema is not None:
        if isinstance(obj.get('state_dict_ema'), dict):
            load_weights(model_ema.module, ck, use_ema=True)
        else:
            notice(f"{ck.path} holds no EMA weights: the EMA starts from the resumed model")
    if isinstance(obj.get('rng_state'), dict) and not args.distributed:
        try:
            _set_rng_state(obj['rng_state'])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            notice(f"could not restore the RNG state of {ck.path} ({e}): data order differs from the first run")
    best = obj.get('best_metric', obj.get('metric'))
    best_epoch = obj.get('best_epoch', epoch if best is not None else None)
    return start_epoch, step, best, best_epoch


def _evaluate_all(model, loader, dev, dtype, args):
    """Validation metrics, summed over all processes under DDP (each evaluates its shard)."""
    res = evaluate(model, loader, dev, dtype, progress=not args.no_progress, desc='validate')
    if not args.distributed:
        return {k: res[k] for k in ('top1', 'top5', 'loss')}
    n = res['count']
    t = torch.tensor([res['top1'] * n, res['top5'] * n, res['loss'] * n, n], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return dict(top1=(t[0] / t[3]).item(), top5=(t[1] / t[3]).item(), loss=(t[2] / t[3]).item())
