"""benchmarks/paper_tables.py: the testbeds' stage positions and the training-curve section of RESULTS.md."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def pt():
    spec = importlib.util.spec_from_file_location('paper_tables', ROOT / 'benchmarks' / 'paper_tables.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paper_stages_scale_the_papers_positions(pt):
    # at the paper's own depths the positions are the paper's (ToP: Vim-S 5, 10, 15 of 24; PlainMamba-L3 9, 18, 27)
    assert pt.paper_stages('vim', 24) == (5, 10, 15)
    assert pt.paper_stages('plainmamba', 36) == (9, 18, 27)
    # the 12-block testbeds: 12 * 5/24 = 2.5 and 12 * 15/24 = 7.5 round half to even (Python's round)
    assert pt.paper_stages('vim', 12) == (2, 5, 8)
    assert pt.paper_stages('plainmamba', 12) == (3, 6, 9)


def _curve(epochs, n):
    cfg = dict(base='vim_mini', model_kwargs=dict(depth=12), seed=0, epochs=epochs, batch_size=64, lr=2e-3,
               warmup_epochs=2, min_lr=1e-6, weight_decay=0.05, smoothing=0.1, drop_path=0.1, holdout_per_class=40)
    rows = [dict(epoch=e + 1, lr=1e-3 / (e + 1), train_loss=2.0 - 0.1 * e, holdout_top1=50.0 + 5 * e,
                 val_top1=51.0 + 5 * e, total_hours=0.25 * (e + 1)) for e in range(n)]
    return dict(name='vim_d12_mini', config=cfg, curve=rows)


def test_testbed_curve_section(pt, tmp_path):
    (tmp_path / 'vim_d12_mini_curve.json').write_text(json.dumps(_curve(6, 6)))
    lines = pt.testbed_curve_lines('vim_d12_mini', tmp_path, last=3)
    text = '\n'.join(lines)
    assert lines[0] == '## Testbed vim_d12_mini: training curve'
    # the last three epochs (4, 5, 6): holdout 65, 70, 75; val 66, 71, 76
    assert 'holdout top-1 65.00-75.00' in text
    assert 'val top-1 66.00-76.00; final val top-1 76.00' in text
    assert '400 training images' in text and '1.5 h' in text
    assert sum(1 for ln in lines if ln.startswith('| ') and ln[2].isdigit()) == 6
    assert '| 6 | 1.67e-04 | 1.5000 | 75.00 | 76.00 |' in lines
    assert pt.testbed_curve_lines('vim_mini', tmp_path) == []  # no curve: not a testbed


def test_testbed_curve_of_an_unfinished_training_is_an_error(pt, tmp_path):
    (tmp_path / 'vim_d12_mini_curve.json').write_text(json.dumps(_curve(30, 17)))
    with pytest.raises(ValueError, match='17 epochs in the curve but the recipe has 30'):
        pt.testbed_curve_lines('vim_d12_mini', tmp_path)
