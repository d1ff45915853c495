"""Dense vs token-pruned wall-clock speed at 224 in one run, next to the FLOPs ratio.

    python benchmarks/bench_pruning.py                                   # the issue's set, batch 8 and 32
    python benchmarks/bench_pruning.py --models plainmamba_l1 --batch-sizes 8 --repeats 3
    python benchmarks/bench_pruning.py --device cuda --amp                # GPU (mamba-ssm kernels if installed)
    python benchmarks/bench_pruning.py --modes --no-memory --batch-sizes 8    # reduction modes at equal token counts

Each *_pruned model runs its registered default (Vim-T: after blocks 10, 20 keep 0.8; Vim-S: 5, 10, 15 keep 0.8;
PlainMamba: three stages solved for -41.6 % FLOPs; the package's training-free options) on the dense model's
weights. 'ratio' is the measured speedup divided by the FLOPs ratio (goal >= 0.9). Also times the 'naive'
packing for comparison with --naive. --modes times the paper's ToP and every reduction mode at the same stages and
keep rate (equal token counts) and prints each one's time relative to ToP (goal for merge/hybrid: within 5 %).
"""
import argparse
import json
import platform
import sys

import torch
import timm

import timm_ssm_prune  # noqa: F401
from timm_ssm_prune.benchmark import benchmark_pair, format_rows
from timm_ssm_prune.ops import cuda_kernels_available

DEFAULT_MODELS = ['plainmamba_l1', 'plainmamba_l3', 'vim_tiny_patch16_224', 'vim_small_patch16_224']


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=DEFAULT_MODELS)
    ap.add_argument('--batch-sizes', nargs='+', type=int, default=[8, 32])
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    ap.add_argument('--naive', action='store_true', help='also time the naive (ViT-style) packing')
    ap.add_argument('--modes', action='store_true',
                    help="also time ToP, merge, merge-nearest, hybrid and importance='cls' at equal token counts")
    ap.add_argument('--no-memory', action='store_true', help='skip the peak-memory runs (fresh processes on CPU)')
    ap.add_argument('--json', default=None, help='write the rows to this JSON file')
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)}, mamba-ssm kernels: {cuda_kernels_available()})"
             if dev.type == 'cuda' else ''), flush=True)
    rows = []
    for name in args.models:
        base = dict(img_size=args.img_size)
        dense = timm.create_model(name, **base)
        models = {'dense': dense}
        specs = {'dense': (name, base)}
        variants = [('pruned', {})] + ([('naive', dict(alignment='naive'))] if args.naive else [])
        if args.modes:
            top = dict(importance='clip', reduction='prune')
            if name.startswith('vim'):
                top['cls_position'] = 'middle'
            variants += [('ToP', top), ('merge', dict(top, reduction='merge')),
                         ('merge-nearest', dict(top, reduction='merge', merge_partner='nearest')),
                         ('hybrid', dict(top, reduction='hybrid'))]
            if name.startswith('vim'):
                variants.append(('cls', dict(top, importance='cls')))
        for key, kw in variants:
            m = timm.create_model(name + '_pruned', **base, **kw)
            m.load_state_dict(dense.state_dict())
            models[key] = m
            specs[key] = (name + '_pruned', dict(base, **kw))
        for bs in args.batch_sizes:
            new = benchmark_pair(name, models, bs, args.img_size, args.repeats, args.warmup, args.device,
                                 torch.bfloat16 if args.amp else None,
                                 memory_specs=None if args.no_memory else specs)
            rows += new
            print(format_rows(new), flush=True)
            if args.modes:
                ms = dict(zip(models, (r.median_ms for r in new)))  # rows come in the order of the models
                print('time relative to ToP at equal token counts: ' + ', '.join(
                    f"{k} {v / ms['ToP']:.3f}" for k, v in ms.items() if k not in ('dense', 'ToP')), flush=True)
    print()
    print(format_rows(rows))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([r.to_dict() for r in rows], f, indent=1)
    return rows


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
