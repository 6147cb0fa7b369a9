"""VGG-11/13/16/19 with and without batch norm (Simonyan & Zisserman, 2015), in torchvision's
layout: ``features`` (a flat ``nn.Sequential`` of conv[/bn]/relu/max-pool, indexed 0, 1, ...),
``avgpool`` (adaptive, 7x7), ``classifier`` (Linear 25088-4096, ReLU, Dropout, Linear
4096-4096, ReLU, Dropout, Linear 4096-classes).
"""

from __future__ import annotations

from torch import Tensor, nn

# "M" is a 2x2 max pool, a number a 3x3 convolution with that many output channels.
_CONFIGS: dict[str, str] = {
    "vgg11": "64 M 128 M 256 256 M 512 512 M 512 512 M",
    "vgg13": "64 64 M 128 128 M 256 256 M 512 512 M 512 512 M",
    "vgg16": "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M",
    "vgg19": "64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M",
}


def _features(config: str, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in config.split():
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        cout = int(v)
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
        cin = cout
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Input ``(B, 3, H, W)`` with H, W >= 32, output logits ``(B, num_classes)``."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg(name: str, num_classes: int = 1000) -> VGG:
    """``vgg11`` ... ``vgg19`` or ``vgg11_bn`` ... ``vgg19_bn`` (KeyError for another name)."""
    base, bn = (name[:-3], True) if name.endswith("_bn") else (name, False)
    return VGG(_features(_CONFIGS[base], bn), num_classes)


__all__ = ["VGG", "vgg"]
