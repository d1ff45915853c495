"""Token pruning for vision SSMs: configuration, importance metrics, hidden state alignment, tracing."""
from .alignment import ScanOrder, condensed_grid, gather_tokens, restrict_scan_order
from .config import ALIGNMENTS, IMPORTANCE_METRICS, PruneConfig, PruneStage, evenly_spaced_stages, keep_count
from .importance import select_tokens, token_importance
from .trace import kept_masks, trace_kept_tokens

__all__ = [
    'PruneConfig', 'PruneStage', 'IMPORTANCE_METRICS', 'ALIGNMENTS', 'keep_count', 'evenly_spaced_stages',
    'token_importance', 'select_tokens', 'ScanOrder', 'restrict_scan_order', 'condensed_grid', 'gather_tokens',
    'trace_kept_tokens', 'kept_masks',
]
