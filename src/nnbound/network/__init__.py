"""The network IR, its importers and exporters."""

from nnbound.network.layers import (
    ACTIVATIONS,
    Activation,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    Layer,
    MaxPool2d,
    Normalize,
    Reshape,
)
from nnbound.network.native import load_network, save_network
from nnbound.network.network import Network
from nnbound.network.to_torch import to_torch

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "AvgPool2d",
    "Conv2d",
    "Dense",
    "Flatten",
    "Layer",
    "MaxPool2d",
    "Network",
    "Normalize",
    "Reshape",
    "load_network",
    "save_network",
    "to_torch",
]
