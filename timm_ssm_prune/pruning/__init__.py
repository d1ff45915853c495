"""Token pruning for vision SSMs: configuration, importance, the reducer layer, layouts, the stage loop."""
from .config import ALIGNMENTS, IMPORTANCE_METRICS, PruneConfig, PruneStage, evenly_spaced_stages, keep_count
from .importance import select_tokens, token_importance
from .layout import TokenLayout, condensed_grid, gather_tokens, restrict_scan_order, scatter_to_grid, skipped_before
from .reducer import Reduction, TokenReducer
from .solver import solve_flops_reduction
from .stages import PrunableMixin
from .trace import kept_masks, trace_kept_tokens

__all__ = [
    'PruneConfig', 'PruneStage', 'IMPORTANCE_METRICS', 'ALIGNMENTS', 'keep_count', 'evenly_spaced_stages',
    'token_importance', 'select_tokens', 'TokenLayout', 'restrict_scan_order', 'condensed_grid', 'gather_tokens',
    'scatter_to_grid', 'skipped_before', 'TokenReducer', 'Reduction', 'solve_flops_reduction', 'PrunableMixin',
    'trace_kept_tokens', 'kept_masks',
]
