"""Measured speed of dense vs pruned models: throughput, latency and peak memory, in one run.

Dense and pruned models are timed alternately (d, p, d, p, ...) so that slow drifts of a shared machine hit
both alike; the median of the repeats is reported. Peak memory of one forward pass: on CUDA the growth of
``torch.cuda.max_memory_allocated``; on CPU (where freed memory stays resident, so an in-process reading
after warm-up says nothing) a fresh Python process builds the same model, runs one forward pass and reports
how far its peak resident set size (Linux VmHWM) rose above the resident size before the pass.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .flops import count_flops

__all__ = ['BenchRow', 'benchmark_pair', 'time_model', 'peak_memory_mb', 'peak_memory_cpu_mb', 'format_rows']


@dataclass
class BenchRow:
    model: str
    variant: str  # 'dense' or a description of the pruning
    batch_size: int
    img_size: int
    gflops: float  # per image
    tokens: List[int]
    median_ms: float
    img_per_s: float
    peak_mem_mb: Optional[float]
    device: str
    extra: Dict[str, float] = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """CUDA: extra memory (MB) allocated at the peak of ``fn()`` over what was allocated before it."""
    if device.type != 'cuda':
        raise ValueError("in-process peak memory is only meaningful on CUDA; use peak_memory_cpu_mb on CPU")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


_MEM_SCRIPT = """
import json, sys, torch, timm, timm_ssm_prune
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec['threads'])
model = timm.create_model(spec['model'], **spec['kwargs']).eval()
x = torch.randn(spec['batch'], model.in_chans, spec['img'], spec['img'])
def field(name):
    for line in open('/proc/self/status'):
        if line.startswith(name + ':'):
            return int(line.split()[1])
with torch.inference_mode():
    base = field('VmRSS')
    model(x)
    peak = field('VmHWM')
print(json.dumps({'peak_kb': peak, 'base_kb': base}))
"""


def peak_memory_cpu_mb(model_name: str, kwargs: Dict[str, Any], batch_size: int, img_size: int,
                       threads: Optional[int] = None) -> Optional[float]:
    """Peak RSS growth (MB) of one CPU forward pass of ``create_model(model_name, **kwargs)``, in a fresh process."""
    spec = dict(model=model_name, kwargs=kwargs, batch=batch_size, img=img_size,
                threads=threads or torch.get_num_threads())
    try:
        out = subprocess.run([sys.executable, '-c', _MEM_SCRIPT, json.dumps(spec)], capture_output=True,
                             text=True, check=True, timeout=1800)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None
    return max(0, res['peak_kb'] - res['base_kb']) / 1024


def time_model(models: Dict[str, nn.Module], x: torch.Tensor, repeats: int = 5, warmup: int = 2,
               amp_dtype: Optional[torch.dtype] = None) -> Dict[str, List[float]]:
    """Seconds per forward of each model on ``x``, measured alternately, after ``warmup`` untimed runs each."""
    device = x.device
    times = {k: [] for k in models}

    def run(m):
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return m(x)

    for m in models.values():
        for _ in range(warmup):
            run(m)
    for _ in range(repeats):
        for k, m in models.items():
            _sync(device)
            t0 = time.perf_counter()
            run(m)
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def benchmark_pair(name: str, models: Dict[str, nn.Module], batch_size: int, img_size: int,
                   repeats: int = 5, warmup: int = 2, device: str = 'cpu', amp_dtype: Optional[torch.dtype] = None,
                   memory_specs: Optional[Dict[str, Tuple[str, Dict[str, Any]]]] = None) -> List[BenchRow]:
    """Time ``models`` ({'dense': ..., 'pruned': ..., other variants}) at one batch size; one row per model.

    memory_specs: {key: (registered model name, kwargs)} rebuilding each model in a fresh process for the CPU
    peak-memory reading (on CUDA memory is read in-process and this is not needed)."""
    dev = torch.device(device)
    for m in models.values():
        m.eval().to(dev)
    in_chans = getattr(models['dense'], 'in_chans', 3)
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=dev)
    times = time_model(models, x, repeats, warmup, amp_dtype)
    rows = []
    for key, m in models.items():
        med = statistics.median(times[key])
        if dev.type == 'cuda':
            with torch.inference_mode():
                mem = peak_memory_mb(lambda: m(x), dev)
        elif memory_specs and key in memory_specs:
            mem = peak_memory_cpu_mb(*memory_specs[key], batch_size=batch_size, img_size=img_size)
        else:
            mem = None
        variant = 'dense' if key == 'dense' else key
        tokens = m.token_counts() if hasattr(m, 'token_counts') else []
        rows.append(BenchRow(name, variant, batch_size, img_size, count_flops(m, (in_chans, img_size, img_size)),
                             tokens, med * 1e3, batch_size / med, mem, str(dev),
                             {'min_ms': min(times[key]) * 1e3, 'max_ms': max(times[key]) * 1e3}))
    return rows


def format_rows(rows: Sequence[BenchRow]) -> str:
    """A text table with speedup and FLOPs ratio against the dense row of the same model and batch size."""
    dense = {(r.model, r.batch_size): r for r in rows if r.variant == 'dense'}
    head = (f"{'model':28s} {'variant':12s} {'bs':>4s} {'GFLOPs':>7s} {'ms/batch':>9s} {'img/s':>8s} "
            f"{'speedup':>8s} {'FLOPs x':>8s} {'ratio':>6s} {'peak MB':>8s}")
    lines = [head, '-' * len(head)]
    for r in rows:
        d = dense.get((r.model, r.batch_size))
        speed = d.median_ms / r.median_ms if d else float('nan')
        fl = d.gflops / r.gflops if d else float('nan')
        mem = f"{r.peak_mem_mb:8.0f}" if r.peak_mem_mb is not None else f"{'n/a':>8s}"
        lines.append(f"{r.model:28s} {r.variant[:12]:12s} {r.batch_size:4d} {r.gflops:7.3f} {r.median_ms:9.1f} "
                     f"{r.img_per_s:8.2f} {speed:8.3f} {fl:8.3f} {speed / fl:6.2f} {mem}")
    return '\n'.join(lines)
