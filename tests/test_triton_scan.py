"""The Triton selective scan and its gathered (position-map) variant, run by Triton's interpreter on CPU.

Triton's interpreter has to be switched on before ``triton`` is first imported, and timm imports it, so on a
machine without a GPU the tests below run in a subprocess started with TRITON_INTERPRET=1
(``test_kernels_in_interpreter_subprocess``); in that subprocess, or on a GPU, they run directly.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('triton')

from test_scan import make_inputs, reference_scan  # noqa: E402  (tests/ is on sys.path, see conftest)

import timm_ssm_prune.ops.triton_scan as ts  # noqa: E402
from timm_ssm_prune.ops import selective_scan  # noqa: E402
from timm_ssm_prune.ops.scan import selective_scan_ref  # noqa: E402

INTERPRETED = ts.triton_available('cpu')
ON_GPU = torch.cuda.is_available() and ts.triton_available('cuda') and not INTERPRETED
DEV = 'cuda' if ON_GPU else 'cpu'
kernels = pytest.mark.skipif(not (INTERPRETED or ON_GPU),
                             reason='runs in the TRITON_INTERPRET=1 subprocess (test_kernels_in_interpreter_subprocess)')


@pytest.mark.skipif(INTERPRETED or ON_GPU, reason='the kernels run in this process')
def test_kernels_in_interpreter_subprocess():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', os.path.abspath(__file__)],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    tail = res.stdout[-6000:] + res.stderr[-3000:]
    assert res.returncode == 0, tail
    assert ' passed' in res.stdout and ' failed' not in res.stdout, tail


@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(), reason='needs a CPU-only process without the interpreter')
def test_cpu_tensors_without_interpreter_name_the_fix():
    u, delta, A, B, C, *_ = make_inputs()
    with pytest.raises(ValueError, match='TRITON_INTERPRET=1'):
        selective_scan(u, delta, A, B, C, backend='triton')
    with pytest.raises(ValueError, match='TRITON_INTERPRET=1'):
        ts.selective_scan_gathered(u, delta, A, B, C, torch.arange(9).view(1, 1, 9).expand(1, 2, 9),
                                   backend='triton')


def _dev(ts_):
    return [None if t is None else t.to(DEV) for t in ts_]


# ------------------------------------------------------------------------------------------------
# backend='triton' of selective_scan
# ------------------------------------------------------------------------------------------------

@kernels
@pytest.mark.parametrize('use_bias,softplus,use_d,use_z,groups', [
    (False, False, False, False, None),
    (True, True, True, False, None),
    (True, True, True, True, None),
    (True, True, True, True, 2),
    (False, False, True, True, 3),
])
def test_forward_matches_reference(use_bias, softplus, use_d, use_z, groups):
    u, delta, A, B, C, D, z, bias = make_inputs(groups=groups)
    kw = dict(D=D if use_d else None, z=z if use_z else None, delta_bias=bias if use_bias else None,
              delta_softplus=softplus)
    ref = reference_scan(u, delta, A, B, C, **kw)
    u, delta, A, B, C = _dev((u, delta, A, B, C))
    kw = {k: (v.to(DEV) if torch.is_tensor(v) else v) for k, v in kw.items()}
    out = selective_scan(u, delta, A, B, C, **kw, backend='triton')
    assert out.dtype == torch.float32 and out.shape == u.shape
    torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-5, atol=1e-5)
    # several chunks (the states handed from chunk to chunk)
    out4 = ts.selective_scan_triton(u, delta, A, B, C, **kw, chunk=4)
    torch.testing.assert_close(out4, out, rtol=1e-6, atol=1e-6)


@kernels
@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_low_precision_inputs(dtype, tol):
    u, delta, A, B, C, D, z, bias = make_inputs(dtype=dtype)
    ref = reference_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    out = selective_scan(*_dev((u, delta, A, B, C, D, z, bias)), delta_softplus=True, backend='triton')
    assert out.dtype == dtype
    torch.testing.assert_close(out.double().cpu(), ref, rtol=tol, atol=tol)


@kernels
@pytest.mark.parametrize('groups,chunk', [(None, 3), (2, None)])
def test_float64_gradients_match_autograd_through_reference(groups, chunk):
    """Every gradient of the Triton backward, float64, against autograd through the step-by-step loop."""
    inputs = [t.double().to(DEV).requires_grad_() for t in make_inputs(bsz=2, dim=4, length=8, dstate=3,
                                                                          groups=groups)]
    out = ts.selective_scan_triton(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7],
                                   delta_softplus=True, chunk=chunk)
    ref = selective_scan_ref(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, inputs, gy), torch.autograd.grad(ref, inputs, gy)):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@kernels
def test_gradcheck_small():
    inputs = [t.double().to(DEV).requires_grad_() for t in make_inputs(bsz=1, dim=2, length=5, dstate=2)]
    u, delta, A, B, C, D, z, bias = inputs
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan(*a, D=D.detach(), z=z.detach(), delta_bias=bias.detach(), delta_softplus=True,
                                  backend='triton'), (u, delta, A, B, C), eps=1e-6, atol=1e-6)


@kernels
def test_fp32_gradients_and_strided_inputs_match_torch_path():
    """(B, L, E) memory viewed as (B, E, L), as the models pass it; no optional inputs; fp32."""
    base = make_inputs(length=11)
    t = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (base[0], base[1], base[3], base[4])]
    ins = [x.to(DEV).requires_grad_() for x in (t[0], t[1], base[2], t[2], t[3])]
    ins_t = [x.detach().clone().requires_grad_() for x in ins]
    assert not ins[0].is_contiguous()
    out = selective_scan(*ins, backend='triton')
    out_t = selective_scan(*ins_t, backend='torch')
    torch.testing.assert_close(out, out_t, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, ins, gy, retain_graph=True),
                    torch.autograd.grad(out_t, ins_t, gy, retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # .sum() hands the backward an expanded (stride 0) gradient
    for a, b in zip(torch.autograd.grad(out.sum(), ins), torch.autograd.grad(out_t.sum(), ins_t)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@kernels
def test_auto_on_cpu_stays_on_the_torch_path(monkeypatch):
    def boom(*a, **k):
        raise AssertionError('auto must not pick Triton for CPU tensors')
    monkeypatch.setattr(ts, 'selective_scan_triton', boom)
    u, delta, A, B, C, *_ = make_inputs()
    selective_scan(u, delta, A, B, C, backend='auto')
    with pytest.raises(AssertionError):
        selective_scan(u, delta, A, B, C, backend='triton')


# ------------------------------------------------------------------------------------------------
# selective_scan_gathered
# ------------------------------------------------------------------------------------------------

S_DIRS = 4


def gathered_inputs(per_dir, bsz=2, dim=4, length=6, dstate=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = (S_DIRS,) if per_dir else ()
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u = r(*sd, bsz, dim, length).to(dtype)
    delta = (r(*sd, bsz, dim, length) * 0.5).to(dtype)
    A = -torch.exp(r(*sd, dim, dstate) * 0.5).to(torch.float64 if dtype == torch.float64 else torch.float32)
    bshape = (S_DIRS, bsz, 1, dstate, length) if per_dir else (bsz, dstate, length)
    B, C = r(*bshape).to(dtype), r(*bshape).to(dtype)
    D = r(*sd, dim).to(A.dtype)
    bias = (r(*sd, dim) * 0.3).to(A.dtype)
    z = r(bsz, dim, length).to(dtype)
    bstep = r(S_DIRS, bsz, dstate, length).to(dtype)
    order = torch.stack([torch.stack([torch.randperm(length, generator=g) for _ in range(bsz)])
                         for _ in range(S_DIRS)])
    return u, delta, A, B, C, order, D, z, bias, bstep


@kernels
@pytest.mark.parametrize('per_dir,step_order', [(False, ()), (False, ('delta', 'B', 'C')), (True, ('B',))])
def test_gathered_matches_gather_scan_scatter_float64(per_dir, step_order):
    u, delta, A, B, C, order, D, z, bias, bstep = gathered_inputs(per_dir)
    ins = [t.to(DEV).requires_grad_() for t in (u, delta, A, B, C, D, z, bias, bstep)]
    order = order.to(DEV)

    def run(backend, i):
        return ts.selective_scan_gathered(i[0], i[1], i[2], i[3], i[4], order, D=i[5], z=i[6], delta_bias=i[7],
                                          delta_softplus=True, B_step=i[8], step_order=step_order,
                                          backend=backend, **({'chunk': 4} if backend == 'triton' else {}))
    out = run('triton', ins)
    ins_r = [t.detach().clone().requires_grad_() for t in ins]
    ref = run('torch', ins_r)
    assert out.shape == ref.shape == (2, 4, 6) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, ins, gy), torch.autograd.grad(ref, ins_r, gy)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@kernels
def test_gathered_expresses_the_plainmamba_mixer():
    """PlainMamba2D.forward's scan with the official quirk Q2 (u read through the order; dt, B, C by step;
    the per-step direction term on B; outputs index_add'ed back and summed, then gated), written out."""
    bsz, n, E, N, S = 2, 6, 4, 3, S_DIRS
    g = torch.Generator().manual_seed(3)
    xc = torch.randn(bsz, n, E, generator=g, dtype=torch.float64, requires_grad=True)
    dt = torch.randn(bsz, n, E, generator=g, dtype=torch.float64, requires_grad=True)
    Bm = torch.randn(bsz, n, N, generator=g, dtype=torch.float64, requires_grad=True)
    Cm = torch.randn(bsz, n, N, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(bsz, n, E, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(5, N, generator=g, dtype=torch.float64, requires_grad=True)  # direction_Bs
    A = -torch.exp(torch.randn(E, N, generator=g, dtype=torch.float64))
    Dp, bias = torch.randn(E, generator=g, dtype=torch.float64), torch.randn(E, generator=g, dtype=torch.float64)
    perm = torch.stack([torch.stack([torch.randperm(n, generator=g) for _ in range(bsz)]) for _ in range(S)])
    codes = torch.randint(0, 5, (S, bsz, n), generator=g)
    leaves = (xc, dt, Bm, Cm, z, table)

    # the model's code (plainmamba.py, PlainMamba2D.forward), layout.gather = perm + b*n
    rows = (perm + torch.arange(bsz).view(1, bsz, 1) * n).reshape(-1)
    u = xc.reshape(bsz * n, E)[rows].reshape(S * bsz, n, E)
    dir_term = table[codes]
    dts = dt.unsqueeze(0).expand(S, -1, -1, -1).reshape(S * bsz, n, E)
    Bs = (Bm.unsqueeze(0) + dir_term).reshape(S * bsz, n, N)
    Cs = Cm.unsqueeze(0).expand(S, -1, -1, -1).reshape(S * bsz, n, N)
    y = selective_scan(u.transpose(1, 2), dts.transpose(1, 2), A, Bs.transpose(1, 2), Cs.transpose(1, 2), Dp, None,
                       bias, True, backend='torch')
    y_seq = y.new_zeros(bsz * n, E).index_add_(0, rows, y.transpose(1, 2).reshape(S * bsz * n, E))
    ref = y_seq.reshape(bsz, n, E) * F.silu(z)

    # the same with the gathered kernel: no permuted copy
    to = lambda t: t.to(DEV)  # noqa: E731
    out = ts.selective_scan_gathered(
        to(xc).transpose(1, 2), to(dt).transpose(1, 2), to(A), to(Bm).transpose(1, 2), to(Cm).transpose(1, 2),
        to(perm), D=to(Dp), z=to(z).transpose(1, 2), delta_bias=to(bias), delta_softplus=True,
        B_step=to(table)[to(codes)].permute(0, 1, 3, 2), step_order=('delta', 'B', 'C'), backend='triton', chunk=4,
    ).transpose(1, 2)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, leaves, gy.to(DEV)), torch.autograd.grad(ref, leaves, gy)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)


@kernels
def test_gathered_expresses_the_vim_mixer():
    """Vim's two directions: (y_fwd + flip(y_bwd)) / 2 with per-branch parameters and z flipped for the
    backward branch, against order = [arange, reversed arange] over per-direction inputs in sequence order."""
    bsz, E, L, N = 2, 4, 7, 3
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    uf, ub, df, db = r(bsz, E, L), r(bsz, E, L), r(bsz, E, L), r(bsz, E, L)  # the backward branch in ITS order
    Bf, Bb, Cf, Cb = r(bsz, N, L), r(bsz, N, L), r(bsz, N, L), r(bsz, N, L)
    z = r(bsz, E, L)
    A = -torch.exp(r(2 * E, N) * 0.5)
    D, bias = r(2 * E), r(2 * E) * 0.3
    # vim.py BiMambaMixer.forward
    y = selective_scan(torch.cat([uf, ub], 1), torch.cat([df, db], 1), A, torch.stack([Bf, Bb], 1),
                       torch.stack([Cf, Cb], 1), D, torch.cat([z, z.flip(-1)], 1), bias, True, backend='torch')
    ref = (y[:, :E] + y[:, E:].flip(-1)) / 2
    # gathered: the backward branch's inputs in sequence order, read through the reversed order
    seq = lambda f_, b_: torch.stack([f_, b_.flip(-1)]).to(DEV)  # noqa: E731
    ar = torch.arange(L)
    order = torch.stack([ar, ar.flip(0)]).view(2, 1, L).expand(2, bsz, L).to(DEV)
    out = ts.selective_scan_gathered(
        seq(uf, ub), seq(df, db), A.view(2, E, N).to(DEV), seq(Bf, Bb).unsqueeze(2), seq(Cf, Cb).unsqueeze(2),
        order, D=D.view(2, E).to(DEV), z=z.to(DEV), delta_bias=bias.view(2, E).to(DEV), delta_softplus=True,
        backend='triton') / 2
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12)


@kernels
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gathered_low_precision(dtype, tol):
    u, delta, A, B, C, order, D, z, bias, bstep = gathered_inputs(False, dtype=dtype, seed=1)
    args = _dev((u, delta, A, B, C, order))
    kw = dict(D=D.to(DEV), z=z.to(DEV), delta_bias=bias.to(DEV), delta_softplus=True, B_step=bstep.to(DEV))
    out = ts.selective_scan_gathered(*args, **kw, backend='triton')
    assert out.dtype == dtype
    ref = ts.selective_scan_gathered(*[t.double() if t.is_floating_point() else t for t in args],
                                     **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()},
                                     backend='torch')
    torch.testing.assert_close(out.double().cpu(), ref.cpu(), rtol=tol, atol=tol)


@pytest.mark.parametrize('bad,match', [
    (dict(order=torch.zeros(4, 2, 5, dtype=torch.long)), '`u` must be'),
    (dict(order=torch.zeros(4, 2, 6)), '`order` must be'),
    (dict(step_order=('u',)), '`step_order`'),
    (dict(A=torch.zeros(3, 4, 3)), '`A` must have'),
    (dict(B_step=torch.zeros(4, 2, 3, 5)), '`B_step` must be'),
    (dict(backend='cuda'), 'backend must be'),
])
def test_gathered_bad_arguments(bad, match):
    u, delta, A, B, C, order, D, z, bias, bstep = gathered_inputs(False, dtype=torch.float32)
    kw = dict(u=u, delta=delta, A=A, B=B, C=C, order=order, D=D, z=z, delta_bias=bias, B_step=bstep,
              backend='torch')
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        ts.selective_scan_gathered(**kw)


@kernels
def test_opcheck_and_compile_fullgraph():
    """The kernels are torch.library ops: fake implementations match the real outputs (shapes, strides),
    autograd is registered, and torch.compile(fullgraph=True) traces through both entry points."""
    u, delta, A, B, C, order, D, z, bias, bstep = gathered_inputs(False, dtype=torch.float32)
    xs = [t.to(DEV).requires_grad_() for t in (u, delta, A, B, C, D, z, bias, bstep)]
    u, delta, A, B, C, D, z, bias, bstep = xs
    order = order.to(DEV)
    ct = lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2)  # noqa: E731  ((B, L, E) memory)
    op = torch.ops.timm_ssm_prune.triton_scan.default
    torch.library.opcheck(op, (ct(u).unsqueeze(0), delta.unsqueeze(0), A.unsqueeze(0), B[None, :, None],
                               C[None, :, None], D.unsqueeze(0), z, bias.unsqueeze(0), order, bstep,
                               True, False, True, True, 3))

    def fn(u, delta, z):
        y = selective_scan(u * 2, delta, A, B, C, D, z, bias, True, backend='triton')
        yg = ts.selective_scan_gathered(u, delta, A, B, C, order, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                        B_step=bstep, step_order=('delta', 'B', 'C'), backend='triton')
        return y + yg

    compiled = torch.compile(fn, backend='aot_eager', fullgraph=True)
    out = compiled(u, delta, z)
    torch.testing.assert_close(out, fn(u, delta, z))
    out.sum().backward()
    assert u.grad is not None and A.grad is not None and bstep.grad is not None


@kernels
def test_tuning_override_gives_the_same_results():
    u, delta, A, B, C, D, z, bias = _dev(make_inputs(groups=2))
    ref = ts.selective_scan_triton(u, delta, A, B, C, D, z, bias, True)
    try:
        ts.set_triton_tuning(block_e=2, num_warps=1)  # groups of 3 channels: capped to 1 channel per program
        out = ts.selective_scan_triton(u, delta, A, B, C, D, z, bias, True)
    finally:
        ts.set_triton_tuning()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match='power of two'):
        ts.set_triton_tuning(block_e=3)


# ------------------------------------------------------------------------------------------------
# The models on the gathered kernel (scan_backend='triton'; 'auto' on CUDA without mamba-ssm)
# ------------------------------------------------------------------------------------------------

def test_gathered_scan_applies_follows_the_selective_scan_dispatch(monkeypatch):
    from types import SimpleNamespace
    from timm_ssm_prune.ops import scan as scan_mod
    cpu, meta = torch.zeros(1), torch.zeros(1, device='meta')
    assert ts.gathered_scan_applies('triton', cpu)
    assert not ts.gathered_scan_applies('triton', meta)  # FLOP counting: the PyTorch ops' formulas
    for backend in ('torch', 'auto', 'cuda'):
        assert not ts.gathered_scan_applies(backend, cpu)
    cuda = SimpleNamespace(is_cuda=True, is_meta=False, device=torch.device('cuda'))  # no GPU needed
    monkeypatch.setattr(ts, 'triton_available', lambda device=None: True)
    monkeypatch.setattr(scan_mod, '_mamba_selective_scan_fn', lambda: None)
    assert ts.gathered_scan_applies('auto', cuda) and ts.gathered_scan_applies('triton', cuda)
    assert not ts.gathered_scan_applies('torch', cuda) and not ts.gathered_scan_applies('cuda', cuda)
    monkeypatch.setattr(scan_mod, '_mamba_selective_scan_fn', lambda: object())  # mamba-ssm imports: its kernel
    assert not ts.gathered_scan_applies('auto', cuda)
    monkeypatch.setattr(scan_mod, '_mamba_selective_scan_fn', lambda: None)
    monkeypatch.setattr(ts, 'triton_available', lambda device=None: False)  # neither: the PyTorch path
    assert not ts.gathered_scan_applies('auto', cuda)


def test_flops_do_not_depend_on_the_scan_backend():
    import timm
    import timm_ssm_prune  # noqa: F401
    from timm_ssm_prune.flops import count_flops
    for name, kw in MODEL_KW.items():
        fl = [count_flops(timm.create_model(name, scan_backend=b, prune_layers=(1,), keep_rate=0.5, **kw))
              for b in ('torch', 'triton')]
        assert fl[0] == fl[1] > 0


PM_KW = dict(img_size=32, patch_size=8, stem_dim=8, embed_dim=16, depth=2)  # 4x4 tokens
VIM_KW = dict(img_size=32, patch_size=8, embed_dim=16, depth=2)  # 4x4 tokens + the class token
MODEL_KW = {'plainmamba_l1': PM_KW, 'vim_tiny_patch16_224': VIM_KW}


class _Spy:
    """Counts the models' calls of selective_scan_gathered (still calling it)."""

    def __init__(self, monkeypatch):
        from timm_ssm_prune.models import plainmamba, vim
        self.calls = 0
        for mod in (plainmamba, vim):
            monkeypatch.setattr(mod, 'selective_scan_gathered', self._wrap(mod.selective_scan_gathered))

    def _wrap(self, fn):
        def spy(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)
        return spy


def _model_pair(name, kw):
    import copy
    import timm
    import timm_ssm_prune  # noqa: F401
    torch.manual_seed(0)
    ref = timm.create_model(name, scan_backend='torch', **MODEL_KW[name], **kw).eval()
    tri = copy.deepcopy(ref)
    for m in tri.modules():
        if hasattr(m, 'scan_backend'):
            m.scan_backend = 'triton'
    return ref, tri


def _assert_grads_close(ref, tri):
    n = 0
    for (name, p), (_, q) in zip(ref.named_parameters(), tri.named_parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4 * max(scale, 1e-6), msg=name)
        n += 1
    return n


# Block 0 runs on the dense layout, block 1 on the stage's layout: both through the gathered kernel, except
# 'decay' (the gaps scan, today's path) after the stage.
@kernels
@pytest.mark.parametrize('name,kw', [
    ('plainmamba_l1', dict(alignment='aligned', importance='delta')),
    ('plainmamba_l1', dict(alignment='packed')),
    ('plainmamba_l1', dict(alignment='naive')),
    ('plainmamba_l1', dict(reduction='merge')),
    ('plainmamba_l1', dict(alignment='decay')),
    ('vim_tiny_patch16_224', dict(alignment='aligned', importance='cls')),
    ('vim_tiny_patch16_224', dict(alignment='naive', importance='delta')),
    ('vim_tiny_patch16_224', dict(reduction='merge', cls_position='raster')),
    ('vim_tiny_patch16_224', dict(alignment='decay')),
])
def test_models_on_the_gathered_kernel_match_the_torch_path(name, kw, monkeypatch):
    ref, tri = _model_pair(name, dict(prune_layers=(1,), keep_rate=0.5, **kw))
    spy = _Spy(monkeypatch)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out_r = ref(x)
    assert spy.calls == 0  # the CPU path is untouched
    out_t = tri(x.to(DEV))
    assert spy.calls == (1 if kw.get('alignment') == 'decay' else 2)
    torch.testing.assert_close(out_t.cpu(), out_r, rtol=1e-5, atol=1e-5)
    out_r.square().mean().backward()
    out_t.square().mean().backward()
    assert _assert_grads_close(ref, tri) > 10


@kernels
def test_auto_on_cpu_models_keep_the_torch_path(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("scan_backend='auto' on CPU must not take the gathered kernel")
    from timm_ssm_prune.models import plainmamba, vim
    monkeypatch.setattr(plainmamba, 'selective_scan_gathered', boom)
    monkeypatch.setattr(vim, 'selective_scan_gathered', boom)
    import timm
    for name, kw in MODEL_KW.items():
        timm.create_model(name, scan_backend='auto', **kw).eval()(torch.randn(1, 3, 32, 32))


@kernels
@pytest.mark.parametrize('quirks,sparse', [(True, False), (False, True)])
def test_plainmamba_mixer_gathered_signal_and_gradients(quirks, sparse):
    """The mixer alone: output, the scan signal (y, timescale) and every gradient, with and without quirk Q2
    (without it delta/B/C are read through the order too), on a dense and an aligned sparse layout."""
    from timm_ssm_prune.models.plainmamba import PlainMamba2D, SnakeLayout
    torch.manual_seed(0)
    ref = PlainMamba2D(8, d_state=4, conv_size=3, official_quirks=quirks, scan_backend='torch')
    tri = PlainMamba2D(8, d_state=4, conv_size=3, official_quirks=quirks, scan_backend='triton')
    tri.load_state_dict(ref.state_dict())
    H, W = 3, 4
    if sparse:
        pos = torch.tensor([[0, 2, 3, 5, 6, 9, 11], [1, 2, 4, 7, 8, 10, 11]])
        layout = SnakeLayout.sparse((H, W), pos, (H, W), pos)
    else:
        layout = SnakeLayout.dense(2, (H, W), 'cpu')
    assert layout.perm is not None
    torch.testing.assert_close(layout.scan_perm(), SnakeLayout(**{**layout.__dict__, 'perm': None}).scan_perm())
    x = torch.randn(2, layout.num_patches, 8)
    out_r, sig_r = ref(x, layout, return_ssm=True)
    out_t, sig_t = tri(x, layout, return_ssm=True)
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sig_t.y, sig_r.y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sig_t.timescale, sig_r.timescale, rtol=1e-6, atol=1e-7)
    out_r.square().sum().backward()
    out_t.square().sum().backward()
    assert _assert_grads_close(ref, tri) == len(list(ref.parameters()))


@kernels
def test_vim_mixer_gathered_signal():
    """Vim's mixer: output and the whole scan signal (y, timescale, class_attention), class token mid-sequence."""
    from timm_ssm_prune.models.vim import BiMambaMixer
    torch.manual_seed(0)
    ref = BiMambaMixer(8, d_state=4, scan_backend='torch')
    ref.fwd.reset_parameters()
    ref.bwd.reset_parameters()
    tri = BiMambaMixer(8, d_state=4, scan_backend='triton')
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 8)
    out_r, sig_r = ref(x, None, True, 4)
    out_t, sig_t = tri(x, None, True, 4)
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    for a, b in zip(sig_t, sig_r):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    out_r.square().sum().backward()
    out_t.square().sum().backward()
    assert _assert_grads_close(ref, tri) == len(list(ref.parameters()))
