"""Catalogue models as computation graphs (:class:`~nnbound.network.graph.Graph`), the form
certified bounds take: the residual / concatenating architectures (ResNet, DenseNet,
MobileNet, SqueezeNet, ...) convert with
:func:`~nnbound.network.from_torch_graph.from_torch_graph`, the ImageNet normalisation
included, so eps is measured in ``[0, 1]`` pixels as for the torch model.

>>> from nnbound.catalogue.graph import catalogue_graph
>>> graph = catalogue_graph("resnet18", image_size=32)      # random weights, seed 0
>>> graph.input_shape, graph.input_range
((3, 32, 32), (0.0, 1.0))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from nnbound.catalogue.cifar import cifar_resnet
from nnbound.catalogue.model import ImageClassifier, build_model
from nnbound.network.from_torch_graph import from_torch_graph
from nnbound.network.graph import Graph


def as_graph(model: ImageClassifier) -> Graph:
    """The catalogue model ``model`` (normalisation and network) as a graph on ``[0, 1]``
    pixels; its meta records the architecture and where the weights came from."""
    graph = from_torch_graph(
        model, model.input_shape, name=model.name, input_range=model.input_range
    )
    return graph.with_meta(architecture=model.name, weights=model.weights)


def catalogue_graph(
    name: str,
    *,
    weights: str | Path | None = None,
    seed: int = 0,
    image_size: int | None = None,
    num_classes: int = 1000,
    dtype: torch.dtype = torch.float32,
) -> Graph:
    """Catalogue architecture ``name`` as a graph (arguments as
    :func:`~nnbound.catalogue.model.build_model`; random weights unless ``weights``).

    Raises:
        InputError: unknown name, image size below the minimum, bad weights file.
        UnsupportedError: an architecture with an operation the graph IR lacks.
    """
    model = build_model(
        name,
        weights=weights,
        seed=seed,
        image_size=image_size,
        num_classes=num_classes,
        dtype=dtype,
    )
    return as_graph(model)


def cifar_resnet_graph(
    depth: int | Sequence[int] = 18,
    *,
    width: int = 64,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Graph:
    """A CIFAR ResNet (:func:`~nnbound.catalogue.cifar.cifar_resnet`; ResNet-18's widths at
    32x32 by default) as a graph on ``[0, 1]`` inputs, for benchmarks."""
    model = cifar_resnet(
        depth,
        width=width,
        num_classes=num_classes,
        image_size=image_size,
        seed=seed,
        dtype=dtype,
    )
    label = f"cifar_resnet{depth}" if isinstance(depth, int) else "cifar_resnet"
    graph = from_torch_graph(
        model, (3, image_size, image_size), name=f"{label}_w{width}", input_range=(0.0, 1.0)
    )
    return graph.with_meta(weights=f"random (seed {seed})")


__all__ = ["as_graph", "catalogue_graph", "cifar_resnet_graph"]
