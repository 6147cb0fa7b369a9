"""IBM ART (adversarial-robustness-toolbox) as an optional peer of the CLEVER benches.

ART is never a dependency: :func:`art_classifier` returns ``None`` when it does not import,
and the benches then skip its column.
"""

from __future__ import annotations

from typing import Any

import torch


def art_classifier(
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    nb_classes: int,
    clip_values: tuple[float, float] | None,
) -> Any | None:
    """ART's ``PyTorchClassifier`` around ``model`` (logits), or ``None`` without ART."""
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=nb_classes,
        clip_values=clip_values,
    )
