"""Token pruning: configuration, importance, alignment (against independent recurrences), FLOPs and schedules."""
import argparse
import copy
import math

import pytest
import torch
import torch.nn.functional as F
import timm
from timm.utils import ParseKwargs

import timm_ssm_prune  # noqa: F401  (registers the models)
from timm_ssm_prune.flops import count_flops
from timm_ssm_prune.models.plainmamba import PRUNED_DEFAULTS as PM_DEFAULTS
from timm_ssm_prune.models.plainmamba import PlainMamba2D, SnakeLayout
from timm_ssm_prune.models.vim import BiMambaMixer
from timm_ssm_prune.pruning import PruneConfig, keep_count, select_tokens, token_importance

TINY = dict(img_size=64, embed_dim=32, depth=6)  # 4x4 token grid
FAMILIES = ['plainmamba_l1', 'plainmamba_l2', 'plainmamba_l3',
            'vim_tiny_patch16_224', 'vim_small_patch16_224', 'vim_base_patch16_224']


def _pair(name, **prune):
    dense = timm.create_model(name, **TINY).eval()
    pruned = timm.create_model(name, **TINY, **prune).eval()
    pruned.load_state_dict(dense.state_dict())
    return dense, pruned


# ------------------------------------------------------------------------------------------------ keep 1.0

@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('alignment', ['aligned', 'decay'])
def test_keep_rate_one_reproduces_dense(name, alignment):
    dense, pruned = _pair(name, prune_layers=(2, 4), keep_rate=1.0, alignment=alignment)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['plainmamba_l1', 'vim_tiny_patch16_224'])
def test_pruning_changes_the_computation(name):
    dense, pruned = _pair(name, prune_layers=(2, 4), keep_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(pruned(x), dense(x), atol=1e-4)
        assert pruned.forward_features(x).shape[1] == (4 if name.startswith('plain') else 5)  # 16 -> 8 -> 4


# ------------------------------------------------------------------------------------------------ importance

def test_importance_metrics_by_hand():
    y = torch.tensor([[[1.0, -2.0, 3.0], [-1.0, -1.0, 0.5], [0.0, 0.0, 0.0], [2.0, 2.0, -4.0]]])
    expected = {
        'clip': [4.0, 0.5, 0.0, 4.0],
        'l1': [6.0, 2.5, 0.0, 8.0],
        'l2': [math.sqrt(14), math.sqrt(2.25), 0.0, math.sqrt(24)],
        'sum': [2.0, -1.5, 0.0, 0.0],
    }
    for metric, want in expected.items():
        torch.testing.assert_close(token_importance(y, metric), torch.tensor([want]))
    r = token_importance(y, 'random')
    assert r.shape == (1, 4) and ((r >= 0) & (r < 1)).all()
    yg = y.clone().requires_grad_()
    assert not token_importance(yg, 'clip').requires_grad
    with pytest.raises(ValueError, match='importance'):
        token_importance(y, 'entropy')


def test_selection_is_deterministic_per_sample_and_breaks_ties_low():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert select_tokens(scores, 3, keep_order=False).tolist() == [[1, 2, 4], [0, 1, 2]]
    assert select_tokens(scores, 2, keep_order=False).tolist() == [[1, 2], [0, 1]]  # tie 1,2,4 -> lower first
    assert select_tokens(scores, 3, keep_order=True).tolist() == [[1, 2, 4], [0, 1, 2]]
    scores2 = torch.tensor([[0.0, 2.0, 1.0, 3.0]])
    assert select_tokens(scores2, 3, keep_order=False).tolist() == [[3, 1, 2]]  # score order (naive)
    assert select_tokens(scores2, 3, keep_order=True).tolist() == [[1, 2, 3]]  # position order (aligned)
    for _ in range(3):
        assert select_tokens(scores, 2, keep_order=False).tolist() == [[1, 2], [0, 1]]


@pytest.mark.parametrize('name', ['plainmamba_l1', 'vim_tiny_patch16_224'])
@pytest.mark.parametrize('alignment', ['aligned', 'naive', 'decay'])
def test_a_samples_logits_do_not_depend_on_its_batch_mates(name, alignment):
    _, pruned = _pair(name, prune_layers=(2, 4), keep_rate=0.6, alignment=alignment)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        full = pruned(x)
        for i in range(3):
            torch.testing.assert_close(pruned(x[i:i + 1]), full[i:i + 1], rtol=1e-4, atol=1e-5)
        other = torch.cat([x[:1], torch.randn(2, 3, 64, 64)])
        torch.testing.assert_close(pruned(other)[:1], full[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', ['plainmamba_l1', 'vim_tiny_patch16_224'])
@pytest.mark.parametrize('alignment', ['aligned', 'naive', 'decay'])
def test_training_a_pruned_model_reaches_every_parameter(name, alignment):
    model = timm.create_model(name, **TINY, prune_layers=(2, 4), keep_rate=0.6, alignment=alignment,
                              drop_path_rate=0.1)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


# ------------------------------------------------------------------------------------------------ alignment
# Independent references: the dense recurrence over the full sequence, passing over pruned positions with the
# state carried (aligned) or decayed by exp(softplus(bias) A) (decay), written with explicit loops.

def _snake_orders(H, W):
    """The four dense PlainMamba scan orders and per-position direction codes, built independently."""
    o1 = [r * W + (c if r % 2 == 0 else W - 1 - c) for r in range(H) for c in range(W)]
    o3 = [(r if c % 2 == 0 else H - 1 - r) * W + c for c in range(W) for r in range(H)]
    orders = [o1, o1[::-1], o3, o3[::-1]]
    codes = []
    for o in orders:
        code = {o[0]: 0}
        for a, b in zip(o, o[1:]):
            dr, dc = b // W - a // W, b % W - a % W
            code[b] = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}[(dr, dc)]
        codes.append(code)
    return orders, codes


def _randomise(module):
    with torch.no_grad():
        for n, p in module.named_parameters():
            if 'A_log' in n:
                p.copy_(torch.rand_like(p) * 1.5 - 0.5)
            elif n.endswith('.D') or n == 'D':
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.3)
    return module


def _plainmamba_reference(mixer, x, kept, H, W, decay=False):
    """Kept-token outputs of a PlainMamba mixer (official_quirks=False) for tokens at raster positions ``kept``
    (sorted), computed on the full H x W grid: the 2-D conv sees zeros at pruned positions; each direction walks
    its full dense snake order and passes over pruned positions (state carried, or decayed with Δ̄ if decay)."""
    m = copy.deepcopy(mixer).double()
    x = x.double()
    E, N, R = m.d_inner, m.d_state, m.dt_rank
    xi, z = m.in_proj(x).chunk(2, dim=-1)
    grid = torch.zeros(H * W, E, dtype=torch.float64)
    grid[kept] = xi
    xc = F.silu(m.conv2d(grid.T.reshape(1, E, H, W))).reshape(E, H * W).T  # full grid
    dt, Bm, Cm = m.x_proj(xc).split([R, N, N], dim=-1)
    delta = F.softplus(F.linear(dt, m.dt_proj.weight) + m.dt_proj.bias)
    dbar = F.softplus(m.dt_proj.bias)
    A = -torch.exp(m.A_log)
    orders, codes = _snake_orders(H, W)
    keep = set(kept)
    y = torch.zeros(H * W, E, dtype=torch.float64)
    for order, code in zip(orders, codes):
        h = torch.zeros(E, N, dtype=torch.float64)
        for p in order:
            if p not in keep:
                if decay:
                    h = torch.exp(dbar[:, None] * A) * h
                continue
            b = Bm[p] + m.direction_Bs[code[p]]
            h = torch.exp(delta[p][:, None] * A) * h + (delta[p] * xc[p])[:, None] * b[None, :]
            y[p] += h @ Cm[p] + m.D * xc[p]
    y = y[kept] * F.silu(z)
    return m.out_proj(y)


@pytest.mark.parametrize('decay', [False, True])
def test_plainmamba_aligned_equals_dense_recurrence_with_skips(decay):
    H, W = 4, 5
    mixer = _randomise(PlainMamba2D(8, d_state=3, official_quirks=False)).eval()
    g = torch.Generator().manual_seed(3)
    kept = sorted(torch.randperm(H * W, generator=g)[:11].tolist())
    x = torch.randn(1, len(kept), 8, generator=g)
    pos = torch.tensor([kept])
    layout = SnakeLayout.sparse((H, W), pos, (H, W), pos, with_gaps=decay)
    with torch.no_grad():
        out, _ = mixer(x, layout)
        ref = _plainmamba_reference(mixer, x[0], kept, H, W, decay=decay)
        torch.testing.assert_close(out[0].double(), ref, rtol=1e-4, atol=1e-5)
        if decay:  # decay really differs from plain aligned
            plain, _ = mixer(x, SnakeLayout.sparse((H, W), pos, (H, W), pos))
            assert not torch.allclose(plain[0].double(), ref, atol=1e-4)


def test_plainmamba_naive_differs_from_the_dense_recurrence():
    H, W = 4, 5
    mixer = _randomise(PlainMamba2D(8, d_state=3, official_quirks=False)).eval()
    g = torch.Generator().manual_seed(4)
    kept = sorted(torch.randperm(H * W, generator=g)[:11].tolist())
    x = torch.randn(1, len(kept), 8, generator=g)
    perm = torch.randperm(len(kept), generator=g)  # a score order different from the raster order
    naive = SnakeLayout.sparse((H, W), torch.tensor([kept])[:, perm], (3, 4), torch.arange(len(kept))[None])
    with torch.no_grad():
        out, _ = mixer(x[:, perm], naive)
        ref = _plainmamba_reference(mixer, x[0], kept, H, W)
        assert not torch.allclose(out[0, torch.argsort(perm)].double(), ref, atol=1e-3)


def test_plainmamba_official_quirks_pair_the_jth_kept_token():
    """With Q2 (only u permuted) the dense scan pairs u of the token at scan step l with Δ, B, C of raster token l;
    after pruning, step j of the restricted scan pairs u of the j-th kept token in scan order with Δ, B, C of the
    j-th kept token in raster order, and keep 1.0 gives the dense pairing."""
    H, W = 3, 4
    mixer = _randomise(PlainMamba2D(8, d_state=3, official_quirks=True)).eval().double()
    kept = [0, 2, 3, 5, 6, 7, 9, 11]
    x = torch.randn(1, len(kept), 8, dtype=torch.float64)
    E, N, R = mixer.d_inner, mixer.d_state, mixer.dt_rank
    with torch.no_grad():
        out, _ = mixer(x, SnakeLayout.sparse((H, W), torch.tensor([kept]), (H, W), torch.tensor([kept])))
        xi, z = mixer.in_proj(x[0]).chunk(2, dim=-1)
        grid = torch.zeros(H * W, E, dtype=torch.float64)
        grid[kept] = xi
        xc = F.silu(mixer.conv2d(grid.T.reshape(1, E, H, W))).reshape(E, H * W).T[kept]
        dt, Bm, Cm = mixer.x_proj(xc).split([R, N, N], dim=-1)
        delta = F.softplus(mixer.dt_proj(dt) + mixer.dt_proj.bias)  # Q1: bias twice
        A = -torch.exp(mixer.A_log)
        orders, codes = _snake_orders(H, W)
        y = torch.zeros(len(kept), E, dtype=torch.float64)
        for order, code in zip(orders, codes):
            seq = [kept.index(p) for p in order if p in kept]  # kept tokens in this scan's order
            h = torch.zeros(E, N, dtype=torch.float64)
            for j, i in enumerate(seq):  # step j: u of token i, Δ/B/C of the j-th token in raster order
                b = Bm[j] + mixer.direction_Bs[code[kept[i]]]
                h = torch.exp(delta[j][:, None] * A) * h + (delta[j] * xc[i])[:, None] * b[None, :]
                y[i] += h @ Cm[j] + mixer.D * xc[i]
        ref = mixer.out_proj(y * F.silu(z))
    torch.testing.assert_close(out[0], ref, rtol=1e-9, atol=1e-9)


def _vim_reference(mixer, x_full, kept, decay=False):
    """Outputs at the kept positions of a Vim mixer run over the full sequence ``x_full`` (L, C) where positions
    outside ``kept`` are passed over: no input, no output, the scan state carried (or decayed by Δ̄ with decay),
    and the causal conv's window made of the previous kept inputs (its state carried too)."""
    m = copy.deepcopy(mixer).double()
    x_full = x_full.double()
    L = x_full.shape[0]
    keep = set(kept)
    xi, z = m.in_proj(x_full).chunk(2, dim=-1)
    y = {p: 0.0 for p in kept}
    for branch, order in ((m.fwd, list(range(L))), (m.bwd, list(range(L - 1, -1, -1)))):
        E, N, R = xi.shape[1], branch.d_state, branch.dt_rank
        w, cb = branch.conv1d.weight[:, 0], branch.conv1d.bias  # (E, 4)
        A = -torch.exp(branch.A_log)
        dbar = F.softplus(branch.dt_proj.bias)
        window = [torch.zeros(E, dtype=torch.float64)] * w.shape[1]
        h = torch.zeros(E, N, dtype=torch.float64)
        for p in order:
            if p not in keep:
                if decay:
                    h = torch.exp(dbar[:, None] * A) * h
                continue
            window = window[1:] + [xi[p]]
            u = F.silu((w * torch.stack(window, dim=1)).sum(1) + cb)
            dt, b, c = branch.x_proj(u).split([R, N, N])
            delta = F.softplus(F.linear(dt, branch.dt_proj.weight) + branch.dt_proj.bias)
            h = torch.exp(delta[:, None] * A) * h + (delta * u)[:, None] * b[None, :]
            y[p] = y[p] + (h @ c + branch.D * u) * F.silu(z[p])
    return m.out_proj(torch.stack([y[p] for p in kept]) / 2)


@pytest.mark.parametrize('decay', [False, True])
def test_vim_aligned_equals_dense_recurrence_with_skips(decay):
    mixer = _randomise(BiMambaMixer(8, d_state=3)).eval()
    L = 13
    g = torch.Generator().manual_seed(5)
    kept = sorted(torch.randperm(L, generator=g)[:7].tolist())
    x_full = torch.randn(L, 8, generator=g)
    idx = torch.tensor([kept])
    gaps = None
    if decay:  # what the model builds for the sequence of kept positions
        fwd = torch.tensor([kept[0]] + [b - a - 1 for a, b in zip(kept, kept[1:])])
        bwd = torch.tensor([b - a - 1 for a, b in zip(kept, kept[1:])] + [L - 1 - kept[-1]])
        gaps = torch.stack([fwd, bwd])[:, None]
    with torch.no_grad():
        out, _ = mixer(x_full[idx], gaps)
        ref = _vim_reference(mixer, x_full, kept, decay=decay)
    torch.testing.assert_close(out[0].double(), ref, rtol=1e-4, atol=1e-5)


def test_vim_model_decay_gaps_match_the_kept_positions():
    from timm_ssm_prune.models.vim import _middle_cls_gaps
    index = torch.tensor([[1, 2, 5, 9]])  # kept patches of 12; class token goes in the middle (position 2)
    gaps = _middle_cls_gaps(index, 12)
    assert gaps[0].tolist() == [[1, 0, 0, 2, 3]]  # forward: 1 before patch 1, cls 0, 2 between 2 and 5, ...
    assert gaps[1].tolist() == [[0, 2, 0, 3, 2]]  # backward: 0 after 1, 2 after 2 (3, 4), cls 0, 3 after 5, 2 after 9


def test_vim_naive_differs_from_the_dense_recurrence():
    mixer = _randomise(BiMambaMixer(8, d_state=3)).eval()
    L = 13
    kept = [1, 3, 4, 8, 9, 12]
    x_full = torch.randn(L, 8)
    order = [8, 1, 12, 4, 9, 3]  # descending-score packing
    with torch.no_grad():
        out, _ = mixer(x_full[torch.tensor([order])])
        ref = _vim_reference(mixer, x_full, kept)
    perm = [order.index(p) for p in kept]
    assert not torch.allclose(out[0, perm].double(), ref, atol=1e-3)


def test_model_blocks_after_a_stage_see_exactly_the_kept_tokens():
    """The pruned model's stage-after block output equals that block run by hand on the kept tokens (aligned)."""
    dense, pruned = _pair('vim_tiny_patch16_224', prune_layers=(2,), keep_rate=0.5)
    x = torch.randn(1, 3, 64, 64)
    seen = {}
    pruned.layers[2].register_forward_hook(lambda mod, inp, out: seen.update(inp=inp) and None)
    with torch.no_grad():
        pruned(x)
        hid, res = seen['inp'][0], seen['inp'][1]
        assert hid.shape[1] == 9  # 8 kept patches + the class token in the middle
        # recompute: dense run up to block 2, score, gather, middle class token
        (h, r), layout = dense._embed(x)
        for i in range(2):
            h, r, ssm = dense.layers[i](h, r, layout, True)
        scores = torch.cat([ssm.y[:, :8], ssm.y[:, 9:]], 1)
        scores = scores.clamp_min(0).sum(-1)
        keep = torch.sort(torch.sort(scores, descending=True, stable=True).indices[:, :8]).values
        def take(t):
            p = torch.cat([t[:, :8], t[:, 9:]], 1)[0, keep[0]]
            return torch.cat([p[:4], t[0, 8:9], p[4:]])[None]
        torch.testing.assert_close(hid, take(h))
        torch.testing.assert_close(res, take(r))


def test_dense_features_fill_pruned_positions_from_their_stage():
    dense, pruned = _pair('plainmamba_l1', prune_layers=(2,), keep_rate=0.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        d_feats = dense.forward_intermediates(x, indices=[1], intermediates_only=True)
        p_feats = pruned.forward_intermediates(x, indices=[1, 4], intermediates_only=True)
        torch.testing.assert_close(p_feats[0], d_feats[0])  # block 1 (index) is the pruning block: all tokens
        final = pruned.forward_features(x)
        # at block 4 the kept positions hold current features, the pruned ones their block-1 features
        block1 = d_feats[0].flatten(2)[0].T  # (16, C)
        block4 = p_feats[1].flatten(2)[0].T
        same = (block4 - block1).abs().amax(-1) < 1e-6
        assert same.sum() == 8  # the 8 pruned positions
        assert final.shape[1] == 8


# ------------------------------------------------------------------------------------------------ counts, FLOPs

def test_vim_small_token_counts():
    m = timm.create_model('vim_small_patch16_224_pruned')
    patches = m.token_counts()
    # docs/method.md §1: k = ceil(keep_rate * n_alive) over the patch tokens; the class token is never pruned.
    assert patches == [196, math.ceil(0.8 * 196), math.ceil(0.8 * 157), math.ceil(0.8 * 126)] == [196, 157, 126, 101]
    assert [p + 1 for p in patches] == [197, 158, 127, 102]  # sequence length incl. the class token
    assert timm.create_model('vim_tiny_patch16_224_pruned').token_counts() == [196, 157, 126]


def test_vim_pruned_flops_match_the_paper():
    top = dict(importance='clip', cls_position='middle')  # the paper's method (the *_pruned default goes beyond it)
    tiny = count_flops(timm.create_model('vim_tiny_patch16_224_pruned', **top))
    small = count_flops(timm.create_model('vim_small_patch16_224_pruned', **top))
    # the default's class-token contributions (a B·E·L·N product per stage) add a fraction of a percent
    default = count_flops(timm.create_model('vim_small_patch16_224_pruned'))
    assert small < default < 1.005 * small
    assert tiny == pytest.approx(1.28, rel=0.02)   # paper 1.29; 1.5 G x token-weighted 0.854
    assert small == pytest.approx(3.57, rel=0.02)  # paper 3.60; 5.1 G x token-weighted 0.699
    # the counter sees the shorter sequences block by block: the ratio follows the token-weighted block ratio
    # (the patch embedding and the head, about 1 % of the total, are not pruned)
    token_weighted = (5 * 197 + 5 * 158 + 5 * 127 + 9 * 102) / (24 * 197)
    assert small / count_flops(timm.create_model('vim_small_patch16_224')) == pytest.approx(token_weighted, abs=0.01)


def test_plainmamba_l3_default_schedule_ratio():
    dense = count_flops(timm.create_model('plainmamba_l3'))
    pruned = count_flops(timm.create_model('plainmamba_l3_pruned'))
    assert pruned / dense == pytest.approx(0.584, abs=0.01)


@pytest.mark.parametrize('variant', ['l1', 'l2', 'l3'])
def test_default_plainmamba_schedules_meet_the_flops_target(variant):
    solved = timm.create_model(f'plainmamba_{variant}_pruned', flops_reduction=0.416)
    assert solved.prune_cfg.prune_layers == tuple(PM_DEFAULTS[variant]['prune_layers'])
    assert solved.prune_cfg.keep_rates[0] == pytest.approx(PM_DEFAULTS[variant]['keep_rate'])
    default = timm.create_model(f'plainmamba_{variant}_pruned')
    ratio = count_flops(default) / count_flops(timm.create_model(f'plainmamba_{variant}'))
    assert ratio == pytest.approx(1 - 0.416, abs=0.005)


def test_flops_reduction_kwarg_and_explicit_stages():
    m = timm.create_model('vim_tiny_patch16_224', flops_reduction=0.3, prune_layers=(8, 16))
    dense = count_flops(timm.create_model('vim_tiny_patch16_224'))
    assert count_flops(m) / dense == pytest.approx(0.7, abs=0.01)
    assert m.prune_cfg.prune_layers == (8, 16)


def test_pruned_flops_count_shorter_sequences_by_hand():
    """PlainMamba: per block, the linear layers and scans scale with the tokens; the 2-D conv runs on the grid."""
    dense = timm.create_model('plainmamba_l1', img_size=64, embed_dim=32, depth=4)
    pruned = timm.create_model('plainmamba_l1', img_size=64, embed_dim=32, depth=4, prune_layers=(2,), keep_rate=0.5)
    D, E, N, R, G = 32, 64, 16, 2, 16

    def block(L):
        lin = L * D * 2 * E + L * E * (R + 2 * N) + L * R * E + L * E * D
        conv = G * E * 49
        return lin + conv + 4 * (9 * E * N * L + E * L)
    diff = (count_flops(dense, (3, 64, 64)) - count_flops(pruned, (3, 64, 64))) * 1e9
    assert diff == pytest.approx(2 * (block(16) - block(8)), rel=1e-9)


# ------------------------------------------------------------------------------------------------ configuration

@pytest.mark.parametrize('kwargs,match', [
    (dict(prune_layers=(2, 4), keep_rate=0.0), r'keep_rate must be in \(0, 1\]'),
    (dict(prune_layers=(2, 4), keep_rate=1.5), r'keep_rate must be in \(0, 1\]'),
    (dict(prune_layers=(2, 4), keep_rate=-0.2), r'keep_rate must be in \(0, 1\]'),
    (dict(prune_layers=(2, 4), keep_rate=(0.5,)), 'entries'),
    (dict(prune_layers=(0, 4), keep_rate=0.5), 'strictly increasing|outside'),
    (dict(prune_layers=(2, 6), keep_rate=0.5), "outside the model's depth"),
    (dict(prune_layers=(2, 9), keep_rate=0.5), "outside the model's depth"),
    (dict(prune_layers=(4, 2), keep_rate=0.5), 'strictly increasing'),
    (dict(prune_layers=(2, 2), keep_rate=0.5), 'strictly increasing'),
    (dict(prune_layers=(1, 2, 3, 4, 5), keep_rate=0.05), 'too few tokens|keep_rate'),
    (dict(keep_rate=0.5), 'without prune_layers'),
    (dict(prune_layers=(2,)), 'without keep_rate'),
    (dict(prune_layers=(2,), keep_rate=0.5, importance='entropy'), 'importance must be one of'),
    (dict(prune_layers=(2,), keep_rate=0.5, alignment='sorted'), 'alignment must be one of'),
    (dict(flops_reduction=0.3, keep_rate=0.5), 'either keep_rate or flops_reduction'),
    (dict(flops_reduction=1.2), r'flops_reduction must be in \[0, 1\)'),
    (dict(flops_reduction=0.99, prune_layers=(5,)), 'out of reach'),
])
@pytest.mark.parametrize('name', ['plainmamba_l1', 'vim_tiny_patch16_224'])
def test_bad_configurations_raise_clear_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model(name, **TINY, **kwargs)


def test_too_few_tokens_is_named():
    with pytest.raises(ValueError, match='too few tokens'):
        PruneConfig.from_kwargs((1, 2, 3), 0.01).validate(depth=6, num_tokens=16, min_tokens=2)


def test_keep_count_is_ceil_and_round_off_safe():
    assert keep_count(196, 0.8) == 157
    assert keep_count(125, 0.8) == 100  # 0.8 * 125 = 100.00000000000001 in floating point
    assert keep_count(10, 1.0) == 10 and keep_count(10, 0.01) == 1


def test_prune_config_round_trips_through_kwargs():
    cfg = PruneConfig.from_kwargs((5, 10, 15), (0.8, 0.7, 0.6), 'l2', 'decay')
    assert PruneConfig.from_kwargs(**cfg.to_kwargs()) == cfg
    assert PruneConfig.from_kwargs(**PruneConfig.from_kwargs((5,), 0.8).to_kwargs()).keep_rates == (0.8,)


def test_timm_model_kwargs_flag_reaches_the_model():
    parser = argparse.ArgumentParser()
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    args = parser.parse_args(['--model-kwargs', 'prune_layers=(2,4)', 'keep_rate=0.5', 'importance=l1',
                              'alignment=naive'])
    m = timm.create_model('plainmamba_l1', **TINY, **args.model_kwargs)
    assert m.prune_cfg.prune_layers == (2, 4) and m.prune_cfg.keep_rates == (0.5, 0.5)
    assert m.prune_cfg.importance == 'l1' and m.prune_cfg.alignment == 'naive'
    args = parser.parse_args(['--model-kwargs', 'prune_layers=[2,4]', 'keep_rate=[0.9,0.5]'])
    m = timm.create_model('vim_tiny_patch16_224', **TINY, **args.model_kwargs)
    assert m.token_counts() == [16, 15, 8]


@pytest.mark.parametrize('backend', ['cuda', 'triton', 'torch'])
def test_flops_are_counted_whatever_the_scan_backend(backend):
    # one way to choose the kernels: the model's scan_backend (the ops' backend argument); counting FLOPs runs on
    # meta tensors, where every backend falls back to the PyTorch ops' formulas
    for name in ('vim_mini', 'plainmamba_mini'):
        assert count_flops(timm.create_model(name, scan_backend=backend)) == count_flops(timm.create_model(name))
