"""Low-level operators: the selective scan and the causal depthwise conv1d."""
from .conv import CAUSAL_CONV1D_INSTALL_HINT, causal_conv1d, causal_conv1d_available
from .decay import decay_selective_scan
from .scan import (
    CUDA_INSTALL_HINT, cuda_kernels_available, record_scan_calls, scan_flops, selective_scan,
    selective_scan_ref, set_chunk_size,
)

__all__ = [
    'selective_scan', 'selective_scan_ref', 'decay_selective_scan', 'scan_flops',
    'cuda_kernels_available',
    'record_scan_calls', 'set_chunk_size', 'CUDA_INSTALL_HINT',
    'causal_conv1d', 'causal_conv1d_available', 'CAUSAL_CONV1D_INSTALL_HINT',
]
