"""One section of the GPU check (run all of them with ``benchmarks/gpu_check.sh``).

    python benchmarks/gpu_check.py --section scan_parity --out DIR [--smoke] [--budget SECONDS]

Sections:
  env           versions, the GPU, which scan backends import
  scan_parity   Triton vs the PyTorch path (and mamba-ssm when it imports): selective_scan forward and every
                gradient (fp32, grouped, bf16, fp16), selective_scan_gathered vs gather + scan + scatter
  scan_bench    scan time forward and forward+backward at B=64, L=197, E=768, N=16 (Triton / PyTorch path /
                mamba-ssm), and the gathered kernel at PlainMamba-L3's size (4 directions, E=896, L=196)
  model_parity  whole models at random weights, scan_backend='triton' vs 'torch': logits and gradients
                (vim_small_patch16_224, plainmamba_l3 and their _pruned variants, batch 2); the 'triton' mixers
                run selective_scan_gathered (no permuted copies), whose calls are counted
  throughput    dense vs pruned img/s (scan_backend='auto') at batch 64 and 256, fp32 and bf16 autocast,
                next to the FLOPs ratio (timm_ssm_prune.flops.count_flops)

Every measurement is written as soon as it exists (DIR/gpu_check_<section>.json and a line appended to
DIR/gpu_check.txt), and a failing measurement records its error and the section goes on, so a section cut
short by its time box still leaves what it had. ``--smoke`` runs tiny sizes on whatever device there is
(on CPU under TRITON_INTERPRET=1, which gpu_check.sh sets): it checks the script, not the speed.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import traceback

import torch

SECTIONS = ('env', 'scan_parity', 'scan_bench', 'model_parity', 'throughput')


class Recorder:
    def __init__(self, out_dir: str, section: str, budget: float):
        os.makedirs(out_dir, exist_ok=True)
        self.json_path = os.path.join(out_dir, f'gpu_check_{section}.json')
        self.txt_path = os.path.join(out_dir, 'gpu_check.txt')
        self.section = section
        self.deadline = time.time() + budget
        self.t0 = time.time()
        self.data = {'section': section, 'results': []}
        self.line(f'== {section} ==')

    def left(self) -> float:
        return self.deadline - time.time()

    def line(self, text: str) -> None:
        with open(self.txt_path, 'a') as fh:
            fh.write(text + '\n')
        print(text, flush=True)

    def add(self, label: str, /, **values) -> None:
        values = {k: (float(f'{v:.4g}') if isinstance(v, float) else v) for k, v in values.items()}
        self.data['results'].append(dict(label=label, **values))
        self._flush()
        self.line(f'{label}: ' + ', '.join(f'{k}={v}' for k, v in values.items()))

    def error(self, name: str, exc: BaseException) -> None:
        msg = f'{type(exc).__name__}: {exc}'.replace('\n', ' ')[:800]
        self.data['results'].append(dict(label=name, error=msg, traceback=traceback.format_exc()[-3000:]))
        self._flush()
        self.line(f'{name}: ERROR {msg}')

    def skip(self, name: str, why: str) -> None:
        self.data['results'].append(dict(label=name, skipped=why))
        self._flush()
        self.line(f'{name}: skipped ({why})')

    def _flush(self) -> None:
        self.data['elapsed_s'] = round(time.time() - self.t0, 2)
        with open(self.json_path, 'w') as fh:
            json.dump(self.data, fh, indent=1)

    def guarded(self, name, fn, min_left: float = 3.0):
        """Run fn() and record its result dict; errors are recorded, not raised; skip when out of time."""
        if self.left() < min_left:
            self.skip(name, f'time box ({self.left():.0f} s left)')
            return None
        try:
            res = fn()
        except Exception as exc:  # noqa: BLE001  (a failing measurement must not stop the section)
            self.error(name, exc)
            return None
        if res is not None:
            self.add(name, **res)
        return res


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device, min_repeats=3, max_repeats=50, max_s=5.0, warmup=2):
    """Median seconds of fn() after warmup (the first call compiles the Triton kernels)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_end = time.time() + max_s
    while len(times) < max_repeats and (len(times) < min_repeats or time.time() < t_end):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], len(times)


def maxdiff(a, b):
    a, b = a.detach().double(), b.detach().double()
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return diff, diff / max(scale, 1e-30)


def scan_inputs(bsz, dim, length, dstate, groups, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    shape = (bsz, dstate, length) if groups is None else (bsz, groups, dstate, length)
    t = dict(u=r(bsz, dim, length).to(dtype), delta=(r(bsz, dim, length) * 0.5).to(dtype),
             A=-torch.exp(r(dim, dstate) * 0.5), B=r(*shape).to(dtype), C=r(*shape).to(dtype), D=r(dim),
             z=r(bsz, dim, length).to(dtype), delta_bias=r(dim) * 0.3)
    if dtype == torch.float64:
        t = {k: v.double() for k, v in t.items()}
    return {k: v.to(device) for k, v in t.items()}


# ------------------------------------------------------------------------------------------------

def section_env(rec, device, smoke):
    import timm
    rec.add('versions', python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
            cuda=torch.version.cuda, smoke=smoke, interpret=os.environ.get('TRITON_INTERPRET', ''))
    try:
        import triton
        rec.add('triton', version=triton.__version__)
    except Exception as exc:  # noqa: BLE001
        rec.error('triton', exc)
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        rec.add('gpu', name=p.name, capability=f'{p.major}.{p.minor}', memory_gib=round(p.total_memory / 2**30, 1),
                sms=p.multi_processor_count)
    else:
        rec.add('gpu', name='none (CPU)')
    from timm_ssm_prune.ops import scan as scan_mod
    from timm_ssm_prune.ops import triton_scan
    rec.add('backends', mamba_ssm=scan_mod._mamba_selective_scan_fn() is not None,
            triton=triton_scan.triton_available(device))


def section_scan_parity(rec, device, smoke):
    from timm_ssm_prune.ops import selective_scan
    from timm_ssm_prune.ops import scan as scan_mod
    from timm_ssm_prune.ops.triton_scan import selective_scan_gathered

    size = dict(bsz=2, dim=8, length=12, dstate=4) if smoke else dict(bsz=4, dim=128, length=197, dstate=16)
    backends = ['triton'] + (['cuda'] if device.type == 'cuda' and scan_mod._mamba_selective_scan_fn() else [])
    # fp32 tolerances of tests/test_scan.py::test_cuda_kernel_parity; low precision: the output rounding
    cases = [('fp32', torch.float32, None, 1e-3, 2e-3), ('fp32_groups2', torch.float32, 2, 1e-3, 2e-3),
             ('bf16', torch.bfloat16, None, 3e-2, 5e-2), ('fp16', torch.float16, None, 5e-3, 1e-2)]
    for backend in backends:
        for label, dtype, groups, tol_out, tol_grad in cases:
            def run(label=label, dtype=dtype, groups=groups, tol_out=tol_out, tol_grad=tol_grad, backend=backend):
                t = scan_inputs(**size, groups=groups, dtype=dtype, device=device)
                a = {k: v.clone().requires_grad_() for k, v in t.items()}
                b = {k: v.clone().requires_grad_() for k, v in t.items()}
                ya = selective_scan(**a, delta_softplus=True, backend=backend)
                yb = selective_scan(**b, delta_softplus=True, backend='torch')
                out_abs, out_rel = maxdiff(ya, yb)
                gy = torch.randn_like(ya)
                ga = torch.autograd.grad(ya, list(a.values()), gy)
                gb = torch.autograd.grad(yb, list(b.values()), gy)
                grad_rel = {k: maxdiff(x, y)[1] for k, x, y in zip(a, ga, gb)}
                worst = max(grad_rel.values())
                return dict(out_max_abs=out_abs, out_max_rel=out_rel, grad_worst_rel=worst,
                            grad_worst=max(grad_rel, key=grad_rel.get),
                            ok=bool(out_rel <= tol_out and worst <= tol_grad * 5))
            rec.guarded(f'scan {backend} vs torch {label}', run)

    # the gathered kernel vs gather + scan (PyTorch path) + scatter, PlainMamba Q2 and Vim layouts
    gs = dict(bsz=2, dim=8, length=12, dstate=4) if smoke else dict(bsz=4, dim=128, length=196, dstate=16)

    def gathered(layout):
        S = 4 if layout == 'plainmamba_q2' else 2
        bsz, dim, length, dstate = gs['bsz'], gs['dim'], gs['length'], gs['dstate']
        g = torch.Generator().manual_seed(1)
        r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
        if layout == 'plainmamba_q2':
            order = torch.stack([torch.stack([torch.randperm(length, generator=g) for _ in range(bsz)])
                                 for _ in range(S)]).to(device)
            t = dict(u=r(bsz, dim, length), delta=r(bsz, dim, length) * 0.5, A=-torch.exp(r(dim, dstate) * 0.5),
                     B=r(bsz, dstate, length), C=r(bsz, dstate, length), D=r(dim), z=r(bsz, dim, length),
                     delta_bias=r(dim) * 0.3, B_step=r(S, bsz, dstate, length) * 0.1)
            kw = dict(step_order=('delta', 'B', 'C'))
        else:
            ar = torch.arange(length)
            order = torch.stack([ar, ar.flip(0)]).view(2, 1, length).expand(2, bsz, length).to(device)
            t = dict(u=r(S, bsz, dim, length), delta=r(S, bsz, dim, length) * 0.5,
                     A=-torch.exp(r(S, dim, dstate) * 0.5), B=r(S, bsz, 1, dstate, length),
                     C=r(S, bsz, 1, dstate, length), D=r(S, dim), z=r(bsz, dim, length), delta_bias=r(S, dim) * 0.3)
            kw = {}
        a = {k: v.clone().requires_grad_() for k, v in t.items()}
        b = {k: v.clone().requires_grad_() for k, v in t.items()}
        ya = selective_scan_gathered(order=order, **a, delta_softplus=True, backend='triton', **kw)
        yb = selective_scan_gathered(order=order, **b, delta_softplus=True, backend='torch', **kw)
        out_abs, out_rel = maxdiff(ya, yb)
        gy = torch.randn_like(ya)
        ga = torch.autograd.grad(ya, list(a.values()), gy)
        gb = torch.autograd.grad(yb, list(b.values()), gy)
        grad_rel = {k: maxdiff(x, y)[1] for k, x, y in zip(a, ga, gb)}
        worst = max(grad_rel.values())
        return dict(out_max_abs=out_abs, out_max_rel=out_rel, grad_worst_rel=worst,
                    grad_worst=max(grad_rel, key=grad_rel.get), ok=bool(out_rel <= 1e-4 and worst <= 1e-3))
    for layout in ('plainmamba_q2', 'vim'):
        rec.guarded(f'gathered triton vs gather+scan+scatter {layout}', lambda layout=layout: gathered(layout))


def section_scan_bench(rec, device, smoke):
    from timm_ssm_prune.ops import selective_scan
    from timm_ssm_prune.ops import scan as scan_mod
    from timm_ssm_prune.ops.triton_scan import selective_scan_gathered

    size = dict(bsz=2, dim=16, length=16, dstate=4) if smoke else dict(bsz=64, dim=768, length=197, dstate=16)
    max_s = 0.5 if smoke else 2.0
    backends = ['triton', 'torch'] + (['cuda'] if device.type == 'cuda' and scan_mod._mamba_selective_scan_fn()
                                      else [])
    rec.line(f'selective_scan B={size["bsz"]} E={size["dim"]} L={size["length"]} N={size["dstate"]}, '
             'D, z, delta_bias, softplus')
    for dtype in (torch.float32, torch.bfloat16):
        t = scan_inputs(**size, groups=None, dtype=dtype, device=device)
        res = {}
        for backend in backends:
            def fwd(backend=backend):
                with torch.no_grad():
                    selective_scan(**t, delta_softplus=True, backend=backend)
            leaves = {k: v.clone().requires_grad_() for k, v in t.items()}

            def fwd_bwd(backend=backend, leaves=leaves):
                y = selective_scan(**leaves, delta_softplus=True, backend=backend)
                y.backward(torch.ones_like(y))

            def measure(backend=backend, fwd=fwd, fwd_bwd=fwd_bwd):
                tf, nf = timed(fwd, device, max_s=max_s)
                tb, nb = timed(fwd_bwd, device, max_s=max_s)
                res[backend] = (tf, tb)
                return dict(fwd_ms=tf * 1e3, fwd_bwd_ms=tb * 1e3, repeats=(nf, nb))
            rec.guarded(f'scan {str(dtype)[6:]} {backend}', measure, min_left=10.0)
        if 'triton' in res:
            for other in res:
                if other != 'triton':
                    rec.add(f'scan {str(dtype)[6:]} speedup triton over {other}',
                            fwd=res[other][0] / res['triton'][0], fwd_bwd=res[other][1] / res['triton'][1])

    # channels per program (the heuristic picks one; this shows whether another is faster on this GPU)
    from timm_ssm_prune.ops.triton_scan import set_triton_tuning
    t = scan_inputs(**size, groups=None, dtype=torch.float32, device=device)
    leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
    for be in ((4, 8) if smoke else (16, 32, 64, 128)):
        def sweep(be=be):
            set_triton_tuning(block_e=be)
            try:
                def fwd_bwd():
                    y = selective_scan(**leaves, delta_softplus=True, backend='triton')
                    y.backward(torch.ones_like(y))
                tb, nb = timed(fwd_bwd, device, max_s=max_s / 2)
            finally:
                set_triton_tuning()
            return dict(fwd_bwd_ms=tb * 1e3, repeats=nb)
        rec.guarded(f'scan float32 triton block_e={be}', sweep, min_left=25.0)

    # the gathered kernel at PlainMamba-L3's mixer size vs materialising the permuted copies
    gsz = dict(bsz=2, dim=16, length=16, dstate=4) if smoke else dict(bsz=64, dim=896, length=196, dstate=16)
    S = 4
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    bsz, dim, length, dstate = gsz['bsz'], gsz['dim'], gsz['length'], gsz['dstate']
    order = torch.stack([torch.stack([torch.randperm(length, generator=g) for _ in range(bsz)])
                         for _ in range(S)]).to(device)
    t = dict(u=r(bsz, dim, length), delta=r(bsz, dim, length) * 0.5, A=-torch.exp(r(dim, dstate) * 0.5),
             B=r(bsz, dstate, length), C=r(bsz, dstate, length), D=r(dim), z=r(bsz, dim, length),
             delta_bias=r(dim) * 0.3, B_step=r(S, bsz, dstate, length) * 0.1)
    rec.line(f'selective_scan_gathered (PlainMamba Q2) S={S} B={bsz} E={dim} L={length} N={dstate}')
    variants = [('fused triton', 'triton', {}), ('gather + triton scan + scatter', 'torch', dict(inner='triton')),
                ('gather + torch scan + scatter', 'torch', dict(inner='torch'))]
    from timm_ssm_prune.ops.triton_scan import selective_scan_gathered_ref
    for label, backend, extra in variants:
        def call(leaves, backend=backend, extra=extra):
            if backend == 'triton':
                return selective_scan_gathered(order=order, **leaves, delta_softplus=True, backend='triton',
                                               step_order=('delta', 'B', 'C'))
            return selective_scan_gathered_ref(order=order, **leaves, delta_softplus=True,
                                               step_order=('delta', 'B', 'C'), backend=extra['inner'])
        leaves = {k: v.clone().requires_grad_() for k, v in t.items()}

        def measure(call=call, leaves=leaves):
            def fwd():
                with torch.no_grad():
                    call(t)

            def fwd_bwd():
                y = call(leaves)
                y.backward(torch.ones_like(y))
            tf, nf = timed(fwd, device, max_s=max_s)
            tb, nb = timed(fwd_bwd, device, max_s=max_s)
            return dict(fwd_ms=tf * 1e3, fwd_bwd_ms=tb * 1e3, repeats=(nf, nb))
        rec.guarded(f'gathered {label}', measure, min_left=10.0)


def _model_names(smoke):
    if smoke:  # tiny stand-ins with the same code paths; *_mini have no _pruned names, so kwargs
        prune = dict(prune_layers=(1,), keep_rate=0.6)
        return [('vim_mini', 'vim_mini', dict(depth=2), prune), ('plainmamba_mini', 'plainmamba_mini',
                                                                    dict(depth=2), prune)]
    return [('vim_small_patch16_224', 'vim_small_patch16_224_pruned', {}, {}),
            ('plainmamba_l3', 'plainmamba_l3_pruned', {}, {})]


def _create(name, kwargs, device, backend, seed=0):
    import timm
    import timm_ssm_prune  # noqa: F401
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, scan_backend=backend, **kwargs).to(device).eval()


class _count_gathered:
    """Counts the models' calls of selective_scan_gathered (the mixers' Triton path) while active."""

    def __enter__(self):
        from timm_ssm_prune.models import plainmamba, vim
        self.calls, self.mods = [0], (plainmamba, vim)
        self.orig = [m.selective_scan_gathered for m in self.mods]

        def spy(*args, _fn=self.orig[0], **kwargs):
            self.calls[0] += 1
            return _fn(*args, **kwargs)
        for m in self.mods:
            m.selective_scan_gathered = spy
        return self.calls

    def __exit__(self, *exc):
        for m, fn in zip(self.mods, self.orig):
            m.selective_scan_gathered = fn
        return False


def section_model_parity(rec, device, smoke):
    bsz = 2
    for dense, pruned, base_kw, prune_kw in _model_names(smoke):
        for which, name, kw in (('dense', dense, base_kw), ('pruned', pruned, {**base_kw, **prune_kw})):
            label = f'{name} ({which})'

            def run(name=name, kw=kw):
                m_t = _create(name, kw, device, 'torch')
                m_k = copy.deepcopy(m_t)  # same weights; the mixers' scan_backend switched to 'triton'
                switched = 0
                for mod in m_k.modules():
                    if hasattr(mod, 'scan_backend'):
                        mod.scan_backend, switched = 'triton', switched + 1
                if not switched:  # the mixers keep the backend elsewhere: build it with the kwarg
                    m_k = _create(name, kw, device, 'triton')
                    m_k.load_state_dict(m_t.state_dict())
                cfg = m_t.pretrained_cfg.get('input_size', (3, 224, 224))
                x = torch.randn(bsz, *cfg, generator=torch.Generator().manual_seed(0)).to(device)
                out_t = m_t(x)
                with _count_gathered() as gathered:
                    out_k = m_k(x)
                out_abs, out_rel = maxdiff(out_k, out_t)
                out_t.float().square().mean().backward()
                out_k.float().square().mean().backward()
                grad_rel = {n: maxdiff(pk.grad, pt.grad)[1]
                            for (n, pt), (_, pk) in zip(m_t.named_parameters(), m_k.named_parameters())
                            if pt.grad is not None and pk.grad is not None}
                worst = max(grad_rel, key=grad_rel.get)
                return dict(logits_max_abs=out_abs, logits_max_rel=out_rel, grad_worst_rel=grad_rel[worst],
                            grad_worst=worst, n_grads=len(grad_rel), gathered_calls=gathered[0],
                            ok=bool(out_rel < 1e-3 and gathered[0] > 0))
            rec.guarded(f'model {label} triton vs torch', run, min_left=10.0)


def section_throughput(rec, device, smoke):
    from timm_ssm_prune.flops import count_flops
    from timm_ssm_prune.ops import scan as scan_mod
    from timm_ssm_prune.ops import triton_scan
    batches = (2,) if smoke else (64, 256)
    max_s = 0.5 if smoke else 3.0
    auto = ('cuda (mamba-ssm)' if device.type == 'cuda' and scan_mod._mamba_selective_scan_fn() else
            'triton' if device.type == 'cuda' and triton_scan.triton_available(device) else 'torch')
    rec.line(f"scan_backend='auto' resolves to: {auto}; img/s = batch / median forward time, torch.inference_mode")
    pairs = {}
    for dense, pruned, base_kw, prune_kw in _model_names(smoke):
        try:
            pair = {'dense': _create(dense, base_kw, device, 'auto'),
                    'pruned': _create(pruned, {**base_kw, **prune_kw}, device, 'auto')}
            fl = {k: count_flops(m) for k, m in pair.items()}
            ratio = fl['dense'] / fl['pruned']
            rec.add(f'{dense} FLOPs', dense_gflops=fl['dense'], pruned_gflops=fl['pruned'], flops_ratio=ratio)
            pairs[(dense, pruned)] = (pair, ratio)
        except Exception as exc:  # noqa: BLE001
            rec.error(f'{dense} setup', exc)
    # the goal is measured at the largest batch: those first, both families, then the rest
    configs = [(bsz, amp) for bsz in sorted(batches, reverse=True) for amp in (False, True)]
    for bsz, amp in configs:
        for (dense, pruned), (pair, ratio) in pairs.items():
            cfg = pair['dense'].pretrained_cfg.get('input_size', (3, 224, 224))

            def run(amp=amp, bsz=bsz, pair=pair, ratio=ratio, cfg=cfg):
                x = torch.randn(bsz, *cfg, device=device)
                ips = {}
                for k, m in pair.items():
                    def fwd(m=m):
                        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                            m(x)
                    t, n = timed(fwd, device, min_repeats=2, max_repeats=20, max_s=max_s, warmup=1)
                    ips[k] = bsz / t
                speedup = ips['pruned'] / ips['dense']
                return dict(dense_img_s=ips['dense'], pruned_img_s=ips['pruned'], speedup=speedup,
                            flops_ratio=ratio, speedup_over_flops_ratio=speedup / ratio)
            rec.guarded(f'{dense} vs {pruned} batch {bsz} {"bf16 autocast" if amp else "fp32"}', run, min_left=15.0)
            if device.type == 'cuda':
                torch.cuda.empty_cache()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--section', choices=SECTIONS, required=True)
    p.add_argument('--out', default=os.environ.get('OUT') or 'gpu_check_out')
    p.add_argument('--smoke', action='store_true', help='tiny sizes, any device (CPU: set TRITON_INTERPRET=1)')
    p.add_argument('--budget', type=float, default=60.0, help='seconds for this section (soft time box)')
    args = p.parse_args(argv)
    rec = Recorder(args.out, args.section, args.budget)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type != 'cuda' and not args.smoke:
        rec.line('no CUDA device: nothing measured (use --smoke to exercise the script on CPU)')
        rec.add('device', name='cpu', measured=False)
        return 0
    if device.type == 'cpu':
        torch.set_num_threads(1)
    try:
        globals()[f'section_{args.section}'](rec, device, args.smoke)
    except Exception as exc:  # noqa: BLE001
        rec.error(f'{args.section} (section)', exc)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
