"""Record the logits of every prune configuration, for both families, as references for refactors.

    .venv/bin/python tests/refs/make_prune_refs.py      # writes tests/refs/prune_refs.safetensors

Recorded on main at 6f56c6f (before the reducer-layer refactor); tests/test_refactor_refs.py compares the
current code against the file in float64 (<= 1e-12). Only rerun it to extend the cases, never to make a
failing comparison pass.
"""
import os
import sys

import torch
import timm
from safetensors.torch import save_file

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


def build(name, kwargs, prune):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs, **prune).double().eval()


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
    torch.set_num_threads(1)
    out = {k: v.contiguous() for k, v in cases()}
    save_file(out, os.path.join(HERE, 'prune_refs.safetensors'))
    print(f"{len(out)} tensors written", file=sys.stderr)
