"""The command line on tiny models and a tiny ImageFolder: numbers against direct computations, training, DDP."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import timm
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.data import create_transform, resolve_data_config

import timm_ssm_prune  # noqa: F401
from timm_ssm_prune.cli import main

TINY_VIM = ['--model', 'vim_mini', '--model-kwargs', 'embed_dim=16', 'depth=3', 'd_state=4', '--num-classes', '3']
ROOT = Path(__file__).resolve().parent.parent


def _write_folder(root: Path, per_class=8, classes=('0_a', '1_b', '2_c'), splits=('train', 'val'), seed=0,
                  identical=False):
    """Grey 28x28 PNGs whose class is a learnable brightness pattern (or one image repeated)."""
    rng = np.random.default_rng(seed)
    base = (rng.random((28, 28)) * 255).astype(np.uint8)
    for split in splits:
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                if identical:
                    img = base
                else:
                    img = (rng.random((28, 28)) * 80).astype(np.uint8)
                    img[:, c * 9:(c + 1) * 9] += 150  # class c lights up a vertical band
                Image.fromarray(img, mode='L').save(d / f'{i}.png')
    return root


@pytest.fixture
def folder(tmp_path):
    return _write_folder(tmp_path / 'data')


@pytest.fixture
def tiny_ckpt(tmp_path):
    m = timm.create_model('vim_mini', embed_dim=16, depth=3, d_state=4, num_classes=3)
    path = tmp_path / 'tiny.safetensors'
    save_file(m.state_dict(), str(path))
    return path


def test_validate_equals_direct_computation(folder, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / 'res.json'
    rc = main(['validate', *TINY_VIM, '--checkpoint', str(tiny_ckpt), '--data-dir', str(folder), '-b', '5',
               '--results-file', str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    # direct computation: same weights, timm's eval transform, every val image
    model = timm.create_model('vim_mini', embed_dim=16, depth=3, d_state=4, num_classes=3).eval()
    model.load_state_dict(load_file(str(tiny_ckpt)))
    cfg = resolve_data_config(model=model)
    tf = create_transform(**cfg)
    logits, labels = [], []
    for c, d in enumerate(sorted((folder / 'val').iterdir())):
        for f in sorted(d.iterdir()):
            with torch.no_grad():
                logits.append(model(tf(Image.open(f).convert('L'))[None])[0])
            labels.append(c)
    logits, labels = torch.stack(logits), torch.tensor(labels)
    assert res['count'] == 24
    assert res['top1'] == pytest.approx(100.0 * (logits.argmax(-1) == labels).float().mean().item(), abs=1e-3)
    assert res['loss'] == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-4)
    assert res['top5'] == pytest.approx(100.0)  # 3 classes: top-3 always hits
    assert res['img_per_s'] > 0


def test_train_lowers_the_loss_and_writes_weights(folder, tmp_path):
    out = tmp_path / 'run'
    st = tmp_path / 'final.safetensors'
    rc = main(['train', *TINY_VIM, '--model-kwargs', 'embed_dim=16', 'depth=3', 'd_state=4', 'prune_layers=(1,)',
               'keep_rate=0.7', '--data-dir', str(folder), '-b', '8', '--epochs', '4', '--lr', '1e-2',
               '--warmup-epochs', '0', '--no-aug', '--smoothing', '0', '--output', str(tmp_path),
               '--experiment', 'run', '--no-progress',
               '--save-safetensors', str(st), '--model-ema', '--model-ema-decay', '0.5'])
    assert rc == 0
    hist = json.loads((out / 'history.json').read_text())
    assert len(hist) == 4
    assert hist[-1]['train_loss'] < hist[0]['train_loss']
    assert 'val_top1' in hist[-1] and 'ema_val_top1' in hist[-1]
    assert (out / 'model_best.pth.tar').is_file() and (out / 'summary.csv').is_file()
    sd = load_file(str(st))
    m = timm.create_model('vim_mini', embed_dim=16, depth=3, d_state=4, num_classes=3)
    m.load_state_dict(sd)  # strict
    # the saved training checkpoint loads back through --checkpoint (allow-listed unpickling: args Namespace)
    assert main(['validate', *TINY_VIM, '--checkpoint', str(out / 'model_best.pth.tar'), '--data-dir', str(folder),
                 '--use-ema']) == 0


def test_train_with_distillation_and_mixup(folder, tmp_path):
    rc = main(['train', '--model', 'vim_mini', '--model-kwargs', 'embed_dim=16', 'depth=3', 'd_state=4',
               'prune_layers=(1,)', 'keep_rate=0.5', '--num-classes', '3', '--data-dir', str(folder), '-b', '8',
               '--epochs', '1', '--distill', '--mixup', '0.8', '--cutmix', '1.0', '--output', str(tmp_path / 'kd'),
               '--no-progress', '--no-val'])
    assert rc == 0
    # distillation needs a pruned student
    rc = main(['train', *TINY_VIM, '--data-dir', str(folder), '--epochs', '1', '--distill',
               '--output', str(tmp_path / 'kd2'), '--no-progress'])
    assert rc == 2


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_two_processes_agree_with_one(tmp_path):
    """16 identical images: one process at batch 8 and two processes at batch 4 each see the same global batches,
    so DDP's averaged gradients must give the same weights as the single process."""
    data = _write_folder(tmp_path / 'same', per_class=16, classes=('0_a',), splits=('train',), identical=True)
    common = ['train', '--model', 'vim_mini', '--model-kwargs', 'embed_dim=16', 'depth=2', 'd_state=4',
              'prune_layers=(1,)', 'keep_rate=0.6', '--num-classes', '3', '--data-dir', str(data), '--epochs', '1',
              '--opt', 'momentum', '--lr', '0.5', '--momentum', '0', '--weight-decay', '0', '--sched', 'step',
              '--warmup-epochs', '0', '--no-aug', '--smoothing', '0', '--no-val', '--no-progress', '--seed', '3']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    one = tmp_path / 'one.safetensors'
    two = tmp_path / 'two.safetensors'
    subprocess.run([sys.executable, '-m', 'timm_ssm_prune', *common, '-b', '8', '--output', str(tmp_path / 'o1'),
                    '--save-safetensors', str(one)], check=True, env=env, capture_output=True)
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                           '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), '-m', 'timm_ssm_prune',
                           *common, '-b', '4', '--output', str(tmp_path / 'o2'), '--save-safetensors', str(two)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(one)), load_file(str(two))
    init = timm.create_model('vim_mini', embed_dim=16, depth=2, d_state=4, num_classes=3)
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m: f'{k}: {m}')
        moved += int(not torch.equal(a[k], init.state_dict()[k]))
    assert moved > 0  # training did change the weights (so the comparison means something)


def test_visualize_writes_a_png(folder, tmp_path):
    out = tmp_path / 'kept.png'
    rc = main(['visualize', '--model', 'vim_mini', '--model-kwargs', 'embed_dim=16', 'depth=3', 'd_state=4',
               'prune_layers=(1,2)', 'keep_rate=0.5', '--num-classes', '3', '--data-dir', str(folder),
               '--num-images', '4', '-o', str(out)])
    assert rc == 0
    img = Image.open(out)
    img.verify()
    img = Image.open(out)
    assert img.format == 'PNG' and img.width > 3 * 28 and img.height > 4 * 28
    arr = np.asarray(img.convert('RGB')).astype(int)
    assert arr.std() > 10  # not blank


def test_flops_and_models_commands(capsys):
    assert main(['flops', '--model', 'vim_small_patch16_224_pruned', '--dense', '--json', '--model-kwargs',
                 'importance=clip', 'cls_position=middle']) == 0  # the paper's method
    out = json.loads(capsys.readouterr().out)
    assert [s['tokens_after'] for s in out['stages']] == [158, 127, 102]
    assert out['gflops'] == pytest.approx(3.637, abs=0.01) and out['dense_gflops'] == pytest.approx(5.142, abs=0.01)
    assert main(['models', '*pruned']) == 0
    assert 'plainmamba_l3_pruned' in capsys.readouterr().out


def test_benchmark_command(tmp_path, capsys):
    res = tmp_path / 'bench.json'
    rc = main(['benchmark', '--model', 'vim_mini', '--model-kwargs', 'embed_dim=16', 'depth=3', 'd_state=4',
               'prune_layers=(1,)', 'keep_rate=0.5', '-b', '4', '--repeats', '2', '--warmup', '1', '--naive',
               '--no-memory', '--results-file', str(res)])
    assert rc == 0
    rows = json.loads(res.read_text())
    assert [r['variant'] for r in rows] == ['dense', 'pruned', 'naive']
    assert rows[1]['gflops'] < rows[0]['gflops'] and rows[1]['tokens'] == [196, 98]
    assert 'speedup' in capsys.readouterr().out


def test_run_timm_registers_the_models(tmp_path, capsys):
    script = tmp_path / 'fake_validate.py'
    script.write_text(
        "import argparse, timm\n"
        "p = argparse.ArgumentParser(); p.add_argument('--model'); a = p.parse_args()\n"
        "m = timm.create_model(a.model)\n"
        "print('built', type(m).__name__, m.prune_cfg.prune_layers)\n")
    assert main(['run-timm', str(script), '--model', 'vim_tiny_patch16_224_pruned']) == 0
    assert 'built Vim (10, 20)' in capsys.readouterr().out
    assert main(['run-timm', str(tmp_path / 'missing.py')]) == 2


def test_demo_smoke(folder, tmp_path, capsys):
    weights = tmp_path / 'w'
    weights.mkdir()
    data = _write_folder(tmp_path / 'd10', per_class=2, classes=tuple(f'{i}_c' for i in range(10)), splits=('val',))
    for name in ('plainmamba_mini', 'vim_mini'):
        m = timm.create_model(name)
        save_file(m.state_dict(), str(weights / f'{name}.animal_mnist.safetensors'))
    rc = main(['demo', '--data-dir', str(data), '--weights-dir', str(weights), '--output', str(tmp_path / 'out'),
               '--repeats', '1', '-b', '10'])
    assert rc == 0
    out = capsys.readouterr().out
    assert 'ToP' in out and 'naive' in out and 'speedup' in out
    res = json.loads((tmp_path / 'out' / 'demo_results.json').read_text())
    assert {(r['model'], r['variant']) for r in res} == {(m, v) for m in ('plainmamba_mini', 'vim_mini')
                                                        for v in ('dense', 'default', 'ToP', 'naive')}
    for m in ('plainmamba_mini', 'vim_mini'):
        rows = {r['variant']: r for r in res if r['model'] == m}
        for v in ('default', 'ToP', 'naive'):  # each method its own keep rate for the same FLOPs cut
            assert rows[v]['gflops'] == pytest.approx(0.6 * rows['dense']['gflops'], rel=0.03), v
        Image.open(tmp_path / 'out' / f'kept_tokens_{m}.png').verify()


@pytest.mark.parametrize('argv,match', [
    (['validate', '--model', 'no_such_model', '--data-dir', '.'], 'unknown model'),
    (['validate', *TINY_VIM, '--data-dir', '/nonexistent/dir'], 'data directory not found'),
    (['validate', *TINY_VIM, '--checkpoint', '/nonexistent.pth', '--data-dir', '.'], 'checkpoint not found'),
    (['validate', '--model', 'vim_mini', '--model-kwargs', 'keep_rate=2', 'prune_layers=(1,)', '--data-dir', '.'],
     r'keep_rate must be in \(0, 1\]'),
    (['benchmark', '--model', 'vim_mini'], 'does not prune tokens'),
])
def test_clear_errors(argv, match, capsys):
    assert main(argv) == 2
    assert pytest.importorskip('re').search(match, capsys.readouterr().err)


def test_bad_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(['validate', '--model', 'vim_mini', '--no-such-flag'])
    assert e.value.code == 2
