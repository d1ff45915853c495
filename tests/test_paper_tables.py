"""benchmarks/paper_tables.py: the testbeds' stage positions and the training-curve section of RESULTS.md."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def pt():
    spec = importlib.util.spec_from_file_location('paper_tables', ROOT / 'benchmarks' / 'paper_tables.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paper_stages_scale_the_papers_positions(pt):
    # at the paper's own depths the positions are the paper's (ToP: Vim-S 5, 10, 15 of 24; PlainMamba-L3 9, 18, 27)
    assert pt.paper_stages('vim', 24) == (5, 10, 15)
    assert pt.paper_stages('plainmamba', 36) == (9, 18, 27)
    # the 12-block testbeds: 12 * 5/24 = 2.5 and 12 * 15/24 = 7.5 round half to even (Python's round)
    assert pt.paper_stages('vim', 12) == (2, 5, 8)
    assert pt.paper_stages('plainmamba', 12) == (3, 6, 9)


def _curve(epochs, n):
    cfg = dict(base='vim_mini', model_kwargs=dict(depth=12), seed=0, epochs=epochs, batch_size=64, lr=2e-3,
               warmup_epochs=2, min_lr=1e-6, weight_decay=0.05, smoothing=0.1, drop_path=0.1, holdout_per_class=40)
    rows = [dict(epoch=e + 1, lr=1e-3 / (e + 1), train_loss=2.0 - 0.1 * e, holdout_top1=50.0 + 5 * e,
                 val_top1=51.0 + 5 * e, total_hours=0.25 * (e + 1)) for e in range(n)]
    return dict(name='vim_d12_mini', config=cfg, curve=rows)


def test_testbed_curve_section(pt, tmp_path):
    (tmp_path / 'vim_d12_mini_curve.json').write_text(json.dumps(_curve(6, 6)))
    lines = pt.testbed_curve_lines('vim_d12_mini', tmp_path, last=3)
    text = '\n'.join(lines)
    assert lines[0] == '## Testbed vim_d12_mini: training curve'
    # the last three epochs (4, 5, 6): holdout 65, 70, 75; val 66, 71, 76
    assert 'holdout top-1 65.00-75.00' in text
    assert 'val top-1 66.00-76.00; final val top-1 76.00' in text
    assert '400 training images' in text and '1.5 h' in text
    assert sum(1 for ln in lines if ln.startswith('| ') and ln[2].isdigit()) == 6
    assert '| 6 | 1.67e-04 | 1.5000 | 75.00 | 76.00 |' in lines
    assert pt.testbed_curve_lines('vim_mini', tmp_path) == []  # no curve: not a testbed


def test_testbed_curve_of_an_unfinished_training_is_an_error(pt, tmp_path):
    (tmp_path / 'vim_d12_mini_curve.json').write_text(json.dumps(_curve(30, 17)))
    with pytest.raises(ValueError, match='17 epochs in the curve but the recipe has 30'):
        pt.testbed_curve_lines('vim_d12_mini', tmp_path)


def test_report_aggregates_the_jobs(pt, tmp_path, capsys):
    """write_results on made-up job results for vim_mini: every cell is the right job's number (fine-tunes: mean ±
    sample std over seeds, the recovery table from each run's history), no job is read twice or missed."""
    import argparse
    import statistics
    args = argparse.Namespace(models=['vim_mini'], finetune_models=['vim_mini'], no_finetune=False,
                              finetune_levels=[0.3], seeds=[0, 1, 2], finetune_epochs=2, finetune_lr=2e-4,
                              distill_weight=0.5, finetune_steps=None, work=str(tmp_path),
                              results=str(tmp_path / 'RESULTS.md'), plot=str(tmp_path / 'plots' / 'p.png'))
    settings, jobs = pt.plan(args.models, args)
    assert sum(j['kind'] == 'train' for j in jobs) == 3 * len(pt.FINETUNED)
    assert len({pt.job_key(j) for j in jobs}) == len(jobs)
    results = {}
    for i, j in enumerate(jobs):  # a distinct number per job: 10.00, 10.25, ...
        top1 = 10 + 0.25 * i
        res = dict(top1=top1)
        if j['kind'] == 'train':
            res['history'] = [dict(val_top1=top1 - 5), dict(val_top1=top1)]
        results[pt.job_key(j)] = res
    pt.write_results(args, settings, results, tput={})
    text = (tmp_path / 'RESULTS.md').read_text()

    def cell(vals):
        return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f} (n={len(vals)})"

    for lab in pt.FINETUNED:
        kw = pt.method_kwargs(settings, 'vim_mini', 0.3, lab)
        runs = [results[pt.job_key(j)]['top1'] for j in jobs if j['kind'] == 'train' and j['kwargs'] == kw]
        assert len(runs) == 3
        zero = results[pt.job_key(dict(kind='eval', model='vim_mini', kwargs=kw))]['top1']
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {pt._method_name('vim_mini', lab)} | 3"))
        assert row.endswith(f"| {zero:.2f} | {cell([r - 5 for r in runs])} | {cell(runs)} |"), row
    dense = results[pt.job_key(dict(kind='eval', model='vim_mini', kwargs={}))]['top1']
    assert f"| dense | 0 % | " in text and f"| {dense:.2f} | – | – |" in text
    rnd = [results[pt.job_key(j)]['top1'] for j in jobs if j['kwargs'].get('importance') == 'random']
    assert f"| random | {cell(rnd)} |" in text and len(rnd) == len(pt.RANDOM_SEEDS)
    # the claims: ToP vs naive zero-shot at -30 %, and fine-tuned (Welch's standard error over the three seeds)
    top, naive = (pt.method_kwargs(settings, 'vim_mini', 0.3, lab) for lab in ('ToP (aligned)',
                                                                           'naive (ViT-style, score order)'))
    a, b = (results[pt.job_key(dict(kind='eval', model='vim_mini', kwargs=kw))]['top1'] for kw in (top, naive))
    se = pt.zero_shot_se(a, b)
    assert f"| ToP {a:.2f} vs naive {b:.2f} at -30 % | {a - b:+.2f} | {se:.2f} | {pt.verdict(a - b, se)} |" in text
    runs = {}  # seed -> top-1, per method
    for j in jobs:
        if j['kind'] == 'train':
            runs.setdefault(json.dumps(j['kwargs'], sort_keys=True), {})[j['seed']] = results[pt.job_key(j)]['top1']
    ra, rb = ([runs[json.dumps(kw, sort_keys=True)][sd] for sd in (0, 1, 2)] for kw in (top, naive))
    d = [x - y for x, y in zip(ra, rb)]  # paired by seed; t(0.975, 2) = 4.303
    se = statistics.stdev(d) / 3 ** 0.5
    row = f"| {statistics.mean(d):+.2f} | {se:.2f} | {pt.verdict(statistics.mean(d), se, 4.303)} |"
    assert f"| aligned beats naive, fine-tuned | ToP {cell(ra)} vs naive {cell(rb)} at -30 % {row}" in text
    # the curve: Vim's FLOPs do not depend on the alignment, so each naive / packed point meets ToP's own point
    layers = list(pt.stages_for('vim_mini'))
    for al in ('naive', 'packed'):
        for rate in (0.5, 0.6, 0.7, 0.8, 0.9):
            t, o = (results[pt.job_key(dict(kind='eval', model='vim_mini', kwargs=dict(
                prune_layers=layers, keep_rate=rate, alignment=x)))]['top1'] for x in ('aligned', al))
            assert f"{t:.2f} vs {al} keep {rate} {o:.2f} | {t - o:+.2f} | {pt.zero_shot_se(t, o):.2f} |" in text
    assert text.count("| ToP's curve dominates |") == 10
    # importance: clip against each of the five others, one row each
    assert text.count("| clip is the best importance |") == 5
    # the made-up dense top-1 is not the 77.95 of models/facts.py: the report says so
    assert f"WARNING: vim_mini: the validate job gives {dense:.2f} % but models/facts.py" in capsys.readouterr().err


def test_claim_rules(pt):
    # binomial standard error of one top-1 on 2,000 images: 90 % -> sqrt(.9 * .1 / 2000) = 0.6708 points
    assert abs(pt.zero_shot_se(90.0) - 0.67082) < 1e-4
    assert abs(pt.zero_shot_se(90.0, 50.0) - 100 * (0.09 / 2000 + 0.25 / 2000) ** 0.5) < 1e-9
    assert pt.verdict(2.1, 1.0) == 'holds' and pt.verdict(-2.1, 1.0) == 'reversed'
    assert pt.verdict(1.9, 1.0) == pt.verdict(-1.9, 1.0) == 'within noise'
    assert pt.verdict(4.0, 1.0, crit=pt.t975(2)) == 'within noise' and pt.t975(2) == 4.303
    diff, se, crit = pt.paired([80.0, 82.0, 81.0], [78.0, 79.0, 80.0])  # differences 2, 3, 1
    assert (diff, se, crit) == (2.0, 1.0 / 3 ** 0.5, 4.303)
    pts = [(0.5, 2.0, 60.0), (0.6, 3.0, 70.0), (0.7, 4.0, 90.0)]
    assert pt._interpolate(pts, 3.5) == 80.0 and pt._interpolate(pts, 2.0) == 60.0
    assert pt._interpolate(pts, 1.9) is None and pt._interpolate(pts, 4.1) is None


def test_interim_fine_tune_cells_say_how_many_seeds_are_in(pt):
    assert pt.fmt_seeds([], 3) == 'pending'
    assert pt.fmt_seeds([63.05], 3) == '63.05 (1 of 3 seeds)'
    assert pt.fmt_seeds([63.05, 63.35], 3) == '63.20 ± 0.21 (2 of 3 seeds)'  # sample std of the two: 0.2121
    assert pt.fmt_seeds([1.0, 2.0, 3.0], 3) == '2.00 ± 1.00 (n=3)'  # complete: the usual cell


def test_interim_report_marks_partial_fine_tunes_and_calls_no_fine_tuned_claim(pt, tmp_path):
    import argparse
    args = argparse.Namespace(models=['vim_mini'], finetune_models=['vim_mini'], no_finetune=False,
                              finetune_levels=[0.3], seeds=[0, 1, 2], finetune_epochs=2, finetune_lr=2e-4,
                              distill_weight=0.5, finetune_steps=None, work=str(tmp_path), cached_only=True,
                              results=str(tmp_path / 'RESULTS.md'), plot=str(tmp_path / 'plots' / 'p.png'))
    settings, jobs = pt.plan(args.models, args)
    results = {}
    for j in jobs:  # every zero-shot job, the fine-tunes of seeds 0 and 1 only
        if j['kind'] == 'eval':
            results[pt.job_key(j)] = dict(top1=50.0)
        elif j['seed'] < 2:
            results[pt.job_key(j)] = dict(top1=60.0 + j['seed'], history=[dict(val_top1=55.0), dict(val_top1=60.0)])
    pt.write_results(args, settings, results, tput={})
    text = (tmp_path / 'RESULTS.md').read_text()
    assert '**Interim report**' in text
    # final top-1 (60, 61): Table 1 (every fine-tuned method) and Table 5 (naive and ToP); the recovery table's last
    # epoch reads each run's history (60 for both seeds)
    assert text.count('| 60.50 ± 0.71 (2 of 3 seeds) |') == len(pt.FINETUNED) + 2
    assert text.count('| 55.00 ± 0.00 (2 of 3 seeds) | 60.00 ± 0.00 (2 of 3 seeds) |') == len(pt.FINETUNED)
    assert 'aligned beats naive, fine-tuned' not in text
    # once every job is in, a --cached-only report is the final one: no interim banner, the fine-tuned claim called
    for j in jobs:
        if j['kind'] == 'train' and j['seed'] == 2:
            results[pt.job_key(j)] = dict(top1=62.0, history=[dict(val_top1=55.0), dict(val_top1=62.0)])
    args.pending = 0
    pt.write_results(args, settings, results, tput={})
    text = (tmp_path / 'RESULTS.md').read_text()
    assert '**Interim report**' not in text and 'aligned beats naive, fine-tuned' in text


def test_plan_runs_a_setting_two_tables_share_once(pt):
    """vim_d12_mini's ToP keep rate at -30 % is 0.8, a point of the curve too: the two tables read one job (two
    threads running it at once would race on its result file)."""
    import argparse
    args = argparse.Namespace(no_finetune=True, finetune_models=[])
    settings, jobs = pt.plan(['vim_d12_mini'], args)
    keys = [pt.job_key(j) for j in jobs]
    assert len(set(keys)) == len(keys)
    top = pt.method_kwargs(settings, 'vim_d12_mini', 0.3, 'ToP (aligned)')
    assert top == dict(prune_layers=[2, 5, 8], keep_rate=0.8, alignment='aligned')
    curve = dict(prune_layers=list(pt.stages_for('vim_d12_mini')), keep_rate=0.8, alignment='aligned')
    assert pt.job_key(dict(kind='eval', model='vim_d12_mini', kwargs=curve)) in keys
    assert sum(j['kwargs'] == top for j in jobs) == 1


def test_throughput_takes_the_median_of_per_process_ratios(pt, monkeypatch):
    """Table 5's speedup: the median over processes of each process's ratio to dense (not the ratio of medians), with
    the range; img/s the median of the processes' medians; a child that fails is an error naming the model."""
    settings = {'vim_mini': {r: {'ToP (aligned)': ((2, 3, 4), 0.75), 'naive (ViT-style, score order)': ((2, 4), 0.8)}
                             for r in pt.LEVELS}}
    out = pt.measure_throughput(['vim_mini'], settings, batch=2, repeats=1, rounds=1)  # real child processes
    keys = {'dense'} | {f'{lab}@{r}' for r in pt.LEVELS for lab in ('ToP (aligned)', 'naive (ViT-style, score order)')}
    assert keys <= set(out['vim_mini']) and all(out['vim_mini'][k] > 0 for k in keys)
    assert out['vim_mini']['speedup']['dense'] == 1.0
    assert (out['rounds'], out['repeats'], out['batch'], out['threads']) == (1, 1, 2, 1)

    # three made-up processes, speeds varying between them: ToP/dense ratios 2.5, 1.2, 1.6
    procs = iter([{'dense': 10.0, 'top': 25.0}, {'dense': 20.0, 'top': 24.0}, {'dense': 30.0, 'top': 48.0}])

    class Done:
        returncode, stderr = 0, ''

        def __init__(self):
            self.stdout = json.dumps(next(procs))

    monkeypatch.setattr(pt.subprocess, 'run', lambda *a, **k: Done())
    out = pt.measure_throughput(['vim_mini'], settings, rounds=3)['vim_mini']
    assert (out['dense'], out['top']) == (20.0, 25.0)  # medians of img/s, whose ratio would say 1.25
    assert out['speedup']['top'] == 1.6 and out['speedup_range']['top'] == (1.2, 2.5)

    class Failed:
        returncode, stdout, stderr = 1, '', 'ValueError: keep_rate must be in (0, 1]'

    monkeypatch.setattr(pt.subprocess, 'run', lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match='throughput of vim_mini failed'):
        pt.measure_throughput(['vim_mini'], settings, rounds=1)
