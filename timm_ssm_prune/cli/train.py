"""`timm-ssm-prune train`: train or fine-tune a (pruned) model with timm's library parts.

Runs single-process or under ``torchrun`` (DDP; gloo on CPU, nccl on CUDA). With ``--distill`` the loss adds a
KL term to a frozen dense teacher: the student's own initial weights with pruning switched off (the paper's
fine-tuning uses no distillation; this is an option).

    timm-ssm-prune train --model plainmamba_l1_pruned --pretrained --data-dir DIR --epochs 30 --lr 1e-4
    torchrun --nproc_per_node 2 -m timm_ssm_prune train --model ... --data-dir DIR
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import Mixup, create_dataset, create_loader
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import AverageMeter, CheckpointSaver, ModelEmaV3, NativeScaler, random_seed, update_summary
from tqdm import tqdm

from .common import (CliError, add_data_args, add_model_args, amp_dtype, create_eval_loader, create_model_from_args,
                     data_config, resolve_data_dir)
from .validate import evaluate

_logger = logging.getLogger('timm_ssm_prune.train')


def add_arguments(p):
    add_model_args(p)
    add_data_args(p, split='train')
    p.add_argument('--val-split', default='val')
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
    g.add_argument('--distill-weight', type=float, default=0.5, help='weight of the KL term (task: 1 - weight)')
    g.add_argument('--kd-temperature', type=float, default=1.0)
    g = p.add_argument_group('output')
    g.add_argument('--output', default='output/train')
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


def run(args):
    args = _setup_distributed(args)
    is_main = args.rank == 0
    random_seed(args.seed, args.rank)
    dev = torch.device(args.device)
    extra = {}
    if args.drop_path is not None:
        extra['drop_path_rate'] = args.drop_path
    if args.drop:
        extra['drop_rate'] = args.drop
    model = create_model_from_args(args, **extra)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(dev)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    teacher = None
    if args.distill:
        if not getattr(model, 'prune_cfg', None) or not model.prune_cfg.enabled:
            raise CliError("--distill needs a pruned student (the teacher is the same model without pruning)")
        teacher = copy.deepcopy(model)
        teacher.set_pruning()
        teacher.eval().requires_grad_(False)

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
    )
    loader_val = None
    if not args.no_val:
        vargs = copy.copy(args)
        vargs.data_dir = root
        loader_val, _ = create_eval_loader(vargs, model, split=args.val_split)

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

    out_dir = Path(args.output)
    saver = None
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / 'args.json').write_text(json.dumps({k: v for k, v in vars(args).items()
                                                       if not k.startswith('_')}, indent=2, default=str))
        saver = CheckpointSaver(unwrapped, optimizer, args=args, model_ema=model_ema, amp_scaler=scaler,
                                checkpoint_dir=str(out_dir), recovery_dir=str(out_dir), decreasing=False,
                                max_history=1)
    history = []
    step = 0
    for epoch in range(num_epochs):
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
        if is_main:
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            update_summary(epoch, {'loss': row['train_loss']},
                           {k[4:]: v for k, v in row.items() if k.startswith('val_')} or {'top1': 0.0},
                           str(out_dir / 'summary.csv'), lr=row['lr'], write_header=epoch == 0)
            metric = row.get('ema_val_top1', row.get('val_top1', -row['train_loss']))
            saver.save_checkpoint(epoch, metric=metric)
    if is_main:
        final = model_ema.module if model_ema is not None else unwrapped
        (out_dir / 'history.json').write_text(json.dumps(history, indent=1))
        if args.save_safetensors:
            from safetensors.torch import save_file
            Path(args.save_safetensors).parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in final.state_dict().items()},
                      args.save_safetensors)
    if args.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def _evaluate_all(model, loader, dev, dtype, args):
    """Validation metrics, summed over all processes under DDP (each evaluates its shard)."""
    res = evaluate(model, loader, dev, dtype, progress=not args.no_progress, desc='validate')
    if not args.distributed:
        return {k: res[k] for k in ('top1', 'top5', 'loss')}
    n = res['count']
    t = torch.tensor([res['top1'] * n, res['top5'] * n, res['loss'] * n, n], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return dict(top1=(t[0] / t[3]).item(), top5=(t[1] / t[3]).item(), loss=(t[2] / t[3]).item())
