"""FLOPs as the vision-SSM papers count them: multiply-accumulates of linear/conv layers plus the scan.

``count_flops(model, input_size)`` runs one forward pass under ``torch.utils.flop_counter.FlopCounterMode``
on the meta device (shapes only: no weights are copied and nothing is computed), so it sees exactly the
work the model does: a pruned model's later blocks count their shorter sequences. FlopCounterMode counts
2 FLOPs per multiply-accumulate; the result here is converted back to multiply-accumulates, the unit the
papers call "FLOPs", and returned in G (1e9).

Conventions for the selective scan (one call = one scan direction over (B, E, L) with state size N):

* ``'mamba'``: 9·B·E·L·N + B·E·L per call (state-spaces/mamba#110; PlainMamba's
  ``tools/analysis_tools/get_flops.py``), every linear and convolution counted. This is all the work
  the model does.
* ``'localmamba'``: the convention behind the published Vim figures (1.5 / 5.1 / 18.9 G for
  tiny/small/base; LocalMamba ``VisionMamba.flops``): 5·B·E·L·N + 2·B·E·L per scan direction, and the
  conv1d / x_proj / dt_proj of Vim's backward branch are not counted (modules the model lists in
  ``flops_skip['localmamba']``).

A model picks its default with ``default_flops_convention``; PlainMamba uses 'mamba', Vim 'localmamba'.
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .ops import scan as _scan
from .pruning.reducer import record_token_work

__all__ = ['count_flops', 'flops_breakdown', 'SCAN_CONVENTIONS']

SCAN_CONVENTIONS: Dict[str, Callable[[int, int, int, int], int]] = {
    'mamba': lambda b, e, l, n: 9 * b * e * l * n + b * e * l,
    'localmamba': lambda b, e, l, n: 5 * b * e * l * n + 2 * b * e * l,
}


def _resolve_convention(model: nn.Module, convention: Optional[str]) -> str:
    convention = convention or getattr(model, 'default_flops_convention', 'mamba')
    if convention not in SCAN_CONVENTIONS:
        raise ValueError(f"unknown FLOPs convention {convention!r}; choose from {sorted(SCAN_CONVENTIONS)}")
    return convention


@contextmanager
def _meta_call(model: nn.Module):
    """Yield a function running ``model`` with every parameter and buffer replaced by a meta tensor."""
    tensors = {k: v for k, v in model.named_parameters(remove_duplicate=False)}
    tensors.update({k: v for k, v in model.named_buffers(remove_duplicate=False)})
    meta = {k: torch.empty_like(v, device='meta') for k, v in tensors.items()}
    was_training = model.training
    model.eval()
    try:
        yield lambda x: functional_call(model, meta, (x,), tie_weights=False, strict=False)
    finally:
        model.train(was_training)


def _default_input_size(model: nn.Module) -> Tuple[int, int, int]:
    if hasattr(model, 'in_chans') and hasattr(model, 'img_size'):
        return (model.in_chans, *model.img_size)
    return (3, 224, 224)


def _flop_table(model: nn.Module, input_size: Optional[Sequence[int]], batch_size: int, dtype: torch.dtype):
    input_size = _default_input_size(model) if input_size is None else tuple(input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")
    x = torch.zeros((batch_size, *input_size), device='meta', dtype=dtype)
    scan_calls: List[Tuple[int, int, int, int]] = []
    work: List[Tuple[str, int]] = []
    with _meta_call(model) as run, _scan.record_scan_calls(scan_calls), record_token_work(work), \
            torch.no_grad(), FlopCounterMode(display=False) as counter:  # meta tensors: the PyTorch ops' formulas
        run(x)
    return counter, scan_calls, work


def count_flops(model: nn.Module, input_size: Optional[Sequence[int]] = None, convention: Optional[str] = None,
                batch_size: int = 1, dtype: torch.dtype = torch.float32) -> float:
    """GFLOPs (multiply-accumulates / 1e9) of one forward pass, divided by ``batch_size``.

    Args:
        model: any module; Mamba models of this package add their selective scans.
        input_size: (C, H, W) of one image; default: the model's own (in_chans, *img_size), else (3, 224, 224).
        convention: 'mamba' or 'localmamba' (see the module docstring); default: the model's own.
    """
    return flops_breakdown(model, input_size, convention, batch_size, dtype)['total']


def flops_breakdown(model: nn.Module, input_size: Optional[Sequence[int]] = None, convention: Optional[str] = None,
                    batch_size: int = 1, dtype: torch.dtype = torch.float32) -> Dict[str, float]:
    """Like ``count_flops`` but also returns the parts: 'linear_conv', 'scan', 'merge', 'score', 'skipped' (all
    in G).

    'merge' is the weighted averaging of token merging (one multiply-add per channel of every token averaged, per
    merged stream); merging's similarity matmul is counted with the other matmuls in 'linear_conv'. 'score' is
    Vim's class-attention importance (``importance='cls'``): one multiply-add per token, channel and state of one
    scan direction at each scoring block (each token is reached by one direction only)."""
    convention = _resolve_convention(model, convention)
    counter, scan_calls, work = _flop_table(model, input_size, batch_size, dtype)
    scan_op = torch.ops.timm_ssm_prune.selective_scan.default.overloadpacket
    counts = counter.get_flop_counts()
    glob = counts.get('Global', {})
    total = sum(glob.values())
    scan_flops_2x = glob.get(scan_op, 0)
    linear_conv = (total - scan_flops_2x) / 2
    skipped = 0.0
    patterns: Iterable[str] = getattr(model, 'flops_skip', {}).get(convention, ())
    if patterns:
        root = type(model).__name__ + '.'
        for name, ops in counts.items():
            if name.startswith(root) and any(fnmatch.fnmatch(name[len(root):], p) for p in patterns):
                skipped += sum(c for op, c in ops.items() if op != scan_op) / 2
    scan = float(sum(SCAN_CONVENTIONS[convention](*call) for call in scan_calls))
    result = {
        'linear_conv': (linear_conv - skipped) / batch_size / 1e9,
        'scan': scan / batch_size / 1e9,
        'merge': float(sum(m for kind, m in work if kind == 'merge')) / batch_size / 1e9,
        'score': float(sum(m for kind, m in work if kind == 'score')) / batch_size / 1e9,
        'skipped': skipped / batch_size / 1e9,
        'convention': convention,
    }
    result['total'] = result['linear_conv'] + result['scan'] + result['merge'] + result['score']
    return result
