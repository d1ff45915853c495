"""The paper's tables at small scale, on Animal-MNIST, in one command.

    .venv/bin/pip install matplotlib            # for the plot
    python benchmarks/paper_tables.py            # everything (CPU: hours; resumable, see below)
    python benchmarks/paper_tables.py --no-finetune   # the zero-shot jobs only
    python benchmarks/paper_tables.py --models vim_d12_mini --jobs 1   # one model, one core

Base models (weights ship in timm_ssm_prune/weights/):
* the testbeds ``plainmamba_d12_mini`` and ``vim_d12_mini``: 12 blocks, trained from scratch to convergence by
  benchmarks/train_testbed.py. Stages at **the paper's relative positions**, scaled to the depth with Python's
  round(): Vim-S prunes after blocks 5, 10, 15 of 24 -> 2, 5, 8 of 12; PlainMamba-L3 after 9, 18, 27 of 36 ->
  3, 6, 9 of 12.
* the minis ``plainmamba_mini`` and ``vim_mini``: 6 blocks, trained 6 epochs by benchmarks/train_animal_mnist.sh;
  three evenly spaced stages (after blocks 2, 3, 4), as in earlier rounds.
All have 14x14 tokens, as ImageNet at 224/16. Every number comes from a job (`timm-ssm-prune validate` or `train`)
run as a subprocess, ``--jobs`` at a time with one thread each.

* Table 1 analog: dense vs naive (score order) vs packed (original order) vs ToP vs ToP + decay vs the package's
  training-free default, at -30 % and -40 % FLOPs, each method its own keep rate solved for the cut with the
  package's FLOPs counter; zero-shot, and for the fine-tuned methods (``FINETUNED``, on ``--finetune-models`` at
  ``--finetune-levels``) after a real fine-tune: ``--finetune-epochs`` (3) epochs with the dense model as the
  distillation teacher (``train --distill``), seeds ``--seeds`` (0, 1, 2), mean ± sample std, and the recovery
  after each epoch (the validation top-1 the train command records after every epoch).
* Table 4 analog: importance metric ablation (clip, l1, l2, sum, random over 5 seeds, delta), zero-shot at -30 %.
* Table 5 analog: with vs without alignment: accuracy (from Table 1) and measured throughput.
* Curve: top-1 vs GFLOPs for keep rates 0.5 ... 1.0, ToP vs naive vs packed, each from its own keep-1.0 point
  (benchmarks/plots/acc_vs_flops.png).

The fine-tuning recipe was fixed before any run (nothing is picked on the validation split): AdamW, lr 2e-4 cosine
to 1e-6 per step, no warm-up, weight decay 0.05, batch 64, random-resized crop (area 0.6-1) + flip, label smoothing
0.1, KL to the dense teacher with weight 0.5 (temperature 1).

Resumable across sessions: every finished job's result (the per-epoch history of a fine-tune included) is a small
JSON under ``--work`` (default benchmarks/results/paper_tables/, tracked by git), and a fine-tune in flight keeps
its run folder there (``runs/<job>/last.pth.tar``, written after every epoch) and continues with ``train --resume``
(which rebuilds the same dense teacher). To stop: kill the process (the jobs in flight lose at most the epoch they
were in), then ``git add benchmarks/results/paper_tables && git commit``. The same command resumes; with
``--cached-only`` it runs nothing and writes an interim report from the finished jobs. Throughput (Table 5) is
measured once, one thread, the compared models in turn inside each of 5 fresh processes, and cached in the work
folder (``--remeasure-throughput`` to measure again, on an idle machine).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
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
from timm_ssm_prune.models.facts import FACTS, TRAINING_FREE  # noqa: E402
from timm_ssm_prune.pruning import evenly_spaced_stages  # noqa: E402

MINIS = ('plainmamba_mini', 'vim_mini')
TESTBEDS = ('plainmamba_d12_mini', 'vim_d12_mini')
MODELS = TESTBEDS + MINIS
# The paper's stage positions (after block k of depth), scaled to a testbed's depth.
PAPER_STAGES = {'vim': ((5, 10, 15), 24), 'plainmamba': ((9, 18, 27), 36)}
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
DEFAULT_LABEL = 'best training-free'
# The package's training-free default of each family (models/facts.py: chosen by benchmarks/leaderboard.py on a
# selection set drawn from the training split, never on the validation split).
BEST = {m: TRAINING_FREE[m.split('_')[0]] for m in MODELS}
FINETUNED = ('naive (ViT-style, score order)', 'ToP (aligned)', DEFAULT_LABEL)
# The fine-tuning recipe (fixed before any run; see the module docstring).
FT_TRAIN_ARGS = ['--warmup-epochs', '0', '-b', '64', '--weight-decay', '0.05', '--scale', '0.6', '1.0',
                 '--hflip', '0.5', '--smoothing', '0.1']


def model_depth(model_name: str) -> int:
    return len(timm.create_model(model_name).layers)


@functools.lru_cache(maxsize=None)
def stages_for(model_name: str):
    """The stage positions of the tables: the paper's relative positions for the testbeds, three evenly spaced
    stages for the minis."""
    depth = model_depth(model_name)
    if model_name in MINIS:
        return tuple(evenly_spaced_stages(depth, 3))
    return paper_stages(model_name.split('_')[0], depth)


def paper_stages(family: str, depth: int):
    """The paper's stage positions of ``family`` scaled to ``depth`` blocks with round(): Vim (5, 10, 15 of 24)
    -> (2, 5, 8) of 12; PlainMamba (9, 18, 27 of 36) -> (3, 6, 9) of 12."""
    pos, total = PAPER_STAGES[family]
    return tuple(round(depth * k / total) for k in pos)


def prune_setting(model_name: str, level: float, **options):
    """(prune_layers, keep_rate) meeting the FLOPs cut ``level`` at the model's stages (``stages_for``), for this
    method."""
    m = timm.create_model(model_name)
    m.set_pruning(flops_reduction=level, prune_layers=stages_for(model_name), **options)
    return list(m.prune_cfg.prune_layers), m.prune_cfg.keep_rates[0]


def method_options(model, label):
    """The options of a Table 1 method beyond stages and keep rate (the package default's are the family's)."""
    return BEST[model] if label == DEFAULT_LABEL else METHODS[label]


def method_kwargs(settings, model, level, label):
    layers, rate = settings[model][level][label]
    return dict(prune_layers=layers, keep_rate=rate, **method_options(model, label))


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
        out.unlink()
    else:
        out_dir = work / 'runs' / key
        last = out_dir / 'last.pth.tar'
        resume = last.is_file()
        if not resume:
            shutil.rmtree(out_dir, ignore_errors=True)  # a try that crashed before its first epoch ended
        cmd = base + ['train', '--model', job['model'], '--pretrained', '--data-dir', 'animal-mnist',
                      '--epochs', str(job['epochs']), '--lr', str(job['lr']), *FT_TRAIN_ARGS,
                      '--seed', str(job['seed']), '--output', str(out_dir.parent), '--experiment', out_dir.name,
                      '--no-progress'] + (['--model-kwargs', *kw] if kw else [])
        if job.get('distill'):
            cmd += ['--distill', '--distill-weight', str(job['distill'])]
        if job.get('steps_per_epoch'):
            cmd += ['--steps-per-epoch', str(job['steps_per_epoch'])]
        if resume:
            cmd += ['--resume', str(last)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"job failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        hist = json.loads((out_dir / 'history.json').read_text())
        res = dict(top1=hist[-1]['val_top1'], top5=hist[-1]['val_top5'], loss=hist[-1]['val_loss'], history=hist,
                   resumed=resume)
        shutil.rmtree(out_dir)  # the result keeps the history; the checkpoints are not needed any more
    res['seconds'] = time.time() - t0
    res['job'] = job
    res_file.write_text(json.dumps(res, indent=1))
    return res


def flops_of(model_name: str, kw: dict) -> float:
    return _flops_of(model_name, json.dumps(kw, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _flops_of(model_name: str, kw_json: str) -> float:
    return count_flops(timm.create_model(model_name, **json.loads(kw_json)))


def finetune_spec(args) -> dict:
    """The fields a fine-tune job adds to its description (part of its cache key)."""
    spec = dict(epochs=args.finetune_epochs, lr=args.finetune_lr, distill=args.distill_weight)
    if args.finetune_steps:
        spec['steps_per_epoch'] = args.finetune_steps
    return spec


def plan(models, args):
    labels = list(METHODS) + [DEFAULT_LABEL]
    settings = {m: {r: {lab: prune_setting(m, r, **method_options(m, lab))
                        for lab in labels} for r in LEVELS} for m in models}
    jobs = {}  # by key: a setting two tables share (e.g. ToP's keep rate on the curve) is one job, run once

    def add(kind, model, kw, **extra):
        job = dict(kind=kind, model=model, kwargs=kw, **{k: v for k, v in extra.items() if v is not None})
        jobs.setdefault(job_key(job), job)

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
        layers = stages_for(m)
        for rate in CURVE_RATES:
            for al in ('aligned', 'naive', 'packed'):
                add('eval', m, dict(prune_layers=list(layers), keep_rate=rate, alignment=al))
        if args.no_finetune or m not in args.finetune_models:
            continue
        for s in args.seeds:
            for r in args.finetune_levels:
                for lab in FINETUNED:
                    add('train', m, method_kwargs(settings, m, r, lab), seed=s, **finetune_spec(args))
    return settings, list(jobs.values())


def _throughput_child(spec):
    """In a fresh process: img/s (median of the forwards) of each model in ``spec['nets']`` (label -> kwargs), one
    thread, the models timed in turn."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nets = {k: timm.create_model(spec['model'], **kw).eval() for k, kw in spec['nets'].items()}
    x = torch.randn(spec['batch'], 1, 28, 28)
    times = time_model(nets, x, repeats=spec['repeats'], warmup=2)
    return {k: spec['batch'] / statistics.median(v) for k, v in times.items()}


def measure_throughput(models, settings, batch=64, repeats=5, rounds=5):
    """img/s of dense, ToP and naive at each FLOPs level: one thread, in ``rounds`` fresh processes per model, each
    timing all the compared models in turn. On the 2-core VM a process's speed varies by up to 20-45 % from one
    process to the next (the same model, idle machine), while the ratios between models timed in turn inside one
    process vary by about ±8 %; so the speedup is the median of the per-process ratios (with their range), and img/s
    the median of the per-process medians."""
    out = dict(threads=1, batch=batch, load_average=os.getloadavg()[0], rounds=rounds, repeats=repeats)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    specs = {}
    for m in models:
        nets = {'dense': {}}
        for r in LEVELS:
            for lab in ('ToP (aligned)', 'naive (ViT-style, score order)'):
                nets[f'{lab}@{r}'] = method_kwargs(settings, m, r, lab)
        specs[m] = json.dumps(dict(model=m, nets=nets, batch=batch, repeats=repeats))
    runs = {m: [] for m in models}
    for _ in range(rounds):
        for m, spec in specs.items():
            proc = subprocess.run([sys.executable, __file__, '--throughput-child', spec], env=env,
                                  capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"throughput of {m} failed:\n{proc.stderr[-3000:]}")
            runs[m].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for m, rs in runs.items():
        ratios = {k: [run[k] / run['dense'] for run in rs] for k in rs[0]}
        out[m] = {k: statistics.median(run[k] for run in rs) for k in rs[0]}
        out[m]['speedup'] = {k: statistics.median(v) for k, v in ratios.items()}
        out[m]['speedup_range'] = {k: (min(v), max(v)) for k, v in ratios.items()}
        out[m]['runs'] = rs  # every process's img/s, for whoever wants the distribution
    return out


def throughput(args, settings):
    """Cached measurement (``--remeasure-throughput`` to redo it); models missing from the cache, or cached by an
    older version without per-process speedups, are measured."""
    path = Path(args.work) / 'throughput.json'
    cached = json.loads(path.read_text()) if path.is_file() else {}
    todo = [m for m in args.models if args.remeasure_throughput or 'speedup' not in cached.get(m, {})]
    if todo:
        print(f"measuring throughput of {todo} (load average {os.getloadavg()[0]:.2f})", flush=True)
        new = measure_throughput(todo, settings)
        for m in todo:
            cached[m] = dict(new[m], **{k: new[k] for k in ('load_average', 'threads', 'batch', 'rounds', 'repeats')})
        path.write_text(json.dumps(cached, indent=1))
    return cached


def fmt(vals):
    """One value, or mean ± sample standard deviation (n stated)."""
    if not vals:
        return 'not run'
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f} (n={len(vals)})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=None,
                    help=f'default: those of {list(MODELS)} that are registered (the testbeds are once their '
                         f'weights have landed)')
    ap.add_argument('--jobs', type=int, default=2, help='jobs at a time (one thread each)')
    ap.add_argument('--no-finetune', action='store_true',
                    help='zero-shot jobs only (the fine-tuned columns then read "not run")')
    g = ap.add_argument_group('fine-tuning (the recipe is in the module docstring)')
    g.add_argument('--finetune-models', nargs='+', default=list(TESTBEDS))
    g.add_argument('--finetune-levels', nargs='+', type=float, default=[LEVELS[0]])
    g.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    g.add_argument('--finetune-epochs', type=int, default=3)
    g.add_argument('--finetune-lr', type=float, default=2e-4)
    g.add_argument('--distill-weight', type=float, default=0.5, help='0: no distillation')
    g.add_argument('--finetune-steps', type=int, default=None,
                   help='cap the steps of each fine-tuning epoch (smoke runs only; part of the job description)')
    ap.add_argument('--work', default=str(ROOT / 'benchmarks' / 'results' / 'paper_tables'))
    ap.add_argument('--remeasure-throughput', action='store_true')
    ap.add_argument('--throughput-child', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--cached-only', action='store_true',
                    help='run nothing: write the report from the jobs already finished in --work (an interim '
                         'report while fine-tunes span sessions; their cells say how many seeds are in, the '
                         'missing ones read "pending", and no fine-tuned claim is called before all seeds are in)')
    ap.add_argument('--results', default=str(ROOT / 'benchmarks' / 'RESULTS.md'))
    ap.add_argument('--plot', default=str(ROOT / 'benchmarks' / 'plots' / 'acc_vs_flops.png'))
    args = ap.parse_args(argv)
    if args.throughput_child:
        print(json.dumps(_throughput_child(json.loads(args.throughput_child))))
        return
    if args.models is None:
        args.models = [m for m in MODELS if timm.is_model(m)]
        skipped = [m for m in MODELS if m not in args.models]
        if skipped:
            print(f"not registered yet (their weights land when benchmarks/train_testbed.py finishes): {skipped}",
                  flush=True)
    missing = [m for m in args.models if not timm.is_model(m)]
    if missing:
        ap.error(f"unknown model(s) {missing}: the testbeds are registered when benchmarks/train_testbed.py has "
                 f"written their weights; pass --models with the registered ones ({list(MINIS)})")
    for lev in args.finetune_levels:
        if lev not in LEVELS:
            ap.error(f"--finetune-levels: {lev} is not one of the tables' FLOPs cuts {list(LEVELS)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from timm_ssm_prune.data import prepare_animal_mnist
    prepare_animal_mnist()
    settings, jobs = plan(args.models, args)
    print(f"{len(jobs)} jobs ({sum(j['kind'] == 'train' for j in jobs)} fine-tunes), {args.jobs} at a time",
          flush=True)
    results = {}
    t0 = time.time()
    if args.cached_only:
        for j in jobs:
            f = work / 'jobs' / f'{job_key(j)}.json'
            if f.is_file():
                results[job_key(j)] = json.loads(f.read_text())
        print(f"--cached-only: {len(results)} of {len(jobs)} jobs finished; the rest are reported as pending",
              flush=True)
        args.pending = len(jobs) - len(results)
        jobs = []
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futs = {pool.submit(run_job, j, work): j for j in sorted(jobs, key=lambda j: j['kind'] != 'train')}
        for i, fut in enumerate(cf.as_completed(futs)):
            j = futs[fut]
            res = fut.result()
            results[job_key(j)] = res
            print(f"[{i + 1}/{len(jobs)} {time.time() - t0:6.0f}s] {j['kind']} {j['model']} {j['kwargs']} "
                  f"seed={j.get('seed')}: top1 {res['top1']:.2f}", flush=True)
    write_results(args, settings, results, throughput(args, settings))


def _results(results, kind, model, kw, seeds=(None,), **extra):
    """The finished jobs matching the description, one per seed."""
    out = []
    for seed in seeds:
        j = dict(kind=kind, model=model, kwargs=kw, **extra)
        if seed is not None:
            j['seed'] = seed
        r = results.get(job_key(j))
        if r is not None:
            out.append(r)
    return out


def _get(results, kind, model, kw, seeds=(None,), **extra):
    """top-1 of the finished jobs matching the description, one per seed."""
    return [r['top1'] for r in _results(results, kind, model, kw, seeds, **extra)]


def _after_epoch(results, model, kw, seeds, ft, epoch):
    """Validation top-1 after fine-tuning epoch ``epoch`` (0-based) of the matching fine-tunes, one per seed."""
    return [r['history'][epoch]['val_top1'] for r in _results(results, 'train', model, kw, seeds, **ft)
            if len(r['history']) > epoch]


def _method_name(m, lab):
    if lab != DEFAULT_LABEL:
        return lab
    return 'package default (training-free): ' + (', '.join(f"{k}={v}" for k, v in BEST[m].items()) or 'ToP')


def fmt_seeds(vals, n_seeds):
    """A fine-tuned cell: ``fmt`` once all seeds are in; an interim report (``--cached-only``) says how many are."""
    if not vals:
        return 'pending'
    if len(vals) >= n_seeds:
        return fmt(vals)
    spread = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ''
    return f"{statistics.mean(vals):.2f}{spread} ({len(vals)} of {n_seeds} seeds)"


def write_results(args, settings, results, tput):
    ft = finetune_spec(args)
    seeds = tuple(args.seeds)
    n_ft = args.finetune_epochs
    lines = ['# Results: the paper\'s tables at small scale (Animal-MNIST)', '',
             'Produced by `python benchmarks/paper_tables.py` (machine: 2 CPU cores, torch '
             f'{torch.__version__}); the job results are in `benchmarks/results/paper_tables/jobs/`. Top-1 (%) on '
             'the 2,000-image validation split (never used to pick anything). **Testbeds** `vim_d12_mini` and '
             '`plainmamba_d12_mini` (12 blocks, trained from scratch to convergence by '
             '`benchmarks/train_testbed.py`) prune at the paper\'s relative positions (Vim-S after blocks 5, 10, 15 '
             'of 24 -> 2, 5, 8 of 12; PlainMamba-L3 after 9, 18, 27 of 36 -> 3, 6, 9 of 12). **Minis** '
             '`vim_mini` and `plainmamba_mini` (6 blocks, 6 epochs) prune after blocks 2, 3, 4. All have 14x14 '
             'tokens like ImageNet at 224/16. **Every method gets its own keep rate**, solved for the FLOPs cut '
             'with the package\'s counter, and each row prints the FLOPs it has. '
             f'Fine-tuned columns: {n_ft} epochs at lr {args.finetune_lr} (cosine, no warm-up), '
             + (f'distilled from the dense model (KL weight {args.distill_weight}), ' if args.distill_weight else '')
             + f'seeds {list(seeds)}, mean ± sample standard deviation (n stated); "after 1 epoch" is the same runs\' '
             'validation top-1 after their first epoch. '
             f'`importance=\'random\'`: seeds {list(RANDOM_SEEDS)} (`importance_seed`), mean ± standard deviation. '
             '"Package default (training-free)" is the mode `benchmarks/leaderboard.py` chose on a selection set from '
             'the training split of the minis (the testbeds\' leaderboards below rank it again on their holdouts). '
             '"not run": no fine-tune of that row in this run.', '']
    if getattr(args, 'cached_only', False) and getattr(args, 'pending', 1):  # every job in: the report is final
        lines += ['**Interim report** (`--cached-only`): written from the jobs finished so far while the fine-tunes '
                  'run across sessions; a fine-tuned cell says how many of its seeds are in ("pending": none), and '
                  'no fine-tuned claim is called before all seeds are in. The zero-shot tables are complete.', '']
    for m in args.models:
        lines += testbed_curve_lines(m)
    for m in args.models:
        dense_g = flops_of(m, {})
        stages = stages_for(m)
        tuned = m in args.finetune_models and not args.no_finetune
        lines += [f'## {m}', '', f'{model_depth(m)} blocks, stages after blocks {list(stages)}.', '',
                  '### Table 1 analog: dense vs naive vs ToP (equal FLOPs)', '',
                  '| method | FLOPs cut | GFLOPs | stages / keep | top-1 zero-shot | after 1 epoch | '
                  f'fine-tuned ({n_ft} epochs) |', '|---|---|---|---|---|---|---|']
        dense_top1 = _get(results, 'eval', m, {})
        lines.append(f"| dense | 0 % | {dense_g:.4f} | – | {fmt(dense_top1)} | – | – |")
        if dense_top1 and m in FACTS and abs(dense_top1[0] - FACTS[m].top1) > 1e-6:
            print(f"WARNING: {m}: the validate job gives {dense_top1[0]:.2f} % but models/facts.py (model cards, "
                  f"README) says {FACTS[m].top1}: update FACTS['{m}'].top1", file=sys.stderr, flush=True)
        for r in LEVELS:
            for lab in list(METHODS) + [DEFAULT_LABEL]:
                kw = method_kwargs(settings, m, r, lab)
                g = flops_of(m, kw)
                if lab in FINETUNED and tuned and r in args.finetune_levels:
                    one, final = (fmt_seeds(_after_epoch(results, m, kw, seeds, ft, 0), len(seeds)),
                                  fmt_seeds(_get(results, 'train', m, kw, seeds, **ft), len(seeds)))
                else:
                    one = final = '–' if lab not in FINETUNED else 'not run'
                lines.append(f"| {_method_name(m, lab)} | {100 * (1 - g / dense_g):.1f} % | {g:.4f} | "
                             f"{kw['prune_layers']} / {kw['keep_rate']} | {fmt(_get(results, 'eval', m, kw))} | "
                             f"{one} | {final} |")
        if tuned:
            lines += ['', f'Recovery during the fine-tune (validation top-1 after each epoch, seeds {list(seeds)}):',
                      '', '| method | FLOPs cut | zero-shot | ' + ' | '.join(f'epoch {e + 1}' for e in range(n_ft))
                      + ' |', '|---|---|---|' + '---|' * n_ft]
            for r in args.finetune_levels:
                for lab in FINETUNED:
                    kw = method_kwargs(settings, m, r, lab)
                    cells = [fmt_seeds(_after_epoch(results, m, kw, seeds, ft, e), len(seeds)) for e in range(n_ft)]
                    lines.append(f"| {_method_name(m, lab)} | {100 * r:.0f} % | "
                                 f"{fmt(_get(results, 'eval', m, kw))} | " + ' | '.join(cells) + ' |')
        rate = settings[m][LEVELS[0]]['ToP (aligned)'][1]
        lines += ['', f'### Table 4 analog: importance metric (aligned, zero-shot, -{100 * LEVELS[0]:.0f} % FLOPs, '
                  f'keep {rate})', '', '| metric | top-1 |', '|---|---|']
        for metric, vals in importance_top1(m, settings, results).items():
            lines.append(f"| {metric} | {fmt(vals)} |")
        tp = tput.get(m)
        lines += ['', '### Table 5 analog: with vs without alignment', '',
                  f'| FLOPs cut | alignment | keep | top-1 zero-shot | fine-tuned ({n_ft} epochs) | img/s | '
                  'speedup vs dense |', '|---|---|---|---|---|---|---|']
        for r in LEVELS:
            for lab in ('naive (ViT-style, score order)', 'ToP (aligned)'):
                kw = method_kwargs(settings, m, r, lab)
                final = fmt_seeds(_get(results, 'train', m, kw, seeds, **ft), len(seeds)) \
                    if tuned and r in args.finetune_levels else 'not run'
                key = f'{lab}@{r}'
                if tp:  # img/s, and the median of the per-process ratios to dense with their range
                    lo, hi = tp['speedup_range'][key]
                    speed = f"{tp[key]:.0f} | {tp['speedup'][key]:.2f}x ({lo:.2f}-{hi:.2f})"
                else:
                    speed = 'not run | –'
                lines.append(f"| {100 * r:.0f} % | {'without (naive)' if 'naive' in lab else 'with (ToP)'} | "
                             f"{kw['keep_rate']} | {fmt(_get(results, 'eval', m, kw))} | {final} | {speed} |")
        if tp:
            lines.append(f"\nDense: {tp['dense']:.0f} img/s (batch {tp['batch']}, {tp['threads']} thread, "
                         f"{tp['rounds']} fresh processes, each timing the compared models in turn {tp['repeats']} "
                         "times; img/s: the median of the processes' medians; speedup: the median of the processes' "
                         f"ratios to dense, their range in brackets; load average {tp['load_average']:.2f} when "
                         "measured).\n")
        lines += claims_lines(m, settings, results, args)
    plot = Path(args.plot).relative_to(Path(args.results).parent)
    lines += ['## Accuracy vs FLOPs', '', f'![accuracy vs FLOPs]({plot})', '',
              'Each curve starts from its own keep-1.0 point (naive re-packs the tokens in score order even when it '
              'keeps them all), each at its own FLOPs; stages as in the tables above.', '',
              '| model | keep rate | GFLOPs ToP / naive / packed | ToP top-1 | naive top-1 | packed top-1 |',
              '|---|---|---|---|---|---|']
    curves = {}
    for m in args.models:
        layers = list(stages_for(m))
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
                  'set (named under each model: 1,000 training-split images for the minis, which they saw in '
                  'training; the 400-image holdout for the testbeds, which they never saw) ranks the modes, the '
                  'validation column (2,000 unseen images) is the accuracy. Every row has its '
                  'own keep rate for the FLOPs cut; random rows: mean ± std over importance_seed 0, 1, 2.', '']
        for b in boards:
            lines.append(b.read_text().rstrip() + '\n')
    discussion = Path(__file__).with_name('results_discussion.md')
    if discussion.is_file():  # the written analysis, kept in its own file so that reruns keep it
        lines += ['', discussion.read_text().rstrip()]
    Path(args.results).write_text('\n'.join(lines) + '\n')
    (Path(args.work) / 'summary.json').write_text(json.dumps(dict(settings=settings, curves=curves), indent=1))
    print(f"wrote {args.results} and {args.plot}")


VAL_IMAGES = 2000  # the validation split: every zero-shot top-1 is a proportion of these images


def zero_shot_se(*top1s: float) -> float:
    """Standard error (points) of one zero-shot top-1, or of the difference of several measured on the validation
    split, from the binomial variance of each; unpaired, so conservative for methods scored on the same images."""
    return 100 * sum((t / 100) * (1 - t / 100) / VAL_IMAGES for t in top1s) ** 0.5


# Two-sided 95 % quantiles of Student's t for 1-10 degrees of freedom (standard tables); 2.0 beyond.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t975(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 2.0


def verdict(diff: float, se: float, crit: float = 2.0) -> str:
    """'holds' when diff > crit·se, 'reversed' when diff < -crit·se, else 'within noise'."""
    return 'holds' if diff > crit * se else 'reversed' if diff < -crit * se else 'within noise'


def paired(a, b):
    """(mean difference, its standard error, the t quantile) of runs paired by seed: a[i] and b[i] share seed i."""
    d = [x - y for x, y in zip(a, b)]
    return statistics.mean(d), statistics.stdev(d) / len(d) ** 0.5, t975(len(d) - 1)


def importance_top1(m, settings, results):
    """Table 4's finished top-1s per metric, at ToP's stages and keep rate for the first FLOPs cut: 'clip' is the
    ToP row of Table 1, 'random' one value per seed."""
    layers, rate = settings[m][LEVELS[0]]['ToP (aligned)']
    out = {'clip': _get(results, 'eval', m, dict(prune_layers=layers, keep_rate=rate, alignment='aligned'))}
    for metric in METRICS[1:]:
        seeds = RANDOM_SEEDS if metric == 'random' else (None,)
        out[metric] = [v for sd in seeds for v in _get(results, 'eval', m, dict(
            prune_layers=layers, keep_rate=rate, importance=metric,
            **({} if sd is None else dict(importance_seed=sd))))]
    return out


def claims_lines(m, settings, results, args):
    """The paper's three claims checked on model ``m``'s rows, with the noise of each comparison (``verdict``: a
    difference counts beyond 2 standard errors zero-shot, beyond t(0.975, n-1) paired ones fine-tuned)."""
    top, naive, packed = 'ToP (aligned)', 'naive (ViT-style, score order)', 'packed (ViT-style, original order)'
    out = ['', '### The paper\'s claims on this model', '',
           'A zero-shot difference counts when it exceeds twice its standard error, the binomial error of '
           f'{VAL_IMAGES} validation images (unpaired, so conservative: the methods see the same images). A '
           f'fine-tuned difference is paired by seed (both methods run with seeds {list(args.seeds)}: the same data '
           'order) and counts when it exceeds t(0.975, n-1) standard errors of the mean difference (4.30 for three '
           'seeds). '
           'Importance: clip against each other metric, one row each (the best of five on the same images would be '
           'a biased comparator).', '',
           '| claim | comparison | difference (points) | standard error | verdict |', '|---|---|---|---|---|']

    def zs(level, label):
        v = _get(results, 'eval', m, method_kwargs(settings, m, level, label))
        return v[0] if v else None

    same = _same_as_top(m, settings, results)
    for level in LEVELS:
        for other in (naive, packed):
            a, b = zs(level, top), zs(level, other)
            if other == packed and same:
                continue
            if a is not None and b is not None:
                se = zero_shot_se(a, b)
                name = other.split(' (')[0]
                out.append(f"| aligned beats {name}, zero-shot | ToP {a:.2f} vs {name} {b:.2f} at "
                           f"-{100 * level:.0f} % | {a - b:+.2f} | {se:.2f} | {verdict(a - b, se)} |")
    if m in args.finetune_models and not args.no_finetune:
        ft, seeds = finetune_spec(args), tuple(args.seeds)
        for level in args.finetune_levels:
            a = _get(results, 'train', m, method_kwargs(settings, m, level, top), seeds, **ft)
            b = _get(results, 'train', m, method_kwargs(settings, m, level, naive), seeds, **ft)
            if len(a) == len(b) == len(seeds) > 1:
                diff, se, crit = paired(a, b)
                out.append(f"| aligned beats naive, fine-tuned | ToP {fmt(a)} vs naive {fmt(b)} at "
                           f"-{100 * level:.0f} % | {diff:+.2f} | {se:.2f} | {verdict(diff, se, crit)} |")
    scores = {k: statistics.mean(v) if v else None for k, v in importance_top1(m, settings, results).items()}
    for other, v in scores.items():
        if other != 'clip' and v is not None and scores['clip'] is not None:
            diff, se = scores['clip'] - v, zero_shot_se(scores['clip'], v)
            out.append(f"| clip is the best importance | clip {scores['clip']:.2f} vs {other} {v:.2f}"
                       + (f" (mean of {len(RANDOM_SEEDS)} seeds)" if other == 'random' else '')
                       + f", -{100 * LEVELS[0]:.0f} %, zero-shot | {diff:+.2f} | {se:.2f} | {verdict(diff, se)} |")
    for other in (naive, packed):
        al = 'naive' if other == naive else 'packed'
        if al == 'packed' and same:
            continue
        pts = _curve_points(m, results, 'aligned')
        for rate_o, g, acc in _curve_points(m, results, al):
            ref = _interpolate(pts, g)
            if ref is None or rate_o == 1.0:
                continue
            se = zero_shot_se(ref, acc)
            out.append(f"| ToP's curve dominates | ToP at {1e3 * g:.2f} MFLOPs (interpolated) {ref:.2f} vs {al} "
                       f"keep {rate_o} {acc:.2f} | {ref - acc:+.2f} | {se:.2f} | {verdict(ref - acc, se)} |")
    if same:
        out += ['', 'Packed (ViT-style packing in the original order) gives ToP\'s numbers exactly on this model '
                '(every curve point and both FLOPs cuts): with one 1-D scan order, keeping the order is the alignment.']
    return out + ['']


def _same_as_top(m, settings, results) -> bool:
    """Whether packed and ToP gave identical top-1 at every finished curve point and at both FLOPs cuts (Vim: the
    same computation)."""
    a, p = _curve_points(m, results, 'aligned'), _curve_points(m, results, 'packed')
    cuts = [[_get(results, 'eval', m, method_kwargs(settings, m, lv, lab)) for lv in LEVELS]
            for lab in ('ToP (aligned)', 'packed (ViT-style, original order)')]
    return bool(a) and [(r, t) for r, _, t in a] == [(r, t) for r, _, t in p] and cuts[0] == cuts[1]


def _curve_points(m, results, alignment):
    """(keep rate, GFLOPs, zero-shot top-1) of the accuracy-vs-FLOPs curve of one alignment, the finished ones."""
    pts = []
    for rate in CURVE_RATES:
        kw = dict(prune_layers=list(stages_for(m)), keep_rate=rate, alignment=alignment)
        v = _get(results, 'eval', m, kw)
        if v:
            pts.append((rate, flops_of(m, kw), v[0]))
    return pts


def _interpolate(pts, g):
    """Top-1 of a curve at GFLOPs ``g``, linear between its two neighbouring points; None outside its range."""
    pts = sorted((p[1], p[2]) for p in pts)
    for (g0, a0), (g1, a1) in zip(pts, pts[1:]):
        if g0 <= g <= g1:
            return a0 if g1 == g0 else a0 + (a1 - a0) * (g - g0) / (g1 - g0)
    return None


def testbed_curve_lines(model_name: str, results_dir: Path = ROOT / 'benchmarks' / 'results', last: int = 5):
    """RESULTS.md's section on how a testbed was trained: its per-epoch curve (benchmarks/train_testbed.py writes
    ``<name>_curve.json`` with the final weights) and how flat its last ``last`` epochs are. [] for the minis."""
    path = results_dir / f'{model_name}_curve.json'
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    cfg, curve = data['config'], data['curve']
    if len(curve) != cfg['epochs']:
        raise ValueError(f"{path}: {len(curve)} epochs in the curve but the recipe has {cfg['epochs']}; "
                         f"finish the training (benchmarks/train_testbed.py {model_name}) first")
    tail = curve[-last:]
    spread = {k: (min(r[k] for r in tail), max(r[k] for r in tail)) for k in ('holdout_top1', 'val_top1')}
    hours = curve[-1]['total_hours']
    lines = [f'## Testbed {model_name}: training curve', '',
             f"`python benchmarks/train_testbed.py {model_name}` (recipe in its docstring): "
             f"`{cfg['base']}` with {cfg['model_kwargs']}, from scratch, seed {cfg['seed']}, {cfg['epochs']} epochs, "
             f"batch {cfg['batch_size']}, AdamW lr {cfg['lr']} (warm-up {cfg['warmup_epochs']} epochs, cosine to "
             f"{cfg['min_lr']}), weight decay {cfg['weight_decay']}, label smoothing {cfg['smoothing']}, drop path "
             f"{cfg['drop_path']}; {hours:.1f} h of training (wall clock). Holdout: "
             f"{10 * cfg['holdout_per_class']} training images never trained on (the only signal for judging "
             'convergence); val: the 2,000-image validation split, only reported. The shipped weights are the '
             'last epoch\'s.', '',
             f"Last {len(tail)} epochs: holdout top-1 {spread['holdout_top1'][0]:.2f}-{spread['holdout_top1'][1]:.2f}, "
             f"val top-1 {spread['val_top1'][0]:.2f}-{spread['val_top1'][1]:.2f}; final val top-1 "
             f"{curve[-1]['val_top1']:.2f}.", '',
             '| epoch | lr (end) | train loss | holdout top-1 | val top-1 |', '|---|---|---|---|---|']
    lines += [f"| {r['epoch']} | {r['lr']:.2e} | {r['train_loss']:.4f} | {r['holdout_top1']:.2f} | "
              f"{r['val_top1']:.2f} |" for r in curve]
    return lines + ['']


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
