"""Token pruning for vision SSMs: configuration, importance metrics and hidden state alignment."""
from .alignment import ScanOrder, condensed_grid, gather_tokens, restrict_scan_order
from .config import ALIGNMENTS, IMPORTANCE_METRICS, PruneConfig, PruneStage, evenly_spaced_stages, keep_count
from .importance import select_tokens, token_importance
from .trace import kept_masks, trace_kept_tokens
