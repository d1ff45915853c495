"""Vim (hustvl/Vim "midclstok" models) against independent references built from the spec
(``docs/architectures.md`` §B1-§B5): parameter and FLOPs counts, a float64 step-by-step bidirectional mixer and
full model written from the equations and fed the *official* checkpoint key names, the middle class token,
checkpoint loading (envelopes, EMA, the pickle allow-list), the offline hub, and the timm model contract.
"""
import argparse
import fnmatch
import math
import pickle
import re

import pytest
import torch
import torch.nn.functional as F

import timm
import timm_ssm_prune  # noqa: F401  (registers the models)
from timm_ssm_prune.flops import count_flops
from timm_ssm_prune.models._loading import load_checkpoint_file
from timm_ssm_prune.models.vim import BiMambaMixer, checkpoint_filter_fn, resample_mid_cls_embed
from timm_ssm_prune.ops import cuda_kernels_available

from hubcache import go_offline, lay_out_repo

NAMES = ('vim_tiny_patch16_224', 'vim_small_patch16_224', 'vim_base_patch16_224')
TINY = dict(embed_dim=32, depth=3, img_size=64)  # 4x4 patches + the class token = 17 tokens


# ------------------------------------------------------------------------------------------------
# The spec, written out independently of the package
# ------------------------------------------------------------------------------------------------

def vim_param_count(D, depth=24, patch=16, pos_rows=197, num_classes=1000, in_chans=3, N=16, d_conv=4):
    """Closed form from docs/architectures.md §B2/§B3: E = 2D, R = ceil(D/16)."""
    E, R = 2 * D, math.ceil(D / 16)
    branch = (E * d_conv + E          # conv1d (depthwise, width 4) + bias
              + E * (R + 2 * N)       # x_proj, no bias
              + R * E + E             # dt_proj + bias (the scan's delta_bias)
              + E * N + E)            # A_log, D
    layer = D + D * 2 * E + 2 * branch + E * D  # RMSNorm weight, in_proj, forward + backward branch, out_proj
    stem = in_chans * patch * patch * D + D + D + pos_rows * D  # patch conv + bias, cls_token, pos_embed
    return depth * layer + stem + D + D * num_classes + num_classes  # + norm_f + head


def official_shapes(D, depth, num_patches, num_classes=1000, patch=16, in_chans=3, N=16, expand=2, d_conv=4):
    """The key list of ``ck['model']`` of an official Vim checkpoint (docs/architectures.md §B3)."""
    E, R = expand * D, math.ceil(D / 16)
    shapes = {
        'cls_token': (1, 1, D), 'pos_embed': (1, num_patches + 1, D),
        'patch_embed.proj.weight': (D, in_chans, patch, patch), 'patch_embed.proj.bias': (D,),
        'head.weight': (num_classes, D), 'head.bias': (num_classes,), 'norm_f.weight': (D,),
    }
    for i in range(depth):
        p = f'layers.{i}.'
        shapes[p + 'norm.weight'] = (D,)
        m = p + 'mixer.'
        shapes[m + 'in_proj.weight'] = (2 * E, D)
        shapes[m + 'out_proj.weight'] = (D, E)
        for s in ('', '_b'):
            shapes[m + ('A_log' if not s else 'A_b_log')] = (E, N)
            shapes[m + 'D' + s] = (E,)
            shapes[m + f'conv1d{s}.weight'] = (E, 1, d_conv)
            shapes[m + f'conv1d{s}.bias'] = (E,)
            shapes[m + f'x_proj{s}.weight'] = (R + 2 * N, E)
            shapes[m + f'dt_proj{s}.weight'] = (E, R)
            shapes[m + f'dt_proj{s}.bias'] = (E,)
    return shapes


def random_official_sd(shapes, seed, dtype=torch.float32):
    """Random but well-scaled values; A_log, D, biases non-trivial and different between the branches."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shp in shapes.items():
        if k.endswith('A_log') or k.endswith('A_b_log'):
            v = torch.log(torch.rand(shp, generator=g) * 15.5 + 0.5)
        elif re.search(r'\.D(_b)?$', k):
            v = 1.0 + 0.5 * torch.randn(shp, generator=g)
        elif 'norm' in k:
            v = 1.0 + 0.2 * torch.randn(shp, generator=g)
        elif re.search(r'dt_proj(_b)?\.bias$', k):
            v = -2.5 + 0.7 * torch.randn(shp, generator=g)  # softplus(.) ~ 0.02..0.3
        elif k in ('cls_token', 'pos_embed') or k.endswith('bias'):
            v = 0.3 * torch.randn(shp, generator=g)
        else:
            v = torch.randn(shp, generator=g) / math.sqrt(math.prod(shp[1:]))
        sd[k] = v.to(dtype)
    return sd


_BRANCH_NAMES = {'A_b_log': 'bwd.A_log', 'D_b': 'bwd.D', 'conv1d_b': 'bwd.conv1d', 'x_proj_b': 'bwd.x_proj',
                 'dt_proj_b': 'bwd.dt_proj', 'A_log': 'fwd.A_log', 'D': 'fwd.D', 'conv1d': 'fwd.conv1d',
                 'x_proj': 'fwd.x_proj', 'dt_proj': 'fwd.dt_proj'}


def to_model_key(k):
    """Official key -> this package's module name (mixer.X -> mixer.fwd.X, mixer.X_b -> mixer.bwd.X)."""
    m = re.fullmatch(r'(layers\.\d+\.mixer\.)([A-Za-z_0-9]+?)((?:\.weight|\.bias)?)', k)
    if m and m.group(2) in _BRANCH_NAMES:
        return m.group(1) + _BRANCH_NAMES[m.group(2)] + m.group(3)
    return k


def from_mixer(mixer):
    """A model mixer's parameters under the official names (the reverse of ``to_model_key``)."""
    sd = {'in_proj.weight': mixer.in_proj.weight, 'out_proj.weight': mixer.out_proj.weight}
    for sfx, br in (('', mixer.fwd), ('_b', mixer.bwd)):
        sd['A_b_log' if sfx else 'A_log'] = br.A_log
        sd['D' + sfx] = br.D
        sd[f'conv1d{sfx}.weight'], sd[f'conv1d{sfx}.bias'] = br.conv1d.weight, br.conv1d.bias
        sd[f'x_proj{sfx}.weight'] = br.x_proj.weight
        sd[f'dt_proj{sfx}.weight'], sd[f'dt_proj{sfx}.bias'] = br.dt_proj.weight, br.dt_proj.bias
    return {k: v.detach() for k, v in sd.items()}


# -- float64 step-by-step reference (docs/architectures.md §0, §B2) --------------------------------------

def silu(x):
    return x * torch.sigmoid(x)


def softplus(x):
    return torch.where(x > 20, x, torch.log1p(torch.exp(x)))


def rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def causal_conv(x, w, b):
    """x (B, L, E), depthwise weight (E, 1, K): out_t = b + sum_k w_k x_{t-(K-1)+k}, zeros before the start."""
    bsz, length, dim = x.shape
    width = w.shape[-1]
    out = b.expand(bsz, length, dim).clone()
    for t in range(length):
        for k in range(width):
            s = t - (width - 1) + k
            if s >= 0:
                out[:, t] += w[:, 0, k] * x[:, s]
    return out


def ref_branch(x, z, p, names):
    """One direction: conv1d + SiLU, x_proj -> (dt, B, C), dt_proj (bias inside the softplus), scan, D, gate."""
    conv_w, conv_b, xproj, dtw, dtb, A_log, Dv = (p[n] for n in names)
    rank, dstate = dtw.shape[1], A_log.shape[1]
    xc = silu(causal_conv(x, conv_w, conv_b))
    dbl = xc @ xproj.T
    dt, Bm, Cm = dbl[..., :rank], dbl[..., rank:rank + dstate], dbl[..., rank + dstate:]
    delta = softplus(dt @ dtw.T + dtb)  # (B, L, E)
    A = -torch.exp(A_log)
    h = torch.zeros(x.shape[0], x.shape[2], dstate, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * xc[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + Dv * xc[:, t])
    y = torch.stack(ys, 1)
    return y * silu(z)


FWD = ('conv1d.weight', 'conv1d.bias', 'x_proj.weight', 'dt_proj.weight', 'dt_proj.bias', 'A_log', 'D')
BWD = ('conv1d_b.weight', 'conv1d_b.bias', 'x_proj_b.weight', 'dt_proj_b.weight', 'dt_proj_b.bias', 'A_b_log', 'D_b')


def ref_mixer(p, x, flip_z=True, divisor=2.0, swap=False, flip_back=True):
    """Bimamba v2 on official names. Keyword arguments inject known mistakes (used to show the test can fail)."""
    E = p['in_proj.weight'].shape[0] // 2
    xz = x @ p['in_proj.weight'].T
    xs, z = xz[..., :E], xz[..., E:]
    fwd, bwd = (BWD, FWD) if swap else (FWD, BWD)
    yf = ref_branch(xs, z, p, fwd)
    yb = ref_branch(xs.flip(1), z.flip(1) if flip_z else z, p, bwd)
    y = (yf + (yb.flip(1) if flip_back else yb)) / divisor
    return y @ p['out_proj.weight'].T, y


def ref_vim(sd, x, stride=16, pos_embed=None):
    """The whole classifier on an official state dict: returns logits, normed tokens, cls index, per-block
    residual streams (residual + mixer output after each block)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    feat = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=stride)
    bsz, dim, gh, gw = feat.shape
    tok = feat.flatten(2).transpose(1, 2)  # raster order
    M = gh * gw
    p = M // 2
    pos = sd['pos_embed'] if pos_embed is None else pos_embed.double()
    hidden = torch.cat([tok[:, :p], sd['cls_token'].expand(bsz, 1, dim), tok[:, p:]], 1) + pos
    depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('layers.'))
    residual, streams = None, []
    for i in range(depth):
        residual = hidden if residual is None else residual + hidden
        layer = {k[len(f'layers.{i}.mixer.'):]: v for k, v in sd.items() if k.startswith(f'layers.{i}.mixer.')}
        hidden = ref_mixer(layer, rmsnorm(residual, sd[f'layers.{i}.norm.weight']))[0]
        streams.append(residual + hidden)
    out = rmsnorm(residual + hidden, sd['norm_f.weight'])
    logits = out[:, p] @ sd['head.weight'].T + sd['head.bias']
    return logits, out, p, (gh, gw), streams


def ref_resample(posemb, old, new):
    """Middle-cls embedding resize: drop row M//2, bicubic (align_corners=False) on the grid, put it back."""
    M = old[0] * old[1]
    cls = posemb[:, M // 2:M // 2 + 1]
    patches = torch.cat([posemb[:, :M // 2], posemb[:, M // 2 + 1:]], 1)
    grid = patches.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode='bicubic', align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], -1)
    n = new[0] * new[1]
    return torch.cat([patches[:, :n // 2], cls, patches[:, n // 2:]], 1)


def load_official(model, sd, **kw):
    out = checkpoint_filter_fn({'model': sd}, model, **kw)
    res = model.load_state_dict({k: v.to(model.pos_embed.dtype) for k, v in out.items()}, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    return model


# ------------------------------------------------------------------------------------------------
# 1-2. Parameter and FLOPs counts of the released configurations
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,D,pos_rows,expected', [
    ('vim_tiny_patch16_224', 192, 197, 7_148_008),            # paper/README: 7M
    ('vim_small_patch16_224', 384, 197, 25_796_584),          # 26M
    ('vim_base_patch16_224', 768, 197, 97_598_440),           # 98M
    ('vim_tiny_patch16_stride8_224', 192, 27 * 27 + 1, 7_250_344),  # Vim-Ti+: 27x27 grid at stride 8
    ('vim_small_patch16_stride8_224', 384, 27 * 27 + 1, 26_001_256),  # Vim-S+
])
def test_param_counts(name, D, pos_rows, expected):
    assert vim_param_count(D, pos_rows=pos_rows) == expected
    shapes = official_shapes(D, 24, pos_rows - 1)
    assert sum(math.prod(s) for s in shapes.values()) == expected
    if name == 'vim_tiny_patch16_224':
        assert len(shapes) == 415  # docs/architectures.md §B3: 415 tensors in ck['model'] of Vim-Ti
    m = timm.create_model(name, device='meta')
    assert sum(p.numel() for p in m.parameters()) == expected
    assert round(expected / 1e6) == {192: 7, 384: 26, 768: 98}[D]  # the published 7M / 26M / 98M


@pytest.mark.parametrize('name,published', [
    # 1.5 G (Vim-Ti) and 5.1 G (Vim-S): the LocalMamba and PlainMamba paper tables, counted with LocalMamba's
    # VisionMamba.flops (docs/architectures.md §B1/§B5); the ToP paper itself lists 1.45 and 5.08.
    ('vim_tiny_patch16_224', 1.5),
    ('vim_small_patch16_224', 5.1),
    # 18.9 G (Vim-B): not published by the Vim authors; the same method's estimate (§B1/§B5).
    ('vim_base_patch16_224', 18.9),
])
def test_flops_match_published(name, published):
    m = timm.create_model(name, device='meta')
    assert m.default_flops_convention == 'localmamba'
    assert abs(count_flops(m) - published) / published < 0.02


def vim_flops_by_hand(D, convention, grid=14, depth=24, patch=16, num_classes=1000, N=16, K=4):
    """Multiply-accumulates / 1e9 with L = grid^2 + 1 tokens (the class token included)."""
    E, R = 2 * D, math.ceil(D / 16)
    M = grid * grid
    L = M + 1
    branch = (E * K * (L + K - 1)     # depthwise conv1d: F.conv1d(padding=3) produces L + 3 outputs
              + L * E * (R + 2 * N)   # x_proj
              + L * R * E)            # dt_proj (weight only, the bias goes into the scan)
    proj = L * D * 2 * E + L * E * D  # in_proj + out_proj
    if convention == 'localmamba':    # one branch's conv1d/x_proj/dt_proj; 5ELN + 2EL per direction
        layer = proj + branch + 2 * (5 * E * N * L + 2 * E * L)
    else:                             # 'mamba': both branches; 9ELN + EL per direction
        layer = proj + 2 * branch + 2 * (9 * E * N * L + E * L)
    return (depth * layer + M * D * 3 * patch * patch + D * num_classes) / 1e9


@pytest.mark.parametrize('convention', ['localmamba', 'mamba'])
@pytest.mark.parametrize('name,grid', [('vim_tiny_patch16_224', 14), ('vim_tiny_patch16_stride8_224', 27)])
def test_flops_by_hand(name, grid, convention):
    m = timm.create_model(name, device='meta')
    expected = vim_flops_by_hand(192, convention, grid=grid)
    assert count_flops(m, convention=convention) == pytest.approx(expected, rel=1e-6)
    if convention == 'localmamba':
        assert count_flops(m) == pytest.approx(expected, rel=1e-6)  # the default


# ------------------------------------------------------------------------------------------------
# 3. The bidirectional mixer against the float64 reference
# ------------------------------------------------------------------------------------------------

def randomised_mixer(dim=8, d_state=5, dt_rank=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixer = BiMambaMixer(dim, d_state=d_state, dt_rank=dt_rank, scan_backend='torch').double()
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if name.endswith('A_log'):
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 7.5 + 0.5))
            elif name.endswith('.D'):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith('dt_proj.bias'):
                p.copy_(-2 + 0.7 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(1, math.prod(p.shape[1:]))))
    for a, b in zip(mixer.fwd.parameters(), mixer.bwd.parameters()):
        assert not torch.allclose(a, b)
    return mixer


def test_mixer_matches_reference():
    mixer = randomised_mixer()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    out, ssm = mixer(x, return_ssm=True)
    p = from_mixer(mixer)
    assert len(p) == 2 + 2 * 7
    ref_out, ref_y = ref_mixer(p, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ssm.y, ref_y, rtol=1e-10, atol=1e-12)  # the gated, averaged SSM output
    # the reference is discriminating: each of these mistakes changes the output by far more than the tolerance
    scale = ref_out.abs().max()
    for wrong in (dict(flip_z=False), dict(divisor=1.0), dict(swap=True), dict(flip_back=False)):
        assert (ref_mixer(p, x, **wrong)[0] - out).abs().max() > 1e-3 * scale, wrong


def test_mixer_float32_close_to_reference():
    mixer = randomised_mixer(dim=16, d_state=16, dt_rank=None, seed=1)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    ref_out, _ = ref_mixer(from_mixer(mixer), x)
    out = mixer.float()(x.float())[0]
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# The whole model (official key names loaded through the filter) against the reference
# ------------------------------------------------------------------------------------------------

REF_CASES = [
    # name, model kwargs, stride, input (H, W)
    ('vim_tiny_patch16_224', dict(img_size=48, embed_dim=16, depth=2), 16, (48, 48)),           # 3x3: cls at 4
    ('vim_small_patch16_224', dict(img_size=(32, 64), embed_dim=24, depth=2), 16, (32, 64)),    # 2x4: cls at 4
    ('vim_tiny_patch16_stride8_224', dict(img_size=32, embed_dim=16, depth=2), 8, (32, 32)),   # stride 8: 3x3
    ('vim_base_patch16_224', dict(img_size=48, embed_dim=16, depth=3, dynamic_img_size=True), 16, (64, 80)),
]


@pytest.mark.parametrize('name,kwargs,stride,hw', REF_CASES)
def test_model_matches_reference_float64(name, kwargs, stride, hw):
    m = timm.create_model(name, num_classes=7, dtype=torch.float64, **kwargs).eval()
    assert all(p.dtype == torch.float64 for p in m.parameters())
    D, depth = kwargs['embed_dim'], kwargs['depth']
    sd = random_official_sd(official_shapes(D, depth, m.num_prunable_tokens, num_classes=7), seed=3)
    load_official(m, sd)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    pos = None
    if tuple(hw) != tuple(m.img_size):
        grid = tuple((s - 16) // stride + 1 for s in hw)
        pos = ref_resample(sd['pos_embed'].double(), m.grid_size, grid)
    logits, tokens, p, grid, streams = ref_vim(sd, x, stride, pos)
    with torch.no_grad():
        out = m(x)
        feats = m.forward_features(x)
        final, inter = m.forward_intermediates(x, indices=list(range(depth)))
        inter_n = m.forward_intermediates(x, indices=[0], norm=True, output_fmt='NLC', intermediates_only=True)
    assert out.dtype == torch.float64 and out.shape == (2, 7)
    # float64 end to end; only a resized pos_embed is interpolated in float32 (_base.resample_grid_embed)
    tol = dict(rtol=1e-9, atol=1e-10) if pos is None else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, logits, **tol)
    torch.testing.assert_close(feats, tokens, **tol)
    torch.testing.assert_close(final, tokens, **tol)
    for i, f in enumerate(inter):  # patch maps of the residual stream, class token removed, raster order
        patches = torch.cat([streams[i][:, :p], streams[i][:, p + 1:]], 1)
        assert f.shape == (2, D, *grid)
        torch.testing.assert_close(f, patches.transpose(1, 2).reshape(2, D, *grid), **tol)
    patches = torch.cat([streams[0][:, :p], streams[0][:, p + 1:]], 1)
    torch.testing.assert_close(inter_n[0], rmsnorm(patches, sd['norm_f.weight'].double()), **tol)


def test_model_float32_close_to_reference():
    m = timm.create_model('vim_tiny_patch16_224', img_size=48, embed_dim=32, depth=3, num_classes=5).eval()
    sd = random_official_sd(official_shapes(32, 3, 9, num_classes=5), seed=4)
    load_official(m, sd)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        out = m(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_vim(sd, x)[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# 4. The middle class token
# ------------------------------------------------------------------------------------------------

def _layer0_input(m, x):
    seen = []
    h = m.layers[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            feats = m.forward_features(x)
    finally:
        h.remove()
    return seen[0], feats


@pytest.mark.parametrize('img_size,num_patches,cls_index', [
    (224, 196, 98),       # the released models: 14x14 patches, class token at 98 of 197
    (80, 25, 12),         # odd count: 5x5 -> p = 25 // 2 = 12 of 26
    ((64, 96), 24, 12),   # 4x6
])
def test_middle_class_token(img_size, num_patches, cls_index):
    m = timm.create_model('vim_tiny_patch16_224', img_size=img_size, embed_dim=16, depth=1, num_classes=3).eval()
    hw = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = torch.randn(2, 3, *hw)
    tokens, feats = _layer0_input(m, x)
    assert tokens.shape == (2, num_patches + 1, 16) and feats.shape == tokens.shape
    pos = m.pos_embed.detach()
    torch.testing.assert_close(tokens[:, cls_index], (m.cls_token[0, 0] + pos[0, cls_index]).detach().expand(2, -1))
    patches = F.conv2d(x, m.patch_embed.proj.weight, m.patch_embed.proj.bias, stride=16).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[:, :cls_index], patches[:, :cls_index] + pos[:, :cls_index],
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens[:, cls_index + 1:], patches[:, cls_index:] + pos[:, cls_index + 1:],
                               rtol=1e-5, atol=1e-5)
    # the head reads token (L - 1) // 2 of whatever it is given ...
    probe = torch.randn(2, num_patches + 1, 16)
    torch.testing.assert_close(m.forward_head(probe, pre_logits=True), probe[:, cls_index])
    with torch.no_grad():
        torch.testing.assert_close(m.forward_head(probe), m.head(probe[:, cls_index]))
        # ... and the logits are head(norm_f(tokens)[:, M // 2])
        torch.testing.assert_close(m(x), m.head(feats[:, cls_index]))


def test_resample_mid_cls_embed():
    posemb = torch.randn(1, 26, 8)  # 5x5 patches, class token row at 12
    out = resample_mid_cls_embed(posemb, (5, 5), (3, 4))
    assert out.shape == (1, 13, 8)
    assert torch.equal(out[:, 6], posemb[:, 12])  # new cls index 12 // 2 = 6; the row is kept unchanged
    torch.testing.assert_close(out, ref_resample(posemb, (5, 5), (3, 4)))
    grid = torch.cat([posemb[:, :12], posemb[:, 13:]], 1).reshape(1, 5, 5, 8).permute(0, 3, 1, 2)
    expect = F.interpolate(grid, size=(3, 4), mode='bicubic', align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(torch.cat([out[:, :6], out[:, 7:]], 1), expect.reshape(1, 12, 8))
    assert torch.equal(resample_mid_cls_embed(posemb, (5, 5), (5, 5)), posemb)


def test_filter_resamples_pos_embed():
    m = timm.create_model('vim_tiny_patch16_224', img_size=48, embed_dim=16, depth=1)  # 3x3 grid
    sd = random_official_sd(official_shapes(16, 1, 25), seed=5)  # a 5x5-grid checkpoint
    out = checkpoint_filter_fn({'model': sd}, m)
    torch.testing.assert_close(out['pos_embed'], ref_resample(sd['pos_embed'], (5, 5), (3, 3)))
    assert torch.equal(out['pos_embed'][:, 4], sd['pos_embed'][:, 12])


# ------------------------------------------------------------------------------------------------
# 5. Official checkpoint files: envelopes, EMA, the pickle allow-list
# ------------------------------------------------------------------------------------------------

TINY_CK = dict(embed_dim=16, depth=2, img_size=48)  # 3x3 patches


def official_file(path, D, depth, num_patches, args=None, seed=10):
    shapes = official_shapes(D, depth, num_patches)
    sd, sd_ema = random_official_sd(shapes, seed), random_official_sd(shapes, seed + 1)
    ck = {'model': sd, 'model_ema': sd_ema,
          'optimizer': {'state': {0: {'exp_avg': torch.zeros(3)}}, 'param_groups': [{'lr': 1e-3, 'params': [0]}]},
          'lr_scheduler': {'last_epoch': 3}, 'epoch': 3,
          'args': argparse.Namespace(lr=1e-3, model='vim_tiny') if args is None else args}
    torch.save(ck, path)
    return sd, sd_ema


def assert_holds(model, official_sd):
    msd = model.state_dict()
    assert set(msd) == {to_model_key(k) for k in official_sd}
    for k, v in official_sd.items():
        assert torch.equal(msd[to_model_key(k)], v), k


def test_load_official_checkpoint_file(tmp_path):
    path = tmp_path / 'vim_tiny_official.pth'
    sd, sd_ema = official_file(path, 16, 2, 9)
    ck = load_checkpoint_file(path)
    assert isinstance(ck['args'], argparse.Namespace) and ck['epoch'] == 3
    m = timm.create_model('vim_tiny_patch16_224', **TINY_CK)
    res = m.load_state_dict(checkpoint_filter_fn(ck, m), strict=True)
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert_holds(m, sd)  # the 'model' entry, not 'model_ema'
    # the EMA weights on request, or through the .in1k_ema pretrained tag
    m.load_state_dict(checkpoint_filter_fn(ck, m, use_ema=True), strict=True)
    assert_holds(m, sd_ema)
    m_ema = timm.create_model('vim_tiny_patch16_224.in1k_ema', **TINY_CK)
    assert m_ema.pretrained_cfg['tag'] == 'in1k_ema'
    m_ema.load_state_dict(checkpoint_filter_fn(ck, m_ema), strict=True)
    assert_holds(m_ema, sd_ema)
    # a bare state dict, 'module.' prefixes and rope buffers of older checkpoints are accepted
    bare = {'module.' + k: v for k, v in sd.items()}
    bare['rope.freqs_cos'] = torch.zeros(9, 16)
    m.load_state_dict(checkpoint_filter_fn(bare, m), strict=True)
    assert_holds(m, sd)
    # an already-converted dict passes through unchanged
    assert checkpoint_filter_fn(m.state_dict(), m).keys() == m.state_dict().keys()


def test_filter_rejects_other_variant():
    m = timm.create_model('vim_tiny_patch16_224', **dict(TINY_CK, embed_dim=24))
    with pytest.raises(ValueError, match='does not match the model'):
        checkpoint_filter_fn({'model': random_official_sd(official_shapes(16, 2, 9), 0)}, m)


_TRAP = []  # filled only if a pickled object's code runs


def _trap_fired(tag):
    _TRAP.append(tag)
    return tag


class ReduceTrap:
    def __reduce__(self):
        return _trap_fired, ('reduce',)


class SetStateTrap:
    def __init__(self):
        self.payload = 1

    def __setstate__(self, state):
        _trap_fired('setstate')
        self.__dict__.update(state)


@pytest.mark.parametrize('trap_cls,global_name', [(ReduceTrap, '_trap_fired'), (SetStateTrap, 'SetStateTrap')])
def test_unexpected_pickled_class_is_refused(tmp_path, monkeypatch, trap_cls, global_name):
    path = tmp_path / 'vim_t_midclstok_76p1acc.pth'
    official_file(path, 16, 2, 9, args=trap_cls())
    # the trap is armed: once its global is explicitly allowed, unpickling the file runs the class's code
    _TRAP.clear()
    with torch.serialization.safe_globals([argparse.Namespace, _trap_fired, SetStateTrap]):
        torch.load(path, weights_only=True)
    assert _TRAP, 'the pickled object should execute code when its class is allowed'
    _TRAP.clear()
    with pytest.raises(pickle.UnpicklingError, match=r'refusing to load.*' + global_name):
        load_checkpoint_file(path)
    assert _TRAP == []
    # timm's own loader (pretrained=True through the hub) refuses it too
    lay_out_repo(tmp_path / 'hub', 'hustvl/Vim-tiny-midclstok', {'vim_t_midclstok_76p1acc.pth': path})
    go_offline(monkeypatch, tmp_path / 'hub')
    with pytest.raises(RuntimeError, match='weights_only'):
        timm.create_model('vim_tiny_patch16_224', pretrained=True, **TINY_CK)
    assert _TRAP == []


# ------------------------------------------------------------------------------------------------
# 6. Offline hub round trip with the full-size Vim-Ti
# ------------------------------------------------------------------------------------------------

def test_offline_hub_round_trip(tmp_path, monkeypatch):
    path = tmp_path / 'vim_t_midclstok_76p1acc.pth'
    sd, sd_ema = official_file(path, 192, 24, 196, seed=20)
    lay_out_repo(tmp_path / 'hub', 'hustvl/Vim-tiny-midclstok', {'vim_t_midclstok_76p1acc.pth': path})
    go_offline(monkeypatch, tmp_path / 'hub')

    direct = timm.create_model('vim_tiny_patch16_224').eval()
    direct.load_state_dict(checkpoint_filter_fn(load_checkpoint_file(path), direct), strict=True)
    hub = timm.create_model('vim_tiny_patch16_224', pretrained=True).eval()
    assert_holds(hub, sd)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(hub(x), direct(x), rtol=0, atol=0)

    pruned = timm.create_model('vim_tiny_patch16_224_pruned', pretrained=True)
    assert pruned.prune_cfg.stages  # a pruned model ...
    assert_holds(pruned, sd)        # ... with the dense official weights

    ema = timm.create_model('vim_tiny_patch16_224.in1k_ema', pretrained=True)
    assert_holds(ema, sd_ema)


# ------------------------------------------------------------------------------------------------
# 7. Family-specific parts of the timm contract (the shared ones: tests/test_contract.py)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', NAMES)
def test_contract_shapes_and_heads(name):
    m = timm.create_model(name, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    assert m.num_features == m.head_hidden_size == 32
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (2, 17, 32)
        pre = m.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 32)
        torch.testing.assert_close(pre, feats[:, 8])
        assert m(x).shape == (2, 1000)
        m.reset_classifier(0)
        torch.testing.assert_close(m(x), feats[:, 8])
        m.reset_classifier(0, 'avg')
        torch.testing.assert_close(m(x), torch.cat([feats[:, :8], feats[:, 9:]], 1).mean(1))
        m.reset_classifier(5, 'token')
        assert m(x).shape == (2, 5) and m.get_classifier().out_features == 5
    with pytest.raises(ValueError):
        m.reset_classifier(5, 'max')
    m0 = timm.create_model(name, num_classes=0, **TINY).eval()
    assert isinstance(m0.get_classifier(), torch.nn.Identity)
    with torch.no_grad():
        assert m0(x).shape == (2, 32)
    sd = m.state_dict()
    cfg = m.pretrained_cfg
    assert cfg['classifier'] + '.weight' in sd and cfg['first_conv'] + '.weight' in sd


def test_contract_optimizer_layer_decay_and_no_weight_decay():
    from timm.optim import create_optimizer_v2
    m = timm.create_model('vim_tiny_patch16_224', **TINY)
    nwd = m.no_weight_decay()
    names = [n for n, _ in m.named_parameters()]
    matched = {n for n in names if any(fnmatch.fnmatch(n, pat) for pat in nwd)}
    expected_nwd = {n for n in names if re.search(r'(^pos_embed|^cls_token|\.A_log|\.D)$', n)}
    assert len(expected_nwd) == 2 + 3 * 2 * 2 and matched == expected_nwd

    opt = create_optimizer_v2(m, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    depth = 3
    top = depth + 1  # group ids as timm assigns them for ViT too: stem 0, layers.i -> i + 1, norm_f with the
    #                  last block (depth), the unmatched head -> depth + 1

    def layer_id(n):
        if n.startswith(('cls_token', 'pos_embed', 'patch_embed')):
            return 0
        if n.startswith('norm_f'):
            return depth
        mm = re.match(r'layers\.(\d+)\.', n)
        return int(mm.group(1)) + 1 if mm else top

    params = dict(m.named_parameters())
    seen = set()
    for group in opt.param_groups:
        for p in group['params']:
            n = next(k for k, v in params.items() if v is p)
            seen.add(n)
            assert group['lr_scale'] == pytest.approx(0.5 ** (top - layer_id(n))), n
            no_decay = n in expected_nwd or p.ndim <= 1
            assert group['weight_decay'] == (0.0 if no_decay else 0.05), n
    assert seen == set(names)


def test_contract_drop_path():
    m = timm.create_model('vim_tiny_patch16_224', drop_path_rate=0.5, **TINY)
    # official schedule: [0] + linspace(0, rate, depth), block i uses entry i, the final add uses the rate
    assert isinstance(m.layers[0].drop_path, torch.nn.Identity)
    assert isinstance(m.layers[1].drop_path, torch.nn.Identity)
    assert m.layers[2].drop_path.drop_prob == pytest.approx(0.25)
    assert m.drop_path.drop_prob == pytest.approx(0.5)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        m.train()
        a, b = m(x), m(x)
        assert not torch.allclose(a, b)
        m.eval()
        torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    m0 = timm.create_model('vim_tiny_patch16_224', **TINY).train()
    with torch.no_grad():
        torch.testing.assert_close(m0(x), m0(x), rtol=0, atol=0)


def test_contract_dynamic_img_size_and_errors():
    m = timm.create_model('vim_tiny_patch16_224', **TINY).eval()
    with pytest.raises(ValueError, match='img_size'):
        m(torch.randn(1, 3, 80, 80))
    with pytest.raises(ValueError, match='expected images'):
        m(torch.randn(1, 1, 64, 64))
    md = timm.create_model('vim_tiny_patch16_224', dynamic_img_size=True, **TINY).eval()
    md.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(md(x), m(x), rtol=0, atol=0)
        feats = md.forward_features(torch.randn(2, 3, 80, 96))
        assert feats.shape == (2, 31, 32)  # 5x6 + class token (at 15)
        maps = md.forward_intermediates(torch.randn(2, 3, 80, 96), indices=[2], intermediates_only=True)
        assert maps[0].shape == (2, 32, 5, 6)
    with pytest.raises(ValueError):
        timm.create_model('vim_tiny_patch16_224', embed_dim=16, depth=1, img_size=8)


# ------------------------------------------------------------------------------------------------
# 8. CUDA kernels against the PyTorch scan
# ------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not cuda_kernels_available(), reason='needs a GPU and the mamba-ssm CUDA kernels')
def test_cuda_kernels_match_torch_backend(monkeypatch):
    import timm_ssm_prune.ops.scan as scan_mod
    kw = dict(img_size=64, embed_dim=64, depth=2)
    m_cuda = timm.create_model('vim_tiny_patch16_224', scan_backend='auto', **kw).cuda().eval()
    m_torch = timm.create_model('vim_tiny_patch16_224', scan_backend='torch', **kw).cuda().eval()
    m_torch.load_state_dict(m_cuda.state_dict())
    kernel = scan_mod._mamba_selective_scan_fn()
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(scan_mod, '_mamba_selective_scan_fn', lambda: counting)
    x = torch.randn(2, 3, 64, 64, device='cuda')
    with torch.no_grad():
        a = m_cuda(x)
        assert len(calls) == 2  # the kernel ran in both blocks
        b = m_torch(x)
    assert len(calls) == 2
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
