"""Datasets for training and evaluating the pruned models.

Currently one small real-image dataset, Animal-MNIST (10 classes of 28x28 grey animal silhouettes, MIT licence),
materialised once as an ImageFolder tree that ``timm.data.create_dataset('', root=..., split=...)`` can read.
"""
from .animal_mnist import (  # noqa: F401
    CLASS_NAMES,
    WHEEL_FILENAME,
    WHEEL_SHA256,
    ChecksumError,
    RestrictedNumpyUnpickler,
    default_root,
    duplicate_groups,
    load_arrays,
    prepare_animal_mnist,
    stratified_split,
)

__all__ = [
    'CLASS_NAMES', 'WHEEL_FILENAME', 'WHEEL_SHA256', 'ChecksumError', 'RestrictedNumpyUnpickler',
    'default_root', 'duplicate_groups', 'load_arrays', 'prepare_animal_mnist', 'stratified_split',
]
