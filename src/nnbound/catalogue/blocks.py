"""Building blocks shared by several catalogue architectures.

Module names inside each block follow torchvision's, so that a torchvision state dict loads
into the catalogue model with ``strict=True`` (the names are part of the checkpoint format).
"""

from __future__ import annotations

from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), bumped
    up one step when rounding lost more than 10% (the MobileNet channel rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormAct(nn.Sequential):
    """``Conv2d`` (no bias) -> ``BatchNorm2d`` -> optional activation, as children ``0``, ``1``,
    ``2`` (torchvision's ``Conv2dNormActivation`` layout). Padding keeps the size at stride 1.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: square kernel side.
        stride: convolution stride.
        groups: convolution groups (``in_channels`` for a depthwise convolution).
        activation: activation module class, or None for none.
        bn_eps, bn_momentum: batch-norm settings (MobileNetV3 uses 1e-3 and 0.01).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                (kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


def init_like_torchvision(model: nn.Module) -> nn.Module:
    """Random initialisation in torchvision's usual scheme: convolutions Kaiming-normal
    (fan-out, ReLU gain), batch norms weight 1 / bias 0, linear layers N(0, 0.01) / bias 0.
    Draws from torch's global generator (seed it first). Returns ``model``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model


__all__ = ["ConvNormAct", "init_like_torchvision", "make_divisible"]
