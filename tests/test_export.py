"""Deployment routes (issue 15): torch.export with a dynamic batch, ONNX through torch.onnx.export(dynamo=True) run
with onnxruntime, the `export` subcommand, the scan's batch-independent chunking, and a clear error for TorchScript.

Small models (3 blocks, 28x28 inputs, 14x14 tokens) keep the file to about a minute on one core; the ONNX tests
skip when onnx / onnxscript / onnxruntime are not installed (pip install '.[export]').
"""
import importlib.util

import pytest
import torch
import timm

import timm_ssm_prune  # noqa: F401
from timm_ssm_prune.export import ExportRouteError, compare_onnx, export_onnx, export_program, ort_session
from timm_ssm_prune.models.facts import TRAINING_FREE
from timm_ssm_prune.ops import scan as scan_mod
from timm_ssm_prune.ops import selective_scan, selective_scan_ref
from timm_ssm_prune.ops.scan_onnx import selective_scan_onnx

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ('onnx', 'onnxscript', 'onnxruntime'))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx, onnxscript and onnxruntime not installed ('.[export]')")

SMALL = dict(depth=3)  # the mini models (28x28 grey, 14x14 tokens) cut to 3 blocks, random weights
PRUNED = dict(prune_layers=(1, 2), keep_rate=0.6)
TOL = 1e-4  # largest |onnxruntime - PyTorch| logit difference, relative to the logit scale


def small(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, **SMALL, **kw).eval()


def images(batch, seed):
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ torch.export

@pytest.mark.parametrize('name,kw', [
    ('plainmamba_mini', {}),
    ('plainmamba_mini', dict(PRUNED, alignment='naive')),
    ('vim_mini', dict(PRUNED, reduction='hybrid')),
])
def test_torch_export_one_program_two_batch_sizes(name, kw):
    model = small(name, **kw)
    prog = export_program(model, images(2, 0))  # traced at batch 2, batch dimension dynamic
    run = prog.module()
    for batch in (1, 5):
        x = images(batch, batch)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), rtol=0, atol=1e-6)
    # the scan op stays in the graph (the fast kernel), and nothing in the graph fixed the batch size
    assert any('selective_scan' in str(n.target) for n in prog.graph.nodes)


def test_scan_chunking_ignores_the_batch(monkeypatch):
    """Steps per chunk come from E, N and L only; larger batches run in blocks of rows inside the op, with the
    same outputs and gradients as a single block."""
    A = -torch.rand(8, 4) - 0.5
    lengths = {scan_mod._chunk_len(torch.empty(b, 8, 50), A) for b in (1, 2, 7, 64, 1000)}
    assert len(lengths) == 1
    monkeypatch.setattr(scan_mod, '_CHUNK_BYTES', 16 * 8 * 4 * 8 * 6)  # float64: 6-step chunks of 16 rows
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(40, 8, 23, generator=g, dtype=torch.float64) for _ in range(3))  # 3 blocks
    Bm, Cm = (torch.randn(40, 4, 23, generator=g, dtype=torch.float64) for _ in range(2))
    D, bias = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    A = A.double()
    assert scan_mod._chunk_len(u, A) == 6 and scan_mod._batch_rows(u, A, 6) == 16
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, Bm, Cm, D, z, bias)]
    out = selective_scan(*leaves, delta_softplus=True, backend='torch')
    ref_leaves = [t.clone().requires_grad_() for t in (u, delta, A, Bm, Cm, D, z, bias)]
    ref = selective_scan_ref(*ref_leaves, delta_softplus=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    gy = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out.backward(gy)
    ref.backward(gy)
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-8)


def test_scan_onnx_form_matches_the_op():
    """The recurrence written for ONNX (a torch scan over the sequence), run eagerly, grouped B/C as Vim's."""
    g = torch.Generator().manual_seed(1)
    u, delta, z = (torch.randn(3, 8, 17, generator=g) for _ in range(3))
    Bm, Cm = (torch.randn(3, 2, 4, 17, generator=g) for _ in range(2))
    A, D, bias = -torch.rand(8, 4, generator=g) - 0.5, torch.randn(8, generator=g), torch.randn(8, generator=g)
    out = selective_scan_onnx(u, delta, A, Bm, Cm, D, z, bias, True)
    torch.testing.assert_close(out, selective_scan(u, delta, A, Bm, Cm, D, z, bias, True), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ ONNX

def _onnx_round_trip(model, path):
    export_onnx(model, str(path), images(2, 0))
    import onnx
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    session = ort_session(str(path))
    diff = compare_onnx(model, session, [images(1, 1), images(4, 2)])  # neither is the traced batch size
    return ops, diff


@needs_onnx
@pytest.mark.parametrize('name,kw', [
    ('plainmamba_mini', {}),
    ('plainmamba_mini', dict(PRUNED, **TRAINING_FREE['plainmamba'])),  # the *_pruned default: merge (nearest)
    ('vim_mini', {}),
    ('vim_mini', dict(PRUNED, alignment='naive')),
    ('vim_mini', dict(PRUNED, **TRAINING_FREE['vim'])),  # the *_pruned default: class attention, raster class token
])
def test_onnx_round_trip(tmp_path, name, kw):
    model = small(name, **kw)
    ops, diff = _onnx_round_trip(model, tmp_path / 'model.onnx')
    assert 'Scan' in ops  # the selective scan, one step per token
    if kw:
        assert 'TopK' in ops  # token selection
    assert diff['rel_diff'] <= TOL, diff


@needs_onnx
def test_cli_export(tmp_path, capsys):
    from timm_ssm_prune.cli import main
    out = tmp_path / 'vim.onnx'
    rc = main(['export', '--model', 'vim_mini', '--model-kwargs', 'depth=2', 'prune_layers=(1,)', 'keep_rate=0.5',
               '-o', str(out), '--json'])
    assert rc == 0 and out.exists()
    import json
    res = json.loads(capsys.readouterr().out)
    assert res['dynamic_batch'] and res['check']['rel_diff'] <= TOL


# ------------------------------------------------------------------------------------------------ unsupported routes

def test_torchscript_is_refused_with_the_supported_routes():
    model = small('vim_mini')
    with pytest.raises(ExportRouteError, match=r'torch\.jit\.script.*torch\.export\.export.*torch\.onnx\.export'):
        torch.jit.script(model)
    with pytest.raises(ExportRouteError, match=r'TorchScript tracing.*Supported export routes'):
        torch.jit.trace(small('plainmamba_mini'), images(1, 0))
    with pytest.raises(ExportRouteError, match=r'dynamo=False.*dynamo=True'):  # the TorchScript-based exporter
        torch.onnx.export(small('plainmamba_mini'), (images(1, 0),), '/dev/null', dynamo=False)
