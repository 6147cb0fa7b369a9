"""Certified bounds of network outputs over input sets."""

from nnbound.bounds.api import bounds
from nnbound.bounds.methods import ALL_METHODS, LAYERWISE_METHODS, METHODS, layerwise_bounds
from nnbound.bounds.result import Bounds, IntermediateBounds
from nnbound.bounds.spectral import spectral_lipschitz

__all__ = [
    "ALL_METHODS",
    "LAYERWISE_METHODS",
    "METHODS",
    "Bounds",
    "IntermediateBounds",
    "bounds",
    "layerwise_bounds",
    "spectral_lipschitz",
]
