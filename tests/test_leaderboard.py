"""benchmarks/leaderboard.py: on a testbed, the selection set is its holdout, normalised as its training evaluated
it."""
import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'benchmarks' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_testbed_selection_is_its_holdout(tmp_path, monkeypatch):
    lb = _load('leaderboard')
    tt = sys.modules.get('train_testbed') or _load('train_testbed')
    monkeypatch.setitem(sys.modules, 'train_testbed', tt)
    asked = {}
    hold_x = torch.tensor([[[0, 255], [51, 102]], [[255, 255], [0, 0]]], dtype=torch.uint8)

    def fake_load(per_class, seed, root):
        asked.update(per_class=per_class, seed=seed, root=root)
        empty = torch.zeros(0, 2, 2, dtype=torch.uint8)
        return tt.Splits(empty, torch.zeros(0), hold_x, torch.tensor([3, 7]), empty, torch.zeros(0))

    monkeypatch.setattr(tt, 'load_animal_mnist', fake_load)
    monkeypatch.setattr(lb, 'RESULTS', tmp_path)
    (tmp_path / 'vim_d12_mini_curve.json').write_text(json.dumps(dict(config=dict(holdout_per_class=40,
                                                                                  holdout_seed=0))))
    cfg = dict(mean=(0.2,), std=(0.5,))
    (x, y), described = lb.selection_split('vim_d12_mini', tmp_path / 'am', cfg)
    assert asked == dict(per_class=40, seed=0, root=str(tmp_path / 'am'))
    assert x.shape == (2, 1, 2, 2) and y.tolist() == [3, 7]
    # train_testbed.evaluate: (uint8 / 255 - mean) / std
    assert torch.allclose(x[0, 0], torch.tensor([[-0.4, 1.6], [0.0, 0.4]]))
    assert described.startswith("the testbed's holdout: 2 training-split images it never trained on (40 per class")
