"""timm-ssm-prune: token pruning (ToP, NeurIPS 2024) for vision state space models, as timm models.

``import timm_ssm_prune`` registers every model of the package with timm, so that
``timm.create_model('plainmamba_l3_pruned', pretrained=True)`` works.
"""
from timm import create_model, list_models  # noqa: F401  (re-exported for discoverability)

from . import models  # noqa: F401  (registers the models with timm)
from .flops import count_flops, flops_breakdown  # noqa: F401
from .ops import selective_scan  # noqa: F401

__version__ = '0.1.0'
