"""Training-free token reduction, side by side: every reduction x importance (x class-token placement for Vim) at
-30 % and -40 % FLOPs, next to dense, ToP, naive and packed, on the shipped Animal-MNIST models.

    python benchmarks/leaderboard.py                       # both minis, ~1 h on one core; writes
                                                           # benchmarks/results/leaderboard.{json,md}
    python benchmarks/leaderboard.py --models vim_mini --levels 0.3
    python benchmarks/leaderboard.py --models vim_d12_mini --out benchmarks/results/leaderboard_vim_d12_mini

Protocol (no setting is picked on the validation split):
* every configuration gets its own keep rate, solved with the package's FLOPs counter for the target, at the
  stages of benchmarks/paper_tables.py (three evenly spaced ones on the minis, the paper's relative positions on
  the testbeds); the table prints the GFLOPs each row actually has;
* each row is scored on a *selection* set and on the validation split. Minis: the selection set is 1,000 images
  of the training split (100 per class, seed 0); the minis were trained on the whole training split, so these
  images are not unseen by the weights: they choose among training-free settings, they are not an accuracy
  estimate; only the validation column is. Testbeds (models with a ``benchmarks/results/<name>_curve.json`` from
  benchmarks/train_testbed.py): the selection set is the testbed's holdout, the 400 training images it never
  trained on.
* the recommended default is the row with the best mean selection top-1 over both FLOPs targets; its validation
  numbers are reported as they come.
* importance='random' rows are the mean and standard deviation over seeds 0, 1, 2 (importance_seed).

Rows already in ``--out``.json are reused when the package still solves them the same keep rate and FLOPs, and
re-run otherwise (e.g. after a change of the FLOPs counter); all of a model's rows are re-run when its weights file
(sha256) or its selection set changed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import timm  # noqa: E402
import timm_ssm_prune  # noqa: E402,F401
from timm_ssm_prune.data import prepare_animal_mnist  # noqa: E402
from timm_ssm_prune.flops import count_flops  # noqa: E402

sys.path.insert(0, str(ROOT / 'benchmarks'))
from paper_tables import stages_for  # noqa: E402  (the tables' stages: one schedule for both scripts)

RESULTS = ROOT / 'benchmarks' / 'results'
SEEDS = (0, 1, 2)


def load_split(folder: Path, mean, std, per_class=None, seed=0):
    """(images (N, 1, 28, 28) normalised, labels (N,)) of an ImageFolder split; ``per_class`` picks a seeded subset."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, c in enumerate(classes):
        files = sorted((folder / c).glob('*.png'))
        if per_class is not None:
            files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
        for f in files:
            xs.append(np.asarray(Image.open(f).convert('L'), dtype=np.float32) / 255.0)
            ys.append(label)
    x = torch.from_numpy(np.stack(xs)).unsqueeze(1)
    x = (x - mean[0]) / std[0]
    return x, torch.tensor(ys)


MINI_SELECTION = '1,000 training-split images (100 per class, seed 0), seen in training'


def selection_split(name: str, root: Path, cfg: dict):
    """The images that rank the rows and their description: a testbed's holdout (never trained on), else 1,000
    training-split images."""
    curve = RESULTS / f'{name}_curve.json'
    if not curve.is_file():
        return load_split(root / 'train', cfg['mean'], cfg['std'], per_class=100, seed=0), MINI_SELECTION
    from train_testbed import load_animal_mnist
    tb = json.loads(curve.read_text())['config']
    splits = load_animal_mnist(tb['holdout_per_class'], tb['holdout_seed'], str(root))
    x = (splits.holdout_x.float().unsqueeze(1) / 255.0 - cfg['mean'][0]) / cfg['std'][0]
    return (x, splits.holdout_y), (f"the testbed's holdout: {len(x)} training-split images it never trained on "
                                   f"({tb['holdout_per_class']} per class, seed {tb['holdout_seed']})")


def weights_sha256(cfg: dict) -> str:
    """sha256 of the shipped weights file the rows were measured on (a retrained model invalidates its rows)."""
    return hashlib.sha256(Path(cfg['file']).read_bytes()).hexdigest()


@torch.no_grad()
def top1(model, x, y, batch=250):
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum().item()
    return 100.0 * correct / len(x)


def configs(family: str):
    """(label, kwargs) of every row: the baselines, then the reductions with the importance metrics that matter
    (random, three seeds, as the control of every selection rule), for Vim with both class-token placements."""
    rows = [('dense', None), ('ToP (prune, clip, aligned)', {}), ('naive (paper baseline)', dict(alignment='naive')),
            ('packed (naive in order)', dict(alignment='packed'))]
    scores = ('clip', 'delta', 'cls') if family == 'vim' else ('clip', 'delta')
    reductions = [('prune', {}, ('clip', 'l1', 'random') + scores[1:]), ('merge', dict(reduction='merge'), scores),
                  ('hybrid', dict(reduction='hybrid'), scores)]
    if family == 'plainmamba':
        reductions.insert(2, ('merge-nearest', dict(reduction='merge', merge_partner='nearest'), scores))
    placements = [('', {})] if family == 'plainmamba' else [('', {}), (' raster-cls', dict(cls_position='raster'))]
    for cls_label, cls_kw in placements:
        for red_label, red_kw, imps in reductions:
            for imp in imps:
                if (red_label, imp, cls_label) == ('prune', 'clip', ''):
                    continue  # = ToP
                rows.append((f"{red_label} {imp}{cls_label}", dict(red_kw, importance=imp, **cls_kw)))
    return rows


def build(name, level, kw, seed=None):
    """The shipped model with the row's reduction, its keep rate solved for the FLOPs cut ``level``."""
    model = timm.create_model(name, pretrained=True)
    if kw is not None:
        opts = dict(kw)
        if seed is not None:
            opts['importance_seed'] = seed
        model.set_pruning(flops_reduction=level, prune_layers=stages_for(name), **opts)
    return model.eval()


def cost(model):
    """What a cached row must still match to be reused: the FLOPs counter's GFLOPs and the solved keep rate."""
    return dict(gflops=count_flops(model), keep_rate=model.prune_cfg.keep_rates[0] if model.prune_cfg.enabled else 1.0)


def evaluate(name, level, kw, data, seed=None):
    model = build(name, level, kw, seed)
    out = dict(cost(model), tokens=model.token_counts())
    out['select'] = top1(model, *data['select'])
    out['val'] = top1(model, *data['val'])
    return out


def is_current(row, name, level, kw) -> bool:
    """A cached row is reused only if the package still gives it the same keep rate and FLOPs (a change of the
    FLOPs counter or of the solver re-runs it)."""
    now = cost(build(name, level, kw))
    return now['keep_rate'] == row['keep_rate'] and abs(now['gflops'] - row['gflops']) <= 1e-9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['plainmamba_mini', 'vim_mini'])
    p.add_argument('--levels', nargs='+', type=float, default=[0.3, 0.4])
    p.add_argument('--out', default=str(RESULTS / 'leaderboard'))
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = prepare_animal_mnist()
    out_path = Path(args.out + '.json')
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    for name in args.models:
        cfg = timm.create_model(name).pretrained_cfg
        select, described = selection_split(name, root, cfg)
        data = dict(select=select, val=load_split(root / 'val', cfg['mean'], cfg['std']))
        family = 'vim' if name.startswith('vim') else 'plainmamba'
        res = results.setdefault(name, {})
        stamp = dict(selection=described, weights_sha256=weights_sha256(cfg))
        if res.get('stamp', stamp) != stamp:  # (files written before stamps existed: the minis' current weights)
            print(f"{name}: the weights or the selection set changed since {out_path} was written: every row is "
                  f"run again", flush=True)
            res.clear()
        res['stamp'] = stamp
        if 'dense' not in res or not is_current(res['dense'], name, None, None):
            res['dense'] = evaluate(name, None, None, data)
        for level in args.levels:
            for label, kw in configs(family)[1:]:
                key = f"{level}|{label}"
                if key in res and is_current(res[key], name, level, kw):
                    continue
                t0 = time.time()
                if kw.get('importance') == 'random':
                    runs = [evaluate(name, level, kw, data, seed=s) for s in SEEDS]
                    row = dict(runs[0], select=statistics.mean(r['select'] for r in runs),
                               val=statistics.mean(r['val'] for r in runs),
                               select_std=statistics.stdev(r['select'] for r in runs),
                               val_std=statistics.stdev(r['val'] for r in runs), seeds=list(SEEDS))
                else:
                    row = evaluate(name, level, kw, data)
                row['kwargs'] = kw
                res[key] = row
                print(f"{name} -{level:.0%} {label:32s} select {row['select']:6.2f}  val {row['val']:6.2f}  "
                      f"{row['gflops']:.4f} G  keep {row['keep_rate']}  ({time.time() - t0:.0f} s)", flush=True)
                out_path.write_text(json.dumps(results, indent=1))
    out_path.write_text(json.dumps(results, indent=1))
    Path(args.out + '.md').write_text(render(results, args.levels))
    print(render(results, args.levels))


def render(results, levels):
    lines = []
    for name, res in results.items():
        dense = res['dense']
        lines.append(f"### {name} (dense: {dense['gflops']:.4f} GFLOPs, selection {dense['select']:.2f}, "
                     f"val {dense['val']:.2f})\n")
        lines.append(f"Selection set: {res['stamp']['selection']}; stages after blocks "
                     f"{list(stages_for(name))}.\n")
        lines.append('Modes: `prune` (ToP: dropped), `merge` (folded into the most similar kept token), `hybrid` '
                     '(half merged, half dropped); importance `clip` (the paper), `l1`, `delta` (timescale), `cls` '
                     '(contribution to the class token), `random`; `raster-cls`: the class token at its original '
                     'place (Vim).\n')
        head = '| method | ' + ' | '.join(f"-{lv:.0%}: GFLOPs | keep | select | **val**" for lv in levels) + \
               ' | mean select |'
        lines += [head, '|' + '---|' * (2 + 4 * len(levels))]
        labels = sorted({k.split('|', 1)[1] for k in res if '|' in k},
                        key=lambda lab: -statistics.mean(res.get(f"{lv}|{lab}", {'select': 0})['select']
                                                         for lv in levels))
        for lab in labels:
            cells = []
            sel = []
            for lv in levels:
                r = res.get(f"{lv}|{lab}")
                if r is None:
                    cells.append('– | – | – | –')
                    continue
                sel.append(r['select'])
                val = f"{r['val']:.2f}" + (f" ± {r['val_std']:.2f}" if 'val_std' in r else '')
                cells.append(f"{r['gflops']:.4f} | {r['keep_rate']} | {r['select']:.2f} | {val}")
            lines.append(f"| {lab} | " + ' | '.join(cells) + f" | {statistics.mean(sel) if sel else 0:.2f} |")
        lines.append('')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    main()
