"""Deployment: export the package's models (dense or pruned) with a dynamic batch, and check an ONNX file.

Routes (README "Deploy"):

* ``torch.export.export(model, (x,), dynamic_shapes=...)``: :func:`export_program`. The graph holds the
  ``timm_ssm_prune::selective_scan`` op (fast CPU kernel); token selection, gathers and merges are ordinary aten
  ops, so one program serves every batch size.
* ``torch.compile(model)`` / ``torch.compile(model, dynamic=True)``.
* ONNX: ``torch.onnx.export(model, (x,), f, dynamo=True)`` after ``import timm_ssm_prune``, or :func:`export_onnx`
  / ``timm-ssm-prune export``: the scan becomes an ONNX ``Scan`` (``ops/scan_onnx.py``), token selection TopK and
  Gather(Elements). Needs ``pip install 'timm-ssm-prune[export]'`` (onnx, onnxscript, onnxruntime).

TorchScript (``torch.jit.script``, ``torch.jit.trace``, and ``torch.onnx.export(..., dynamo=False)``, which
traces with TorchScript) is not supported: the models raise :class:`ExportRouteError` naming the routes above.

This module imports torch only; onnx / onnxruntime are imported inside the functions that need them.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ['ExportRouteError', 'SUPPORTED_ROUTES', 'unsupported_route', 'example_input', 'batch_dim',
           'export_program', 'export_onnx', 'require_onnx', 'ort_session', 'run_onnx', 'compare_onnx',
           'EXPORT_INSTALL_HINT']

SUPPORTED_ROUTES = (
    "torch.export.export(model, (x,), dynamic_shapes=...) (timm_ssm_prune.export.export_program)",
    "torch.compile(model) (dynamic=True too)",
    "torch.onnx.export(model, (x,), f, dynamo=True) or `timm-ssm-prune export --model NAME -o model.onnx`",
)
EXPORT_INSTALL_HINT = "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'timm-ssm-prune[export]'"


class ExportRouteError(RuntimeError):
    """A model of this package was given to an export route it does not support."""


def unsupported_route(route: str) -> ExportRouteError:
    return ExportRouteError(
        f"{route} is not supported by timm_ssm_prune models (the selective scan is a custom op and the token "
        f"pruning builds per-sample index tensors, which TorchScript cannot compile or trace faithfully). "
        f"Supported export routes: " + "; ".join(SUPPORTED_ROUTES) + ". See the README, section Deploy.")


def example_input(model: nn.Module, batch: int = 2, seed: int = 0) -> Tensor:
    """A random (batch, C, H, W) float32 image batch of the model's input size, on the model's device."""
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.in_chans, *model.img_size, generator=g).to(p.device)


def batch_dim(max_batch: int = 4096):
    """The dynamic batch dimension of the exported programs (1..max_batch)."""
    return torch.export.Dim('batch', min=1, max=max_batch)


def export_program(model: nn.Module, example: Optional[Tensor] = None, dynamic_batch: bool = True,
                   strict: bool = False) -> 'torch.export.ExportedProgram':
    """``torch.export.export`` of ``model`` (put in eval mode) on ``example`` (default: :func:`example_input`, batch
    2), with a dynamic batch dimension unless ``dynamic_batch=False``."""
    model.eval()
    x = example_input(model) if example is None else example
    shapes = ({0: batch_dim()},) if dynamic_batch else None
    return torch.export.export(model, (x,), dynamic_shapes=shapes, strict=strict)


def require_onnx() -> None:
    """Raise ImportError with the install hint when onnx, onnxscript or onnxruntime is missing."""
    import importlib.util
    missing = [m for m in ('onnx', 'onnxscript', 'onnxruntime') if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{EXPORT_INSTALL_HINT} (missing: {', '.join(missing)})")


def export_onnx(model: nn.Module, f: str, example: Optional[Tensor] = None, dynamic_batch: bool = True,
                opset_version: Optional[int] = None, optimize: bool = True, verbose: bool = False):
    """Write ``model`` (eval mode) to the ONNX file ``f`` through ``torch.onnx.export(..., dynamo=True)``, input
    ``images`` (batch dynamic unless ``dynamic_batch=False``) and output ``logits``; returns the ONNXProgram."""
    require_onnx()
    model.eval()
    x = example_input(model) if example is None else example
    kw: Dict[str, Any] = dict(dynamo=True, input_names=['images'], output_names=['logits'], optimize=optimize,
                              verbose=verbose, external_data=False)
    if opset_version is not None:
        kw['opset_version'] = opset_version
    if dynamic_batch:
        kw['dynamic_shapes'] = ({0: batch_dim()},)
    d = os.path.dirname(os.path.abspath(f))
    os.makedirs(d, exist_ok=True)
    with torch.no_grad():
        return torch.onnx.export(model, (x,), f, **kw)


def ort_session(path: str, threads: int = 1, optimization: str = 'all'):
    """An onnxruntime CPU session for the file ``path`` (``threads`` intra-op threads, sequential execution)."""
    require_onnx()
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   'none': ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])


def run_onnx(session, x: Tensor):
    """Run an exported model's session on images ``x``; returns the first output as a numpy array."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: x.detach().cpu().float().numpy()})[0]


def compare_onnx(model: nn.Module, session, xs: Sequence[Tensor]) -> Dict[str, float]:
    """Largest |onnxruntime - PyTorch| over the batches ``xs``, absolute and relative to the logit scale
    (the largest |PyTorch logit|)."""
    model.eval()
    worst_abs, scale = 0.0, 0.0
    for x in xs:
        with torch.no_grad():
            ref = model(x).float().cpu()
        out = torch.from_numpy(run_onnx(session, x))
        if out.shape != ref.shape:
            raise AssertionError(f"onnxruntime output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)}")
        worst_abs = max(worst_abs, (out - ref).abs().max().item())
        scale = max(scale, ref.abs().max().item())
    return dict(max_abs_diff=worst_abs, logit_scale=scale, rel_diff=worst_abs / max(scale, 1e-12))
