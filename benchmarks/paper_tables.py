"""The paper's tables at small scale, on Animal-MNIST, in one command.

    .venv/bin/pip install matplotlib            # for the plot
    python benchmarks/paper_tables.py            # ~2 h on 2 CPU cores; results: benchmarks/RESULTS.md
    python benchmarks/paper_tables.py --no-finetune   # the zero-shot jobs only (~25 min)

Base models: the project's plainmamba_mini and vim_mini (14x14 tokens, as ImageNet at 224/16), trained by
benchmarks/train_animal_mnist.sh; their weights ship in timm_ssm_prune/weights/. Every number comes from a job
(`timm-ssm-prune validate` or `train`) run as a subprocess, two at a time with one thread each; job results are
cached under --work, so an interrupted run resumes where it stopped.

* Table 1 analog: dense vs naive (score order) vs packed (original order) vs ToP vs ToP + decay vs the best
  training-free mode, at -30 % and -40 % FLOPs (three evenly spaced stages, each method's own keep rate solved
  with the package's FLOPs counter), zero-shot and after the same short fine-tune (dense fine-tuned alike as the
  control), two fine-tuning seeds.
* Table 4 analog: importance metric ablation (clip, l1, l2, sum, random over 5 seeds, delta), zero-shot at -30 %.
* Table 5 analog: with vs without alignment: accuracy (from Table 1) and measured throughput.
* Curve: top-1 vs GFLOPs for keep rates 0.5 ... 1.0, ToP vs naive vs packed, each from its own keep-1.0 point
  (benchmarks/plots/acc_vs_flops.png).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import timm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import timm_ssm_prune  # noqa: E402,F401  (registers the models)
from timm_ssm_prune.benchmark import time_model  # noqa: E402
from timm_ssm_prune.flops import count_flops  # noqa: E402
from timm_ssm_prune.models.facts import TRAINING_FREE  # noqa: E402
from timm_ssm_prune.pruning import evenly_spaced_stages  # noqa: E402

MODELS = ('plainmamba_mini', 'vim_mini')
LEVELS = (0.3, 0.4)
CURVE_RATES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
METRICS = ('clip', 'l1', 'l2', 'sum', 'random', 'delta')
RANDOM_SEEDS = (0, 1, 2, 3, 4)
# Table 1's methods: label -> the kwargs beyond the stages and keep rate. Every method gets its own keep rate
# for each FLOPs cut, solved with the package's counter (equal FLOPs, not equal keep rates).
METHODS = {
    'naive (ViT-style, score order)': dict(alignment='naive'),
    'packed (ViT-style, original order)': dict(alignment='packed'),
    'ToP (aligned)': dict(alignment='aligned'),
    'ToP + decay': dict(alignment='decay'),
}
# The package's training-free default of each family (models/facts.py: chosen by benchmarks/leaderboard.py on a
# selection set drawn from the training split, never on the validation split).
BEST = {m: TRAINING_FREE[m.split('_')[0]] for m in MODELS}
FINETUNED = ('naive (ViT-style, score order)', 'packed (ViT-style, original order)', 'ToP (aligned)')


def prune_setting(model_name: str, level: float, **options):
    """(prune_layers, keep_rate) meeting the FLOPs cut ``level`` with three evenly spaced stages, for this method."""
    m = timm.create_model(model_name)
    m.set_pruning(flops_reduction=level, prune_layers=evenly_spaced_stages(len(m.layers), 3), **options)
    return list(m.prune_cfg.prune_layers), m.prune_cfg.keep_rates[0]


def method_kwargs(settings, model, level, label):
    layers, rate = settings[model][level][label]
    options = BEST[model] if label == 'best training-free' else METHODS[label]
    return dict(prune_layers=layers, keep_rate=rate, **options)


def kwargs_args(kw: dict):
    out = []
    for k, v in kw.items():
        out.append(f"{k}={tuple(v) if isinstance(v, list) else v}".replace(' ', ''))
    return out


def job_key(job: dict) -> str:
    return hashlib.sha1(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def run_job(job: dict, work: Path) -> dict:
    """Run one validate/train job as a subprocess (one thread); cached by its description."""
    key = job_key(job)
    res_file = work / 'jobs' / f'{key}.json'
    if res_file.is_file():
        return json.loads(res_file.read_text())
    res_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    base = [sys.executable, '-m', 'timm_ssm_prune']
    kw = kwargs_args(job['kwargs'])
    t0 = time.time()
    if job['kind'] == 'eval':
        out = work / 'jobs' / f'{key}.validate.json'
        cmd = base + ['validate', '--model', job['model'], '--pretrained', '--data-dir', 'animal-mnist', '-b', '200',
                      '--results-file', str(out)] + (['--model-kwargs', *kw] if kw else [])
        if job.get('seed') is not None:
            cmd = [sys.executable, '-c', f"import torch, sys; torch.manual_seed({job['seed']}); "
                   f"from timm_ssm_prune.cli import main; sys.exit(main(sys.argv[1:]))"] + cmd[3:]
        subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        res = json.loads(out.read_text())
    else:
        out_dir = work / 'runs' / key
        shutil.rmtree(out_dir, ignore_errors=True)  # a crashed earlier try (train never writes into an existing run)
        cmd = base + ['train', '--model', job['model'], '--pretrained', '--data-dir', 'animal-mnist',
                      '--epochs', str(job['epochs']), '--lr', str(job['lr']), '--warmup-epochs', '0', '-b', '64',
                      '--weight-decay', '0.05', '--scale', '0.6', '1.0', '--hflip', '0.5', '--smoothing', '0.1',
                      '--seed', str(job['seed']), '--output', str(out_dir.parent), '--experiment', out_dir.name,
                      '--no-progress'] + \
            (['--model-kwargs', *kw] if kw else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"job failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        hist = json.loads((out_dir / 'history.json').read_text())
        res = dict(top1=hist[-1]['val_top1'], top5=hist[-1]['val_top5'], loss=hist[-1]['val_loss'], history=hist)
    res['seconds'] = time.time() - t0
    res['job'] = job
    res_file.write_text(json.dumps(res, indent=1))
    return res


def flops_of(model_name: str, kw: dict) -> float:
    m = timm.create_model(model_name, **kw)
    return count_flops(m)


def plan(models, seeds, ft_epochs, ft_lr, finetune=True):
    labels = list(METHODS) + ['best training-free']
    settings = {m: {r: {lab: prune_setting(m, r, **(BEST[m] if lab == 'best training-free' else METHODS[lab]))
                        for lab in labels} for r in LEVELS} for m in models}
    jobs = []

    def add(kind, model, kw, **extra):
        jobs.append(dict(kind=kind, model=model, kwargs=kw, **{k: v for k, v in extra.items() if v is not None}))

    for m in models:
        add('eval', m, {})
        for r in LEVELS:
            for lab in labels:
                add('eval', m, method_kwargs(settings, m, r, lab))
            if r == LEVELS[0]:
                layers, rate = settings[m][r]['ToP (aligned)']
                for metric in METRICS[1:]:
                    if metric == 'random':
                        for s in RANDOM_SEEDS:
                            add('eval', m, dict(prune_layers=layers, keep_rate=rate, importance=metric,
                                                importance_seed=s))
                    else:
                        add('eval', m, dict(prune_layers=layers, keep_rate=rate, importance=metric))
        layers = evenly_spaced_stages(6, 3)
        for rate in CURVE_RATES:
            for al in ('aligned', 'naive', 'packed'):
                add('eval', m, dict(prune_layers=list(layers), keep_rate=rate, alignment=al))
        if not finetune:
            continue
        for s in seeds:
            add('train', m, {}, seed=s, epochs=ft_epochs, lr=ft_lr)
            for r in LEVELS:
                for lab in FINETUNED:
                    add('train', m, method_kwargs(settings, m, r, lab), seed=s, epochs=ft_epochs, lr=ft_lr)
    return settings, jobs


def measure_throughput(models, settings, batch=64, repeats=7):
    """img/s of dense, ToP and naive at each FLOPs level (alternating timing, all threads of this machine)."""
    out = {}
    for m in models:
        x = torch.randn(batch, 1, 28, 28)
        nets = {'dense': timm.create_model(m).eval()}
        for r in LEVELS:
            for lab in ('ToP (aligned)', 'naive (ViT-style, score order)'):
                nets[f'{lab}@{r}'] = timm.create_model(m, **method_kwargs(settings, m, r, lab)).eval()
        times = time_model(nets, x, repeats=repeats, warmup=2)
        out[m] = {k: batch / statistics.median(v) for k, v in times.items()}
    return out


def fmt(vals):
    """One value, or mean ± sample standard deviation (n stated)."""
    if not vals:
        return 'not run'
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f} (n={len(vals)})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=list(MODELS))
    ap.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    ap.add_argument('--finetune-epochs', type=int, default=1)
    ap.add_argument('--finetune-lr', type=float, default=2e-4)
    ap.add_argument('--jobs', type=int, default=2)
    ap.add_argument('--no-finetune', action='store_true',
                    help='zero-shot jobs only (the fine-tuned columns then read "not run")')
    ap.add_argument('--work', default=str(ROOT / 'output' / 'paper_tables'))
    ap.add_argument('--results', default=str(ROOT / 'benchmarks' / 'RESULTS.md'))
    ap.add_argument('--plot', default=str(ROOT / 'benchmarks' / 'plots' / 'acc_vs_flops.png'))
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from timm_ssm_prune.data import prepare_animal_mnist
    prepare_animal_mnist()
    settings, jobs = plan(args.models, args.seeds, args.finetune_epochs, args.finetune_lr, not args.no_finetune)
    print(f"{len(jobs)} jobs ({sum(j['kind'] == 'train' for j in jobs)} fine-tunes), {args.jobs} at a time",
          flush=True)
    results = {}
    t0 = time.time()
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futs = {pool.submit(run_job, j, work): j for j in sorted(jobs, key=lambda j: j['kind'] != 'train')}
        for i, fut in enumerate(cf.as_completed(futs)):
            j = futs[fut]
            res = fut.result()
            results[job_key(j)] = res
            print(f"[{i + 1}/{len(jobs)} {time.time() - t0:6.0f}s] {j['kind']} {j['model']} {j['kwargs']} "
                  f"seed={j.get('seed')}: top1 {res['top1']:.2f}", flush=True)
    throughput = measure_throughput(args.models, settings)
    write_results(args, settings, jobs, results, throughput)


def _get(results, kind, model, kw, seeds=(None,), **extra):
    """top-1 of the finished jobs matching the description, one per seed."""
    vals = []
    for seed in seeds:
        j = dict(kind=kind, model=model, kwargs=kw, **extra)
        if seed is not None:
            j['seed'] = seed
        r = results.get(job_key(j))
        if r is not None:
            vals.append(r['top1'])
    return vals


def write_results(args, settings, jobs, results, throughput):
    ft = dict(epochs=args.finetune_epochs, lr=args.finetune_lr)
    seeds = tuple(args.seeds)
    lines = ['# Results: the paper\'s tables at small scale (Animal-MNIST)', '',
             'Produced by `python benchmarks/paper_tables.py` (machine: 2 CPU cores, torch '
             f'{torch.__version__}). Base models: `plainmamba_mini` and `vim_mini`, 14x14 tokens like ImageNet at '
             '224/16, trained by `benchmarks/train_animal_mnist.sh`. Top-1 (%) on the 2,000-image validation split. '
             'Pruning: three evenly spaced stages; **every method gets its own keep rate**, solved for the FLOPs cut '
             'with the package\'s counter, and each row prints the FLOPs it has. '
             f'Fine-tuned rows: {args.finetune_epochs} epoch at lr {args.finetune_lr}, seeds {list(seeds)}, '
             'mean ± sample standard deviation. `importance=\'random\'`: seeds '
             f'{list(RANDOM_SEEDS)} (`importance_seed`), mean ± standard deviation. '
             '"Package default (training-free)" is the mode `benchmarks/leaderboard.py` chose on a selection set '
             'from the training split. "not run": the fine-tuned columns were left out of this run '
             '(`--no-finetune`).', '']
    for m in args.models:
        dense_g = flops_of(m, {})
        lines += [f'## {m}', '', '### Table 1 analog: dense vs naive vs ToP (equal FLOPs)', '',
                  '| method | FLOPs cut | GFLOPs | stages / keep | top-1 zero-shot | top-1 fine-tuned |',
                  '|---|---|---|---|---|---|']
        lines.append(f"| dense | 0 % | {dense_g:.4f} | – | {fmt(_get(results, 'eval', m, {}))} | "
                     f"{fmt(_get(results, 'train', m, {}, seeds, **ft))} |")
        for r in LEVELS:
            for lab in list(METHODS) + ['best training-free']:
                kw = method_kwargs(settings, m, r, lab)
                g = flops_of(m, kw)
                ftv = fmt(_get(results, 'train', m, kw, seeds, **ft)) if lab in FINETUNED else '–'
                name = lab if lab != 'best training-free' else \
                    'package default (training-free): ' + (', '.join(f"{k}={v}" for k, v in BEST[m].items())
                                                           or 'ToP')
                lines.append(f"| {name} | {100 * (1 - g / dense_g):.1f} % | {g:.4f} | {kw['prune_layers']} / "
                             f"{kw['keep_rate']} | {fmt(_get(results, 'eval', m, kw))} | {ftv} |")
        layers, rate = settings[m][LEVELS[0]]['ToP (aligned)']
        lines += ['', f'### Table 4 analog: importance metric (aligned, zero-shot, -{100 * LEVELS[0]:.0f} % FLOPs, '
                  f'keep {rate})', '', '| metric | top-1 |', '|---|---|']
        for metric in METRICS:  # 'clip' is the ToP row of Table 1
            if metric == 'clip':
                vals = _get(results, 'eval', m, dict(prune_layers=layers, keep_rate=rate, alignment='aligned'))
            elif metric == 'random':
                vals = [v for s in RANDOM_SEEDS for v in _get(results, 'eval', m, dict(
                    prune_layers=layers, keep_rate=rate, importance=metric, importance_seed=s))]
            else:
                vals = _get(results, 'eval', m, dict(prune_layers=layers, keep_rate=rate, importance=metric))
            lines.append(f"| {metric} | {fmt(vals)} |")
        lines += ['', '### Table 5 analog: with vs without alignment', '',
                  '| FLOPs cut | alignment | keep | top-1 zero-shot | top-1 fine-tuned | img/s | speedup vs dense |',
                  '|---|---|---|---|---|---|---|']
        tp = throughput[m]
        for r in LEVELS:
            for lab in ('naive (ViT-style, score order)', 'ToP (aligned)'):
                kw = method_kwargs(settings, m, r, lab)
                lines.append(f"| {100 * r:.0f} % | {'without (naive)' if 'naive' in lab else 'with (ToP)'} | "
                             f"{kw['keep_rate']} | {fmt(_get(results, 'eval', m, kw))} | "
                             f"{fmt(_get(results, 'train', m, kw, seeds, **ft))} | {tp[f'{lab}@{r}']:.0f} | "
                             f"{tp[f'{lab}@{r}'] / tp['dense']:.2f}x |")
        lines.append(f"\nDense: {tp['dense']:.0f} img/s (batch 64, {torch.get_num_threads()} threads).\n")
    plot = Path(args.plot).relative_to(Path(args.results).parent)
    lines += ['## Accuracy vs FLOPs', '', f'![accuracy vs FLOPs]({plot})', '',
              'Each curve starts from its own keep-1.0 point (naive re-packs the tokens in score order even when it '
              'keeps them all), each at its own FLOPs.', '',
              '| model | keep rate | GFLOPs ToP / naive / packed | ToP top-1 | naive top-1 | packed top-1 |',
              '|---|---|---|---|---|---|']
    curves = {}
    for m in args.models:
        layers = list(evenly_spaced_stages(6, 3))
        pts = []
        for rate in CURVE_RATES:
            row = [rate]
            for al in ('aligned', 'naive', 'packed'):  # each method at its own FLOPs for this keep rate
                kw = dict(prune_layers=layers, keep_rate=rate, alignment=al)
                v = _get(results, 'eval', m, kw)
                row += [flops_of(m, kw), v[0] if v else float('nan')]
            pts.append(tuple(row))
        curves[m] = sorted(pts)
        for rate, ga, a, gn, n, gp, pk in sorted(pts, reverse=True):
            lines.append(f"| {m} | {rate} | {ga:.4f} / {gn:.4f} / {gp:.4f} | {a:.2f} | {n:.2f} | {pk:.2f} |")
    _plot(curves, args.plot)
    boards = sorted((ROOT / 'benchmarks' / 'results').glob('leaderboard_*.md'))
    if boards:  # benchmarks/leaderboard.py's tables, as it last wrote them
        lines += ['', '## Leaderboard: training-free reduction, every mode side by side', '',
                  'From `python benchmarks/leaderboard.py --models MODEL --out benchmarks/results/leaderboard_MODEL` '
                  '(one thread each). Rows are sorted by the mean selection top-1 over both FLOPs cuts; the selection '
                  'set is 1,000 training-split images (100 per class, seed 0), which the minis saw in training: it '
                  'ranks the modes, the validation column (2,000 unseen images) is the accuracy. Every row has its '
                  'own keep rate for the FLOPs cut; random rows: mean ± std over importance_seed 0, 1, 2.', '']
        for b in boards:
            lines.append(b.read_text().rstrip() + '\n')
    discussion = Path(__file__).with_name('results_discussion.md')
    if discussion.is_file():  # the written analysis, kept in its own file so that reruns keep it
        lines += ['', discussion.read_text().rstrip()]
    Path(args.results).write_text('\n'.join(lines) + '\n')
    (Path(args.work) / 'summary.json').write_text(json.dumps(dict(settings=settings, throughput=throughput,
                                                                  curves=curves), indent=1))
    print(f"wrote {args.results} and {args.plot}")


def _plot(curves, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed: no plot (pip install matplotlib)')
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (m, pts) in zip(axes[0], curves.items()):
        for i, (style, label) in enumerate((('o-', 'ToP (aligned)'), ('s--', 'naive (score order)'),
                                            ('^:', 'packed (original order)'))):
            ax.plot([p[1 + 2 * i] * 1e3 for p in pts], [p[2 + 2 * i] for p in pts], style, label=label)
        for p in pts:
            ax.annotate(f"{p[0]:.1f}", (p[1] * 1e3, p[2]), fontsize=7, textcoords='offset points', xytext=(3, 3))
        ax.set_xlabel('MFLOPs per image')
        ax.set_ylabel('top-1 (%), zero-shot')
        ax.set_title(m)
        ax.grid(alpha=.3)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == '__main__':
    main()
