"""The timm model contract, for every model this package registers (at a reduced width and image size).

Forward and backward, heads (``num_classes=0``, ``reset_classifier``), ``forward_intermediates`` and
``features_only``, ``prune_intermediate_layers``, gradient checkpointing, meta/float64 creation, input checks,
pretrained cfg keys, and for the ``*_pruned`` names: keep rate 1.0 gives the dense model's logits."""
import pytest
import torch
import timm

import timm_ssm_prune  # noqa: F401  (registers the models)
import timm_ssm_prune.pruning.stages as stages_mod
from timm_ssm_prune.hub import package_models

NAMES = package_models()


def small_kwargs(name):
    """A cheap configuration of ``name``: width 32; 64x64 images (4x4 tokens at stride 16); the default depth for
    the *_pruned names (their schedules need it), 4 blocks otherwise; the *_mini models as they are."""
    if name.endswith('_mini'):
        return {}
    kw = dict(img_size=64, embed_dim=32)
    if not name.endswith('_pruned'):
        kw['depth'] = 4
    return kw


def make(name, **kwargs):
    return timm.create_model(name, **dict(small_kwargs(name), **kwargs))


def images(model, batch=2):
    return torch.randn(batch, model.in_chans, *model.img_size)


def test_every_family_name_is_covered():
    assert len(NAMES) >= 16
    assert {'plainmamba_l3_pruned', 'vim_small_patch16_224_pruned', 'plainmamba_mini', 'vim_mini',
            'vim_small_patch16_stride8_224'} <= set(NAMES)


@pytest.mark.parametrize('name', NAMES)
def test_forward_and_backward_reach_every_parameter(name):
    model = make(name, num_classes=7).train()
    out = model(images(model))
    assert out.shape == (2, 7)
    out.logsumexp(-1).sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize('name', NAMES)
def test_heads(name):
    model = make(name).eval()
    x = images(model)
    assert model.num_features == model.head_hidden_size == model.embed_dim
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.num_features)
        logits = model(x)
        assert logits.shape == (2, model.num_classes)
        torch.testing.assert_close(logits, model.get_classifier()(pre))
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), torch.nn.Identity)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
        headless = make(name, num_classes=0).eval()
        assert headless(x).shape == (2, model.num_features)
    with pytest.raises(ValueError):
        model.reset_classifier(5, 'max')


@pytest.mark.parametrize('name', NAMES)
def test_intermediates_features_only_and_truncation(name):
    torch.manual_seed(1)
    model = make(name).eval()
    x = images(model)
    grid = tuple(model.grid_size)
    depth = len(model.layers)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == depth and all(t.shape == (2, model.embed_dim, *grid) for t in inter)
        nlc = model.forward_intermediates(x, indices=[-1, 0], output_fmt='NLC', intermediates_only=True)
        torch.testing.assert_close(nlc[0], inter[0].flatten(2).transpose(1, 2))  # in block order
        torch.testing.assert_close(nlc[1], inter[-1].flatten(2).transpose(1, 2))
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last2, inter[-2:])
    with pytest.raises(ValueError):
        model.forward_intermediates(x, output_fmt='NHWC')

    torch.manual_seed(1)
    feat = make(name, features_only=True, out_indices=(0, 2)).eval()
    assert type(feat).__name__ == 'FeatureGetterNet'
    assert feat.feature_info.channels() == [model.embed_dim] * 2
    with torch.no_grad():
        for got, want in zip(feat(x), model.forward_intermediates(x, indices=(0, 2), intermediates_only=True)):
            torch.testing.assert_close(got, want)

    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert model.prune_intermediate_layers([1]) == [1] and len(model.layers) == 2
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1], intermediates_only=True), want)


@pytest.mark.parametrize('name', NAMES)
def test_grad_checkpointing_goes_through_every_block(name, monkeypatch):
    torch.manual_seed(2)
    model = make(name).train()
    x = images(model)

    def run():
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out0, g0 = run()
    calls = []
    real = stages_mod.checkpoint
    monkeypatch.setattr(stages_mod, 'checkpoint', lambda *a, **k: calls.append(1) or real(*a, **k))
    model.set_grad_checkpointing(True)
    out1, g1 = run()
    assert len(calls) == len(model.layers)
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize('name', NAMES)
def test_meta_float64_and_input_checks(name):
    meta = make(name, device='meta')
    assert all(p.is_meta for p in meta.parameters())
    out = meta(torch.empty(2, meta.in_chans, *meta.img_size, device='meta'))
    assert out.is_meta and out.shape == (2, meta.num_classes)
    m64 = make(name, dtype=torch.float64).eval()
    with torch.no_grad():
        y = m64(images(m64).double())
    assert y.dtype == torch.float64 and torch.isfinite(y).all()
    h, w = m64.img_size
    with pytest.raises(ValueError, match='img_size'):
        m64(torch.randn(1, m64.in_chans, h + 16, w + 16, dtype=torch.float64))
    with pytest.raises(ValueError, match='expected images'):
        m64(torch.randn(1, m64.in_chans + 1, h, w, dtype=torch.float64))


@pytest.mark.parametrize('name', NAMES)
def test_pretrained_cfg(name):
    model = make(name, device='meta')
    cfg = model.pretrained_cfg
    for key in ('num_classes', 'input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'classifier',
                'first_conv', 'license'):
        assert key in cfg, key
    assert cfg.get('hf_hub_id') or cfg.get('file'), 'no weight source'
    sd = model.state_dict()
    assert cfg['classifier'] + '.weight' in sd and cfg['first_conv'] + '.weight' in sd
    assert sd[cfg['first_conv'] + '.weight'].shape[1] == cfg['input_size'][0] == model.in_chans


@pytest.mark.parametrize('name', [n for n in NAMES if n.endswith('_pruned')])
def test_pruned_name_at_keep_one_is_dense(name):
    pruned = make(name, keep_rate=1.0).eval()
    assert pruned.prune_cfg.enabled and len(pruned.reducers) == len(pruned.prune_cfg.stages)
    dense = make(name[:-len('_pruned')], depth=len(pruned.layers)).eval()
    dense.load_state_dict(pruned.state_dict())
    x = images(dense)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), rtol=0, atol=0)
    default = make(name)
    assert default.token_counts()[-1] < default.token_counts()[0]  # the default schedule prunes
