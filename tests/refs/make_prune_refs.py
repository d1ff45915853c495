"""Record the logits of every prune configuration, for both families, as references for refactors.

    .venv/bin/python tests/refs/make_prune_refs.py      # writes tests/refs/prune_refs.safetensors

Recorded on main at 6f56c6f (before the reducer-layer refactor); tests/test_refactor_refs.py compares the
current code against the file in float64 (<= 1e-12). Only rerun it to extend the cases, never to make a
failing comparison pass.

The models with random weights load them from random_weights.safetensors: a seeded float32 initialisation is not
the same bit for bit on every CPU (the vectorised float32 maths of the init differs in the last place between
machines), which moved their float64 outputs by ~1e-8 on another machine. That file was written on 2026-12-02
(``--record-random-weights``: the seeded init of that machine) and the three random-weight models' references were
re-recorded from it with the code of 9a4f0d0, which had reproduced the pre-refactor references at 1e-12 on the
machine that recorded them (``--only pm_l1 pm_l3 vim_t``); the minis' references (shipped weights) are the
pre-refactor originals.
"""
import os
import sys

import torch
import timm
from safetensors.torch import load_file, save_file

import timm_ssm_prune  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))

# (key, model name, create kwargs, input shape); the TINY models get seeded random weights.
MODELS = [
    ('pm_mini', 'plainmamba_mini', dict(pretrained=True), (3, 1, 28, 28)),
    ('vim_mini', 'vim_mini', dict(pretrained=True), (3, 1, 28, 28)),
    ('pm_l1', 'plainmamba_l1', dict(img_size=64, embed_dim=32, depth=6), (3, 3, 64, 64)),
    ('pm_l3', 'plainmamba_l3', dict(img_size=64, embed_dim=32, depth=6), (3, 3, 64, 64)),
    ('vim_t', 'vim_tiny_patch16_224', dict(img_size=64, embed_dim=32, depth=6), (3, 3, 64, 64)),
]
IMPORTANCE = ('clip', 'l1', 'l2', 'sum', 'random')
ALIGNMENT = ('aligned', 'naive', 'decay')


def configs():
    yield 'dense', {}
    for a in ALIGNMENT:
        for imp in IMPORTANCE:
            yield f'{a}.{imp}', dict(prune_layers=(2, 4), keep_rate=0.6, alignment=a, importance=imp)
        yield f'{a}.rates', dict(prune_layers=(1, 3, 5), keep_rate=(0.7, 0.5, 0.9), alignment=a)
        yield f'{a}.keep1', dict(prune_layers=(2,), keep_rate=1.0, alignment=a)


RANDOM_WEIGHTS = os.path.join(HERE, 'random_weights.safetensors')


def seeded(name, kwargs, prune=None):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs, **(prune or {}))


def build(name, kwargs, prune):
    model = seeded(name, kwargs, prune)
    if not kwargs.get('pretrained'):  # the recorded random weights (see the module docstring)
        key = next(k for k, n, kw, _ in MODELS if n == name and kw == kwargs)
        weights = load_file(RANDOM_WEIGHTS)
        model.load_state_dict({k[len(key) + 1:]: v for k, v in weights.items() if k.startswith(key + '.')})
    return model.double().eval()


def cases():
    """Yields (key, tensor) for every recorded output."""
    for key, name, kwargs, shape in MODELS:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        for ckey, prune in configs():
            model = build(name, kwargs, prune)
            torch.manual_seed(123)  # importance='random' draws from the global generator
            with torch.no_grad():
                yield f'{key}.{ckey}.logits', model(x)
            if ckey in ('dense', 'aligned.clip', 'naive.clip', 'decay.clip'):  # dense maps: large, 4 configs
                torch.manual_seed(123)
                with torch.no_grad():
                    final, feats = model.forward_intermediates(x, indices=[2, 4], norm=True)
                yield f'{key}.{ckey}.final', final
                for i, f in zip([2, 4], feats):
                    yield f'{key}.{ckey}.feat{i}', f


if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument('--record-random-weights', action='store_true',
                    help='write random_weights.safetensors from this machine\'s seeded init (and exit)')
    ap.add_argument('--only', nargs='+', default=None, help='re-record these model keys only, keep the rest')
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.record_random_weights:
        save_file({f'{key}.{k}': v.contiguous() for key, name, kw, _ in MODELS if not kw.get('pretrained')
                   for k, v in seeded(name, kw).state_dict().items()}, RANDOM_WEIGHTS)
        sys.exit(0)
    path = os.path.join(HERE, 'prune_refs.safetensors')
    out = load_file(path) if args.only else {}
    for k, v in cases():
        if args.only is None or k.split('.')[0] in args.only:
            out[k] = v.contiguous()
    save_file(out, path)
    print(f"{len(out)} tensors written", file=sys.stderr)
