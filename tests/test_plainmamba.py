"""PlainMamba L1/L2/L3 as timm models, checked against the official architecture (docs/architectures.md §A1-§A5).

Independent references written here from the spec:
* parameter counts derived from the layer shapes (§A1/§A3) and the published figures;
* FLOPs by hand for L1 (§A5) and the published 3.0 / 8.1 / 14.4 G;
* a float64 mixer with a naive scan loop over time, its own snake orders and direction codes, both quirks
  (Q1: dt bias twice, Q2: only u permuted) and the quirk-free variant; a whole tiny model built on it;
* official mmcls-format checkpoints built from the key table §A3, loaded from files and from a hand-laid
  offline Hugging Face cache;
* timm's model contract (features, intermediates, optimizer groups, checkpointing, sizes, dtypes).
"""
import math
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_ssm_prune  # noqa: F401  (registers the models)
from timm_ssm_prune.flops import count_flops, flops_breakdown
from timm_ssm_prune.models._loading import load_checkpoint_file
from timm_ssm_prune.models.plainmamba import PlainMamba2D, SnakeLayout, checkpoint_filter_fn, snake_scan_tables
from timm_ssm_prune.ops import cuda_kernels_available

from hubcache import go_offline, lay_out_repo

NAMES = ('plainmamba_l1', 'plainmamba_l2', 'plainmamba_l3')
# Architecture of each variant, from docs/architectures.md §A1 (not from the package).
SPEC = {
    'plainmamba_l1': dict(D=192, depth=24, num_convs=1, dwconv=(0,)),
    'plainmamba_l2': dict(D=384, depth=24, num_convs=2, dwconv=()),
    'plainmamba_l3': dict(D=448, depth=36, num_convs=2, dwconv=()),
}
STEM = 64  # stem channels
N_STATE = 16
TINY = dict(img_size=64, embed_dim=32, depth=3)  # grid 4x4


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# 1. Parameter counts
# ------------------------------------------------------------------------------------------------

def derived_param_count(D, depth, num_convs, dwconv, num_classes=1000, tokens=14 * 14, N=N_STATE):
    """Parameters of PlainMamba from the layer shapes of docs/architectures.md §A2/§A3 (BN buffers excluded)."""
    E, R = 2 * D, math.ceil(D / 16)
    bn = 2 * STEM  # BatchNorm affine weight + bias
    stem = STEM * 3 * 7 * 7 + bn  # conv7x7/2 (no bias) + BN
    stem += num_convs * (STEM * STEM * 3 * 3 + bn)  # conv3x3 (no bias) + BN each
    stem += STEM * D * 8 * 8 + D  # projection conv8x8/8 with bias
    pos_embed = tokens * D
    mixer = (D * 2 * E + 2 * E)  # in_proj (bias)
    mixer += E * 7 * 7 + E  # depthwise conv2d 7x7 (bias)
    mixer += E * (R + 2 * N)  # x_proj (no bias)
    mixer += R * E + E  # dt_proj (bias)
    mixer += E * N + E + 5 * N  # A_log, D, direction_Bs
    mixer += E * D + D  # out_proj (bias)
    layer = 2 * D + mixer  # + LayerNorm
    dw_block = D * 3 * 3 + 2 * D  # depthwise 3x3 (no bias) + BN
    backbone = stem + pos_embed + depth * layer + len(dwconv) * dw_block + 2 * D  # + ln1
    head = num_classes * D + num_classes if num_classes else 0
    return backbone + head


# Published figures (docs/architectures.md §A1/§A3): exact for L1, in M to 3 decimals for L2/L3.
PUBLISHED = {
    'plainmamba_l1': (7_551_656, 7_358_656),
    'plainmamba_l2': (26.146, 25.761),
    'plainmamba_l3': (50.956, 50.507),
}


@pytest.mark.parametrize('name', NAMES)
def test_param_counts_match_derivation_and_published(name):
    s = SPEC[name]
    with_head = derived_param_count(s['D'], s['depth'], s['num_convs'], s['dwconv'])
    backbone = derived_param_count(s['D'], s['depth'], s['num_convs'], s['dwconv'], num_classes=0)
    assert with_head - backbone == 1000 * s['D'] + 1000
    assert n_params(timm.create_model(name, device='meta')) == with_head
    assert n_params(timm.create_model(name, num_classes=0, device='meta')) == backbone
    pub_head, pub_backbone = PUBLISHED[name]
    if isinstance(pub_head, int):
        assert (with_head, backbone) == (pub_head, pub_backbone)
    else:
        assert round(with_head / 1e6, 3) == pub_head
        assert round(backbone / 1e6, 3) == pub_backbone
    # README: backbone params truncated to one decimal (7.3M / 25.7M / 50.5M)
    assert math.floor(backbone / 1e5) / 10 == {'plainmamba_l1': 7.3, 'plainmamba_l2': 25.7,
                                               'plainmamba_l3': 50.5}[name]


def test_derivation_is_sensitive():
    """The derivation is not a tautology: the L1-only dw block and L2's extra stem conv change the counts."""
    assert derived_param_count(192, 24, 1, ()) != 7_551_656
    assert derived_param_count(192, 24, 2, (0,)) != 7_551_656
    assert n_params(timm.create_model('plainmamba_l1', layers_with_dwconv=(), device='meta')) != 7_551_656


# ------------------------------------------------------------------------------------------------
# 2. FLOPs
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,published', [('plainmamba_l1', 3.0), ('plainmamba_l2', 8.1), ('plainmamba_l3', 14.4)])
def test_flops_match_paper(name, published):
    g = count_flops(timm.create_model(name, device='meta'), (3, 224, 224))
    assert abs(g - published) / published < 0.01, g


def test_l1_flops_by_hand():
    """docs/architectures.md §A5: conv/linear MACs + (9·E·N·L + E·L)·4·depth, at 224 (grid 14x14)."""
    D, depth, N = 192, 24, N_STATE
    E, R, L = 2 * D, 12, 14 * 14
    macs = STEM * 3 * 7 * 7 * 112 * 112  # stem conv at 112x112
    macs += STEM * STEM * 3 * 3 * 112 * 112  # one 3x3 conv
    macs += D * STEM * 8 * 8 * L  # projection
    per_layer = L * D * 2 * E + L * E * 7 * 7 + L * E * (R + 2 * N) + L * R * E + L * E * D
    macs += depth * per_layer
    macs += L * D * 3 * 3  # layer-0 dw conv
    macs += D * 1000  # head
    scan = (9 * E * N * L + E * L) * 4 * depth
    hand = (macs + scan) / 1e9
    parts = flops_breakdown(timm.create_model('plainmamba_l1', device='meta'), (3, 224, 224))
    assert parts['scan'] == pytest.approx(scan / 1e9, rel=1e-9)
    assert parts['total'] == pytest.approx(hand, rel=1e-6)
    assert round(hand, 2) == 3.01  # spec: "computed 3.01G"


# ------------------------------------------------------------------------------------------------
# 3./4. Scan orders and the mixer against a float64 reference with a naive scan loop
# ------------------------------------------------------------------------------------------------

MOVES = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}  # right, left, up, down; 0 = start


def ref_orders(H, W):
    """The four snake orders and per-step direction codes, by walking the grid (independent of the package)."""
    def walk(n_lines, line_len, cell):
        path = []
        for i in range(n_lines):
            steps = range(line_len) if i % 2 == 0 else reversed(range(line_len))
            path += [cell(i, j) for j in steps]
        return path

    row_snake = walk(H, W, lambda r, c: (r, c))
    col_snake = walk(W, H, lambda c, r: (r, c))
    orders = []
    for path in (row_snake, row_snake[::-1], col_snake, col_snake[::-1]):
        codes = [0] + [MOVES[(b[0] - a[0], b[1] - a[1])] for a, b in zip(path, path[1:])]
        orders.append(([r * W + c for r, c in path], codes))
    return orders


def ref_mixer(p, x, H, W, q1=True, q2=True, combine='sum', codes_by='step'):
    """PlainMamba2D.forward from docs/architectures.md §A2 in float64; the scan is a loop over time (vectorised
    over E, N).

    p: dict of the mixer's parameters; x (B, L, D) raster order. Returns (out (B, L, D), gated y (B, L, E)).
    q1: dt_proj bias added inside dt_proj and again as delta_bias; q2: only u permuted into scan order.
    """
    p = {k: v.detach().double() for k, v in p.items()}
    x = x.detach().double()
    bsz, L, _ = x.shape
    E, N = p['D'].shape[0], p['A_log'].shape[1]
    R = p['dt_proj.weight'].shape[1]
    xz = x @ p['in_proj.weight'].T + p['in_proj.bias']
    xi, z = xz[..., :E], xz[..., E:]
    img = xi.transpose(1, 2).reshape(bsz, E, H, W)
    k = p['conv2d.weight'].shape[-1]
    xc = F.silu(F.conv2d(img, p['conv2d.weight'], p['conv2d.bias'], padding=k // 2, groups=E))
    xc = xc.flatten(2).transpose(1, 2)  # (B, L, E) raster
    x_dbl = xc @ p['x_proj.weight'].T
    dt_low, Bm, Cm = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
    dt = dt_low @ p['dt_proj.weight'].T + (p['dt_proj.bias'] if q1 else 0)
    A = -torch.exp(p['A_log'])
    y = torch.zeros(bsz, L, E, dtype=torch.float64)
    for order, codes in ref_orders(H, W):
        if codes_by == 'position':  # deliberately wrong: code of the token instead of the scan step
            by_tok = dict(zip(order, codes))
            codes = [by_tok[l] for l in range(L)]
        for b in range(bsz):
            h = torch.zeros(E, N, dtype=torch.float64)
            for step in range(L):
                tok = order[step]
                src = step if q2 else tok  # row of dt/B/C paired with this step
                delta = F.softplus(dt[b, src] + p['dt_proj.bias'])
                Bv = Bm[b, src] + p['direction_Bs'][codes[step]]
                h = torch.exp(delta[:, None] * A) * h + (delta * xc[b, tok])[:, None] * Bv[None, :]
                y[b, tok] += h @ Cm[b, src] + p['D'] * xc[b, tok]
    if combine == 'mean':
        y = y / 4
    y = y * F.silu(z)
    out = y @ p['out_proj.weight'].T + p['out_proj.bias']
    return out, y


def randomize_(module, seed=0):
    """Non-trivial random values for every parameter (and BN buffer) of ``module``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            leaf = name.rsplit('.', 1)[-1]
            if leaf == 'A_log':
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            elif leaf == 'D':
                t.copy_(torch.randn(t.shape, generator=g))
            elif leaf == 'direction_Bs':
                t.copy_(torch.randn(t.shape, generator=g))
            elif name.endswith('dt_proj.bias'):
                t.copy_(torch.randn(t.shape, generator=g) * 0.5 - 0.5)
            elif name == 'pos_embed':
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            elif t.dim() == 1 and leaf == 'weight':  # LayerNorm / BatchNorm scales
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            elif t.dim() >= 2:  # linear / conv weights, scaled by fan-in
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
            else:  # biases
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
        for name, t in module.named_buffers():
            if name.endswith('running_mean'):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return module


def mixer_params(mixer):
    return dict(mixer.named_parameters())


SPEC_4x4 = {
    0: ([0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12], [0, 1, 1, 1, 4, 2, 2, 2, 4, 1, 1, 1, 4, 2, 2, 2]),
    1: ([12, 13, 14, 15, 11, 10, 9, 8, 4, 5, 6, 7, 3, 2, 1, 0], [0, 1, 1, 1, 3, 2, 2, 2, 3, 1, 1, 1, 3, 2, 2, 2]),
    2: ([0, 4, 8, 12, 13, 9, 5, 1, 2, 6, 10, 14, 15, 11, 7, 3], [0, 4, 4, 4, 1, 3, 3, 3, 1, 4, 4, 4, 1, 3, 3, 3]),
    3: ([3, 7, 11, 15, 14, 10, 6, 2, 1, 5, 9, 13, 12, 8, 4, 0], [0, 4, 4, 4, 2, 3, 3, 3, 2, 4, 4, 4, 2, 3, 3, 3]),
}


def test_snake_tables_match_spec_4x4_example():
    order, rank, code_at_pos, code_at_step = snake_scan_tables(4, 4)
    for d, (o, c) in SPEC_4x4.items():
        assert order[d].tolist() == o
        assert code_at_step[d].tolist() == c
    assert order[0].tolist()[:9] == [0, 1, 2, 3, 7, 6, 5, 4, 8]  # spec's example, literally
    assert code_at_step[0].tolist()[:10] == [0, 1, 1, 1, 4, 2, 2, 2, 4, 1]


@pytest.mark.parametrize('H,W', [(4, 4), (3, 5), (5, 3), (2, 6), (1, 4), (4, 1), (1, 1), (14, 14), (13, 14)])
def test_snake_tables_match_walk(H, W):
    order, rank, code_at_pos, code_at_step = snake_scan_tables(H, W)
    L = H * W
    for d, (o, c) in enumerate(ref_orders(H, W)):
        assert order[d].tolist() == o
        assert code_at_step[d].tolist() == c
        # rank is the inverse permutation; code_at_pos the codes indexed by grid position
        assert [rank[d, o[l]].item() for l in range(L)] == list(range(L))
        assert [code_at_pos[d, o[l]].item() for l in range(L)] == c
    assert order[1].tolist() == order[0].tolist()[::-1]
    assert order[3].tolist() == order[2].tolist()[::-1]
    assert order[0, 0] == 0 and order[2, 0] == 0
    # spec: order 2 starts at (H-1, W-1) if H odd else (H-1, 0); order 4 at (H-1, W-1) if W odd else (0, W-1)
    assert divmod(order[1, 0].item(), W) == ((H - 1, W - 1) if H % 2 else (H - 1, 0))
    assert divmod(order[3, 0].item(), W) == ((H - 1, W - 1) if W % 2 else (0, W - 1))
    # codes used by each direction (spec table)
    allowed = [{0, 1, 2, 4}, {0, 1, 2, 3}, {0, 4, 3, 1}, {0, 4, 3, 2}]
    for d in range(4):
        assert set(code_at_step[d].tolist()) <= allowed[d]


def make_mixer(dim=16, d_state=8, dt_rank=3, quirks=True, seed=0):
    m = PlainMamba2D(dim, d_state=d_state, dt_rank=dt_rank, official_quirks=quirks, scan_backend='torch')
    return randomize_(m, seed).eval()


def max_rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize('quirks', [True, False])
@pytest.mark.parametrize('H,W', [(3, 5), (4, 4), (2, 3)])
def test_mixer_matches_float64_reference(H, W, quirks):
    mixer = make_mixer(quirks=quirks, seed=H * 10 + W)
    x = torch.randn(2, H * W, 16)
    with torch.no_grad():
        out, ssm = mixer(x, SnakeLayout.dense(2, (H, W), x.device), return_ssm=True)
    ref_out, ref_y = ref_mixer(mixer_params(mixer), x, H, W, q1=quirks, q2=quirks)
    assert ref_out.abs().max() > 0.1  # non-trivial output
    assert max_rel_err(out, ref_out) < 1e-5
    assert max_rel_err(ssm.y, ref_y) < 1e-5
    # the same mixer in float64 agrees far more tightly (A/D/delta_bias pass through float32 in the mixer)
    with torch.no_grad():
        out64, _ = mixer.double()(x.double(), SnakeLayout.dense(2, (H, W), x.device))
    assert max_rel_err(out64, ref_out) < 1e-6


@pytest.mark.parametrize('H,W', [(3, 5), (4, 4)])
def test_mixer_reference_detects_wrong_semantics(H, W):
    """Each deliberate deviation from the official semantics is far outside the tolerance used above."""
    mixer = make_mixer(quirks=True, seed=7)
    x = torch.randn(2, H * W, 16)
    with torch.no_grad():
        out, _ = mixer(x, SnakeLayout.dense(2, (H, W), x.device))
    p = mixer_params(mixer)
    for wrong in (dict(q2=False), dict(q1=False), dict(q1=False, q2=False), dict(combine='mean'),
                  dict(codes_by='position')):
        ref_out, _ = ref_mixer(p, x, H, W, **wrong)
        assert max_rel_err(out, ref_out) > 1e-2, wrong
    # and the quirk-free model is not the official one
    free = make_mixer(quirks=False, seed=7)
    with torch.no_grad():
        out_free, _ = free(x, SnakeLayout.dense(2, (H, W), x.device))
    assert max_rel_err(out_free, ref_mixer(p, x, H, W)[0]) > 1e-2


def ref_model(model, x):
    """Whole PlainMamba classifier (docs/architectures.md §A2) in float64 from the model's parameters, using
    ref_mixer."""
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    x = x.double()

    def bn(t, prefix, eps=1e-5):  # BatchNorm2d with running statistics
        mean, var, w, b = (sd[f'{prefix}.{k}'][:, None, None] for k in ('running_mean', 'running_var', 'weight', 'bias'))
        return (t - mean) / torch.sqrt(var + eps) * w + b

    t = F.relu(bn(F.conv2d(x, sd['patch_embed.stem.0.weight'], stride=2, padding=3), 'patch_embed.stem.1'))
    i = 0
    while f'patch_embed.convs.{i}.weight' in sd:
        t = F.relu(bn(F.conv2d(t, sd[f'patch_embed.convs.{i}.weight'], padding=1), f'patch_embed.convs.{i + 1}'))
        i += 3
    h2, w2 = t.shape[-2:]
    t = F.pad(t, (0, (8 - w2 % 8) % 8, 0, (8 - h2 % 8) % 8))  # 'corner': right / bottom
    t = F.conv2d(t, sd['patch_embed.projection.weight'], sd['patch_embed.projection.bias'], stride=8)
    bsz, D, H, W = t.shape
    tok = t.flatten(2).transpose(1, 2)
    assert (H, W) == tuple(model.grid_size)
    tok = tok + sd['pos_embed']
    for idx in range(len(model.layers)):
        pre = f'layers.{idx}.'
        normed = F.layer_norm(tok, (D,), sd[pre + 'norm.weight'], sd[pre + 'norm.bias'], eps=1e-5)
        mp = {k[len(pre + 'mamba.'):]: v for k, v in sd.items() if k.startswith(pre + 'mamba.')}
        tok = tok + ref_mixer(mp, normed, H, W)[0]
        if pre + 'dw.0.weight' in sd:  # replaces x, no residual
            img = tok.transpose(1, 2).reshape(bsz, D, H, W)
            img = F.gelu(bn(F.conv2d(img, sd[pre + 'dw.0.weight'], padding=1, groups=D), pre + 'dw.1'))
            tok = img.flatten(2).transpose(1, 2)
    tok = F.layer_norm(tok, (D,), sd['ln1.weight'], sd['ln1.bias'], eps=1e-6)
    return tok.mean(1) @ sd['head.weight'].T + sd['head.bias']


@pytest.mark.parametrize('name,img', [('plainmamba_l1', (40, 56)), ('plainmamba_l2', 48)])
def test_whole_model_matches_reference(name, img):
    """Stem (with 'corner' padding: 40x56 -> 20x28 -> 24x32 -> grid 3x4), L1's dw block, norms, pooling, head."""
    model = timm.create_model(name, img_size=img, embed_dim=16, depth=2, num_classes=7, scan_backend='torch')
    randomize_(model, seed=3).eval()
    size = img if isinstance(img, tuple) else (img, img)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
    ref = ref_model(model, x)
    assert ref.abs().max() > 0.1
    # norms: LayerNorm eps 1e-5 in the layers, 1e-6 for the final ln1 (too small an effect to see in outputs)
    assert all(layer.norm.eps == 1e-5 for layer in model.layers) and model.ln1.eps == 1e-6
    assert max_rel_err(out, ref) < 1e-4


# ------------------------------------------------------------------------------------------------
# 5. Official checkpoints
# ------------------------------------------------------------------------------------------------

def official_state_dict(name, seed=0, zeros=False):
    """An mmcls PlainMamba checkpoint's state_dict with the key names/shapes of docs/architectures.md §A3, random
    values."""
    s = SPEC[name]
    D, depth = s['D'], s['depth']
    E, R, N = 2 * D, math.ceil(D / 16), N_STATE
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.zeros(shape) if zeros else torch.randn(*shape, generator=g) * 0.05

    sd = OrderedDict()

    def bn(prefix, c):
        sd[prefix + '.weight'] = 1 + r(c)
        sd[prefix + '.bias'] = r(c)
        sd[prefix + '.running_mean'] = r(c)
        sd[prefix + '.running_var'] = 1 + r(c).abs()
        sd[prefix + '.num_batches_tracked'] = torch.tensor(12345)

    sd['backbone.pos_embed'] = r(1, 196, D)
    sd['backbone.patch_embed.stem.0.weight'] = r(STEM, 3, 7, 7)
    bn('backbone.patch_embed.stem.1', STEM)
    for i in range(s['num_convs']):
        sd[f'backbone.patch_embed.convs.{3 * i}.weight'] = r(STEM, STEM, 3, 3)
        bn(f'backbone.patch_embed.convs.{3 * i + 1}', STEM)
    sd['backbone.patch_embed.projection.weight'] = r(D, STEM, 8, 8)
    sd['backbone.patch_embed.projection.bias'] = r(D)
    for idx in range(depth):
        pre = f'backbone.layers.{idx}.'
        sd[pre + 'norm.weight'] = 1 + r(D)
        sd[pre + 'norm.bias'] = r(D)
        sd[pre + 'mamba.A_log'] = torch.log(torch.arange(1, N + 1).float()).repeat(E, 1) + r(E, N)
        sd[pre + 'mamba.D'] = 1 + r(E)
        sd[pre + 'mamba.direction_Bs'] = r(5, N)
        sd[pre + 'mamba.in_proj.weight'] = r(2 * E, D)
        sd[pre + 'mamba.in_proj.bias'] = r(2 * E)
        sd[pre + 'mamba.conv2d.weight'] = r(E, 1, 7, 7)
        sd[pre + 'mamba.conv2d.bias'] = r(E)
        sd[pre + 'mamba.x_proj.weight'] = r(R + 2 * N, E)
        sd[pre + 'mamba.dt_proj.weight'] = r(E, R)
        sd[pre + 'mamba.dt_proj.bias'] = r(E) - 2
        sd[pre + 'mamba.out_proj.weight'] = r(D, E)
        sd[pre + 'mamba.out_proj.bias'] = r(D)
        if idx in s['dwconv']:
            sd[pre + 'dw.0.weight'] = r(D, 1, 3, 3)
            bn(pre + 'dw.1', D)
    sd['backbone.ln1.weight'] = 1 + r(D)
    sd['backbone.ln1.bias'] = r(D)
    sd['head.fc.weight'] = r(1000, D)
    sd['head.fc.bias'] = r(1000)
    return sd


def envelope(sd):
    meta = {'mmcls_version': '0.25.0', 'epoch': 300, 'iter': 375300, 'CLASSES': ['tench', 'goldfish'],
            'config': "model = dict(type='ImageClassifier')"}
    return {'meta': meta, 'state_dict': sd}


def to_model_key(k):
    """Official key -> model key (docs/architectures.md §A3 key map), written independently of checkpoint_filter_fn."""
    if k.startswith('head.fc.'):
        return 'head.' + k[len('head.fc.'):]
    assert k.startswith('backbone.')
    return k[len('backbone.'):]


@pytest.fixture(scope='module')
def l1_official():
    return official_state_dict('plainmamba_l1', seed=1)


@pytest.fixture(scope='module')
def l1_file(tmp_path_factory, l1_official):
    path = tmp_path_factory.mktemp('ck') / 'l1.pth'
    torch.save(envelope(l1_official), path)
    return path


def test_official_key_table_matches_model(l1_official):
    model_sd = timm.create_model('plainmamba_l1', device='meta').state_dict()
    assert len(l1_official) == 361  # spec: 361 tensors
    assert {to_model_key(k): tuple(v.shape) for k, v in l1_official.items()} == \
        {k: tuple(v.shape) for k, v in model_sd.items()}
    assert sum(v.numel() for k, v in l1_official.items()
               if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))) == 7_551_656


@pytest.mark.parametrize('wrap', ['envelope', 'bare', 'bare_with_ema', 'envelope_with_ema'])
def test_official_checkpoint_loads_strict(tmp_path, l1_official, wrap):
    sd = OrderedDict(l1_official)
    if 'ema' in wrap:
        sd['ema_backbone_pos_embed'] = torch.randn(1, 196, 192)
        sd['ema_head_fc_weight'] = torch.randn(1000, 192)
    obj = envelope(sd) if wrap.startswith('envelope') else sd
    path = tmp_path / 'ck.pth'
    torch.save(obj, path)
    for loaded in (torch.load(path, map_location='cpu', weights_only=True), load_checkpoint_file(path)):
        model = timm.create_model('plainmamba_l1')
        res = model.load_state_dict(checkpoint_filter_fn(loaded, model), strict=True)
        assert not res.missing_keys and not res.unexpected_keys
        msd = model.state_dict()
        for k, v in l1_official.items():
            assert torch.equal(msd[to_model_key(k)], v), k
        assert torch.equal(model.head.weight, l1_official['head.fc.weight'])
    # idempotent on an already converted dict
    again = checkpoint_filter_fn(model.state_dict(), model)
    assert again.keys() == model.state_dict().keys()


@pytest.mark.parametrize('img_size,grid', [(160, (10, 10)), ((160, 224), (10, 14)), (288, (18, 18)),
                                             ((112, 448), (7, 28))])  # 7x28: as many rows as 14x14
def test_pos_embed_resampled_bicubic(l1_file, l1_official, img_size, grid):
    model = timm.create_model('plainmamba_l1', img_size=img_size)
    assert tuple(model.grid_size) == grid
    res = model.load_state_dict(checkpoint_filter_fn(load_checkpoint_file(l1_file), model), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    pe = l1_official['backbone.pos_embed'].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    expect = F.interpolate(pe, size=grid, mode='bicubic', align_corners=False)
    expect = expect.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], 192)
    assert torch.allclose(model.pos_embed, expect, atol=1e-6, rtol=0)
    assert not torch.allclose(model.pos_embed, F.interpolate(pe, size=grid, mode='bilinear', align_corners=False)
                              .permute(0, 2, 3, 1).reshape(1, -1, 192), atol=1e-4)
    # a converted dict (model keys) with the model's own grid passes through unchanged
    again = checkpoint_filter_fn(model.state_dict(), model)
    assert torch.equal(again['pos_embed'], model.pos_embed)


def test_timm_file_and_load_checkpoint_paths(l1_file, l1_official):
    """timm's own ways to point at a local file: pretrained_cfg_overlay=dict(file=...) (train.py --pretrained-path)
    and timm.models.load_checkpoint(..., filter_fn=checkpoint_filter_fn)."""
    a = timm.create_model('plainmamba_l1', pretrained=True, pretrained_cfg_overlay=dict(file=str(l1_file)),
                          img_size=64)
    b = timm.create_model('plainmamba_l1', img_size=64)
    timm.models.load_checkpoint(b, str(l1_file), filter_fn=checkpoint_filter_fn)
    for m in (a, b):
        assert torch.equal(m.head.weight, l1_official['head.fc.weight'])
        assert torch.equal(m.layers[23].mamba.dt_proj.bias, l1_official['backbone.layers.23.mamba.dt_proj.bias'])
    assert torch.equal(a.pos_embed, b.pos_embed)


def test_wrong_variant_checkpoint_raises(l1_official):
    l2 = official_state_dict('plainmamba_l2', zeros=True)
    model = timm.create_model('plainmamba_l1', device='meta')
    with pytest.raises(ValueError, match='variant|embed_dim'):
        checkpoint_filter_fn(envelope(l2), model)
    l3 = timm.create_model('plainmamba_l3', device='meta')
    with pytest.raises(ValueError, match='variant|embed_dim|depth'):
        checkpoint_filter_fn(l1_official, l3)
    shallow = timm.create_model('plainmamba_l1', depth=12, device='meta')
    with pytest.raises(ValueError, match='depth'):
        checkpoint_filter_fn(l1_official, shallow)


# ------------------------------------------------------------------------------------------------
# 6. Offline hub
# ------------------------------------------------------------------------------------------------

def load_direct(name, path, **kwargs):
    model = timm.create_model(name, **kwargs)
    model.load_state_dict(checkpoint_filter_fn(load_checkpoint_file(path), model), strict=True)
    return model.eval()


@pytest.mark.parametrize('name', ['plainmamba_l1', 'plainmamba_l1_pruned'])
def test_pretrained_from_offline_hub(tmp_path, monkeypatch, l1_file, l1_official, name):
    lay_out_repo(tmp_path, 'ChenhongyiYang/PlainMamba', {'l1.pth': l1_file})
    go_offline(monkeypatch, tmp_path)
    model = timm.create_model(name, pretrained=True).eval()
    assert torch.equal(model.head.weight, l1_official['head.fc.weight'])
    assert torch.equal(model.layers[5].mamba.A_log, l1_official['backbone.layers.5.mamba.A_log'])
    ref = load_direct(name, l1_file)
    ref_sd = ref.state_dict()
    assert model.state_dict().keys() == ref_sd.keys()
    assert all(torch.equal(v, ref_sd[k]) for k, v in model.state_dict().items())
    assert not torch.allclose(timm.create_model(name).head.weight, model.head.weight)
    if name.endswith('_pruned'):  # pruned model = dense weights + pruning
        assert model.prune_cfg.stages and model.token_counts()[-1] < 196
        dense_sd = load_direct('plainmamba_l1', l1_file).state_dict()
        assert dense_sd.keys() == ref_sd.keys()
        assert all(torch.equal(v, ref_sd[k]) for k, v in dense_sd.items())
    # logits (at 64x64 to keep the test fast: pos_embed is resampled 14x14 -> 4x4 on both paths)
    small = timm.create_model(name, pretrained=True, img_size=64).eval()
    small_ref = load_direct(name, l1_file, img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = small(x)
        assert torch.equal(out, small_ref(x))
        assert not torch.allclose(out, timm.create_model(name, img_size=64).eval()(x), atol=1e-3)

    # a new head: the classifier is dropped, everything else loads
    head10 = timm.create_model(name, pretrained=True, num_classes=10, img_size=64).eval()
    assert head10.head.weight.shape == (10, 192)
    assert torch.equal(head10.layers[0].mamba.in_proj.weight, l1_official['backbone.layers.0.mamba.in_proj.weight'])
    with torch.no_grad():
        assert head10(x).shape == (2, 10)
        assert torch.equal(head10.forward_features(x), small.forward_features(x))
    # one input channel: timm sums the pretrained stem kernel over RGB
    gray = timm.create_model(name, pretrained=True, in_chans=1, img_size=64).eval()
    stem = l1_official['backbone.patch_embed.stem.0.weight']
    assert torch.allclose(gray.patch_embed.stem[0].weight, stem.sum(1, keepdim=True), atol=1e-6)
    with torch.no_grad():
        assert gray(x[:, :1]).shape == (2, 1000)


def exception_chain_text(exc):
    parts = []
    while exc is not None:
        parts.append(f'{type(exc).__name__}: {exc}')
        exc = exc.__cause__ or exc.__context__
    return '\n'.join(parts)


def test_pretrained_missing_file_in_offline_cache(tmp_path, monkeypatch, l1_file):
    lay_out_repo(tmp_path, 'ChenhongyiYang/PlainMamba', {'l2.pth': l1_file})  # no l1.pth
    go_offline(monkeypatch, tmp_path)
    with pytest.raises(Exception) as info:
        timm.create_model('plainmamba_l1', pretrained=True)
    # huggingface_hub's top-level LocalEntryNotFoundError is generic; the chained cause names the file's URL
    text = exception_chain_text(info.value)
    assert 'ChenhongyiYang/PlainMamba' in text and 'l1.pth' in text


# ------------------------------------------------------------------------------------------------
# 7. Family-specific parts of the timm contract (the shared ones: tests/test_contract.py)
# ------------------------------------------------------------------------------------------------

def tiny(name, **kwargs):
    return timm.create_model(name, **dict(TINY, **kwargs))


@pytest.mark.parametrize('name', NAMES)
def test_contract_features_and_head(name):
    model = tiny(name).eval()
    assert model.num_features == model.head_hidden_size == 32
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 16, model.num_features)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        assert torch.allclose(pre, feats.mean(1))
        logits = model(x)
        assert logits.shape == (2, 1000)
        assert torch.allclose(logits, model.get_classifier()(pre), atol=1e-6)
        model.reset_classifier(0)
        assert torch.allclose(model(x), pre, atol=1e-6)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        no_head = tiny(name, num_classes=0).eval()
        assert no_head(x).shape == (2, 32)
    cfg = model.pretrained_cfg
    sd = tiny(name).state_dict()
    assert cfg['classifier'] + '.weight' in sd and cfg['first_conv'] + '.weight' in sd
    assert sd[cfg['first_conv'] + '.weight'].shape[1] == 3
    # structure of the variant survives the tiny kwargs
    assert ('patch_embed.convs.3.weight' in sd) == (name != 'plainmamba_l1')
    assert ('layers.0.dw.0.weight' in sd) == (name == 'plainmamba_l1')


@pytest.mark.parametrize('name', NAMES)
def test_forward_intermediates(name):
    model = tiny(name, img_size=(64, 96)).eval()  # grid 4x6 (non-square: catches transposed maps)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x))
        assert len(inter) == 3 and all(t.shape == (2, 32, 4, 6) for t in inter)  # stride 16
        # map[:, :, r, c] is the token at raster position r*W + c
        tokens = model.forward_intermediates(x, indices=[2], output_fmt='NLC', intermediates_only=True)[0]
        assert torch.equal(inter[2][:, :, 1, 4], tokens[:, 1 * 6 + 4])
        # last intermediate (no norm) -> ln1 -> final tokens (raster order)
        assert torch.allclose(model.ln1(inter[-1].flatten(2).transpose(1, 2)), final, atol=1e-6)
        _, normed = model.forward_intermediates(x, indices=[2], norm=True, output_fmt='NLC')
        assert normed[0].shape == (2, 24, 32) and torch.allclose(normed[0], final, atol=1e-6)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert isinstance(last2, list) and len(last2) == 2
        assert torch.allclose(last2[0], inter[1]) and torch.allclose(last2[1], inter[2])
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        assert torch.allclose(first[0], inter[0])
        neg = model.forward_intermediates(x, indices=[-1], intermediates_only=True)
        assert torch.allclose(neg[0], inter[2])
        final_se, early = model.forward_intermediates(x, indices=[0], stop_early=True)
        assert torch.allclose(early[0], inter[0])
        assert torch.allclose(final_se, model.ln1(inter[0].flatten(2).transpose(1, 2)), atol=1e-6)
        nlc = model.forward_intermediates(x, indices=[1], output_fmt='NLC', intermediates_only=True)
        assert torch.allclose(nlc[0], inter[1].flatten(2).transpose(1, 2))


def named_groups(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g, {names[id(p)] for p in g['params']}) for g in optimizer.param_groups]


@pytest.mark.parametrize('name', NAMES)
def test_optimizer_groups(name):
    from timm.optim import create_optimizer_v2
    model = tiny(name)
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    groups = named_groups(opt, model)
    no_decay = set().union(*(ns for g, ns in groups if g['weight_decay'] == 0))
    decay = set().union(*(ns for g, ns in groups if g['weight_decay'] > 0))
    for n, p in model.named_parameters():
        leaf = n.rsplit('.', 1)[-1]
        if p.ndim <= 1 or leaf in ('A_log', 'D', 'direction_Bs') or n == 'pos_embed':
            assert n in no_decay, n
        else:
            assert n in decay, n
    assert 'layers.0.mamba.A_log' in no_decay and 'layers.2.mamba.direction_Bs' in no_decay
    assert 'layers.1.mamba.in_proj.weight' in decay and 'head.weight' in decay

    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scale = {}
    for g, ns in named_groups(opt, model):
        for n in ns:
            scale[n] = g['lr_scale']
    assert len(scale) == len(list(model.parameters()))
    assert scale['pos_embed'] == scale['patch_embed.stem.0.weight'] == min(scale.values())
    per_layer = [scale[f'layers.{i}.mamba.in_proj.weight'] for i in range(3)]
    assert scale['pos_embed'] < per_layer[0] < per_layer[1] < per_layer[2] < scale['head.weight'] == 1.0
    assert per_layer == pytest.approx([0.75 ** 3, 0.75 ** 2, 0.75])
    assert scale['ln1.weight'] == per_layer[2]  # timm convention (as ViT's norm): merged into the last block
    assert scale['layers.1.norm.weight'] == per_layer[1]


@pytest.mark.parametrize('name', NAMES)
def test_drop_rates(name):
    x = torch.randn(2, 3, 64, 64)
    plain = tiny(name).train()
    assert torch.equal(plain(x), plain(x))  # control: no randomness without drop rates
    for kwargs in (dict(drop_path_rate=0.5), dict(drop_rate=0.5)):
        model = tiny(name, **kwargs).train()
        assert not torch.allclose(model(x), model(x)), kwargs
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x), model(x))
    model = tiny(name, drop_path_rate=0.3)
    assert isinstance(model.layers[0].drop_path, torch.nn.Identity)
    assert model.layers[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert model.layers[1].drop_path.drop_prob == pytest.approx(0.15)


@pytest.mark.parametrize('name', NAMES)
def test_meta_float64_sizes_channels(name):
    meta = tiny(name, device='meta')
    assert all(p.is_meta for p in meta.parameters())
    m64 = tiny(name, dtype=torch.float64).eval()
    assert all(p.dtype == torch.float64 for p in m64.parameters())
    with torch.no_grad():
        out = m64(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()

    m160 = timm.create_model(name, img_size=160, embed_dim=16, depth=2).eval()
    assert tuple(m160.grid_size) == (10, 10) and m160.pos_embed.shape == (1, 100, 16)
    with torch.no_grad():
        assert m160.forward_features(torch.randn(1, 3, 160, 160)).shape == (1, 100, 16)
    gray = tiny(name, in_chans=1).eval()
    assert gray.patch_embed.stem[0].weight.shape[1] == 1
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 64, 64)).shape == (2, 1000)


@pytest.mark.parametrize('name', NAMES)
def test_input_size_checks(name):
    model = tiny(name).eval()
    with pytest.raises(ValueError, match='img_size|dynamic_img_size'):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError):
        model(torch.randn(1, 1, 64, 64))  # wrong channel count
    dyn = tiny(name, dynamic_img_size=True).eval()
    dyn.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 96, 80)
    fixed = timm.create_model(name, **dict(TINY, img_size=(96, 80))).eval()
    fixed.load_state_dict(checkpoint_filter_fn(model.state_dict(), fixed), strict=True)
    with torch.no_grad():
        out = dyn.forward_features(x)
        assert out.shape == (1, 6 * 5, 32)
        # runtime pos_embed resampling == a model built at 96x80 with the checkpoint filter's resampling
        assert torch.allclose(dyn(x), fixed(x), atol=1e-6)
        y = torch.randn(1, 3, 64, 64)
        assert torch.equal(dyn(y), model(y))  # the native size is unchanged
    for bad in (0, -16, (64, 0)):
        with pytest.raises(ValueError, match='img_size|grid'):
            tiny(name, img_size=bad)


# ------------------------------------------------------------------------------------------------
# 8. CUDA kernel path
# ------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not cuda_kernels_available(), reason='needs a GPU with mamba-ssm CUDA kernels')
@pytest.mark.parametrize('name', NAMES)
def test_cuda_scan_matches_torch_path(name):
    cpu = timm.create_model(name, img_size=96, embed_dim=64, depth=3, scan_backend='torch')
    randomize_(cpu, seed=5).eval()
    gpu = timm.create_model(name, img_size=96, embed_dim=64, depth=3, scan_backend='cuda')
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    x = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        ref = cpu(x)
        out = gpu(x.cuda()).cpu()
    assert ref.abs().max() > 0.1
    assert torch.allclose(out, ref, atol=1e-3, rtol=1e-3), (out - ref).abs().max()


def test_missing_local_weights_file_names_the_path_not_the_network(tmp_path):
    missing = tmp_path / 'nowhere.safetensors'
    with pytest.raises(RuntimeError) as info:
        timm.create_model('plainmamba_l1', pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))
    msg = str(info.value)
    assert str(missing) in msg and 'check the path' in msg and 'go online' not in msg
