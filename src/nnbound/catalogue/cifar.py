"""CIFAR-size ResNets (32x32 inputs): the ResNet-18 / 34 of the certified-training and
verification literature (3x3 stride-1 stem, no max pool, four stages of basic blocks at
widths ``w, 2w, 4w, 8w``, global average pool, linear), built from the catalogue's
:class:`~nnbound.catalogue.resnet.BasicBlock`. With ``w = 64`` it has ResNet-18's widths
(11.2 M parameters) and keeps 32x32 feature maps in its first stage, so it is the benchmark
size for graph bounds; smaller ``width`` / ``depths`` make test-size nets.

There are no published weights: :func:`cifar_resnet` draws seeded random ones, and by default
calibrates the batch-norm statistics on random inputs so activations keep unit scale through
the depth (plain random statistics let them grow by orders of magnitude, which makes every
bound meaningless).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nnbound.catalogue.blocks import init_like_torchvision
from nnbound.catalogue.resnet import BasicBlock, ResNet
from nnbound.errors import InputError

_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class CifarResNet(ResNet):
    """Input ``(B, 3, H, W)`` (32x32 for CIFAR), output logits ``(B, num_classes)``."""

    def __init__(
        self, depths: Sequence[int], width: int = 64, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        nn.Module.__init__(self)
        if not depths or any(d < 1 for d in depths) or width < 1:
            raise InputError(f"CIFAR ResNet needs positive depths and width, got {depths}, {width}")
        self._cin = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.stages = nn.Sequential(
            *(
                self._stage(BasicBlock, width * 2**i, n, 1 if i == 0 else 2)
                for i, n in enumerate(depths)
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self._cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def _calibrate(model: nn.Module, shape: tuple[int, ...], gen: torch.Generator) -> None:
    """Batch-norm running statistics from one batch of uniform random inputs."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.rand(32, *shape, generator=gen))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    model.eval()


def cifar_resnet(
    depth: int | Sequence[int] = 18,
    *,
    width: int = 64,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    calibrate: bool = True,
    dtype: torch.dtype = torch.float32,
) -> CifarResNet:
    """A CIFAR ResNet in eval mode with seeded random weights, parameters frozen.

    Args:
        depth: 18 or 34, or the number of basic blocks per stage (e.g. ``(1, 1)``: two
            stages, for tests).
        width: channels of the first stage (64: ResNet-18's widths).
        num_classes: outputs.
        image_size: input side (for the batch-norm calibration).
        seed: seed of the weights and of the calibration inputs.
        calibrate: set the batch-norm statistics from random inputs (see the module
            docstring); otherwise they are torch's defaults (mean 0, variance 1).
        dtype: parameter dtype.
    """
    if isinstance(depth, int):
        if depth not in _DEPTHS:
            raise InputError(
                f"CIFAR ResNet depth must be 18 or 34 (or blocks per stage), got {depth}"
            )
        depths: Sequence[int] = _DEPTHS[depth]
    else:
        depths = tuple(int(d) for d in depth)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = init_like_torchvision(CifarResNet(depths, width, num_classes))
    if calibrate:
        _calibrate(model, (3, image_size, image_size), gen)
    return model.to(dtype).eval().requires_grad_(False)


__all__ = ["CifarResNet", "cifar_resnet"]
