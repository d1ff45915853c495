"""Hugging Face Hub support, offline: hub_configs/ for every model, pretrained=True from hand-laid caches of
upstream-format checkpoints, `convert` (official file -> verified safetensors folder) and the `hf-hub:` /
`local-dir:` round trip of converted (pruned) folders, the pickle allow-list, and `push` (validation, dry run,
token handling, the upload calls) with huggingface_hub patched so that nothing reaches the network.

Official checkpoints are built here from the key names of docs/architectures.md §A3 (PlainMamba, mmcls envelope)
and §B3 (Vim, {'model', 'model_ema', 'args': argparse.Namespace, ...}), with tiny widths.
"""
import argparse
import json
import math
import pickle
from pathlib import Path

import pytest
import torch

import huggingface_hub
import timm
import timm_ssm_prune  # noqa: F401  (registers the models)
from timm_ssm_prune import hub
from timm_ssm_prune.models.facts import FACTS, TRAINING_FREE
from timm_ssm_prune.cli import main as cli_main
from timm_ssm_prune.models import plainmamba as pm_mod
from timm_ssm_prune.models import vim as vim_mod
from timm_ssm_prune.models._loading import load_checkpoint_file

from hubcache import go_offline, lay_out_repo

ROOT = Path(__file__).resolve().parent.parent
HUB_CONFIGS = ROOT / 'hub_configs'
N = 16  # d_state
EXPECTED_TAGS = {'image-classification', 'timm', 'timm-ssm-prune', 'mamba', 'state-space-model'}
SOURCE_KEYS = {'hf_hub_id', 'hf_hub_filename', 'file', 'url', 'source', 'state_dict'}
PM_REPO, PM_FILE = 'ChenhongyiYang/PlainMamba', 'l1.pth'
VIM_REPO, VIM_FILE = 'hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth'
# Tiny widths, full depth (24 blocks) so that the *_pruned default schedules are valid: 64x64 -> 4x4 tokens.
PM_TINY = dict(embed_dim=32, depth=24, img_size=64)
VIM_TINY = dict(embed_dim=32, depth=24, img_size=64)


# ------------------------------------------------------------------------------------------------ official files

def _gen(seed):
    return torch.Generator().manual_seed(seed)


def pm_official_sd(D=32, depth=4, num_convs=1, dwconv=(0,), stem=64, num_classes=1000, pos_rows=196, seed=0):
    """mmcls PlainMamba state_dict (docs/architectures.md §A3 key names): backbone.* + head.fc.*, random
    well-scaled values."""
    g = _gen(seed)
    E, R = 2 * D, math.ceil(D / 16)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd = {}

    def bn(p, c):
        sd[p + '.weight'], sd[p + '.bias'] = 1 + r(c), r(c)
        sd[p + '.running_mean'], sd[p + '.running_var'] = r(c), 1 + r(c).abs()
        sd[p + '.num_batches_tracked'] = torch.tensor(100)

    sd['backbone.pos_embed'] = r(1, pos_rows, D)
    sd['backbone.patch_embed.stem.0.weight'] = r(stem, 3, 7, 7, scale=0.1)
    bn('backbone.patch_embed.stem.1', stem)
    for i in range(num_convs):
        sd[f'backbone.patch_embed.convs.{3 * i}.weight'] = r(stem, stem, 3, 3)
        bn(f'backbone.patch_embed.convs.{3 * i + 1}', stem)
    sd['backbone.patch_embed.projection.weight'] = r(D, stem, 8, 8, scale=0.02)
    sd['backbone.patch_embed.projection.bias'] = r(D)
    for i in range(depth):
        p = f'backbone.layers.{i}.'
        sd[p + 'norm.weight'], sd[p + 'norm.bias'] = 1 + r(D), r(D)
        sd[p + 'mamba.A_log'] = torch.log(torch.arange(1, N + 1).float()).repeat(E, 1) + r(E, N)
        sd[p + 'mamba.D'] = 1 + r(E)
        sd[p + 'mamba.direction_Bs'] = r(5, N)
        sd[p + 'mamba.in_proj.weight'], sd[p + 'mamba.in_proj.bias'] = r(2 * E, D, scale=0.2), r(2 * E)
        sd[p + 'mamba.conv2d.weight'], sd[p + 'mamba.conv2d.bias'] = r(E, 1, 7, 7, scale=0.1), r(E)
        sd[p + 'mamba.x_proj.weight'] = r(R + 2 * N, E, scale=0.2)
        sd[p + 'mamba.dt_proj.weight'], sd[p + 'mamba.dt_proj.bias'] = r(E, R, scale=0.2), r(E) - 2
        sd[p + 'mamba.out_proj.weight'], sd[p + 'mamba.out_proj.bias'] = r(D, E, scale=0.2), r(D)
        if i in dwconv:
            sd[p + 'dw.0.weight'] = r(D, 1, 3, 3, scale=0.2)
            bn(p + 'dw.1', D)
    sd['backbone.ln1.weight'], sd['backbone.ln1.bias'] = 1 + r(D), r(D)
    sd['head.fc.weight'], sd['head.fc.bias'] = r(num_classes, D, scale=0.2), r(num_classes)
    return sd


def pm_envelope(sd, meta_extra=None):
    meta = {'mmcls_version': '0.25.0', 'epoch': 300, 'CLASSES': ['tench', 'goldfish']}
    meta.update(meta_extra or {})
    return {'meta': meta, 'state_dict': sd}


def vim_official_sd(D=32, depth=4, num_patches=16, num_classes=1000, seed=0):
    """ck['model'] of an official Vim checkpoint (docs/architectures.md §B3 key names)."""
    g = _gen(seed)
    E, R = 2 * D, math.ceil(D / 16)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd = {'cls_token': r(1, 1, D, scale=0.3), 'pos_embed': r(1, num_patches + 1, D, scale=0.3),
          'patch_embed.proj.weight': r(D, 3, 16, 16, scale=0.03), 'patch_embed.proj.bias': r(D),
          'head.weight': r(num_classes, D, scale=0.2), 'head.bias': r(num_classes), 'norm_f.weight': 1 + r(D)}
    for i in range(depth):
        p = f'layers.{i}.'
        sd[p + 'norm.weight'] = 1 + r(D)
        m = p + 'mixer.'
        sd[m + 'in_proj.weight'] = r(2 * E, D, scale=0.2)
        sd[m + 'out_proj.weight'] = r(D, E, scale=0.2)
        for s in ('', '_b'):
            sd[m + ('A_b_log' if s else 'A_log')] = torch.log(torch.rand(E, N, generator=g) * 15 + 0.5)
            sd[m + 'D' + s] = 1 + r(E, scale=0.5)
            sd[m + f'conv1d{s}.weight'], sd[m + f'conv1d{s}.bias'] = r(E, 1, 4, scale=0.3), r(E)
            sd[m + f'x_proj{s}.weight'] = r(R + 2 * N, E, scale=0.2)
            sd[m + f'dt_proj{s}.weight'], sd[m + f'dt_proj{s}.bias'] = r(E, R, scale=0.3), r(E, scale=0.7) - 2.5
    return sd


def vim_checkpoint(D=32, depth=4, num_patches=16, seed=0, args=None):
    """The official Vim training checkpoint: model, model_ema, optimizer, ..., args (an argparse.Namespace)."""
    return {'model': vim_official_sd(D, depth, num_patches, seed=seed),
            'model_ema': vim_official_sd(D, depth, num_patches, seed=seed + 1),
            'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3, 'params': []}]},
            'lr_scheduler': {'last_epoch': 299}, 'epoch': 299, 'scaler': {'scale': 65536.0},
            'args': argparse.Namespace(model='vim_tiny', lr=5e-4) if args is None else args}


def load_direct(name, path, **kwargs):
    """Reference: the family's checkpoint_filter_fn on the allow-listed load, strict, no hub involved."""
    model = timm.create_model(name, **kwargs)
    fam = pm_mod if name.startswith('plainmamba') else vim_mod
    model.load_state_dict(fam.checkpoint_filter_fn(load_checkpoint_file(path), model), strict=True)
    return model.eval()


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in sa.items())


def logits(model, in_chans=3, size=64, seed=1):
    x = torch.randn(2, in_chans, size, size, generator=_gen(seed))
    with torch.no_grad():
        return model.eval()(x)


def run_cli(capsys, *argv):
    rc = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# Objects whose code runs when unpickled without the allow-list.
_TRAP = []


def _trap_fired(tag):
    _TRAP.append(tag)
    return tag


class ReduceTrap:
    def __reduce__(self):
        return _trap_fired, ('reduce',)


# ------------------------------------------------------------------------------------------------ hub_configs

def registered():
    return timm.list_models(module='plainmamba') + timm.list_models(module='vim')


def read_folder(name):
    folder = HUB_CONFIGS / name
    return json.loads((folder / 'config.json').read_text()), (folder / 'README.md').read_text()


def test_every_registered_model_has_a_hub_config_folder():
    names = registered()
    assert {'plainmamba_l1', 'plainmamba_l3_pruned', 'plainmamba_mini', 'vim_base_patch16_224_pruned',
            'vim_small_patch16_stride8_224', 'vim_mini'} <= set(names)
    assert names == hub.package_models()
    folders = sorted(p.name for p in HUB_CONFIGS.iterdir() if p.is_dir())
    assert folders == sorted(names)  # none missing, none stale
    for name in names:
        assert {p.name for p in (HUB_CONFIGS / name).iterdir()} == {'config.json', 'README.md'}, name


@pytest.mark.parametrize('name', registered())
def test_hub_config_builds_its_model(name):
    cfg, card = read_folder(name)
    assert list(cfg)[:6] == ['architecture', 'num_classes', 'num_features', 'global_pool', 'model_args',
                             'pretrained_cfg']
    assert cfg['architecture'] == name
    pcfg = cfg['pretrained_cfg']
    assert pcfg['custom_load'] is False and not SOURCE_KEYS & set(pcfg)  # as timm's save_config_for_hf writes
    assert pcfg['num_classes'] == cfg['num_classes'] and pcfg['license'] == 'apache-2.0'
    args = cfg['model_args']
    assert args['num_classes'] == cfg['num_classes'] and args['global_pool'] == cfg['global_pool']
    model = timm.create_model(cfg['architecture'], pretrained=False, device='meta',
                              **dict(args, num_classes=cfg['num_classes']))
    ref = timm.create_model(name, device='meta')  # the registry's own defaults
    assert model.num_features == cfg['num_features'] == ref.num_features
    assert model.num_classes == cfg['num_classes'] == ref.num_classes
    assert model.img_size == ref.img_size and model.in_chans == ref.in_chans
    assert model.prune_cfg == ref.prune_cfg
    if name.endswith('_pruned'):
        assert model.prune_cfg.enabled
        assert {k: args[k] for k in hub.PRUNE_KEYS if k in args} == ref.prune_cfg.to_kwargs()
        assert 'flops_reduction' not in args
    else:
        assert not model.prune_cfg.enabled and not set(hub.PRUNE_KEYS) & set(args)
    # timm's own hf-hub/local-dir config parser gives the same architecture and args
    from timm.models._hub import _parse_model_cfg
    parsed_cfg, arch, parsed_args = _parse_model_cfg(json.loads(json.dumps(cfg)), {})
    assert arch == name and parsed_args == args and parsed_cfg['num_classes'] == cfg['num_classes']


@pytest.mark.parametrize('name', registered())
def test_model_card(name):
    cfg, card = read_folder(name)
    meta = hub.parse_front_matter(card)
    assert meta is not None and card.startswith('---\n')
    assert meta['library_name'] == 'timm' and meta['pipeline_tag'] == 'image-classification'
    assert EXPECTED_TAGS <= set(meta['tags']) and 'transformers' not in meta['tags']
    assert meta['license'] == 'apache-2.0'
    mini = name.endswith('_mini')
    assert meta['datasets'] == (['animal-mnist'] if mini else ['imagenet-1k'])
    model = timm.create_model(name, device='meta')
    body = card.split('---', 2)[2]
    # usage: the plugin import first, then create_model
    usage = body[body.index('```python'):]
    assert usage.index('import timm_ssm_prune') < usage.index('timm.create_model(')
    assert f"timm.create_model('{name}', pretrained=True)" in usage
    # citations: the backbone paper and ToP, as bibtex
    backbone = '2403.17695' if name.startswith('plainmamba') else '2401.09417'
    assert body.count('@inproceedings{') == 2 and f'eprint    = {{{backbone}}}' in body \
        and 'eprint    = {2409.18962}' in body
    # params and GFLOPs from the package's counters
    params = sum(p.numel() for p in model.parameters())
    assert f"**Params (M):** {params / 1e6:.2f}" in body
    gflops = timm_ssm_prune.count_flops(model, (model.in_chans, *model.img_size))
    assert f"{gflops:.2f}" in body
    conv = 'mamba' if name.startswith('plainmamba') else 'localmamba'
    assert f"convention `{conv}`" in body
    # where the weights come from
    pc = model.pretrained_cfg
    if pc.get('hf_hub_id'):
        assert f"`{pc['hf_hub_filename']}`" in body and f"`{pc['hf_hub_id']}`" in body
    else:
        assert f"timm_ssm_prune/weights/{name}.animal_mnist.safetensors" in body
    # published accuracy with its source; pruning schedule; training-free disclaimer
    top1 = {'plainmamba_l1': '77.9', 'plainmamba_l2': '81.6', 'plainmamba_l3': '82.3', 'vim_tiny_patch16_224': '76.1',
            'vim_small_patch16_224': '80.5', 'vim_base_patch16_224': '81.9', 'vim_tiny_patch16_stride8_224': '78.3',
            'vim_small_patch16_stride8_224': '81.6'}.get(hub.dense_arch(name))
    if top1:
        assert f"| {top1} |" in body and ('PlainMamba README' in body or 'Vim README' in body)
    if name.endswith('_pruned'):
        counts = ' -> '.join(str(n) for n in model.token_counts())
        assert f"**Tokens per stage:** {counts}" in body
        assert ', '.join(str(b) for b in model.prune_cfg.prune_layers) in body
        dense = timm.create_model(hub.dense_arch(name), device='meta')
        assert f"{timm_ssm_prune.count_flops(dense, (3, 224, 224)):.2f} dense -> {gflops:.2f} pruned" in body
        assert '**training-free**' in body and '**not reproduced here**' in body
        top = {'vim_tiny_patch16_224_pruned': '| 75.1 |', 'vim_small_patch16_224_pruned': '| 78.8 |',
               'plainmamba_l3_pruned': '| 81.7 |'}.get(name)
        if top:
            assert top in body and 'fine-tuned 30 epochs' in body
        else:
            assert 'reports no result for this model' in body
    elif not name.endswith('_pruned'):  # a dense card names every pruning kwarg and every value the config takes
        from timm_ssm_prune.pruning import config as pcfg
        vim = name.startswith('vim')
        options = next(ln for ln in body.splitlines() if ln.startswith('Dense: all '))
        kwargs = {'prune_layers', 'keep_rate', 'flops_reduction', 'importance', 'alignment', *pcfg.OPTION_DEFAULTS}
        for kwarg in kwargs:  # every kwarg of the config, a new one included
            assert (f'`{kwarg}`' in options) == (vim or kwarg != 'cls_position'), kwarg
        for kwarg, values in (('reduction', pcfg.REDUCTIONS), ('alignment', pcfg.ALIGNMENTS),
                              ('merge_partner', pcfg.MERGE_PARTNERS), ('importance', pcfg.IMPORTANCE_METRICS),
                              ('cls_position', pcfg.CLS_POSITIONS)):
            part = options.split(f'`{kwarg}` (', 1)[-1].split(')', 1)[0]  # the values listed after the kwarg
            listed = [v for v in values if f'`{v}`' in part]
            if kwarg == 'cls_position' and not vim:
                continue
            if kwarg == 'importance' and not vim:  # the class-token score needs a class token
                assert listed == [v for v in values if v != 'cls'], kwarg
            else:
                assert listed == list(values), kwarg
    if mini:  # how the shipped weights were trained, per model
        assert f"Trained from scratch by timm-ssm-prune {FACTS[name].trained}" in body


def test_hub_configs_are_up_to_date():
    """The committed folders are exactly what `python tools/make_hub_configs.py` writes from the registry now."""
    problems = hub.generate_hub_configs(HUB_CONFIGS, check=True)
    assert problems == [], 'run `python tools/make_hub_configs.py`: ' + '; '.join(problems)


def test_generator_is_deterministic_and_check_detects_drift(tmp_path):
    names = ['vim_mini', 'plainmamba_l1_pruned']
    hub.generate_hub_configs(tmp_path, names, log=lambda *a: None)
    first = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
    assert len(first) == 4
    hub.generate_hub_configs(tmp_path, names, log=lambda *a: None)
    assert first == {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
    assert hub.generate_hub_configs(tmp_path, names, check=True) == []
    (tmp_path / 'vim_mini' / 'README.md').write_text('edited')
    (tmp_path / 'plainmamba_l1_pruned' / 'config.json').unlink()
    problems = hub.generate_hub_configs(tmp_path, names, check=True)
    assert len(problems) == 2 and any('out of date' in p for p in problems) and any('missing' in p for p in problems)


# ------------------------------------------------------------------------------------------------ pretrained=True

@pytest.fixture(scope='module')
def pm_l1_file(tmp_path_factory):
    """A PlainMamba-L1-format official file (mmcls envelope), tiny width, 24 blocks, 14x14 pos_embed."""
    sd = pm_official_sd(D=32, depth=24, seed=3)
    path = tmp_path_factory.mktemp('pm') / PM_FILE
    torch.save(pm_envelope(sd), path)
    return path, sd


def test_pretrained_upstream_plainmamba_offline(tmp_path, monkeypatch, pm_l1_file):
    path, sd = pm_l1_file
    lay_out_repo(tmp_path, PM_REPO, {PM_FILE: path})
    go_offline(monkeypatch, tmp_path)
    dense = timm.create_model('plainmamba_l1', pretrained=True, **PM_TINY)
    pruned = timm.create_model('plainmamba_l1_pruned', pretrained=True, **PM_TINY)
    assert torch.equal(dense.head.weight, sd['head.fc.weight'])
    assert torch.equal(dense.layers[23].mamba.dt_proj.bias, sd['backbone.layers.23.mamba.dt_proj.bias'])
    assert same_state(dense, load_direct('plainmamba_l1', path, **PM_TINY))
    # the pruned variant: the dense upstream weights and its default schedule
    assert same_state(pruned, dense)
    assert pruned.prune_cfg == timm.create_model('plainmamba_l1_pruned', device='meta').prune_cfg
    assert pruned.prune_cfg.prune_layers == (6, 12, 18) and pruned.token_counts() == [16, 7, 4, 2]
    out_dense, out_pruned = logits(dense), logits(pruned)
    assert torch.equal(out_dense, logits(load_direct('plainmamba_l1', path, **PM_TINY)))
    assert not torch.allclose(out_dense, out_pruned, atol=1e-4)  # pruning changes the computation
    assert not torch.allclose(out_dense, logits(timm.create_model('plainmamba_l1', **PM_TINY)), atol=1e-3)


def test_pretrained_upstream_vim_offline(tmp_path, monkeypatch):
    path = tmp_path / VIM_FILE
    ck = vim_checkpoint(D=32, depth=24, seed=5)
    torch.save(ck, path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        assert isinstance(torch.load(path, weights_only=True)['args'], argparse.Namespace)
    lay_out_repo(tmp_path / 'hub', VIM_REPO, {VIM_FILE: path})
    go_offline(monkeypatch, tmp_path / 'hub')
    pruned = timm.create_model('vim_tiny_patch16_224_pruned', pretrained=True, **VIM_TINY)
    assert pruned.prune_cfg.prune_layers == (10, 20) and pruned.token_counts() == [16, 13, 11]
    msd = pruned.state_dict()
    assert torch.equal(msd['head.weight'], ck['model']['head.weight'])  # the 'model' entry, not model_ema
    assert torch.equal(msd['layers.3.mixer.bwd.A_log'], ck['model']['layers.3.mixer.A_b_log'])
    ref = load_direct('vim_tiny_patch16_224_pruned', path, **VIM_TINY)
    assert same_state(pruned, ref) and torch.equal(logits(pruned), logits(ref))
    ema = timm.create_model('vim_tiny_patch16_224.in1k_ema', pretrained=True, **VIM_TINY)
    assert torch.equal(ema.head.weight, ck['model_ema']['head.weight'])


def test_missing_upstream_file_error_says_where_and_how(tmp_path, monkeypatch, pm_l1_file):
    lay_out_repo(tmp_path, PM_REPO, {'l2.pth': pm_l1_file[0]})  # the repo is cached, l1.pth is not
    go_offline(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError) as info:
        timm.create_model('plainmamba_l1', pretrained=True, **PM_TINY)
    msg = str(info.value)
    assert PM_REPO in msg and PM_FILE in msg
    assert 'pretrained_cfg_overlay' in msg and 'HF_HUB_OFFLINE' in msg and 'HF_TOKEN' in msg


def test_pickle_outside_the_allow_list_is_refused(tmp_path, monkeypatch, pm_l1_file, capsys):
    sd = pm_official_sd(D=32, depth=24, seed=3)
    path = tmp_path / PM_FILE
    torch.save(pm_envelope(sd, {'hook': ReduceTrap()}), path)
    _TRAP.clear()
    with torch.serialization.safe_globals([_trap_fired]):  # allowed explicitly, the file's payload runs
        torch.load(path, weights_only=True)
    assert _TRAP == ['reduce'], 'the trap should fire when its global is allowed'
    _TRAP.clear()
    # pretrained=True from the hub cache
    lay_out_repo(tmp_path / 'hub', PM_REPO, {PM_FILE: path})
    go_offline(monkeypatch, tmp_path / 'hub')
    with pytest.raises((RuntimeError, pickle.UnpicklingError), match=r'weights_only(.|\n)*_trap_fired'):
        timm.create_model('plainmamba_l1', pretrained=True, **PM_TINY)
    assert _TRAP == []
    # convert
    rc, out, err = run_cli(capsys, 'convert', '--model', 'plainmamba_l1', '--checkpoint', path, '--out',
                           tmp_path / 'out', '--model-kwargs', 'embed_dim=32', 'depth=24', 'img_size=64')
    assert rc == 2 and 'refusing to load' in err and '_trap_fired' in err
    assert _TRAP == [] and not (tmp_path / 'out' / 'model.safetensors').exists()


# ------------------------------------------------------------------------------------------------ convert

PM_KW = ('embed_dim=32', 'depth=4', 'img_size=64')


@pytest.fixture(scope='module')
def pm_tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('pmtiny') / 'l1_tiny.pth'
    torch.save(pm_envelope(pm_official_sd(D=32, depth=4, seed=7)), path)
    return path


@pytest.fixture(scope='module')
def converted_pm(tmp_path_factory, pm_tiny_file):
    """`convert` of a tiny PlainMamba-L1 checkpoint into plainmamba_l1_pruned with its own schedule."""
    out = tmp_path_factory.mktemp('conv') / 'pm_pruned'
    rc = cli_main(['convert', '--model', 'plainmamba_l1_pruned', '--checkpoint', str(pm_tiny_file), '--out', str(out),
                   '--model-kwargs', *PM_KW, 'prune_layers=(2,)', 'keep_rate=0.5'])
    assert rc == 0
    return out


PM_PRUNED_KW = dict(embed_dim=32, depth=4, img_size=64, prune_layers=(2,), keep_rate=0.5)


def test_convert_end_to_end(tmp_path, pm_tiny_file, capsys):
    out = tmp_path / 'pm'
    rc, stdout, err = run_cli(capsys, 'convert', '--model', 'plainmamba_l1_pruned', '--checkpoint', pm_tiny_file,
                              '--out', out, '--model-kwargs', *PM_KW, 'prune_layers=(2,)', 'keep_rate=0.5')
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert 'max |logit difference|' in stdout and 'OK' in stdout
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['architecture'] == 'plainmamba_l1_pruned'
    args = cfg['model_args']
    assert args['embed_dim'] == 32 and args['depth'] == 4 and args['img_size'] == [64, 64]
    assert {k: args[k] for k in hub.PRUNE_KEYS if k in args} == dict(
        prune_layers=[2], keep_rate=0.5, importance='clip', alignment='aligned', **TRAINING_FREE['plainmamba'])
    assert cfg['pretrained_cfg']['custom_load'] is False and not SOURCE_KEYS & set(cfg['pretrained_cfg'])
    from safetensors.torch import load_file
    ref = load_direct('plainmamba_l1_pruned', pm_tiny_file, **PM_PRUNED_KW)
    saved = load_file(str(out / 'model.safetensors'))
    assert saved.keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in saved.items())
    card = (out / 'README.md').read_text()
    meta = hub.parse_front_matter(card)
    assert meta['library_name'] == 'timm' and 'token-pruning' in meta['tags'] and 'transformers' not in meta['tags']
    assert pm_tiny_file.name in card and 'sha256' in card and 'non-default arguments' in card
    assert '"prune_layers": [2]' in card
    # existing output is not overwritten silently
    rc, _, err = run_cli(capsys, 'convert', '--model', 'plainmamba_l1_pruned', '--checkpoint', pm_tiny_file,
                         '--out', out, '--model-kwargs', *PM_KW)
    assert rc == 2 and '--overwrite' in err


def test_converted_folder_loads_by_hf_hub_and_local_dir_with_its_prune_config(tmp_path, monkeypatch, converted_pm,
                                                                             pm_tiny_file):
    ref = load_direct('plainmamba_l1_pruned', pm_tiny_file, **PM_PRUNED_KW)
    assert ref.prune_cfg.prune_layers == (2,) and ref.token_counts() == [16, 8]
    lay_out_repo(tmp_path, 'someorg/plainmamba-l1-pruned-tiny',
                 {n: converted_pm / n for n in ('config.json', 'model.safetensors', 'README.md')})
    go_offline(monkeypatch, tmp_path)
    for name in ('hf-hub:someorg/plainmamba-l1-pruned-tiny', f'local-dir:{converted_pm}'):
        model = timm.create_model(name, pretrained=True)
        assert model.pretrained_cfg['source'] == name.split(':')[0]
        assert model.prune_cfg == ref.prune_cfg  # (2,), 0.5 -- not the entrypoint's default (6, 12, 18)
        assert model.img_size == (64, 64) and model.embed_dim == 32 and len(model.layers) == 4
        assert same_state(model, ref)
        assert torch.equal(logits(model), logits(ref))
    # the default schedule would have been different: the config really carries it
    assert timm.create_model('plainmamba_l1_pruned', device='meta').prune_cfg != ref.prune_cfg


def test_convert_vim_with_flops_target_and_ema(tmp_path, monkeypatch, capsys):
    path = tmp_path / VIM_FILE
    ck = vim_checkpoint(D=32, depth=4, seed=11)
    torch.save(ck, path)
    out = tmp_path / 'vim'
    kw = ('embed_dim=32', 'depth=4', 'img_size=64', 'prune_layers=(1,3)', 'flops_reduction=0.2')
    rc, stdout, err = run_cli(capsys, 'convert', '--model', 'vim_tiny_patch16_224_pruned', '--checkpoint', path,
                              '--out', out, '--use-ema', '--model-kwargs', *kw)
    assert rc == 0, err
    args = json.loads((out / 'config.json').read_text())['model_args']
    assert 'flops_reduction' not in args and args['prune_layers'] == [1, 3] and isinstance(args['keep_rate'], float)
    lay_out_repo(tmp_path / 'hub', 'someorg/vim-t-tiny', {n: out / n for n in ('config.json', 'model.safetensors')})
    go_offline(monkeypatch, tmp_path / 'hub')
    model = timm.create_model('hf-hub:someorg/vim-t-tiny', pretrained=True)
    ref = timm.create_model('vim_tiny_patch16_224_pruned', embed_dim=32, depth=4, img_size=64, prune_layers=(1, 3),
                            flops_reduction=0.2)
    ref.load_state_dict(vim_mod.checkpoint_filter_fn(load_checkpoint_file(path), ref, use_ema=True), strict=True)
    assert model.prune_cfg == ref.prune_cfg and model.prune_cfg.enabled
    assert torch.equal(model.head.weight, ck['model_ema']['head.weight'])  # --use-ema took model_ema
    assert same_state(model, ref) and torch.equal(logits(model), logits(ref))


def test_convert_rejects_a_mismatching_checkpoint(tmp_path, pm_tiny_file, capsys):
    # wrong width for the checkpoint
    rc, _, err = run_cli(capsys, 'convert', '--model', 'plainmamba_l1', '--checkpoint', pm_tiny_file,
                         '--out', tmp_path / 'a', '--model-kwargs', 'embed_dim=48', 'depth=4', 'img_size=64')
    assert rc == 2 and 'does not match' in err and 'embed_dim' in err
    # a Vim checkpoint given to PlainMamba
    vim_path = tmp_path / 'vim.pth'
    torch.save(vim_checkpoint(D=32, depth=4), vim_path)
    rc, _, err = run_cli(capsys, 'convert', '--model', 'plainmamba_l1', '--checkpoint', vim_path,
                         '--out', tmp_path / 'b', '--model-kwargs', *PM_KW)
    assert rc == 2 and 'does not match' in err
    # a PlainMamba checkpoint with a key missing and one too many
    sd = pm_official_sd(D=32, depth=4, seed=7)
    del sd['backbone.layers.1.mamba.D']
    sd['backbone.extra_norm.weight'] = torch.ones(32)
    odd_path = tmp_path / 'odd.pth'
    torch.save(pm_envelope(sd), odd_path)
    rc, _, err = run_cli(capsys, 'convert', '--model', 'plainmamba_l1', '--checkpoint', odd_path,
                         '--out', tmp_path / 'b', '--model-kwargs', *PM_KW)
    assert rc == 2 and 'does not match' in err
    assert '1 missing keys (layers.1.mamba.D)' in err and '1 unexpected keys (extra_norm.weight)' in err
    # the full-size architecture (no kwargs) against the tiny checkpoint
    rc, _, err = run_cli(capsys, 'convert', '--model', 'plainmamba_l1', '--checkpoint', pm_tiny_file,
                         '--out', tmp_path / 'c')
    assert rc == 2 and 'does not match' in err
    rc, _, err = run_cli(capsys, 'convert', '--model', 'no_such_model', '--checkpoint', pm_tiny_file,
                         '--out', tmp_path / 'd')
    assert rc == 2 and 'unknown model' in err
    rc, _, err = run_cli(capsys, 'convert', '--model', 'plainmamba_l1', '--checkpoint', tmp_path / 'nope.pth',
                         '--out', tmp_path / 'e')
    assert rc == 2 and 'not found' in err
    assert not any((tmp_path / d).exists() for d in 'abcde')


def test_convert_verification_catches_a_bad_export(tmp_path, pm_tiny_file, monkeypatch, capsys):
    from timm_ssm_prune.cli import convert
    real = convert.export_state_dict

    def corrupted(model):
        sd = real(model)
        sd['head.bias'] = sd['head.bias'] + 1e-3
        return sd

    monkeypatch.setattr(convert, 'export_state_dict', corrupted)
    rc, out, err = run_cli(capsys, 'convert', '--model', 'plainmamba_l1', '--checkpoint', pm_tiny_file,
                           '--out', tmp_path / 'bad', '--model-kwargs', *PM_KW)
    assert rc == 2 and 'verification failed' in err and '> 1e-05' in err
    assert 'max |logit difference| local-dir vs original checkpoint = 1.000e-03' in out


# ------------------------------------------------------------------------------------------------ push

@pytest.fixture
def no_network(monkeypatch):
    """HfApi calls that would reach the network raise; records what was attempted."""
    calls = []

    def forbidden(name):
        def f(self, *a, **k):
            calls.append(name)
            raise AssertionError(f"HfApi.{name} must not be called")
        return f

    for name in ('create_repo', 'upload_folder', 'create_branch', 'upload_file', 'create_commit', 'whoami'):
        monkeypatch.setattr(huggingface_hub.HfApi, name, forbidden(name))
    return calls


def copy_folder(src, dst):
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_push_dry_run_validates_and_lists_without_network(tmp_path, converted_pm, no_network, capsys):
    d = copy_folder(converted_pm, tmp_path / 'm')
    (d / 'extra.pth').write_bytes(b'not uploaded')
    rc, out, err = run_cli(capsys, 'push', '--model-dir', d, '--repo-id', 'someorg/pm-tiny', '--dry-run')
    assert rc == 0, err
    assert 'https://huggingface.co/someorg/pm-tiny' in out and 'nothing uploaded' in out
    for name in ('config.json', 'README.md', 'model.safetensors'):
        assert name in out
    size_mb = (d / 'model.safetensors').stat().st_size / 1e6
    assert f"{size_mb:.1f} MB" in out or f"{size_mb * 1000:.1f} kB" in out
    assert 'not uploading extra.pth' in out and '3 files' in out
    assert 'after block 2 keep 0.5' in out  # the prune configuration it validated
    assert no_network == []


@pytest.mark.parametrize('breakage,message', [
    ('no_front_matter', 'front matter'),
    ('not_timm', 'library_name: timm'),
    ('unknown_arch', 'not a registered timm model'),
    ('wrong_args', 'does not load strictly'),
    ('no_weights', 'no model.safetensors'),
    ('bad_json', 'not valid JSON'),
    ('trap_pickle', 'refusing to load'),
])
def test_push_validation_failures(tmp_path, converted_pm, no_network, capsys, breakage, message):
    d = copy_folder(converted_pm, tmp_path / 'm')
    cfg = json.loads((d / 'config.json').read_text())
    card = (d / 'README.md').read_text()
    if breakage == 'no_front_matter':
        (d / 'README.md').write_text(card.split('---', 2)[2])
    elif breakage == 'not_timm':
        (d / 'README.md').write_text(card.replace('library_name: timm', 'library_name: transformers'))
    elif breakage == 'unknown_arch':
        cfg['architecture'] = 'plainmamba_l9'
    elif breakage == 'wrong_args':
        cfg['model_args']['depth'] = 5
    elif breakage == 'no_weights':
        (d / 'model.safetensors').rename(d / 'weights.safetensors')
    elif breakage == 'bad_json':
        (d / 'config.json').write_text('{"architecture": ')
    elif breakage == 'trap_pickle':
        (d / 'model.safetensors').unlink()
        torch.save({'w': torch.zeros(1), 'hook': ReduceTrap()}, d / 'pytorch_model.bin')
    if breakage in ('unknown_arch', 'wrong_args'):
        (d / 'config.json').write_text(json.dumps(cfg))
    _TRAP.clear()
    rc, out, err = run_cli(capsys, 'push', '--model-dir', d, '--repo-id', 'someorg/pm-tiny', '--dry-run')
    assert rc == 2 and message in err, err
    assert no_network == [] and _TRAP == []


def test_push_without_token_fails_clearly(tmp_path, converted_pm, no_network, monkeypatch, capsys):
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setattr(huggingface_hub, 'get_token', lambda: None)
    rc, out, err = run_cli(capsys, 'push', '--model-dir', converted_pm, '--repo-id', 'someorg/pm-tiny')
    assert rc == 2 and 'no Hugging Face token' in err
    assert '--token' in err and 'HF_TOKEN' in err and 'login' in err
    assert no_network == []
    rc, out, err = run_cli(capsys, 'push', '--model-dir', converted_pm, '--repo-id', 'not a repo id')
    assert rc == 2 and 'ORG/NAME' in err


def test_push_uploads_the_validated_folder(tmp_path, converted_pm, monkeypatch, capsys):
    calls = []

    class FakeApi:
        def __init__(self, token=None, **kw):
            calls.append(('init', token))

        def create_repo(self, repo_id, **kw):
            calls.append(('create_repo', repo_id, kw))
            return f'https://huggingface.co/{repo_id}'

        def create_branch(self, repo_id, **kw):
            calls.append(('create_branch', repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(('upload_folder', kw))
            return argparse.Namespace(commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/abc")

    monkeypatch.setattr(huggingface_hub, 'HfApi', FakeApi)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    d = copy_folder(converted_pm, tmp_path / 'm')
    (d / 'stale.bin').write_bytes(b'x')
    rc, out, err = run_cli(capsys, 'push', '--model-dir', d, '--repo-id', 'someorg/pm-tiny', '--token', 'hf_fake',
                           '--private', '--revision', 'v1', '--commit-message', 'tiny pruned PlainMamba')
    assert rc == 0, err
    assert calls[0] == ('init', 'hf_fake')
    assert calls[1] == ('create_repo', 'someorg/pm-tiny', dict(repo_type='model', private=True, exist_ok=True))
    assert calls[2] == ('create_branch', 'someorg/pm-tiny', dict(branch='v1', repo_type='model', exist_ok=True))
    name, kw = calls[3]
    assert name == 'upload_folder' and kw['repo_id'] == 'someorg/pm-tiny' and Path(kw['folder_path']) == d
    assert kw['revision'] == 'v1' and kw['commit_message'] == 'tiny pruned PlainMamba'
    assert sorted(kw['allow_patterns']) == ['README.md', 'config.json', 'model.safetensors']
    assert len(calls) == 4 and 'commit/abc' in out and "hf-hub:someorg/pm-tiny" in out
    # the token may also come from the environment
    calls.clear()
    monkeypatch.setenv('HF_TOKEN', 'hf_env')
    rc, out, err = run_cli(capsys, 'push', '--model-dir', d, '--repo-id', 'someorg/pm-tiny')
    assert rc == 0 and calls[0] == ('init', 'hf_env') and [c[0] for c in calls] == ['init', 'create_repo',
                                                                                     'upload_folder']


# ------------------------------------------------------------------------------------------------ known gaps

def test_missing_weights_in_converted_repo_names_that_repo(tmp_path, monkeypatch, converted_pm):
    lay_out_repo(tmp_path, 'someorg/no-weights', {'config.json': converted_pm / 'config.json'})
    go_offline(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError) as info:
        timm.create_model('hf-hub:someorg/no-weights', pretrained=True)
    assert 'someorg/no-weights' in str(info.value) and 'model.safetensors' in str(info.value)


def test_hub_config_records_the_options_beyond_the_paper():
    model = timm.create_model('vim_tiny_patch16_224_pruned', device='meta', reduction='hybrid', merge_fraction=0.25,
                              importance='cls', cls_position='raster')
    cfg = hub.hub_config(model)
    args = cfg['model_args']
    assert args['reduction'] == 'hybrid' and args['merge_fraction'] == 0.25 and args['cls_position'] == 'raster'
    assert 'merge_partner' not in args and 'importance_seed' not in args  # defaults are not written
    again = hub.create_from_config(json.loads(hub.config_json_text(cfg)), device='meta')
    assert again.prune_cfg == model.prune_cfg
