"""DenseNet-121/161/169/201 (Huang et al., "Densely Connected Convolutional Networks", 2017;
the BC variant) in torchvision's layout: ``features`` = ``conv0``, ``norm0``, ``relu0``,
``pool0``, ``denseblock{1..4}`` (each ``denselayer{j}`` = ``norm1``, ``relu1``, ``conv1``,
``norm2``, ``relu2``, ``conv2``), ``transition{1..3}`` (``norm``, ``relu``, ``conv``,
``pool``), ``norm5``; then ``classifier``.

torchvision's published checkpoints predate that naming and store ``denselayerJ.norm.1``
where the module is ``denselayerJ.norm1``; :func:`rename_legacy_keys` maps them (torchvision
does the same when it loads its own weights).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# growth rate k, layers per block, stem channels
_CONFIGS: dict[str, tuple[int, tuple[int, int, int, int], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}
_BN_SIZE = 4  # bottleneck width = 4 k

_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (4k channels)-BN-ReLU-3x3 conv (k channels) on the concatenation of
    every earlier feature map of the block."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, _BN_SIZE * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(_BN_SIZE * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(_BN_SIZE * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.Module):
    """``n`` dense layers; the output concatenates the input and every layer's output."""

    def __init__(self, n: int, cin: int, growth: int) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.children():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN, ReLU, 1x1 conv halving the channels, 2x2 average pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("norm", nn.BatchNorm2d(cin)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("conv", nn.Conv2d(cin, cout, 1, bias=False)),
                    ("pool", nn.AvgPool2d(2, 2)),
                ]
            )
        )


class DenseNet(nn.Module):
    """Input ``(B, 3, H, W)`` with H, W >= 29, output logits ``(B, num_classes)``."""

    def __init__(
        self, growth: int, blocks: tuple[int, int, int, int], stem: int, num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(3, stem, 7, 2, 3, bias=False)),
                    ("norm0", nn.BatchNorm2d(stem)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(3, 2, 1)),
                ]
            )
        )
        c = stem
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth))
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.features(x))
        return self.classifier(F.adaptive_avg_pool2d(x, (1, 1)).flatten(1))


def densenet(name: str, num_classes: int = 1000) -> DenseNet:
    """``densenet121``, ``densenet161``, ``densenet169`` or ``densenet201`` (KeyError else)."""
    growth, blocks, stem = _CONFIGS[name]
    return DenseNet(growth, blocks, stem, num_classes)


def rename_legacy_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """``...denselayerJ.norm.1.weight`` -> ``...denselayerJ.norm1.weight`` (likewise ``relu``,
    ``conv``, ``.2.``): the key names of torchvision's published DenseNet files. Other keys
    are kept as they are, in order."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        m = _LEGACY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


__all__ = ["DenseNet", "densenet", "rename_legacy_keys"]
