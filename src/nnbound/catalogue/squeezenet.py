"""SqueezeNet 1.0 (Iandola et al., 2016) and 1.1 in torchvision's layout: ``features`` (a flat
``nn.Sequential`` of conv / ReLU / ceil-mode max pools / ``Fire`` modules with ``squeeze``,
``expand1x1``, ``expand3x3``) and ``classifier`` (Dropout, 1x1 conv to the classes at index
``1``, ReLU, global average pool).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Fire(nn.Module):
    """1x1 squeeze, then concatenated 1x1 and 3x3 expansions, each followed by ReLU."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, 2, ceil_mode=True)


class SqueezeNet(nn.Module):
    """``version`` ``"1_0"`` (H, W >= 21) or ``"1_1"`` (>= 17); logits ``(B, num_classes)``."""

    def __init__(self, version: str, num_classes: int = 1000) -> None:
        super().__init__()
        if version == "1_0":
            layers: list[nn.Module] = [
                nn.Conv2d(3, 96, 7, 2),
                nn.ReLU(inplace=True),
                _pool(),
                Fire(96, 16, 64, 64),
                Fire(128, 16, 64, 64),
                Fire(128, 32, 128, 128),
                _pool(),
                Fire(256, 32, 128, 128),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                _pool(),
                Fire(512, 64, 256, 256),
            ]
        elif version == "1_1":
            layers = [
                nn.Conv2d(3, 64, 3, 2),
                nn.ReLU(inplace=True),
                _pool(),
                Fire(64, 16, 64, 64),
                Fire(128, 16, 64, 64),
                _pool(),
                Fire(128, 32, 128, 128),
                Fire(256, 32, 128, 128),
                _pool(),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                Fire(512, 64, 256, 256),
            ]
        else:
            raise KeyError(version)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Conv2d(512, num_classes, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)).flatten(1)


def squeezenet(name: str, num_classes: int = 1000) -> SqueezeNet:
    """``squeezenet1_0`` or ``squeezenet1_1`` (KeyError else)."""
    if name not in ("squeezenet1_0", "squeezenet1_1"):
        raise KeyError(name)
    return SqueezeNet(name[-3:], num_classes)


__all__ = ["SqueezeNet", "squeezenet"]
