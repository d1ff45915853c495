"""Exported models' speed: onnxruntime (CPU) dense vs pruned, next to PyTorch eager, at batch 1 and 8, in one run.

    python benchmarks/bench_export.py                                   # the two mini models, shipped weights
    python benchmarks/bench_export.py --out benchmarks/results/bench_export.txt
    python benchmarks/bench_export.py --models plainmamba_l1 --flops-reduction 0.4 --batch-sizes 1 8

Each model is exported dense and once per pruning method (``--methods``: ``top``, the paper's ToP; ``default``, the
package's training-free default of the family, what the ``*_pruned`` names export), each method at its own keep rate
for -``--flops-reduction`` FLOPs, through ``torch.onnx.export(..., dynamo=True)`` with a dynamic batch, checked
against PyTorch, then timed. All measured things (ONNX and eager, dense and every method) are run in turn, round
after round, so that a change of machine load hits all of them alike; the median round gives img/s. Reported per
model and batch: img/s, the pruned/dense speedup of each runtime, the FLOPs ratio (dense/pruned GFLOPs from
``count_flops``, convention 'mamba': all the work the model does) and speedup / FLOPs ratio (goal for ONNX: >= 0.9).
Finally onnxruntime's profiler splits the dense ONNX model's time by operator (``Scan`` is the selective scan).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import torch
import timm

import timm_ssm_prune  # noqa: F401
from timm_ssm_prune.export import compare_onnx, export_onnx, ort_session
from timm_ssm_prune.flops import count_flops
from timm_ssm_prune.models.facts import TRAINING_FREE

# label -> pruning options beyond the keep rate (solved per method) and the model's default stages
METHODS = {'top': lambda family: {}, 'default': lambda family: dict(TRAINING_FREE[family])}


def timer(fn, target_s=0.25):
    """A callable that times ``fn`` over enough calls to last about ``target_s``; returns seconds per call."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-5)
    n = max(1, int(target_s / once))

    def measure():
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n
    return measure


def profile_scan(path, x, runs=5):
    """onnxruntime's profile of the ONNX file at ``path`` on input ``x``: the share of the run time spent in the
    ``Scan`` nodes (the selective scans, their bodies included) and the top-level operators taking the most."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(os.path.dirname(path), 'ort_profile')
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    for _ in range(runs):
        sess.run(None, feed)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    run_time = sum(e['dur'] for e in events if e.get('cat') == 'Session' and e.get('name') == 'model_run')
    import onnx
    top_level = {n.name for n in onnx.load(path).graph.node}
    by_op = defaultdict(float)
    for e in events:
        name = e.get('name', '')
        if e.get('cat') == 'Node' and name.endswith('_kernel_time') and name[:-len('_kernel_time')] in top_level:
            by_op[e['args'].get('op_name', '?')] += e['dur']
    return {op: t / run_time for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=['plainmamba_mini', 'vim_mini'])
    ap.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=True,
                    help='shipped / official weights (default); --no-pretrained for random weights')
    ap.add_argument('--flops-reduction', type=float, default=0.4, help='FLOPs cut of the pruned models')
    ap.add_argument('--methods', nargs='+', choices=list(METHODS), default=['top', 'default'],
                    help="pruning methods: 'top' (the paper's), 'default' (the family's training-free default)")
    ap.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    ap.add_argument('--rounds', type=int, default=9)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--out', default=None, help='also write the report to this file')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = []

    def say(s=''):
        print(s, flush=True)
        lines.append(s)

    say(f"bench_export: onnxruntime vs PyTorch eager, dense vs pruned ({', '.join(args.methods)}; "
        f"-{100 * args.flops_reduction:.0f} % FLOPs each), {args.threads} thread(s), torch {torch.__version__}")
    import onnxruntime
    say(f"onnxruntime {onnxruntime.__version__}; median of {args.rounds} rounds, all measured things in turn "
        f"each round; machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    tmp = tempfile.mkdtemp(prefix='bench_export_')
    for name in args.models:
        family = name.split('_')[0]
        nets = {'dense': timm.create_model(name, pretrained=args.pretrained).eval()}
        for meth in args.methods:
            nets[meth] = timm.create_model(name, pretrained=args.pretrained).eval()
            nets[meth].set_pruning(flops_reduction=args.flops_reduction, **METHODS[meth](family))
        size = (nets['dense'].in_chans, *nets['dense'].img_size)
        gf = {k: count_flops(m, size, convention='mamba') for k, m in nets.items()}
        sessions, paths = {}, {}
        for k, m in nets.items():
            paths[k] = os.path.join(tmp, f'{name}_{k}.onnx')
            t0 = time.perf_counter()
            export_onnx(m, paths[k])
            sessions[k] = ort_session(paths[k], threads=args.threads)
            check = compare_onnx(m, sessions[k], [torch.randn(b, *size) for b in (1, 3)])
            say(f"{name} {k}: {m.prune_cfg.describe() if k != 'dense' else 'dense'}; GFLOPs {gf[k]:.4f}; "
                f"exported in {time.perf_counter() - t0:.0f} s; onnxruntime vs PyTorch: {check['rel_diff']:.1e} of "
                f"the logit scale")
        for bs in args.batch_sizes:
            x = torch.randn(bs, *size)
            feed = x.numpy()
            things = {}
            for k, m in nets.items():
                sess = sessions[k]
                inp = sess.get_inputs()[0].name
                things[('onnx', k)] = timer(lambda s=sess, i=inp: s.run(None, {i: feed}))
                with torch.no_grad():
                    m(x)
                things[('eager', k)] = timer(lambda mm=m: torch.no_grad()(mm)(x))
            times = defaultdict(list)
            for _ in range(args.rounds):
                for key, measure in things.items():
                    times[key].append(measure())
            ips = {key: bs / statistics.median(v) for key, v in times.items()}
            rows.append(dict(model=name, batch=bs, ips=ips, flops_ratio={k: gf['dense'] / gf[k] for k in gf}))
        shares = profile_scan(paths['dense'], torch.randn(max(args.batch_sizes), *size))
        say(f"  onnxruntime profile, {name} dense, batch {max(args.batch_sizes)}, share of run time: " +
            ", ".join(f"{op} {100 * v:.0f} %" for op, v in list(shares.items())[:5]))
    say()
    say(f"{'model':16s} {'batch':>5s} {'runtime':8s} {'method':8s} {'img/s':>8s} {'speedup':>8s} "
        f"{'FLOPs ratio':>11s} {'speedup/FLOPs':>13s}")
    for r in rows:
        for rt in ('onnx', 'eager'):
            d = r['ips'][(rt, 'dense')]
            say(f"{r['model']:16s} {r['batch']:5d} {rt:8s} {'dense':8s} {d:8.1f}")
            for meth in args.methods:
                p, fr = r['ips'][(rt, meth)], r['flops_ratio'][meth]
                say(f"{'':16s} {'':5s} {'':8s} {meth:8s} {p:8.1f} {p / d:7.2f}x {fr:10.2f}x {p / d / fr:13.2f}")
        say(f"{'':16s} {'':5s} onnx/eager: " + ", ".join(
            f"{k} {r['ips'][('onnx', k)] / r['ips'][('eager', k)]:.2f}x" for k in ['dense', *args.methods]))
    say(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
