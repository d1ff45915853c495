"""`timm-ssm-prune demo`: the main job on the embedded default.

Takes the small PlainMamba and Vim that this project trained on Animal-MNIST (weights shipped in the package),
reduces each training-free to the same FLOPs budget three ways: the package's default training-free mode
(``models/facts.py::TRAINING_FREE``, chosen by ``benchmarks/leaderboard.py``), ToP (the paper: SSM importance +
hidden-state alignment) and the naive ViT-style packing, each with its own keep rate solved for the budget; prints,
for dense and each of them: top-1 on the 2,000-image validation split, GFLOPs, and measured speed; then writes
pictures of the tokens the default mode keeps at each stage.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import timm

from ..benchmark import time_model
from ..flops import count_flops
from ..models._base import WEIGHTS_DIR
from ..models.facts import TRAINING_FREE
from .common import CliError, create_eval_loader
from .validate import evaluate
from .visualize import render_kept_tokens

DEMO_MODELS = ('plainmamba_mini', 'vim_mini')


def add_arguments(p):
    p.add_argument('--models', nargs='+', default=list(DEMO_MODELS))
    p.add_argument('--flops-reduction', type=float, default=0.4,
                   help='FLOPs cut both pruning methods get (three evenly spaced stages, one solved keep rate)')
    p.add_argument('--data-dir', default='animal-mnist',
                   help="ImageFolder root with a val/ split (default: fetch and prepare Animal-MNIST)")
    p.add_argument('--num-samples', type=int, default=None, help='evaluate only the first N validation images')
    p.add_argument('-b', '--batch-size', type=int, default=250)
    p.add_argument('--repeats', type=int, default=3, help='timed repeats of the speed measurement')
    p.add_argument('--weights-dir', default=None, help=f'folder of <model>.animal_mnist.safetensors '
                                                        f'(default: the shipped {WEIGHTS_DIR})')
    p.add_argument('--output', '-o', default='demo_output')
    p.add_argument('--threads', type=int, default=None)


def _loader_args(args) -> argparse.Namespace:
    return argparse.Namespace(data_dir=args.data_dir, dataset='', split='val', batch_size=args.batch_size, workers=0,
                              mean=None, std=None, interpolation='', crop_pct=None, num_samples=args.num_samples,
                              img_size=None, in_chans=None, device='cpu', distributed=False)


def _load(name: str, weights_dir) -> torch.nn.Module:
    overlay = {}
    if weights_dir:
        overlay = dict(file=str(Path(weights_dir) / f'{name}.animal_mnist.safetensors'))
    try:
        return timm.create_model(f'{name}.animal_mnist', pretrained=True, pretrained_cfg_overlay=overlay or None)
    except RuntimeError as e:
        raise CliError(f"cannot load the Animal-MNIST weights of {name}: {e}. Reproduce them with "
                       f"`bash benchmarks/train_animal_mnist.sh`") from e


def run(args):
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models:
        dense = _load(name, args.weights_dir).eval()
        variants = {'default': TRAINING_FREE[name.split('_')[0]], 'ToP': {}, 'naive': dict(alignment='naive')}
        models = {'dense': dense}
        for label, options in variants.items():
            models[label] = copy.deepcopy(dense)
            models[label].set_pruning(flops_reduction=args.flops_reduction, **options)
        loader, cfg = create_eval_loader(_loader_args(args), dense)
        x_time = None
        for label, model in models.items():
            res = evaluate(model, loader, 'cpu', desc=f'{name} {label}')
            if x_time is None:  # 100 validation images for the alternating speed measurement
                x_time = next(iter(loader))[0][:100]
            results.append(dict(model=name, variant=label, top1=res['top1'], top5=res['top5'], loss=res['loss'],
                                images=res['count'], gflops=count_flops(model, cfg['input_size']),
                                tokens=model.token_counts(), pruning=model.prune_cfg.describe()))
        times = time_model(models, x_time, repeats=args.repeats, warmup=1)
        med = {k: statistics.median(v) for k, v in times.items()}
        for r in results[-len(models):]:
            r['img_per_s'] = x_time.shape[0] / med[r['variant']]
            r['speedup'] = med['dense'] / med[r['variant']]
        ds = loader.dataset  # one image from each eighth of the (class-sorted) split
        shown = torch.stack([ds[i * len(ds) // 8][0] for i in range(8)])
        pic = render_kept_tokens(models['default'], shown, cfg['mean'], cfg['std'], out_dir / f'kept_tokens_{name}.png')
        results[-3]['picture'] = str(pic)

    _print_table(results, args)
    (out_dir / 'demo_results.json').write_text(json.dumps(results, indent=1))
    print(f"\nkept-token pictures: {', '.join(r['picture'] for r in results if 'picture' in r)}")
    print(f"results: {out_dir / 'demo_results.json'}   ({time.perf_counter() - t_start:.0f} s, "
          f"{torch.get_num_threads()} threads)")
    return 0


def _print_table(results, args):
    print(f"\nAnimal-MNIST validation ({results[0]['images']} images); every method reduces the tokens to "
          f"-{100 * args.flops_reduction:.0f} % FLOPs without any retraining")
    head = f"{'model':16s} {'variant':8s} {'top-1 %':>8s} {'GFLOPs':>8s} {'img/s':>8s} {'speedup':>8s}  tokens per stage"
    print(head)
    print('-' * len(head))
    for r in results:
        print(f"{r['model']:16s} {r['variant']:8s} {r['top1']:8.2f} {r['gflops']:8.4f} {r['img_per_s']:8.0f} "
              f"{r['speedup']:8.2f}x  {' -> '.join(map(str, r['tokens']))}")
