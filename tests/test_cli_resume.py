"""`train --resume` continues a run exactly; run folders; checkpoints remember pruning and data config."""
import csv
import json

import pytest
import torch

from test_cli import _write_folder
from timm_ssm_prune.cli import main
from timm_ssm_prune.cli import train as train_mod
from timm_ssm_prune.cli.common import read_checkpoint

TINY = ['--model', 'vim_mini', '--model-kwargs', 'embed_dim=16', 'depth=3', 'd_state=4', 'prune_layers=(1,)',
        'keep_rate=0.7', '--num-classes', '3']


@pytest.fixture
def folder(tmp_path):
    return _write_folder(tmp_path / 'data', per_class=6)  # 18 train images: 3 steps of 6 per epoch


class _Crash(Exception):
    pass


def _record_lrs(monkeypatch):
    """Record the learning rate every optimiser step runs with."""
    lrs = []
    real = train_mod.create_optimizer_v2

    def create(*a, **k):
        opt = real(*a, **k)
        step = opt.step

        def recording_step(*sa, **sk):
            lrs.append(opt.param_groups[0]['lr'])
            return step(*sa, **sk)
        opt.step = recording_step
        return opt
    monkeypatch.setattr(train_mod, 'create_optimizer_v2', create)
    return lrs


def _train_args(folder, out, exp, epochs=4):
    return ['train', *TINY, '--data-dir', str(folder), '-b', '6', '--epochs', str(epochs), '--lr', '5e-3',
            '--warmup-epochs', '1', '--warmup-lr', '1e-4', '--sched', 'cosine', '--min-lr', '1e-5', '--model-ema',
            '--model-ema-decay', '0.7', '--hflip', '0.5', '--scale', '0.5', '1.0', '--no-progress',
            '--output', str(out), '--experiment', exp]


def test_resume_continues_epochs_lr_schedule_and_weights_exactly(folder, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    lrs_full = _record_lrs(monkeypatch)
    assert main(_train_args(folder, out, 'full')) == 0
    full = json.loads((out / 'full' / 'history.json').read_text())
    assert [r['epoch'] for r in full] == [0, 1, 2, 3] and len(lrs_full) == 12
    assert len(set(lrs_full)) > 6  # warm-up then cosine: the LR moves every step

    # the same run, crashing right after the checkpoint of epoch 1 is written
    monkeypatch.undo()
    lrs_a = _record_lrs(monkeypatch)
    real_save = train_mod._save_atomic

    def save_then_crash(state, path):
        real_save(state, path)
        if path.name == 'last.pth.tar' and state['epoch'] == 1:
            raise _Crash()
    monkeypatch.setattr(train_mod, '_save_atomic', save_then_crash)
    with pytest.raises(_Crash):
        main(_train_args(folder, out, 'cut'))
    monkeypatch.undo()
    lrs_b = _record_lrs(monkeypatch)
    # resume without --experiment: continues in the checkpoint's own run folder
    assert main(_train_args(folder, out, '')[:-2] + ['--resume', str(out / 'cut' / 'last.pth.tar')]) == 0
    assert sorted(p.name for p in out.iterdir()) == ['cut', 'full']

    assert len(lrs_a) == 6 and len(lrs_b) == 6
    assert lrs_a + lrs_b == lrs_full  # the LR schedule continues exactly, step by step
    cut = json.loads((out / 'cut' / 'history.json').read_text())
    assert [r['epoch'] for r in cut] == [0, 1, 2, 3]
    for a, b in zip(cut, full):
        for k in ('lr', 'train_loss', 'val_top1', 'val_loss', 'ema_val_loss'):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (a['epoch'], k)
    with open(out / 'cut' / 'summary.csv') as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == 'epoch' and [r[0] for r in rows[1:]] == ['0', '1', '2', '3']  # one header

    a = read_checkpoint(out / 'cut' / 'last.pth.tar').obj  # weights_only=True, argparse.Namespace allowed
    b = read_checkpoint(out / 'full' / 'last.pth.tar').obj
    assert a['epoch'] == b['epoch'] == 3 and a['num_updates'] == b['num_updates'] == 12
    for key in ('state_dict', 'state_dict_ema'):
        for k in b[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=1e-5, atol=1e-6, msg=lambda m: f'{key} {k}: {m}')
    assert a['best_metric'] == pytest.approx(b['best_metric']) and a['best_epoch'] == b['best_epoch']
    assert a['optimizer']['state'].keys() == b['optimizer']['state'].keys()
