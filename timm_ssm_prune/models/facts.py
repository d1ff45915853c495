"""The facts of every model this package registers, in one table.

Read by the model files (pretrained cfgs: weight sources and notes; the default schedules of the ``*_pruned``
names), by ``hub.py`` (config.json and model cards) and by the README's model table, which
``hub.model_table_markdown()`` renders from it (``tests/test_facts.py`` fails when the README drifts).

Published numbers carry their source. ``top1`` of an upstream model is the ImageNet-1k top-1 its authors report
for the released checkpoint; ``top1`` of a model trained here is measured on the Animal-MNIST validation split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

__all__ = ['ModelFacts', 'FACTS', 'PUBLISHED_TOP', 'TRAINING_FREE', 'pruned_defaults']

PM_SOURCE = 'PlainMamba README (github.com/ChenhongyiYang/PlainMamba), ImageNet-1k val'
VIM_SOURCE = 'Vim README (github.com/hustvl/Vim), ImageNet-1k val'
MINI_SOURCE = 'measured here: Animal-MNIST validation split (2,000 images), benchmarks/RESULTS.md'
MINI_TRAINED = 'on the 8,000-image Animal-MNIST train split for 6 epochs (`benchmarks/train_animal_mnist.sh`)'


def testbed_trained(name: str, epochs: int) -> str:
    return (f'to convergence on 7,600 images of the 8,000-image Animal-MNIST train split (400 held out) for {epochs} '
            f'epochs (`python benchmarks/train_testbed.py {name}`; curve: benchmarks/results/{name}_curve.json)')


@dataclass(frozen=True)
class ModelFacts:
    display: str                                   # the model's name in prose
    top1: Optional[float]                          # dense top-1 (%) of the default weights
    top1_source: str                               # where that number comes from
    hub: Optional[Tuple[str, str]] = None          # (Hugging Face repo, file) of the upstream weights
    shipped: bool = False                          # weights trained here, inside the package
    pruned: Optional[Dict] = field(default=None)   # default schedule of the ``*_pruned`` name, if registered
    trained: Optional[str] = None                  # shipped weights: how they were trained (model cards)

    @property
    def weights(self) -> str:
        """Where ``pretrained=True`` takes the weights from, in words."""
        if self.shipped:
            return f"shipped: Animal-MNIST, {self.top1} % top-1"
        return f"`{self.hub[0]}` `{self.hub[1]}`"


# The package's default training-free reduction per family: the options beyond the paper that
# benchmarks/leaderboard.py found best on a selection set drawn from the training split (benchmarks/RESULTS.md,
# "Leaderboard"). The *_pruned names use them; ToP stays reachable with importance='clip', cls_position='middle'.
TRAINING_FREE = {
    'plainmamba': dict(reduction='merge', merge_partner='nearest'),
    'vim': dict(importance='cls', cls_position='raster'),
}

# Default schedules of the *_pruned names. PlainMamba: three evenly spaced stages, one keep rate solved with this
# package's FLOPs counter for -41.6 % FLOPs at 224 (the paper's PlainMamba-L3 figure; tests/test_pruning.py checks
# it). Vim: the paper's schedules.

FACTS: Dict[str, ModelFacts] = {
    'plainmamba_l1': ModelFacts('PlainMamba-L1', 77.9, PM_SOURCE, ('ChenhongyiYang/PlainMamba', 'l1.pth'),
                                pruned=dict(prune_layers=(6, 12, 18), keep_rate=0.433)),
    'plainmamba_l2': ModelFacts('PlainMamba-L2', 81.6, PM_SOURCE, ('ChenhongyiYang/PlainMamba', 'l2.pth'),
                                pruned=dict(prune_layers=(6, 12, 18), keep_rate=0.522)),
    'plainmamba_l3': ModelFacts('PlainMamba-L3', 82.3, PM_SOURCE, ('ChenhongyiYang/PlainMamba', 'l3.pth'),
                                pruned=dict(prune_layers=(9, 18, 27), keep_rate=0.576)),
    'plainmamba_mini': ModelFacts('PlainMamba-mini', 87.75, MINI_SOURCE, shipped=True, trained=MINI_TRAINED),
    'plainmamba_d12_mini': ModelFacts('PlainMamba-d12-mini (testbed)', 97.1, MINI_SOURCE, shipped=True,
                                      trained=testbed_trained('plainmamba_d12_mini', 20)),
    'vim_tiny_patch16_224': ModelFacts(
        'Vim-Ti', 76.1, VIM_SOURCE, ('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth'),
        pruned=dict(prune_layers=(10, 20), keep_rate=0.8)),
    'vim_small_patch16_224': ModelFacts(
        'Vim-S', 80.5, VIM_SOURCE, ('hustvl/Vim-small-midclstok', 'vim_s_midclstok_80p5acc.pth'),
        pruned=dict(prune_layers=(5, 10, 15), keep_rate=0.8)),
    'vim_base_patch16_224': ModelFacts(
        'Vim-B', 81.9, VIM_SOURCE, ('hustvl/Vim-base-midclstok', 'vim_b_midclstok_81p9acc.pth'),
        pruned=dict(prune_layers=(5, 10, 15), keep_rate=0.8)),
    'vim_tiny_patch16_stride8_224': ModelFacts(
        'Vim-Ti+ (stride-8 fine-tune)', 78.3, VIM_SOURCE,
        ('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_ft_78p3acc.pth')),
    'vim_small_patch16_stride8_224': ModelFacts(
        'Vim-S+ (stride-8 fine-tune)', 81.6, VIM_SOURCE,
        ('hustvl/Vim-small-midclstok', 'vim_s_midclstok_ft_81p6acc.pth')),
    'vim_mini': ModelFacts('Vim-mini', 77.95, MINI_SOURCE, shipped=True, trained=MINI_TRAINED),
    'vim_d12_mini': ModelFacts('Vim-d12-mini (testbed)', 96.8, MINI_SOURCE, shipped=True,
                               trained=testbed_trained('vim_d12_mini', 30)),
}

# ToP's published results (arXiv:2409.18962), after the paper's 30-epoch fine-tune of the pruned model.
PUBLISHED_TOP = {
    'vim_tiny_patch16_224_pruned': dict(top1=75.1, flops='1.29 GFLOPs', schedule='after blocks 10 and 20, keep 0.8'),
    'vim_small_patch16_224_pruned': dict(top1=78.8, flops='3.60 GFLOPs',
                                         schedule='after blocks 5, 10 and 15, keep 0.8'),
    'plainmamba_l3_pruned': dict(top1=81.7, flops='41.6 % fewer FLOPs than dense',
                                 schedule='stage positions not published'),
}


def pruned_defaults(prefix: str) -> Dict[str, Dict]:
    """Default configuration of a family's ``*_pruned`` names, keyed by variant (``'l1'``, ``'small'``, ...): the
    schedule of ``FACTS`` and the family's training-free options (``TRAINING_FREE``)."""
    options = TRAINING_FREE[prefix.rstrip('_')]
    return {name[len(prefix):].split('_')[0]: dict(f.pruned, **options) for name, f in FACTS.items()
            if name.startswith(prefix) and f.pruned}
