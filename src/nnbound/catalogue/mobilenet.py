"""MobileNetV2 (Sandler et al., 2018) and MobileNetV3 small / large (Howard et al., 2019) in
torchvision's layout: ``features`` (stem, inverted-residual blocks, last 1x1 convolution) and
``classifier``. Each ``ConvNormAct`` is an ``nn.Sequential`` (conv ``0``, batch norm ``1``,
activation ``2``), as torchvision's ``Conv2dNormActivation``.
"""

from __future__ import annotations

from torch import Tensor, nn

from nnbound.catalogue.blocks import ConvNormAct, make_divisible

# -- MobileNetV2 --------------------------------------------------------------------------------

# expansion t, output channels c, repeats n, first stride s
_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidualV2(nn.Module):
    """``conv``: [1x1 expand (ReLU6) when t != 1], 3x3 depthwise (ReLU6), 1x1 linear projection
    + batch norm; a residual connection when the stride is 1 and channels are unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(cin, hidden, 1, activation=nn.ReLU6))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """Width 1.0. Input ``(B, 3, H, W)``, output logits ``(B, num_classes)``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        cin = make_divisible(32)
        last = make_divisible(1280)
        layers: list[nn.Module] = [ConvNormAct(3, cin, 3, 2, activation=nn.ReLU6)]
        for t, c, n, s in _V2_SETTING:
            cout = make_divisible(c)
            for i in range(n):
                layers.append(InvertedResidualV2(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(ConvNormAct(cin, last, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(x.flatten(1))


# -- MobileNetV3 --------------------------------------------------------------------------------

# input c, kernel, expanded c, output c, squeeze-excite, activation (RE = ReLU, HS = hardswish),
# stride
_V3_LARGE = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)
_V3_SMALL = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
)
_V3_LAST = {"mobilenet_v3_large": (_V3_LARGE, 1280), "mobilenet_v3_small": (_V3_SMALL, 1024)}
_BN = {"bn_eps": 1e-3, "bn_momentum": 0.01}


class SqueezeExcitation(nn.Module):
    """Channel gate: global average pool -> 1x1 conv ``fc1`` -> ReLU -> 1x1 conv ``fc2`` ->
    hard sigmoid, multiplied into the input."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class InvertedResidualV3(nn.Module):
    """``block``: [1x1 expand], kxk depthwise, [squeeze-excite], 1x1 projection (no
    activation); residual when stride 1 and channels unchanged."""

    def __init__(
        self, cin: int, kernel: int, hidden: int, cout: int, se: bool, act: str, stride: int
    ) -> None:
        super().__init__()
        activation: type[nn.Module] = nn.Hardswish if act == "HS" else nn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(ConvNormAct(cin, hidden, 1, activation=activation, **_BN))
        layers.append(
            ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, activation=activation, **_BN)
        )
        if se:
            layers.append(SqueezeExcitation(hidden, make_divisible(hidden // 4)))
        layers.append(ConvNormAct(hidden, cout, 1, activation=None, **_BN))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """Width 1.0. Input ``(B, 3, H, W)``, output logits ``(B, num_classes)``."""

    def __init__(self, variant: str, num_classes: int = 1000) -> None:
        super().__init__()
        setting, last = _V3_LAST[variant]
        layers: list[nn.Module] = [
            ConvNormAct(3, setting[0][0], 3, 2, activation=nn.Hardswish, **_BN)
        ]
        layers += [InvertedResidualV3(*row) for row in setting]
        cin = setting[-1][3]
        layers.append(ConvNormAct(cin, 6 * cin, 1, activation=nn.Hardswish, **_BN))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * cin, last),
            nn.Hardswish(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(last, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def mobilenet(name: str, num_classes: int = 1000) -> nn.Module:
    """``mobilenet_v2``, ``mobilenet_v3_small`` or ``mobilenet_v3_large`` (KeyError else)."""
    if name == "mobilenet_v2":
        return MobileNetV2(num_classes)
    if name not in _V3_LAST:
        raise KeyError(name)
    return MobileNetV3(name, num_classes)


__all__ = ["MobileNetV2", "MobileNetV3", "mobilenet"]
