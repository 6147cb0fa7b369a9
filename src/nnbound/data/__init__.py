"""Datasets (digits, MNIST, CIFAR-10, built-in test images) and user input arrays.

Pixel convention: raw ``v`` in ``[0, vmax]`` -> ``v / vmax * (hi - lo) + lo`` with
``(lo, hi) = input_range`` (default ``(-0.5, 0.5)``, the references'); eps lives in that space.
"""

from nnbound.data.arrays import load_array
from nnbound.data.dataset import DEFAULT_INPUT_RANGE, Dataset, scale_pixels
from nnbound.data.registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "DEFAULT_INPUT_RANGE",
    "Dataset",
    "load_array",
    "load_dataset",
    "scale_pixels",
]
