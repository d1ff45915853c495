"""`timm-ssm-prune benchmark`: dense vs pruned throughput, latency, peak memory and GFLOPs, in one run."""
import copy
import json

import torch

from ..benchmark import benchmark_pair, format_rows
from .common import CliError, add_model_args, add_seed_arg, amp_dtype, create_model_from_args, seed_forward


def add_arguments(p):
    add_model_args(p)
    p.add_argument('-b', '--batch-size', type=int, nargs='+', default=[8], help='one or more batch sizes')
    p.add_argument('--latency', action='store_true', help='also measure batch-1 latency')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--naive', action='store_true', help="also time the 'naive' (ViT-style) packing")
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    p.add_argument('--results-file', default='')
    add_seed_arg(p)


def run(args):
    pruned = create_model_from_args(args)
    if not getattr(pruned, 'prune_cfg', None) or not pruned.prune_cfg.enabled:
        raise CliError(f"{args.model} does not prune tokens: benchmark a *_pruned model or pass --model-kwargs "
                       f"prune_layers=... keep_rate=...")
    dense = copy.deepcopy(pruned)
    dense.set_pruning()
    models = {'dense': dense, 'pruned': pruned}
    kw = dict(args._model_kwargs)  # the flags merged with what --checkpoint records
    # prune_layers=() means no pruning (timm drops None-valued kwargs, so None cannot say it)
    dense_kw = {k: v for k, v in kw.items() if k not in ('keep_rate', 'flops_reduction')}
    specs = {'dense': (args.model, dict(dense_kw, prune_layers=())), 'pruned': (args.model, kw)}
    if args.naive:
        naive = copy.deepcopy(pruned)
        naive.set_pruning(**dict(naive.prune_cfg.to_kwargs(), alignment='naive'))
        models['naive'] = naive
        specs['naive'] = (args.model, dict(dense_kw, **naive.prune_cfg.to_kwargs()))
    # (the fresh processes of the CPU memory reading use random weights: memory does not depend on the weight
    # values, the token counts are fixed by the keep rates)
    img = pruned.img_size[0]
    rows = []
    seed = seed_forward(args)
    sizes = list(args.batch_size) + ([1] if args.latency and 1 not in args.batch_size else [])
    for bs in sizes:
        rows += benchmark_pair(args.model, models, bs, img, args.repeats, args.warmup, args.device, amp_dtype(args),
                               memory_specs=None if args.no_memory else specs)
    print(f"device {args.device}, {torch.get_num_threads()} threads; speedup and FLOPs x are relative to dense; "
          f"ratio = speedup / FLOPs x")
    print(format_rows(rows))
    if args.latency:
        lat = {r.variant: r.median_ms for r in rows if r.batch_size == 1}
        print('latency (batch 1, ms): ' + ', '.join(f"{k} {v:.1f}" for k, v in lat.items()))
    if args.results_file:
        with open(args.results_file, 'w') as f:
            json.dump([dict(r.to_dict(), seed=seed) for r in rows], f, indent=1)
    return 0
