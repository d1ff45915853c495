"""Checkpoints on the command line: recorded pruning and data config, one `error:` line for every bad file,
seeds for random importance, global flags and the fast --help."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from test_cli import _write_folder
from timm_ssm_prune.cli import main

ROOT = Path(__file__).resolve().parent.parent
VIM_KW = dict(embed_dim=16, depth=3, d_state=4, num_classes=3)
PM_KW = dict(embed_dim=16, depth=2, num_classes=3)
VIM = ['--model', 'vim_mini', '--model-kwargs', 'embed_dim=16', 'depth=3', 'd_state=4', '--num-classes', '3']
PM = ['--model', 'plainmamba_mini', '--model-kwargs', 'embed_dim=16', 'depth=2', '--num-classes', '3']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp('cli_ck') / 'data', per_class=4)


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):
    """A pruned vim_mini fine-tuned for one epoch with explicit (non-default) data statistics."""
    out = tmp_path_factory.mktemp('cli_ck_run')
    st = out / 'final.safetensors'
    assert main(['train', *VIM[:-2], 'prune_layers=(1,)', 'keep_rate=0.6', 'importance=l2', '--num-classes', '3',
                 '--data-dir', str(data), '-b', '6', '--epochs', '1', '--lr', '1e-2', '--no-aug',
                 '--mean', '0.3', '--std', '0.2', '--output', str(out), '--experiment', 'run', '--no-progress',
                 '--save-safetensors', str(st)]) == 0
    return out / 'run' / 'last.pth.tar', st


def _validate(capsys, *argv):
    assert main(['validate', *argv]) == 0
    cap = capsys.readouterr()
    return json.loads(cap.out), cap.err


def test_checkpoint_records_pruning_and_data_config(trained):
    from timm_ssm_prune.cli.common import read_checkpoint
    ck = read_checkpoint(str(trained[0]))
    assert ck.model_kwargs == dict(embed_dim=16, depth=3, d_state=4, num_classes=3, prune_layers=[1], keep_rate=0.6,
                                   importance='l2', alignment='aligned')
    assert ck.data_config['mean'] == pytest.approx([0.3]) and ck.data_config['std'] == pytest.approx([0.2])
    assert ck.data_config['input_size'] == [1, 28, 28] and ck.data_config['num_classes'] == 3
    assert ck.arch == 'vim_mini' and ck.obj['epoch'] == 0
    st = read_checkpoint(str(trained[1]))  # the safetensors export records the same in its metadata
    assert st.model_kwargs == ck.model_kwargs and st.data_config == ck.data_config


@pytest.mark.parametrize('which', [0, 1])
def test_pruned_finetuned_checkpoint_validates_with_its_pruning(trained, data, capsys, which):
    path = str(trained[which])
    res, err = _validate(capsys, '--model', 'vim_mini', '--checkpoint', path, '--data-dir', str(data))
    assert res['pruning'] == 'after block 1 keep 0.6; importance=l2, alignment=aligned'
    assert err == ''  # no fallback warning: the checkpoint has its data config
    assert res['data_config']['mean'] == pytest.approx([0.3]) and res['data_config']['std'] == pytest.approx([0.2])
    assert res['data_config']['source'] == f'checkpoint {path}'
    # the same numbers as the model built explicitly with that pruning and those statistics
    explicit, _ = _validate(capsys, *VIM[:-2], 'prune_layers=(1,)', 'keep_rate=0.6', 'importance=l2',
                            '--num-classes', '3', '--checkpoint', path, '--data-dir', str(data))
    assert explicit['loss'] == res['loss'] and explicit['pruning'] == res['pruning']
    # an explicit flag that disagrees wins, with a notice naming it
    dense, err = _validate(capsys, '--model', 'vim_mini', '--checkpoint', path, '--data-dir', str(data),
                           '--model-kwargs', 'prune_layers=()')
    assert dense['pruning'] == 'dense (no pruning)' and dense['loss'] != res['loss']
    assert 'notice:' in err and 'prune_layers=()' in err and 'keep_rate' in err


def test_flops_and_benchmark_use_the_checkpoint_pruning(trained, capsys):
    assert main(['flops', '--model', 'vim_mini', '--checkpoint', str(trained[0]), '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s['after_block'] for s in out['stages']] == [1] and out['stages'][0]['keep_rate'] == 0.6
    res = trained[0].parent / 'bench.json'
    assert main(['benchmark', '--model', 'vim_mini', '--checkpoint', str(trained[0]), '-b', '2', '--repeats', '1',
                 '--warmup', '0', '--no-memory', '--results-file', str(res), '--seed', '5']) == 0
    rows = json.loads(res.read_text())
    assert rows[1]['tokens'] == [196, 118] and rows[1]['seed'] == 5


def test_checkpoint_without_data_config_warns_and_records_normalisation(data, tmp_path, capsys):
    path = tmp_path / 'plain.safetensors'
    save_file(timm.create_model('vim_mini', **VIM_KW).state_dict(), str(path))
    res, err = _validate(capsys, *VIM, '--checkpoint', str(path), '--data-dir', str(data))
    assert err.count('warning:') == 1 and 'records no data config' in err and str(path) in err
    assert res['data_config']['mean'] == [0.2731] and res['data_config']['std'] == [0.4058]
    assert res['data_config']['source'] == 'pretrained config of vim_mini.animal_mnist'
    res, err = _validate(capsys, *VIM, '--checkpoint', str(path), '--data-dir', str(data), '--mean', '0.5',
                         '--std', '0.25')
    assert err == '' and res['data_config']['mean'] == [0.5] and res['data_config']['source'] == 'flags --mean/--std'


def test_seed_makes_random_importance_reproducible(data, tmp_path, capsys):
    path = tmp_path / 'w.safetensors'
    save_file(timm.create_model('vim_mini', **VIM_KW).state_dict(), str(path))
    argv = [*VIM[:-2], 'prune_layers=(1,)', 'keep_rate=0.3', 'importance=random', '--num-classes', '3',
            '--data-dir', str(data), '-b', '12', '--checkpoint', str(path), '--mean', '0.3', '--std', '0.3']
    a, _ = _validate(capsys, *argv, '--seed', '3')
    torch.manual_seed(123)  # whatever ran before
    b, _ = _validate(capsys, *argv, '--seed', '3')
    c, _ = _validate(capsys, *argv, '--seed', '4')
    assert a['seed'] == 3 and c['seed'] == 4
    assert a['loss'] == b['loss']
    assert c['loss'] != a['loss']  # the seed does drive the random scores


# ------------------------------------------------------------------------------------------------ bad files

def _bad_files(tmp: Path):
    files = {}
    sd = timm.create_model('vim_mini', **VIM_KW).state_dict()
    torch.save({'state_dict': sd, 'epoch': 0}, tmp / 'good.pth.tar')
    raw = (tmp / 'good.pth.tar').read_bytes()
    (tmp / 'truncated.pth.tar').write_bytes(raw[:len(raw) // 2])
    files['truncated .pth'] = (tmp / 'truncated.pth.tar', 'truncated or corrupt')
    save_file(sd, str(tmp / 'good.safetensors'))
    raw = (tmp / 'good.safetensors').read_bytes()
    (tmp / 'truncated.safetensors').write_bytes(raw[:len(raw) // 2])
    files['truncated .safetensors'] = (tmp / 'truncated.safetensors', 'truncated or corrupt')
    (tmp / 'notes.pth').write_text('these are my notes, not a checkpoint\n' * 20)
    files['not a checkpoint'] = (tmp / 'notes.pth', 'not a PyTorch checkpoint or a safetensors file')
    torch.save([1, 2, 3], tmp / 'list.pth')
    files['a pickled list'] = (tmp / 'list.pth', 'is not a checkpoint')
    save_file(timm.create_model('vim_mini', **dict(VIM_KW, num_classes=5)).state_dict(), str(tmp / 'head5.safetensors'))
    files['head size'] = (tmp / 'head5.safetensors',
                          'has a 5-class head, the model has 3 classes: pass --num-classes 5')
    save_file(timm.create_model('plainmamba_mini', **PM_KW).state_dict(), str(tmp / 'pm.safetensors'))
    files['PlainMamba checkpoint to a Vim'] = (tmp / 'pm.safetensors', 'is a PlainMamba checkpoint, but --model '
                                                                         'vim_mini is a Vim model')
    files['missing'] = (tmp / 'missing.pth', 'checkpoint not found')
    return files


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory):
    return _bad_files(tmp_path_factory.mktemp('bad'))


def _one_error_line(capsys, command, path, match):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f'timm-ssm-prune {command}: error: ')
    assert str(path) in lines[0] and match in lines[0], lines[0]


CASES = ['truncated .pth', 'truncated .safetensors', 'not a checkpoint', 'a pickled list', 'head size',
         'PlainMamba checkpoint to a Vim', 'missing']


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('command', ['validate', 'train', 'benchmark', 'visualize', 'flops'])
def test_bad_checkpoint_is_one_error_line(bad_files, data, tmp_path, capsys, case, command):
    path, match = bad_files[case]
    extra = {'validate': ['--data-dir', str(data)],
             'visualize': ['--data-dir', str(data), '-o', str(tmp_path / 'k.png')],
             'train': ['--data-dir', str(data), '--output', str(tmp_path), '--epochs', '1'],
             'benchmark': [], 'flops': []}[command]
    kw = ['prune_layers=(1,)', 'keep_rate=0.5'] if command in ('benchmark', 'visualize') else []
    flag = '--initial-checkpoint' if command == 'train' and case == 'head size' else '--checkpoint'
    assert main([command, *VIM[:-2], *kw, '--num-classes', '3', flag, str(path), *extra]) == 2
    _one_error_line(capsys, command, path, match)


def test_resume_from_a_bad_file_is_one_error_line(bad_files, data, tmp_path, capsys):
    path, match = bad_files['truncated .pth']
    assert main(['train', *VIM, '--data-dir', str(data), '--output', str(tmp_path), '--resume', str(path)]) == 2
    _one_error_line(capsys, 'train', path, match)
    good = path.parent / 'good.safetensors'  # weights only: nothing to resume
    assert main(['train', *VIM, '--data-dir', str(data), '--output', str(tmp_path), '--resume', str(good)]) == 2
    _one_error_line(capsys, 'train', good, 'holds no training state')


def test_cross_family_names_both_families(tmp_path, capsys):
    vim = tmp_path / 'vim.pth'
    torch.save({'state_dict': timm.create_model('vim_mini', **VIM_KW).state_dict()}, vim)
    assert main(['flops', *PM, '--checkpoint', str(vim)]) == 2
    _one_error_line(capsys, 'flops', vim, 'is a Vim checkpoint, but --model plainmamba_mini is a PlainMamba model')
    # upstream key names are recognised too (official Vim: mixer.A_b_log; official PlainMamba: backbone.*)
    from timm_ssm_prune.cli.common import checkpoint_family
    assert checkpoint_family(['layers.0.mixer.A_b_log', 'layers.0.mixer.in_proj.weight']) == 'vim'
    assert checkpoint_family(['backbone.layers.0.mamba.in_proj.weight', 'backbone.patch_embed.proj.weight']) \
        == 'plainmamba'
    assert checkpoint_family(['fc.weight']) is None


def test_pretrained_failure_is_one_error_line(tmp_path, capsys):
    from timm_ssm_prune import hub
    folder = tmp_path / 'local'
    folder.mkdir()
    m = timm.create_model('vim_mini', **VIM_KW)
    (folder / 'config.json').write_text(hub.config_json_text(hub.hub_config(m)))
    save_file(m.state_dict(), str(folder / 'model.safetensors'))
    raw = (folder / 'model.safetensors').read_bytes()
    (folder / 'model.safetensors').write_bytes(raw[:len(raw) // 3])
    assert main(['flops', '--model', f'local-dir:{folder}', '--pretrained']) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith('timm-ssm-prune flops: error: cannot load the pretrained weights of '
                                               f'local-dir:{folder}'), err


# ------------------------------------------------------------------------------------------------ convert

@pytest.mark.parametrize('known', [True, False])
def test_convert_card_claims_only_for_known_releases(tmp_path, capsys, known):
    from timm_ssm_prune import hub
    shipped = ROOT / 'timm_ssm_prune' / 'weights' / 'vim_mini.animal_mnist.safetensors'
    if known:
        src = shipped
    else:  # the same architecture, other weights
        src = tmp_path / 'mine.safetensors'
        save_file(timm.create_model('vim_mini').state_dict(), str(src))
    out = tmp_path / 'conv'
    assert main(['convert', '--model', 'vim_mini', '--checkpoint', str(src), '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    card = (out / 'README.md').read_text()
    meta = hub.parse_front_matter(card)
    if known:
        assert meta['datasets'] == ['animal-mnist'] and '77.95' in card and 'trained on Animal-MNIST' in card
        assert 'user-supplied' not in card and 'release shipped with timm-ssm-prune' in printed
    else:
        assert not meta.get('datasets') and 'user-supplied weights' in card and 'user-supplied' in printed
        for claim in ('77.95', 'Animal-MNIST (10', 'trained on Animal-MNIST', 'ImageNet', 'training-free'):
            assert claim not in card, claim


# ------------------------------------------------------------------------------------------------ entry point

def test_global_flags_before_any_subcommand(tmp_path, capsys):
    script = tmp_path / 'fake.py'
    script.write_text("import logging, timm\nprint('level', logging.getLogger().level)\n"
                      "print(type(timm.create_model('vim_mini')).__name__)\n")
    assert main(['-v', 'run-timm', str(script)]) == 0
    out = capsys.readouterr().out
    assert 'Vim' in out
    assert main(['--verbose', 'flops', '--model', 'vim_mini', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['tokens'] == 197
    assert main(['-v', 'models', 'vim_mini*']) == 0
    assert 'vim_mini' in capsys.readouterr().out


def test_help_does_not_import_torch():
    code = ("import sys, timm_ssm_prune_cli as c; rc = c.main(['--help']); "
            "print('HEAVY', sorted(m for m in ('torch', 'timm', 'timm_ssm_prune') if m in sys.modules), rc)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    assert 'HEAVY [] 0' in proc.stdout
    for name in ('validate', 'train', 'convert', 'run-timm'):
        assert name in proc.stdout
