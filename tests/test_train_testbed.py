"""benchmarks/train_testbed.py: an interrupted and resumed training ends bitwise where an uninterrupted one does."""
import importlib.util
import os

import pytest
import torch

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, 'benchmarks', 'train_testbed.py')


@pytest.fixture(scope='module')
def tt():
    spec = importlib.util.spec_from_file_location('train_testbed', _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _data(tt):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (84, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.arange(84) % 10
    return tt.Splits(x[:64], y[:64], x[64:74], y[64:74], x[74:], y[74:])


def _cfg(tt):
    cfg = dict(name='tiny', base='vim_mini', model_kwargs=dict(depth=2, embed_dim=16), **tt.RECIPE)
    # 4 steps per epoch, 2 epochs; warm-up then cosine; drop path on so the global RNG matters
    cfg.update(epochs=2, batch_size=16, warmup_epochs=1, drop_path=0.2)
    return cfg


def _assert_same_state(a, b):
    assert a['global_step'] == b['global_step'] and a['epoch'] == b['epoch'] and a['batch'] == b['batch']
    for k, v in a['model'].items():
        assert torch.equal(v, b['model'][k]), k
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert [g['lr'] for g in a['optimizer']['param_groups']] == [g['lr'] for g in b['optimizer']['param_groups']]
    assert torch.equal(a['rng']['torch'], b['rng']['torch'])
    assert a['loss_sum'] == b['loss_sum'] and a['loss_count'] == b['loss_count']
    keys = ('epoch', 'train_loss', 'holdout_top1', 'val_top1', 'lr')
    assert [{k: r[k] for k in keys} for r in a['curve']] == [{k: r[k] for k in keys} for r in b['curve']]


@pytest.mark.parametrize('stop_at', [3, 4])  # mid-epoch, and right at the end of an epoch's batches
def test_resume_is_exact(tt, tmp_path, stop_at):
    data, cfg = _data(tt), _cfg(tt)
    quiet = dict(log=lambda msg: None, log_every=0, ckpt_minutes=0)

    full = tt.train(cfg, data, tmp_path / 'full', max_steps=6, **quiet)
    assert full['global_step'] == 6 and full['epoch'] == 1 and full['batch'] == 2

    first = tt.train(cfg, data, tmp_path / 'resumed', max_steps=stop_at, **quiet)
    assert first['global_step'] == stop_at
    on_disk = torch.load(tmp_path / 'resumed' / 'last.pt', weights_only=True)
    assert on_disk['global_step'] == stop_at and on_disk['schedule']['step'] == stop_at
    torch.manual_seed(1234)  # a new process would start from another global RNG state; resume must restore it
    resumed = tt.train(cfg, data, tmp_path / 'resumed', max_steps=6, **quiet)
    _assert_same_state(full, resumed)
    # and to the end: outputs are written once finished
    out = tmp_path / 'w.safetensors'
    done = tt.train(cfg, data, tmp_path / 'resumed', weights_out=out, curve_out=tmp_path / 'c.json', **quiet)
    assert done['finished'] and done['epoch'] == 2 and len(done['curve']) == 2 and out.is_file()


def test_config_mismatch_is_refused(tt, tmp_path):
    data, cfg = _data(tt), _cfg(tt)
    tt.train(cfg, data, tmp_path, max_steps=1, log=lambda m: None, log_every=0, ckpt_minutes=0)
    with pytest.raises(RuntimeError, match='another config'):
        tt.train(dict(cfg, lr=1e-3), data, tmp_path, max_steps=2, log=lambda m: None, log_every=0, ckpt_minutes=0)


def test_lr_schedule(tt):
    cfg = dict(tt.RECIPE, epochs=10, warmup_epochs=2)
    assert tt.lr_at(0, cfg, 100) == cfg['warmup_lr']
    assert tt.lr_at(200, cfg, 100) == pytest.approx(cfg['lr'])
    assert tt.lr_at(600, cfg, 100) == pytest.approx((cfg['lr'] + cfg['min_lr']) / 2)
    assert tt.lr_at(1000, cfg, 100) == pytest.approx(cfg['min_lr'])
