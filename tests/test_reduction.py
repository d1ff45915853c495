"""Reductions beyond the paper's pruning: merge / hybrid, timescale importance, Vim's class-token placement,
the 'packed' baseline and seeded random importance (docs/method.md §2, §4, §7)."""
import math

import pytest
import torch
import torch.nn.functional as F
import timm

import timm_ssm_prune  # noqa: F401
from timm_ssm_prune.flops import flops_breakdown
from timm_ssm_prune.models.plainmamba import PlainMamba2D, SnakeLayout, snake_scan_tables
from timm_ssm_prune.models.vim import BiMambaMixer
from timm_ssm_prune.pruning import merge_average

TINY = dict(img_size=64, embed_dim=32, depth=6)  # 4x4 token grid
FAMILIES = ['plainmamba_l1', 'vim_tiny_patch16_224']


def pair(name, **kw):
    torch.manual_seed(0)
    a = timm.create_model(name, **TINY, **kw).eval()
    return a


def same_weights(*models):
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    return models


# ------------------------------------------------------------------------------------------------ merge average

def test_merge_average_by_hand():
    patches = torch.tensor([[[1., 10.], [2., 20.], [3., 30.], [4., 40.], [5., 50.]]])
    keep, merged = torch.tensor([[0, 3]]), torch.tensor([[1, 2, 4]])
    partner = torch.tensor([[0, 1, 1]])  # token 1 -> kept 0; tokens 2 and 4 -> kept 3
    w_keep, w_merged = torch.tensor([[1., 2.]]), torch.tensor([[1., 3., 1.]])
    out = merge_average(patches, keep, merged, partner, w_keep, w_merged)
    expect = torch.tensor([[[(1 * 1 + 1 * 2) / 2, (1 * 10 + 1 * 20) / 2],
                            [(2 * 4 + 3 * 3 + 1 * 5) / 6, (2 * 40 + 3 * 30 + 1 * 50) / 6]]])
    torch.testing.assert_close(out, expect)
    # zero weight for every merged token: the kept tokens as they are (= pruning)
    torch.testing.assert_close(merge_average(patches, keep, merged, partner, w_keep, torch.zeros(1, 3)),
                               patches[:, [0, 3]])


def _zero_merge_weights(model):
    def hook(module, args, reduction):
        if reduction.merge is not None:
            reduction.merge.w_merged = torch.zeros_like(reduction.merge.w_merged)
        return reduction
    return [r.register_forward_hook(hook) for r in model.reducers]


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('reduction', ['merge', 'hybrid'])
@pytest.mark.parametrize('alignment', ['aligned', 'naive', 'packed'])
def test_merge_with_zero_weights_is_prune_and_keep_one_is_dense(name, reduction, alignment):
    kw = dict(prune_layers=(2, 4), keep_rate=0.6, alignment=alignment)
    prune = pair(name, **kw)
    merge, dense = pair(name, reduction=reduction, **kw), pair(name)
    same_weights(prune, merge, dense)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(merge(x), prune(x), atol=1e-5)  # merging changes the computation ...
        _zero_merge_weights(merge)
        torch.testing.assert_close(merge(x), prune(x), rtol=0, atol=1e-6)  # ... by the merged tokens only
        if alignment != 'naive':
            one = pair(name, reduction=reduction, prune_layers=(2, 4), keep_rate=1.0, alignment='aligned')
            same_weights(dense, one)
            torch.testing.assert_close(one(x), dense(x), rtol=0, atol=0)


def _capture(model):
    """Record each reducer's decision and the inputs of the block after each stage."""
    seen = {'red': [], 'next': {}}
    for r in model.reducers:
        r.register_forward_hook(lambda m, a, out: seen['red'].append((a[1], out)))
        model.layers[r.after_block].register_forward_hook(
            lambda m, a, out, i=r.after_block: seen['next'].__setitem__(i, a))
    return seen


@pytest.mark.parametrize('partner', ['similar', 'nearest'])
def test_plainmamba_merged_tokens_by_hand(partner):
    dense, merged = pair('plainmamba_l1'), pair('plainmamba_l1', prune_layers=(2,), keep_rate=0.5,
                                                reduction='merge', merge_partner=partner)
    same_weights(dense, merged)
    x = torch.randn(2, 3, 64, 64)
    seen = _capture(merged)
    with torch.no_grad():
        merged(x)
        (layout, red), = seen['red']
        (h, *_), layout0 = dense._embed(x)[0], None
        h, layout0 = dense._embed(x)
        h = h[0]
        for i in range(2):
            h, sig = dense.layers[i](h, layout0, i == 1)
        y = sig.y  # (B, 16, E): the block's SSM output, scored by clip
        scores = y.clamp_min(0).sum(-1)
        for b in range(2):
            order = sorted(range(16), key=lambda j: (-scores[b, j].item(), j))
            keep = sorted(order[:8])
            assert red.keep[b].tolist() == keep
            sums = {j: h[b, j].clone() for j in keep}
            counts = {j: 1 for j in keep}
            for j in order[8:]:
                if partner == 'similar':
                    sim = [F.cosine_similarity(y[b, j], y[b, i], dim=0).item() for i in keep]
                    target = keep[max(range(8), key=lambda t: (sim[t], -t))]
                else:
                    dist = [(j // 4 - i // 4) ** 2 + (j % 4 - i % 4) ** 2 for i in keep]
                    target = keep[min(range(8), key=lambda t: (dist[t], t))]
                sums[target] += h[b, j]
                counts[target] += 1
            expect = torch.stack([sums[j] / counts[j] for j in keep])
            torch.testing.assert_close(seen['next'][2][0][b], expect, rtol=1e-5, atol=1e-6)
            assert red.layout.size[b].tolist() == [float(counts[j]) for j in keep]


def test_vim_merges_both_streams_with_the_same_weights_by_hand():
    dense = pair('vim_tiny_patch16_224')
    merged = pair('vim_tiny_patch16_224', prune_layers=(2,), keep_rate=0.5, reduction='hybrid', merge_fraction=0.5)
    same_weights(dense, merged)
    x = torch.randn(2, 3, 64, 64)
    seen = _capture(merged)
    with torch.no_grad():
        merged(x)
        (_, red), = seen['red']
        (h, r), layout = dense._embed(x)
        for i in range(2):
            h, r, sig = dense.layers[i](h, r, layout, i == 1)
        hid_next, res_next = seen['next'][2][:2]
        scores = torch.cat([sig.y[:, :8], sig.y[:, 9:]], 1).clamp_min(0).sum(-1)
        y = torch.cat([sig.y[:, :8], sig.y[:, 9:]], 1)
        for b in range(2):
            order = sorted(range(16), key=lambda j: (-scores[b, j].item(), j))
            keep, merge = sorted(order[:8]), order[8:12]  # 4 of the 8 not kept are merged, the best 4
            for stream, got in ((h, hid_next), (r, res_next)):
                patches = torch.cat([stream[b, :8], stream[b, 9:]])
                sums = {j: patches[j].clone() for j in keep}
                counts = {j: 1 for j in keep}
                for j in merge:
                    sim = [F.cosine_similarity(y[b, j], y[b, i], dim=0).item() for i in keep]
                    t = keep[max(range(8), key=lambda q: (sim[q], -q))]
                    sums[t] += patches[j]
                    counts[t] += 1
                expect = torch.stack([sums[j] / counts[j] for j in keep])
                expect = torch.cat([expect[:4], stream[b, 8:9], expect[4:]])  # class token in the middle
                torch.testing.assert_close(got[b], expect, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ timescale

def test_plainmamba_delta_importance_by_hand():
    torch.manual_seed(3)
    H, W = 3, 4
    mixer = PlainMamba2D(8, d_state=4).eval()  # official quirks: dt in sequence order (Q2), bias twice (Q1)
    x = torch.randn(2, H * W, 8)
    with torch.no_grad():
        _, sig = mixer(x, SnakeLayout.dense(2, (H, W), x.device), return_ssm=True)
        xi, _ = mixer.in_proj(x).chunk(2, dim=-1)
        xc = F.silu(mixer.conv2d(xi.transpose(1, 2).reshape(2, -1, H, W))).flatten(2).transpose(1, 2)
        dt = mixer.dt_proj(mixer.x_proj(xc)[..., :mixer.dt_rank])
        step = F.softplus(dt + mixer.dt_proj.bias).mean(-1)  # (B, L): the step used at each scan step
        _, rank, _, _ = snake_scan_tables(H, W)
        # token p is written at step rank[s, p] of direction s, with the step of that scan step (Q2)
        expect = torch.stack([step[:, rank[s]] for s in range(4)]).mean(0)
    torch.testing.assert_close(sig.timescale, expect, rtol=1e-5, atol=1e-6)


def test_vim_delta_importance_by_hand():
    torch.manual_seed(4)
    mixer = BiMambaMixer(8, d_state=4)
    mixer.fwd.reset_parameters()
    mixer.bwd.reset_parameters()
    mixer = mixer.eval()
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        _, sig = mixer(x, return_ssm=True)
        xi = mixer.in_proj(x)[..., :mixer.d_inner].transpose(1, 2)
        steps = []
        for branch, inp in ((mixer.fwd, xi), (mixer.bwd, xi.flip(-1))):
            u = F.silu(F.conv1d(inp, branch.conv1d.weight, branch.conv1d.bias, padding=3,
                                groups=mixer.d_inner)[..., :7])
            dt = F.linear(branch.x_proj(u.transpose(1, 2))[..., :mixer.dt_rank], branch.dt_proj.weight)
            steps.append(F.softplus(dt + branch.dt_proj.bias).mean(-1))
        expect = (steps[0] + steps[1].flip(-1)) / 2
    torch.testing.assert_close(sig.timescale, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', FAMILIES)
def test_delta_importance_keeps_the_tokens_with_the_largest_timescale(name):
    model = pair(name, prune_layers=(2,), keep_rate=0.5, importance='delta')
    seen = _capture(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    layout, red = seen['red'][0]
    assert torch.equal(red.scores, red.scores)  # scores are the timescale of the patch tokens
    top = red.scores.topk(8, dim=-1).indices.sort(-1).values
    assert torch.equal(red.keep, top)


# ------------------------------------------------------------------------------------------------ class token

MODES = [dict(reduction=r, alignment=a, cls_position=c)
         for r in ('prune', 'merge', 'hybrid') for a in ('aligned', 'packed', 'decay', 'naive')
         for c in ('middle', 'raster') if not (a == 'naive' and c == 'raster')]


@pytest.mark.parametrize('mode', MODES, ids=lambda m: '-'.join(m.values()))
def test_the_head_reads_the_class_token_in_every_mode(mode):
    model = pair('vim_tiny_patch16_224', prune_layers=(1, 3, 5), keep_rate=0.7, **mode)
    decisions = []
    for r in model.reducers:
        r.register_forward_hook(lambda m, a, out: decisions.append(out))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        model(x)
    ids = torch.arange(17, dtype=torch.float).repeat(3, 1).unsqueeze(-1)  # patch ids 0..15, class token at 8
    ids[:, 8] = -100.0
    for red in decisions:
        ids = red(ids)
    final = decisions[-1].layout.with_cls_in_middle(ids)
    assert (final[:, (final.shape[1] - 1) // 2, 0] == -100).all()
    assert (final >= 0).sum() == final.numel() - 3  # the class token is never merged into a patch


def test_raster_class_token_sits_at_its_original_place():
    model = pair('vim_tiny_patch16_224', prune_layers=(2,), keep_rate=0.5, cls_position='raster')
    seen = _capture(model)
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    _, red = seen['red'][0]
    idx = red.layout.index  # kept patches (original raster index), in order
    before = (idx < 8).sum(1)  # the class token's place in the 16-patch sequence is between patches 7 and 8
    assert torch.equal(red.layout.cls_index, before)
    seq = red.index  # the next sequence, as positions of the previous one (class token at 8)
    assert (seq[torch.arange(4), before] == 8).all()


def test_raster_decay_gaps_count_the_class_token_in_the_dense_order():
    model = pair('vim_tiny_patch16_224', prune_layers=(2,), keep_rate=0.5, cls_position='raster', alignment='decay')
    seen = _capture(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    _, red = seen['red'][0]
    lay = red.layout
    for b in range(2):
        rank = [p + (p >= 8) for p in lay.index[b].tolist()]
        rank.insert(int(lay.cls_index[b]), 8)
        fwd = [rank[0]] + [rank[i] - rank[i - 1] - 1 for i in range(1, 9)]
        bwd = [rank[i + 1] - rank[i] - 1 for i in range(8)] + [16 - rank[8]]
        assert lay.gaps[0, b].tolist() == fwd and lay.gaps[1, b].tolist() == bwd


# ------------------------------------------------------------------------------------------------ packed

def test_packed_baseline():
    dense, packed, aligned, naive = (pair('plainmamba_l1', **kw) for kw in (
        {}, dict(prune_layers=(2,), keep_rate=1.0, alignment='packed'),
        dict(prune_layers=(2,), keep_rate=0.5), dict(prune_layers=(2,), keep_rate=0.5, alignment='naive')))
    same_weights(dense, packed, aligned, naive)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), dense(x), rtol=0, atol=1e-6)  # square grid: packing all is dense
        packed.set_pruning(prune_layers=(2,), keep_rate=0.5, alignment='packed')
        outs = [packed(x), aligned(x), naive(x)]
    assert not torch.allclose(outs[0], outs[1], atol=1e-5) and not torch.allclose(outs[0], outs[2], atol=1e-5)
    vp, va = pair('vim_tiny_patch16_224', prune_layers=(2, 4), keep_rate=0.6, alignment='packed'), \
        pair('vim_tiny_patch16_224', prune_layers=(2, 4), keep_rate=0.6)
    same_weights(vp, va)
    with torch.no_grad():  # Vim's scans are 1-D: packing in order is ToP's alignment
        torch.testing.assert_close(vp(x), va(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ determinism

@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('kw', [dict(reduction='merge'), dict(reduction='hybrid', merge_partner='nearest'),
                                dict(importance='delta'), dict(alignment='packed'),
                                dict(importance='cls', cls_position='raster'),
                                dict(importance='random', importance_seed=3)], ids=str)
def test_batch_invariance_and_determinism(name, kw):
    if name.startswith('plainmamba') and kw.get('importance') == 'cls':
        pytest.skip('Vim only')
    model = pair(name, prune_layers=(2, 4), keep_rate=0.6, **kw)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        if 'importance_seed' in kw:  # a seeded model reproduces its draws from the start
            first = model(x)
            again = pair(name, prune_layers=(2, 4), keep_rate=0.6, **kw)
            same_weights(model, again)
            torch.testing.assert_close(again(x), first, rtol=0, atol=0)
            other = pair(name, prune_layers=(2, 4), keep_rate=0.6, importance='random', importance_seed=4)
            same_weights(model, other)
            assert not torch.allclose(other(x), first)
            return
        full = model(x)
        torch.testing.assert_close(model(x), full, rtol=0, atol=0)
        for i in range(4):
            torch.testing.assert_close(model(x[i:i + 1]), full[i:i + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kwargs,match', [
    (dict(reduction='bogus'), 'reduction must be one of'),
    (dict(reduction='hybrid', merge_fraction=1.5), 'merge_fraction must be a number in'),
    (dict(merge_fraction=0.3), "merge_fraction applies to reduction='hybrid'"),
    (dict(merge_partner='similar'), "merge_partner applies to reduction='merge' or 'hybrid'"),
    (dict(reduction='merge', merge_partner='far'), 'merge_partner must be one of'),
    (dict(alignment='naive', cls_position='raster'), 'order-keeping alignment'),
    (dict(cls_position='left'), 'cls_position must be one of'),
    (dict(importance_seed=3), "importance='random' only"),
    (dict(importance='random', importance_seed='3'), 'importance_seed is an integer'),
    (dict(keep_rate='0.8'), "keep_rate must be a number in \\(0, 1\\]"),
    (dict(keep_rate=True), 'keep_rate must be a number'),
    (dict(prune_layers=[True]), 'prune_layers entries must be integers'),
    (dict(prune_layers='5'), 'prune_layers must be a block count'),
    (dict(bogus_kwarg=1), 'unexpected keyword argument'),
])
def test_bad_options_are_named(kwargs, match):
    kw = dict(prune_layers=(2,), keep_rate=0.5)
    kw.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        timm.create_model('vim_tiny_patch16_224', **TINY, **kw)
    with pytest.raises(ValueError, match='PlainMamba has no class token'):
        timm.create_model('plainmamba_l1', **TINY, prune_layers=(2,), keep_rate=0.5, cls_position='raster')


def test_empty_prune_layers_turns_off_a_saved_configuration():
    m = timm.create_model('plainmamba_l1_pruned', prune_layers=(), keep_rate=0.433, device='meta')
    assert not m.prune_cfg.enabled and len(m.reducers) == 0
    with pytest.raises(ValueError, match='keep_rate was given without prune_layers'):
        timm.create_model('plainmamba_l1', keep_rate=0.5, device='meta')


# ------------------------------------------------------------------------------------------------ FLOPs

def test_merge_flops_by_hand():
    kw = dict(prune_layers=(2,), keep_rate=0.5)
    prune = flops_breakdown(pair('vim_tiny_patch16_224', **kw))
    merge = flops_breakdown(pair('vim_tiny_patch16_224', reduction='merge', **kw))
    # 8 of 16 patches kept, 8 merged: cosine similarity (8 x 8 x E, E = 64) + averaging 16 tokens x C (32) in two
    # streams (hidden, residual)
    assert merge['merge'] * 1e9 == pytest.approx(2 * 16 * 32)
    assert (merge['linear_conv'] - prune['linear_conv']) * 1e9 == pytest.approx(8 * 8 * 64)
    assert merge['scan'] == prune['scan']
    solved = pair('vim_tiny_patch16_224', reduction='merge', flops_reduction=0.2, prune_layers=(2, 4))
    assert prune['score'] == merge['score'] == 0
    assert solved.prune_cfg.reduction == 'merge' and 0 < solved.prune_cfg.keep_rates[0] < 1
    dense = flops_breakdown(pair('vim_tiny_patch16_224'))['total']
    assert 1 - flops_breakdown(solved)['total'] / dense == pytest.approx(0.2, abs=0.03)
    assert not math.isnan(merge['total'])


# ------------------------------------------------------------------------------------------------ class attention

def _contribution_by_recurrence(u, step, A, Bm, Cm, gate, c):
    """float64: run the recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t with only token j's input, read
    y_c = C_c · h_c, gate it: token j's contribution to the class token, summed in absolute value over channels."""
    E, L = u.shape
    out = torch.zeros(L, dtype=torch.float64)
    for j in range(c):
        h = torch.zeros(E, A.shape[1], dtype=torch.float64)
        for t in range(j, c + 1):
            inp = (step[:, t] * u[:, t])[:, None] * Bm[None, :, t] if t == j else 0
            h = torch.exp(step[:, t, None] * A) * h + inp
        out[j] = ((h @ Cm[:, c]) * gate).abs().sum()
    return out


def test_class_attention_against_the_recurrence():
    from timm_ssm_prune.models.vim import class_attention
    g = torch.Generator().manual_seed(5)
    batch, E, N, L = 2, 6, 3, 9
    u = torch.randn(batch, E, L, generator=g, dtype=torch.float64)
    step = torch.rand(batch, E, L, generator=g, dtype=torch.float64) * 0.5
    A = -torch.rand(E, N, generator=g, dtype=torch.float64) * 2
    Bm, Cm = (torch.randn(batch, N, L, generator=g, dtype=torch.float64) for _ in range(2))
    gate = torch.randn(batch, E, generator=g, dtype=torch.float64)
    c = torch.tensor([4, 6])
    got = class_attention(u, step, A, Bm, Cm, gate, c, chunk=4)
    for b in range(batch):
        ref = _contribution_by_recurrence(u[b], step[b], A, Bm[b], Cm[b], gate[b], int(c[b]))
        torch.testing.assert_close(got[b], ref, rtol=1e-10, atol=1e-12)
    assert (got[0, 4:] == 0).all() and (got[0, :4] > 0).all()


def test_class_attention_flops_by_hand():
    kw = dict(prune_layers=(2, 4), keep_rate=0.5)
    clip = flops_breakdown(pair('vim_tiny_patch16_224', **kw))
    cls = flops_breakdown(pair('vim_tiny_patch16_224', importance='cls', **kw))
    # scored after blocks 2 and 4 on 16 + 1 and 8 + 1 tokens (class token included): one multiply-add per token,
    # channel (E = 2 x 32) and state (N = 16), one direction per token
    assert cls['score'] * 1e9 == pytest.approx((17 + 9) * 64 * 16)
    assert clip['score'] == 0 and cls['total'] - clip['total'] == pytest.approx(cls['score'])


def test_class_attention_of_both_directions_in_one_pass():
    """The mixer's one-pass score equals the per-direction references (each checked against the recurrence above)
    summed in sequence order, for class tokens at the ends and inside."""
    from timm_ssm_prune.models.vim import class_attention, class_attention_both
    g = torch.Generator().manual_seed(7)
    batch, E, N, L = 4, 5, 3, 11
    u = torch.randn(batch, 2 * E, L, generator=g, dtype=torch.float64)
    step = torch.rand(batch, 2 * E, L, generator=g, dtype=torch.float64) * 0.5
    A = -torch.rand(2 * E, N, generator=g, dtype=torch.float64) * 2
    Bf, Cf, Bb, Cb = (torch.randn(batch, N, L, generator=g, dtype=torch.float64) for _ in range(4))
    gate = torch.randn(batch, E, generator=g, dtype=torch.float64)
    c = torch.tensor([0, 3, 5, L - 1])
    got = class_attention_both(u, step, A, Bf, Cf, Bb, Cb, gate, c)
    ref = (class_attention(u[:, :E], step[:, :E], A[:E], Bf, Cf, gate, c)
           + class_attention(u[:, E:], step[:, E:], A[E:], Bb, Cb, gate, L - 1 - c).flip(-1))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    assert (got[torch.arange(batch), c] == 0).all() and (got.sum(1) > 0).all()


def test_vim_cls_importance_scores_both_directions_and_needs_a_class_token():
    torch.manual_seed(6)
    mixer = BiMambaMixer(8, d_state=4)
    mixer.fwd.reset_parameters()
    mixer.bwd.reset_parameters()
    mixer = mixer.double().eval()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        _, sig = mixer(x, return_ssm=True, cls_pos=4)
    attn = sig.class_attention
    assert attn.shape == (2, 9) and (attn[:, 4] == 0).all() and (attn[:, :4] > 0).all() and (attn[:, 5:] > 0).all()
    model = pair('vim_tiny_patch16_224', prune_layers=(2,), keep_rate=0.5, importance='cls')
    seen = _capture(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    _, red = seen['red'][0]
    assert torch.equal(red.keep, red.scores.topk(8, dim=-1).indices.sort(-1).values)
    with pytest.raises(ValueError, match='PlainMamba has no class token'):
        timm.create_model('plainmamba_l1', **TINY, prune_layers=(2,), keep_rate=0.5, importance='cls')


def test_the_papers_method_is_one_kwarg_set_away_from_the_defaults():
    pm = timm.create_model('plainmamba_l1_pruned', device='meta', reduction='prune')
    assert pm.prune_cfg.reduction == 'prune' and pm.prune_cfg.merge_partner is None
    vim = timm.create_model('vim_small_patch16_224_pruned', device='meta', alignment='naive')
    assert vim.prune_cfg.alignment == 'naive' and vim.prune_cfg.cls_position == 'middle'
    top = timm.create_model('vim_small_patch16_224_pruned', device='meta', importance='clip', cls_position='middle')
    assert top.prune_cfg.changed_options() == {} and top.prune_cfg.importance == 'clip'
    with pytest.raises(ValueError, match='order-keeping'):  # an explicit conflict is still an error
        timm.create_model('vim_small_patch16_224_pruned', device='meta', alignment='naive', cls_position='raster')
