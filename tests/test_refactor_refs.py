"""The logits of every prune configuration, both families, shipped and random weights, against references
recorded before the reducer-layer refactor (tests/refs/make_prune_refs.py), in float64."""
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'refs'))
import make_prune_refs  # noqa: E402

REFS = load_file(os.path.join(os.path.dirname(__file__), 'refs', 'prune_refs.safetensors'))


def test_every_recorded_output_is_reproduced():
    seen = set()
    worst = {}
    for key, value in make_prune_refs.cases():
        assert key in REFS, f"no reference for {key}"
        ref = REFS[key]
        assert value.shape == ref.shape, f"{key}: shape {tuple(value.shape)} != {tuple(ref.shape)}"
        diff = (value - ref).abs().max().item()
        worst[key] = diff
        seen.add(key)
    assert seen == set(REFS), f"references not produced: {sorted(set(REFS) - seen)[:5]}"
    bad = {k: v for k, v in worst.items() if v > 1e-12}
    assert not bad, f"{len(bad)} outputs moved, e.g. {sorted(bad.items(), key=lambda kv: -kv[1])[:5]}"


def test_the_references_tell_the_configurations_apart():
    # a guard that the comparison above can fail: pruning must change the logits, and the modes must differ
    for model in ('pm_mini', 'vim_mini', 'pm_l1', 'vim_t'):
        dense = REFS[f'{model}.dense.logits']
        for a in ('aligned', 'naive', 'decay'):
            assert (REFS[f'{model}.{a}.clip.logits'] - dense).abs().max() > 1e-6
        assert (REFS[f'{model}.aligned.clip.logits'] - REFS[f'{model}.naive.clip.logits']).abs().max() > 1e-6
        assert torch.allclose(REFS[f'{model}.aligned.keep1.logits'], dense, rtol=0, atol=1e-12)
