"""Exported models' speed: onnxruntime (CPU) dense vs pruned, next to PyTorch eager, at batch 1 and 8, in one run.

    python benchmarks/bench_export.py                                   # the two mini models, shipped weights
    python benchmarks/bench_export.py --out benchmarks/results/bench_export.txt
    python benchmarks/bench_export.py --models plainmamba_l1 --flops-reduction 0.4 --batch-sizes 1 8

Each model is exported twice (dense, and pruned with ToP to -``--flops-reduction`` FLOPs) through
``torch.onnx.export(..., dynamo=True)`` with a dynamic batch, checked against PyTorch, then timed. The four measured
things (ONNX dense, ONNX pruned, eager dense, eager pruned) are run in turn, round after round, so that a change of
machine load hits all of them alike; the median round gives img/s. Reported per model and batch: img/s, the
pruned/dense speedup of each runtime, the FLOPs ratio (dense/pruned GFLOPs from ``count_flops``, convention
'mamba': all the work the model does) and speedup / FLOPs ratio (goal for ONNX: >= 0.9). Finally onnxruntime's
profiler splits the dense ONNX model's time by operator (``Scan`` is the selective scan).
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
    ap.add_argument('--flops-reduction', type=float, default=0.4, help='FLOPs cut of the pruned model (ToP)')
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

    say(f"bench_export: onnxruntime vs PyTorch eager, dense vs ToP pruned (-{100 * args.flops_reduction:.0f} % FLOPs), "
        f"{args.threads} thread(s), torch {torch.__version__}")
    import onnxruntime
    say(f"onnxruntime {onnxruntime.__version__}; median of {args.rounds} rounds, the four measured things in turn "
        f"each round; machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    tmp = tempfile.mkdtemp(prefix='bench_export_')
    for name in args.models:
        dense = timm.create_model(name, pretrained=args.pretrained).eval()
        pruned = timm.create_model(name, pretrained=args.pretrained).eval()
        pruned.set_pruning(flops_reduction=args.flops_reduction)
        size = (dense.in_chans, *dense.img_size)
        gf = {k: count_flops(m, size, convention='mamba') for k, m in (('dense', dense), ('pruned', pruned))}
        flops_ratio = gf['dense'] / gf['pruned']
        sessions, paths = {}, {}
        for k, m in (('dense', dense), ('pruned', pruned)):
            paths[k] = os.path.join(tmp, f'{name}_{k}.onnx')
            t0 = time.perf_counter()
            export_onnx(m, paths[k])
            sessions[k] = ort_session(paths[k], threads=args.threads)
            check = compare_onnx(m, sessions[k], [torch.randn(b, *size) for b in (1, 3)])
            say(f"{name} {k}: {pruned.prune_cfg.describe() if k == 'pruned' else 'dense'}; GFLOPs {gf[k]:.4f}; "
                f"exported in {time.perf_counter() - t0:.0f} s; onnxruntime vs PyTorch: {check['rel_diff']:.1e} of "
                f"the logit scale")
        for bs in args.batch_sizes:
            x = torch.randn(bs, *size)
            feed = x.numpy()
            things = {}
            for k, m in (('dense', dense), ('pruned', pruned)):
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
            rows.append(dict(model=name, batch=bs, ips=ips, flops_ratio=flops_ratio))
        shares = profile_scan(paths['dense'], torch.randn(max(args.batch_sizes), *size))
        say(f"  onnxruntime profile, {name} dense, batch {max(args.batch_sizes)}, share of run time: " +
            ", ".join(f"{op} {100 * v:.0f} %" for op, v in list(shares.items())[:5]))
    say()
    say(f"{'model':16s} {'batch':>5s} {'runtime':8s} {'dense img/s':>12s} {'pruned img/s':>13s} {'speedup':>8s} "
        f"{'FLOPs ratio':>11s} {'speedup/FLOPs':>13s}")
    for r in rows:
        for rt in ('onnx', 'eager'):
            d, p = r['ips'][(rt, 'dense')], r['ips'][(rt, 'pruned')]
            say(f"{r['model']:16s} {r['batch']:5d} {rt:8s} {d:12.1f} {p:13.1f} {p / d:7.2f}x {r['flops_ratio']:10.2f}x "
                f"{p / d / r['flops_ratio']:13.2f}")
        say(f"{'':16s} {'':5s} {'onnx/eager':10s} dense {r['ips'][('onnx', 'dense')] / r['ips'][('eager', 'dense')]:.2f}x"
            f"  pruned {r['ips'][('onnx', 'pruned')] / r['ips'][('eager', 'pruned')]:.2f}x")
    say(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
