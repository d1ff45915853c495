"""`train --resume` continues a run exactly; run folders; checkpoints remember pruning and data config."""
import csv
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

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


def _crash_after_epoch(monkeypatch, epoch):
    """Make the run raise _Crash right after the checkpoint of ``epoch`` is written."""
    real_save = train_mod._save_atomic

    def save_then_crash(state, path):
        real_save(state, path)
        if path.name == 'last.pth.tar' and state['epoch'] == epoch:
            raise _Crash()
    monkeypatch.setattr(train_mod, '_save_atomic', save_then_crash)


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
    _crash_after_epoch(monkeypatch, 1)
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


KD = ['--model', 'vim_mini', '--model-kwargs', 'embed_dim=16', 'depth=2', 'd_state=4', 'prune_layers=(1,)',
      'keep_rate=0.5', '--num-classes', '3']


@pytest.fixture
def dense_ckpt(tmp_path):
    torch.manual_seed(7)
    m = timm.create_model('vim_mini', embed_dim=16, depth=2, d_state=4, num_classes=3)
    path = tmp_path / 'dense.safetensors'
    save_file(m.state_dict(), str(path))
    return path


def _kd_args(folder, out, exp, *extra, model=KD):
    return ['train', *model, '--data-dir', str(folder), '-b', '6', '--epochs', '2', '--lr', '5e-3', '--warmup-epochs',
            '0', '--distill', '--distill-weight', '0.7', '--kd-temperature', '2', '--no-val', '--no-progress',
            '--output', str(out), '--experiment', exp, *extra]




@pytest.mark.parametrize('source', ['initial-checkpoint', 'pretrained', 'seeded-init'])
def test_resume_with_distill_keeps_the_initial_dense_teacher(folder, tmp_path, monkeypatch, dense_ckpt, source):
    """The resumed run distils from the run's initial weights (not the resumed, fine-tuned ones): its weights after
    epoch 1 equal those of the uninterrupted run."""
    out = tmp_path / 'out'
    init = ['--initial-checkpoint', str(dense_ckpt)] if source == 'initial-checkpoint' else []
    # the shipped Animal-MNIST weights with a new 3-class head (drawn from the seeded generator)
    model = ['--model', 'vim_mini', '--pretrained', '--model-kwargs', 'prune_layers=(1,)', 'keep_rate=0.5',
             '--num-classes', '3'] if source == 'pretrained' else KD
    assert main(_kd_args(folder, out, 'full', *init, model=model)) == 0
    _crash_after_epoch(monkeypatch, 0)
    with pytest.raises(_Crash):
        main(_kd_args(folder, out, 'cut', *init, model=model))
    monkeypatch.undo()
    assert main(_kd_args(folder, out, 'cut', '--resume', str(out / 'cut' / 'last.pth.tar'), model=model)) == 0

    a = read_checkpoint(out / 'cut' / 'last.pth.tar').obj
    b = read_checkpoint(out / 'full' / 'last.pth.tar').obj
    assert a['epoch'] == b['epoch'] == 1
    for k in b['state_dict']:
        torch.testing.assert_close(a['state_dict'][k], b['state_dict'][k], rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f'{k}: {m}')
    assert a['teacher'] == b['teacher'] and len(b['teacher']['sha256']) == 64


def test_resume_with_distill_fails_clearly_when_the_teacher_is_gone_or_changed(folder, tmp_path, dense_ckpt,
                                                                                capsys):
    out = tmp_path / 'out'
    assert main(_kd_args(folder, out, 'run', '--initial-checkpoint', str(dense_ckpt), '--epochs', '1')) == 0
    last = out / 'run' / 'last.pth.tar'
    resume = _kd_args(folder, out, 'run', '--resume', str(last))
    capsys.readouterr()

    moved = tmp_path / 'moved.safetensors'
    dense_ckpt.rename(moved)  # the initial checkpoint is gone
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert 'error:' in err and str(dense_ckpt) in err and 'not found' in err and '--teacher-checkpoint' in err

    torch.manual_seed(8)  # other weights under the same name
    save_file(timm.create_model('vim_mini', embed_dim=16, depth=2, d_state=4, num_classes=3).state_dict(),
              str(dense_ckpt))
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert 'error:' in err and str(dense_ckpt) in err and 'sha256' in err and '--teacher-checkpoint' in err
    assert main(resume + ['--teacher-checkpoint', str(dense_ckpt)]) == 2  # the explicit file is checked too
    assert 'sha256' in capsys.readouterr().err

    # a checkpoint that records no teacher (the run did not distil, or an older version wrote it)
    obj = read_checkpoint(last).obj
    del obj['teacher']
    legacy = tmp_path / 'legacy.pth.tar'
    torch.save(obj, legacy)
    assert main(_kd_args(folder, out, 'legacy', '--resume', str(legacy))) == 2
    err = capsys.readouterr().err
    assert 'error:' in err and 'records no distillation teacher' in err and '--teacher-checkpoint' in err

    # the moved file, named explicitly, is the run's teacher: the run goes on
    assert main(resume + ['--teacher-checkpoint', str(moved)]) == 0
    assert read_checkpoint(last).obj['epoch'] == 1
