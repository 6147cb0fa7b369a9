"""AlexNet in torchvision's single-tower variant ("One weird trick", Krizhevsky 2014):
``features`` (5 convolutions, 3 max pools; indices 0..12), ``avgpool`` (adaptive 6x6),
``classifier`` (Dropout, Linear 9216-4096, ReLU, Dropout, Linear 4096-4096, ReLU, Linear).
"""

from __future__ import annotations

from torch import Tensor, nn


class AlexNet(nn.Module):
    """Input ``(B, 3, H, W)`` with H, W >= 63, output logits ``(B, num_classes)``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def alexnet(name: str = "alexnet", num_classes: int = 1000) -> AlexNet:
    """AlexNet (``name`` must be ``"alexnet"``)."""
    if name != "alexnet":
        raise KeyError(name)
    return AlexNet(num_classes)


__all__ = ["AlexNet", "alexnet"]
