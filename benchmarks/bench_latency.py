"""CPU latency of every registered 224 model (dense and pruned) at batch 1 and 8, in one run.

    python benchmarks/bench_latency.py                      # all threads of this machine
    python benchmarks/bench_latency.py --models plainmamba_l1 vim_tiny_patch16_224 --batch-sizes 1

Prints the median forward time (ms) of each model after a warm-up run, next to its GFLOPs.
"""
import argparse
import platform
import statistics

import torch
import timm

import timm_ssm_prune  # noqa: F401
from timm_ssm_prune.benchmark import time_model
from timm_ssm_prune.flops import count_flops

MODELS = ['plainmamba_l1', 'plainmamba_l2', 'plainmamba_l3',
          'vim_tiny_patch16_224', 'vim_small_patch16_224', 'vim_base_patch16_224']


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=MODELS)
    ap.add_argument('--batch-sizes', nargs='+', type=int, default=[1, 8])
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--no-pruned', action='store_true')
    args = ap.parse_args(argv)
    print(f"machine: {platform.machine()} {platform.processor()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"{'model':32s} {'GFLOPs':>7s} " + ' '.join(f"{'bs' + str(b) + ' ms':>10s}" for b in args.batch_sizes))
    for name in args.models:
        for variant in [name] + ([] if args.no_pruned else [name + '_pruned']):
            m = timm.create_model(variant).eval()
            cells = []
            for bs in args.batch_sizes:
                times = time_model({'m': m}, torch.randn(bs, 3, 224, 224), repeats=args.repeats, warmup=1)['m']
                cells.append(statistics.median(times) * 1e3)
            print(f"{variant:32s} {count_flops(m):7.3f} " + ' '.join(f"{c:10.1f}" for c in cells), flush=True)


if __name__ == '__main__':
    main()
