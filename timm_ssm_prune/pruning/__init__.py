"""Token pruning for vision SSMs: configuration, importance, the reducer layer, layouts, the stage loop."""
from .config import (ALIGNMENTS, CLS_POSITIONS, IMPORTANCE_METRICS, MERGE_PARTNERS, REDUCTIONS, PruneConfig, PruneStage,
                     evenly_spaced_stages, keep_count)
from .importance import ScanSignal, select_tokens, token_importance
from .layout import TokenLayout, condensed_grid, gather_tokens, restrict_scan_order, scatter_to_grid, skipped_before
from .reducer import MergePlan, Reduction, TokenReducer, add_token_work, merge_average, record_token_work
from .solver import solve_flops_reduction
from .stages import PrunableMixin
from .trace import kept_masks, trace_kept_tokens

__all__ = [
    'PruneConfig', 'PruneStage', 'IMPORTANCE_METRICS', 'ALIGNMENTS', 'REDUCTIONS', 'CLS_POSITIONS', 'MERGE_PARTNERS',
    'keep_count', 'evenly_spaced_stages', 'token_importance', 'select_tokens', 'ScanSignal', 'MergePlan',
    'merge_average', 'record_token_work', 'add_token_work', 'TokenLayout', 'restrict_scan_order', 'condensed_grid',
    'gather_tokens', 'scatter_to_grid', 'skipped_before', 'TokenReducer', 'Reduction', 'solve_flops_reduction', 'PrunableMixin',
    'trace_kept_tokens', 'kept_masks',
]
