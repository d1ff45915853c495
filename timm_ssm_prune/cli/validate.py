"""`timm-ssm-prune validate`: top-1/top-5, loss and images/s of a model on an ImageFolder split."""
import time

import torch
import torch.nn.functional as F
from timm.utils import AverageMeter, accuracy
from tqdm import tqdm

from .common import (add_data_args, add_model_args, add_seed_arg, amp_dtype, create_eval_loader,
                     create_model_from_args, data_config_record, prepare_model, seed_forward, write_json)


def add_arguments(p):
    add_model_args(p)
    add_data_args(p, split='val')
    add_seed_arg(p)
    p.add_argument('--results-file', default='', help='write the JSON result here')


@torch.inference_mode()
def evaluate(model, loader, device, dtype=None, progress: bool = True, desc: str = 'validate'):
    """Top-1/top-5 (%), mean cross-entropy and images/s of ``model`` over ``loader``."""
    model.eval()
    dev = torch.device(device)
    loss_m, top1_m, top5_m = AverageMeter(), AverageMeter(), AverageMeter()
    n_img, t_model = 0, 0.0
    for x, y in tqdm(loader, desc=desc, disable=None if progress else True, leave=False):
        x, y = x.to(dev), y.to(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
        t_model += time.perf_counter() - t0
        out = out.float()
        k5 = min(5, out.shape[-1])
        a1, a5 = accuracy(out, y, topk=(1, k5))
        loss_m.update(F.cross_entropy(out, y).item(), x.shape[0])
        top1_m.update(a1.item(), x.shape[0])
        top5_m.update(a5.item(), x.shape[0])
        n_img += x.shape[0]
    return dict(top1=top1_m.avg, top5=top5_m.avg, loss=loss_m.avg, count=n_img,
                img_per_s=n_img / t_model if t_model else float('nan'))


def run(args):
    model = create_model_from_args(args)
    model = prepare_model(model, args)
    loader, cfg = create_eval_loader(args, model)
    seed = seed_forward(args)
    res = evaluate(model, loader, args.device, amp_dtype(args))
    prune_cfg = getattr(model, 'prune_cfg', None)
    res = dict(model=args.model, checkpoint=args.checkpoint or None, split=args.split,
               pruning=prune_cfg.describe() if prune_cfg is not None else None,
               prune_kwargs=prune_cfg.to_kwargs() if prune_cfg is not None else None,
               input_size=list(cfg['input_size']), data_config=data_config_record(cfg), seed=seed,
               **{k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})
    print(write_json(res, args.results_file or None))
    return 0
