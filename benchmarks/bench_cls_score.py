"""Cost of Vim's class-attention importance (``importance='cls'``, the Vim default): the mixer's one-pass form
(``class_attention_both``) against the reference (``class_attention`` once per direction, one (B, E, L, N) tensor
each), next to one bidirectional selective scan of the same size for scale. One thread, the things timed in turn
round after round (median), CPU.

    python benchmarks/bench_cls_score.py --out benchmarks/results/bench_cls_score.txt
"""
import argparse
import os
import statistics
import time

import torch

from timm_ssm_prune.models.vim import class_attention, class_attention_both
from timm_ssm_prune.ops import selective_scan

# (label, batch, E = d_inner per direction, L tokens incl. the class token, N)
SHAPES = [('vim_mini', 8, 64, 197, 16), ('vim_mini', 64, 64, 197, 16), ('Vim-T', 8, 384, 197, 16),
          ('Vim-S', 8, 768, 197, 16)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=11)
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = [f"bench_cls_score: torch {torch.__version__}, 1 thread, median of {args.rounds} rounds, "
             f"load average {os.getloadavg()[0]:.2f} at start",
             f"{'model':9s} {'batch':>5s} {'E':>4s} {'L':>4s}  {'reference ms':>12s} {'one-pass ms':>11s} "
             f"{'speedup':>7s}  {'scan ms':>7s} {'one-pass / scan':>15s}"]
    print(lines[0], lines[1], sep='\n', flush=True)
    for label, B, E, L, N in SHAPES:
        g = torch.Generator().manual_seed(0)
        u, z = torch.randn(B, 2 * E, L, generator=g), torch.randn(B, 2 * E, L, generator=g)
        step = torch.rand(B, 2 * E, L, generator=g) * 0.1
        A = -torch.rand(2 * E, N, generator=g) - 0.5
        Bf, Cf, Bb, Cb = (torch.randn(B, N, L, generator=g) for _ in range(4))
        gate, D = torch.randn(B, E, generator=g), torch.randn(2 * E, generator=g)
        c = torch.full((B,), L // 2)
        Bs, Cs = torch.stack([Bf, Bb], 1), torch.stack([Cf, Cb], 1)
        things = {
            'reference': lambda: class_attention(u[:, :E], step[:, :E], A[:E], Bf, Cf, gate, c)
            + class_attention(u[:, E:], step[:, E:], A[E:], Bb, Cb, gate, L - 1 - c).flip(-1),
            'one-pass': lambda: class_attention_both(u, step, A, Bf, Cf, Bb, Cb, gate, c),
            'scan': lambda: selective_scan(u, step, A, Bs, Cs, D, z, None, False, backend='torch'),
        }
        with torch.no_grad():
            torch.testing.assert_close(things['one-pass'](), things['reference'](), rtol=1e-4, atol=1e-5)
            times = {k: [] for k in things}
            for _ in range(args.rounds):
                for k, f in things.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        line = (f"{label:9s} {B:5d} {E:4d} {L:4d}  {ms['reference']:12.1f} {ms['one-pass']:11.1f} "
                f"{ms['reference'] / ms['one-pass']:6.2f}x  {ms['scan']:7.1f} {ms['one-pass'] / ms['scan']:15.2f}")
        print(line, flush=True)
        lines.append(line)
    lines.append(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
