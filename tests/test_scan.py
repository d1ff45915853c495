"""The selective scan op against an independent float64 recurrence, its gradients, registration and errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import timm_ssm_prune.ops.scan as scan_mod
from timm_ssm_prune.ops import causal_conv1d, cuda_kernels_available, selective_scan


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t ; y_t = C_t·h_t + D u_t ; y *= silu(z). Float64, explicit loops."""
    u, delta, A, B, C = (t.detach().double() for t in (u, delta, A, B, C))
    bsz, dim, length = u.shape
    dstate = A.shape[1]
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    per_group = dim // B.shape[1]
    y = torch.zeros(bsz, dim, length, dtype=torch.float64)
    for b in range(bsz):
        for e in range(dim):
            g = e // per_group
            h = torch.zeros(dstate, dtype=torch.float64)
            for t in range(length):
                dt = delta[b, e, t] + (0 if delta_bias is None else delta_bias[e].double())
                if delta_softplus:
                    dt = math.log1p(math.exp(dt)) if dt <= 20 else dt
                h = torch.exp(dt * A[e]) * h + dt * u[b, e, t] * B[b, g, :, t]
                y[b, e, t] = (C[b, g, :, t] * h).sum()
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        zz = z.detach().double()
        y = y * zz * torch.sigmoid(zz)
    return y


def make_inputs(bsz=2, dim=6, length=9, dstate=4, groups=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(bsz, dim, length, generator=g).to(dtype)
    delta = (torch.randn(bsz, dim, length, generator=g) * 0.5).to(dtype)
    A = -torch.exp(torch.randn(dim, dstate, generator=g) * 0.5)
    shape = (bsz, dstate, length) if groups is None else (bsz, groups, dstate, length)
    B = torch.randn(*shape, generator=g).to(dtype)
    C = torch.randn(*shape, generator=g).to(dtype)
    D = torch.randn(dim, generator=g)
    z = torch.randn(bsz, dim, length, generator=g).to(dtype)
    bias = torch.randn(dim, generator=g) * 0.3
    return u, delta, A, B, C, D, z, bias


@pytest.mark.parametrize('use_bias,softplus,use_d,use_z,groups', [
    (False, False, False, False, None),
    (True, True, False, False, None),
    (False, True, True, False, None),
    (True, True, True, True, None),
    (True, True, True, True, 2),
    (False, False, True, True, 3),
])
def test_matches_reference_fp32(use_bias, softplus, use_d, use_z, groups):
    u, delta, A, B, C, D, z, bias = make_inputs(groups=groups)
    kw = dict(D=D if use_d else None, z=z if use_z else None, delta_bias=bias if use_bias else None,
              delta_softplus=softplus)
    out = selective_scan(u, delta, A, B, C, **kw)
    ref = reference_scan(u, delta, A, B, C, **kw)
    assert out.dtype == torch.float32 and out.shape == u.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_matches_reference_across_many_chunks(monkeypatch):
    monkeypatch.setattr(scan_mod, '_CHUNK_BYTES', 1)  # 4-step chunks: exercises the chunk hand-over
    u, delta, A, B, C, D, z, bias = make_inputs(length=23)
    assert scan_mod._chunk_len(u, A) < 23
    out = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    ref = reference_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_low_precision_inputs(dtype, tol):
    """fp32 maths inside; the only error is rounding the inputs and the output to the low dtype."""
    u, delta, A, B, C, D, z, bias = make_inputs(dtype=dtype)
    out = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    assert out.dtype == dtype
    ref = reference_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)  # same rounded inputs, float64
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize('groups,chunk_bytes', [(None, None), (2, 1)])
def test_gradcheck_all_inputs(monkeypatch, groups, chunk_bytes):
    if chunk_bytes:
        monkeypatch.setattr(scan_mod, '_CHUNK_BYTES', chunk_bytes)
    inputs = make_inputs(bsz=2, dim=4, length=7 if chunk_bytes is None else 11, dstate=3, groups=groups,
                         dtype=torch.float64)
    inputs = [t.double().requires_grad_() for t in inputs]

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_without_optional_inputs():
    u, delta, A, B, C, *_ = (t.double().requires_grad_() for t in make_inputs(dim=3, length=6, dstate=2))
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a), (u, delta, A, B, C), eps=1e-6, atol=1e-6)


def test_backward_matches_autograd_through_reference():
    """fp32 gradients of the hand-written backward equal autograd through the step-by-step reference."""
    inputs = [t.requires_grad_() for t in make_inputs(length=13)]
    gy = torch.randn(inputs[0].shape)
    out = selective_scan(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True)
    ours = torch.autograd.grad(out, inputs, gy)
    ref = scan_mod.selective_scan_ref(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7],
                                      delta_softplus=True)
    theirs = torch.autograd.grad(ref, inputs, gy)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_opcheck():
    u, delta, A, B, C, D, z, bias = (t.requires_grad_() for t in make_inputs())
    op = torch.ops.timm_ssm_prune.selective_scan.default
    torch.library.opcheck(op, (u, delta, A, B, C, D, z, bias, True, 4))
    torch.library.opcheck(op, (u, delta, A, B, C, None, None, None, False, 9))


def test_opcheck_with_transposed_inputs():
    """Models pass (B, L, E) memory viewed as (B, E, L): the fake outputs must match the real (contiguous) ones."""
    u, delta, A, B, C, D, z, bias = make_inputs()
    t = [x.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for x in (u, delta, B, C, z)]
    assert not t[0].is_contiguous()
    torch.library.opcheck(torch.ops.timm_ssm_prune.selective_scan.default,
                          (t[0], t[1], A, t[2], t[3], D, t[4], bias, True, 4))


@pytest.mark.parametrize('name', ['plainmamba_mini', 'vim_mini'])
def test_compile_fullgraph_runs_a_pruned_model(name):
    import timm
    import timm_ssm_prune  # noqa: F401
    m = timm.create_model(name, depth=4, prune_layers=(1, 2), keep_rate=0.6).eval()
    x = torch.randn(2, 1, 28, 28)
    compiled = torch.compile(m, backend='aot_eager', fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_traces_the_op():
    u, delta, A, B, C, D, z, bias = make_inputs()

    def fn(u, delta):
        return selective_scan(u * 2, delta, A, B, C, D, z, bias, delta_softplus=True).sum(-1)

    compiled = torch.compile(fn, fullgraph=True, backend='aot_eager')
    torch.testing.assert_close(compiled(u, delta), fn(u, delta))


def test_flop_counter_uses_the_formula():
    bsz, dim, length, dstate = 2, 6, 9, 4
    u, delta, A, B, C, D, z, bias = make_inputs(bsz, dim, length, dstate)
    with FlopCounterMode(display=False) as counter:
        selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate; the formula is 9BELN + BEL MACs.
    assert counter.get_total_flops() == 2 * (9 * bsz * dim * length * dstate + bsz * dim * length)


def test_matches_mambapy_pscan_when_installed():
    """A third implementation (mambapy's Blelloch scan) agrees, where that package is installed."""
    pscan_mod = pytest.importorskip('mambapy.pscan')
    u, delta, A, B, C, *_ = make_inputs(length=16)
    dt = delta.transpose(1, 2)
    hs = pscan_mod.pscan(torch.exp(dt.unsqueeze(-1) * A), (dt * u.transpose(1, 2)).unsqueeze(-1) * B.transpose(1, 2)[:, :, None])
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('bad,match', [
    (dict(delta=torch.zeros(2, 6, 8)), '`delta` shape'),
    (dict(A=torch.zeros(5, 4)), '`A` must be'),
    (dict(A=torch.zeros(6, 4, dtype=torch.float16)), '`A` must be float32'),
    (dict(A=torch.zeros(6, 300), B=torch.zeros(2, 300, 9), C=torch.zeros(2, 300, 9)), 'at most 256'),
    (dict(B=torch.zeros(2, 5, 9)), '`B` must be'),
    (dict(C=torch.zeros(2, 4, 4, 9)), '`C` must be'),
    (dict(B=torch.zeros(2, 4, 4, 9), C=torch.zeros(2, 4, 4, 9)), '`B` must be'),  # 6 channels, 4 groups
    (dict(D=torch.zeros(5)), '`D` must be'),
    (dict(z=torch.zeros(2, 6, 8)), '`z` shape'),
    (dict(delta_bias=torch.zeros(6, 1)), '`delta_bias` must be'),
    (dict(u=torch.zeros(2, 6)), '`u` must be'),
    (dict(delta=torch.zeros(2, 6, 9, dtype=torch.float64)), '`delta` dtype'),
])
def test_bad_input_names_the_argument(bad, match):
    u, delta, A, B, C, D, z, bias = make_inputs()
    kw = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        selective_scan(**kw)


def test_bad_backend():
    u, delta, A, B, C, *_ = make_inputs()
    with pytest.raises(ValueError, match='backend'):
        selective_scan(u, delta, A, B, C, backend='nope')


def test_cuda_backend_without_kernels_says_how_to_install(monkeypatch):
    monkeypatch.setattr(scan_mod, '_mamba_selective_scan_fn', lambda: None)
    u, delta, A, B, C, *_ = make_inputs()
    with pytest.raises(RuntimeError, match=r"pip install .*\[cuda\]"):
        selective_scan(u, delta, A, B, C, backend='cuda')


def test_causal_conv1d_matches_loop():
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 5, 11, generator=g), torch.randn(5, 1, 4, generator=g), torch.randn(5, generator=g)
    out = causal_conv1d(x, w, b, activation='silu')
    ref = torch.zeros_like(x)
    for t in range(11):
        for k in range(4):
            src = t - 3 + k
            if src >= 0:
                ref[..., t] += w[:, 0, k] * x[..., src]
    ref = F.silu(ref + b[:, None])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='`weight`'):
        causal_conv1d(x, torch.randn(4, 4))


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_kernels_available(), reason='needs a GPU with mamba-ssm CUDA kernels')
def test_cuda_kernel_parity():
    u, delta, A, B, C, D, z, bias = (t.cuda() for t in make_inputs(bsz=4, dim=64, length=197, dstate=16))
    args = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    out_cuda = selective_scan(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True,
                              backend='cuda')
    args_t = [t.clone().detach().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    out_torch = selective_scan(*args_t[:5], D=args_t[5], z=args_t[6], delta_bias=args_t[7], delta_softplus=True,
                               backend='torch')
    torch.testing.assert_close(out_cuda, out_torch, rtol=1e-3, atol=1e-3)
    gy = torch.randn_like(out_cuda)
    for a, b in zip(torch.autograd.grad(out_cuda, args, gy), torch.autograd.grad(out_torch, args_t, gy)):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)
    x, w, b = torch.randn(2, 64, 50, device='cuda'), torch.randn(64, 4, device='cuda'), torch.randn(64, device='cuda')
    torch.testing.assert_close(causal_conv1d(x, w, b, 'silu', backend='cuda'),
                               causal_conv1d(x, w, b, 'silu', backend='torch'), rtol=1e-4, atol=1e-4)
