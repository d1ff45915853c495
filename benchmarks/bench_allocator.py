"""Do pruned models beat their FLOPs ratio on CPU because of glibc's malloc? Measured: only on a loaded machine.

    python benchmarks/bench_allocator.py                        # the testbeds, batch 64, one thread (~5 min)
    python benchmarks/bench_allocator.py --models plainmamba_l1 --batch 8 --repeats 3
    python benchmarks/bench_allocator.py --out benchmarks/results/bench_allocator.txt

With the other core busy, the testbeds' ToP models ran 1.68x (-30 % FLOPs) and 2.00x (-40 %) faster than dense,
above their FLOPs ratios (1.43x, 1.67x), and a profile pointed at the allocator: in the dense model the same
permuting copies (one (4B, L, E) tensor per block) took several times longer per call than in the pruned model's
dense blocks. glibc's malloc starts with a 128 KiB mmap threshold that it raises and lowers as large blocks come and
go ("dynamic threshold"); large temporaries can end up mmap-ed or trimmed back to the kernel and page-faulted in
again on every call. Fixing the threshold (``MALLOC_MMAP_THRESHOLD_``, which also turns the dynamic adjustment off)
keeps freed blocks in the heap for reuse. Under load that brought the speedups down to the FLOPs ratios. On an idle
machine (``benchmarks/results/bench_allocator*.txt``) the allocator explains nothing: with glibc's default, Vim's
testbed already runs at its FLOPs ratios (1.43x / 1.69x for 1.43x / 1.66x) and PlainMamba above them (testbed 1.56x /
1.84x, PlainMamba-L1 at 224 1.65x / 2.03x, for 1.43x / 1.67x), and the fixed threshold makes every model 4-14 %
slower. So it is no tuning advice; PlainMamba's margin at 224 comes from its convolutions (benchmarks/README.md).

Each allocator setting runs in its own process (the variables are read when the process starts), the settings
alternate round after round, and inside a process dense and ToP at -30 % / -40 % FLOPs (the paper's stage positions
for the model's depth, keep rates solved with the package's counter, as in benchmarks/paper_tables.py) are timed in
turn. Printed: img/s (median of the rounds' medians), the speedup over dense of each setting and the FLOPs ratio.
Run it on an idle machine, and once more with a second job on the other core to see the loaded case.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# name -> environment variables added to the child process (the others are removed from it).
ALLOCATORS = {
    'glibc default': {},
    'glibc, MALLOC_MMAP_THRESHOLD_=32 MiB': {'MALLOC_MMAP_THRESHOLD_': str(32 << 20)},
}
MALLOC_VARS = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_', 'MALLOC_ARENA_MAX', 'LD_PRELOAD')


def child(spec: dict) -> dict:
    """In the child process: img/s of dense and ToP at each FLOPs cut, one thread, timed in turn."""
    import torch
    import timm
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import paper_tables as pt
    from timm_ssm_prune.benchmark import time_model
    from timm_ssm_prune.flops import count_flops

    torch.set_num_threads(1)
    torch.manual_seed(0)
    name, batch = spec['model'], spec['batch']
    nets = {'dense': timm.create_model(name).eval()}
    for level in pt.LEVELS:
        layers, rate = pt.prune_setting(name, level, alignment='aligned')
        nets[f'ToP -{level:.0%}'] = timm.create_model(name, prune_layers=layers, keep_rate=rate).eval()
    cfg = nets['dense'].pretrained_cfg
    in_chans, size = cfg['input_size'][0], cfg['input_size'][1:]
    x = torch.randn(batch, in_chans, *size)
    times = time_model(nets, x, repeats=spec['repeats'], warmup=2)
    flops = {k: count_flops(m, (in_chans, *size)) for k, m in nets.items()}
    return {k: dict(img_s=batch / statistics.median(v), flops=flops[k]) for k, v in times.items()}


def run_child(model: str, batch: int, repeats: int, alloc: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARS}
    env.update(ALLOCATORS[alloc], OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    spec = json.dumps(dict(model=model, batch=batch, repeats=repeats))
    proc = subprocess.run([sys.executable, __file__, '--child', spec], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{model} with {alloc!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=['plainmamba_d12_mini', 'vim_d12_mini'])
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--repeats', type=int, default=5, help='timed forwards per model in each process')
    ap.add_argument('--rounds', type=int, default=2, help='processes per allocator setting, alternating')
    ap.add_argument('--out', default=None, help='also write the printed report here')
    ap.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.rounds < 1 or args.repeats < 1:
        ap.error('--rounds and --repeats must be at least 1')
    lines = [f"# bench_allocator: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread, "
             f"batch {args.batch}, {args.rounds} rounds x {args.repeats} forwards; load average "
             f"{os.getloadavg()[0]:.2f} at the start", '']
    print(lines[0], flush=True)
    for model in args.models:
        runs = {a: [] for a in ALLOCATORS}
        for r in range(args.rounds):
            for alloc in ALLOCATORS:
                runs[alloc].append(run_child(model, args.batch, args.repeats, alloc))
                print(f"  {model} round {r + 1} {alloc}: "
                      + ', '.join(f"{k} {v['img_s']:.1f}" for k, v in runs[alloc][-1].items()), flush=True)
        keys = list(runs[next(iter(ALLOCATORS))][0])
        img_s = {a: {k: statistics.median(run[k]['img_s'] for run in runs[a]) for k in keys} for a in ALLOCATORS}
        flops = runs[next(iter(ALLOCATORS))][0]
        head = '| variant | ' + ' | '.join(f'{a}: img/s | speedup' for a in ALLOCATORS) + ' | FLOPs ratio |'
        lines += [f'## {model}', '', head, '|' + '---|' * (2 + 2 * len(ALLOCATORS))]
        for k in keys:
            cells = []
            for a in ALLOCATORS:
                cells += [f"{img_s[a][k]:.1f}", f"{img_s[a][k] / img_s[a]['dense']:.2f}x"]
            lines.append(f"| {k} | " + ' | '.join(cells) + f" | {flops['dense']['flops'] / flops[k]['flops']:.2f}x |")
        base, tuned = ALLOCATORS
        gain = {k: img_s[tuned][k] / img_s[base][k] for k in keys}
        lines += ['', f"{tuned} over {base}: " + ', '.join(f"{k} {g:.2f}x" for k, g in gain.items()), '']
    report = '\n'.join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + '\n')


if __name__ == '__main__':
    main()
