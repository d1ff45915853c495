"""Selective-scan speed on CPU: this package's op vs a plain PyTorch loop and mambapy's pscan, in one run.

    python benchmarks/bench_scan.py                      # B=8 L=197 E=384 N=16 fp32, 2 threads
    python benchmarks/bench_scan.py --batch 2 --length 1024 --skip-autograd-loop

Prints the median time of each variant and the ratios the project tracks:
  forward      : ours / plain loop                (target <= 1)
  fwd + bwd    : ours / mambapy pscan             (target <= 0.5)
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from timm_ssm_prune.ops import selective_scan


def plain_loop(u, delta, A, B, C, D, z, delta_bias):
    """The straightforward sequential scan (mamba-ssm's reference structure): precompute, loop, stack."""
    dt = F.softplus(delta + delta_bias[:, None])
    dA = torch.exp(torch.einsum('bdl,dn->bdln', dt, A))
    dBu = torch.einsum('bdl,bnl,bdl->bdln', dt, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum('bdn,bn->bd', h, C[:, :, t]))
    y = torch.stack(ys, dim=2) + D[:, None] * u
    return y * F.silu(z)


def pscan_scan(u, delta, A, B, C, D, z, delta_bias):
    """mambapy's Blelloch scan (hand-written backward) over (B, L, E, N) tensors."""
    from mambapy.pscan import pscan
    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (B, L, E)
    dA = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, E, N)
    dBu = (dt * u.transpose(1, 2)).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)
    hs = pscan(dA, dBu)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    y = y + D[:, None] * u
    return y * F.silu(z)


def ours(u, delta, A, B, C, D, z, delta_bias):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend='torch')


def timeit(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--length', type=int, default=197)
    ap.add_argument('--dim', type=int, default=384)
    ap.add_argument('--dstate', type=int, default=16)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--skip-autograd-loop', action='store_true', help='skip autograd through the plain loop (slow)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, e, l, n = args.batch, args.dim, args.length, args.dstate
    u, delta, z = (torch.randn(b, e, l) for _ in range(3))
    A = -torch.exp(torch.randn(e, n) * 0.5)
    B, C = torch.randn(b, n, l), torch.randn(b, n, l)
    D, delta_bias = torch.randn(e), torch.randn(e) * 0.1 - 2
    inputs = [u, delta, A, B, C, D, z, delta_bias]

    print(f"selective scan, B={b} L={l} E={e} N={n}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    with torch.no_grad():
        ref = plain_loop(*inputs)
        for name, fn in (('ours', ours), ('pscan', pscan_scan)):
            err = (fn(*inputs) - ref).abs().max().item()
            print(f"  max |{name} - plain loop| = {err:.2e}")
        t_loop = timeit(lambda: plain_loop(*inputs), args.repeats)
        t_ours_f = timeit(lambda: ours(*inputs), args.repeats)
        t_pscan_f = timeit(lambda: pscan_scan(*inputs), args.repeats)

    leaves = [t.clone().requires_grad_() for t in inputs]
    gy = torch.randn(b, e, l)

    def fwd_bwd(fn):
        def run():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(gy)
        return run

    t_ours_fb = timeit(fwd_bwd(ours), args.repeats)
    t_pscan_fb = timeit(fwd_bwd(pscan_scan), args.repeats)
    t_loop_fb = None if args.skip_autograd_loop else timeit(fwd_bwd(plain_loop), max(1, args.repeats // 5), warmup=1)

    print(f"forward (ms, median of {args.repeats}):")
    print(f"  plain loop           {t_loop:9.1f}")
    print(f"  mambapy pscan        {t_pscan_f:9.1f}")
    print(f"  ours                 {t_ours_f:9.1f}")
    print("forward + backward (ms):")
    if t_loop_fb is not None:
        print(f"  autograd plain loop  {t_loop_fb:9.1f}")
    print(f"  mambapy pscan        {t_pscan_fb:9.1f}")
    print(f"  ours                 {t_ours_fb:9.1f}")
    print("ratios:")
    print(f"  forward   ours / plain loop = {t_ours_f / t_loop:.2f}   (target <= 1.00)")
    print(f"  fwd+bwd   ours / pscan      = {t_ours_fb / t_pscan_fb:.2f}   (target <= 0.50)")
    if t_loop_fb is not None:
        print(f"  fwd+bwd   autograd loop / ours = {t_loop_fb / t_ours_fb:.1f}x")


if __name__ == '__main__':
    main()
