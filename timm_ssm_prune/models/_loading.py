"""Loading upstream checkpoints safely: ``torch.load(weights_only=True)`` with an allow-list, or safetensors."""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any, Dict, Sequence, Union

import torch
from torch import Tensor

__all__ = ['load_checkpoint_file', 'unwrap_checkpoint', 'ALLOWED_GLOBALS']

# The only non-tensor class the official checkpoints pickle: Vim's training ``args`` (an argparse.Namespace).
ALLOWED_GLOBALS = (argparse.Namespace,)


def load_checkpoint_file(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a ``.safetensors`` file, or a torch pickle with ``weights_only=True`` and only ``ALLOWED_GLOBALS``
    allowed; any other pickled class is refused with an error naming it (nothing outside the allow-list runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        return load_file(str(path), device='cpu')
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            unsafe = []
        names = ', '.join(g for g in unsafe if g not in {f'{c.__module__}.{c.__qualname__}' for c in ALLOWED_GLOBALS})
        raise pickle.UnpicklingError(
            f"refusing to load {path}: it pickles objects outside the allow-list "
            f"({names or 'see below'}); only tensors, containers and argparse.Namespace are accepted. "
            f"Convert trusted files to safetensors with `timm-ssm-prune convert`.") from e


def unwrap_checkpoint(obj: Any, keys: Sequence[str]) -> Dict[str, Tensor]:
    """Return the state dict inside a training checkpoint: the first of ``keys`` holding a dict, else ``obj``."""
    if not isinstance(obj, dict):
        raise TypeError(f"expected a checkpoint dict, got {type(obj).__name__}")
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, dict):
            return inner
    return obj
