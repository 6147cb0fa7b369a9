"""The catalogue: ImageNet-size architectures by name, with what a user needs to know about
each (input size, torchvision's preprocessing, parameter count, torchvision's weight file).

Every architecture is written here in plain torch with torchvision's module names and shapes,
so torchvision's state dicts load with ``strict=True``. ``params`` is the count torchvision
publishes for its ImageNet weights (``weights.meta["num_params"]``); the tests pin it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from nnbound.catalogue.alexnet import alexnet
from nnbound.catalogue.densenet import densenet, rename_legacy_keys
from nnbound.catalogue.inception import inception
from nnbound.catalogue.mobilenet import mobilenet
from nnbound.catalogue.resnet import resnet
from nnbound.catalogue.squeezenet import squeezenet
from nnbound.catalogue.vgg import vgg
from nnbound.errors import InputError

WEIGHTS_URL = "https://download.pytorch.org/models/"
"""Where torchvision's ImageNet weight files are published (download them yourself; nnbound
never downloads anything)."""


def _drop_aux_if_absent(state: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """Inception: a checkpoint with the auxiliary head loads into a model built without it."""
    if getattr(model, "AuxLogits", None) is None:
        return {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    return dict(state)


@dataclass(frozen=True)
class Architecture:
    """One catalogue entry.

    Attributes:
        name: torchvision's function name (``resnet50``).
        family: ``resnet``, ``vgg``, ...
        build: ``build(name, num_classes) -> nn.Module`` (logits from normalised pixels).
        params: parameter count with 1000 classes (torchvision's published figure).
        crop: input side (center crop) of the published weights, 224 or 299.
        resize: shorter side the image is resized to before the crop (256 or 342).
        min_size: the smallest input side the architecture accepts.
        weights_file: torchvision's file name of the ImageNet weights (under
            :data:`WEIGHTS_URL`).
        description: one line for ``nnbound models``.
        adapt: maps a checkpoint's state dict onto the model's key names (default: as is).
    """

    name: str
    family: str
    build: Callable[[str, int], nn.Module]
    params: int
    weights_file: str
    description: str
    crop: int = 224
    resize: int = 256
    min_size: int = 32
    adapt: Callable[[Mapping[str, Any], nn.Module], dict[str, Any]] | None = None


def _entries() -> dict[str, Architecture]:
    rows: list[Architecture] = []
    for name, params, file, depth in (
        ("resnet18", 11_689_512, "resnet18-f37072fd.pth", 18),
        ("resnet34", 21_797_672, "resnet34-b627a593.pth", 34),
        ("resnet50", 25_557_032, "resnet50-0676ba61.pth", 50),
        ("resnet101", 44_549_160, "resnet101-63fe2227.pth", 101),
        ("resnet152", 60_192_808, "resnet152-394f9c45.pth", 152),
    ):
        rows.append(
            Architecture(
                name,
                "resnet",
                resnet,
                params,
                file,
                f"ResNet-{depth} (residual; He et al. 2016)",
                min_size=1,
            )
        )
    for name, params, file in (
        ("vgg11", 132_863_336, "vgg11-8a719046.pth"),
        ("vgg11_bn", 132_868_840, "vgg11_bn-6002323d.pth"),
        ("vgg13", 133_047_848, "vgg13-19584684.pth"),
        ("vgg13_bn", 133_053_736, "vgg13_bn-abd245e5.pth"),
        ("vgg16", 138_357_544, "vgg16-397923af.pth"),
        ("vgg16_bn", 138_365_992, "vgg16_bn-6c64b313.pth"),
        ("vgg19", 143_667_240, "vgg19-dcbb9e9d.pth"),
        ("vgg19_bn", 143_678_248, "vgg19_bn-c79401a0.pth"),
    ):
        bn = " with batch norm" if name.endswith("_bn") else ""
        rows.append(
            Architecture(
                name,
                "vgg",
                vgg,
                params,
                file,
                f"VGG-{name[3:5]}{bn} (plain conv stack; Simonyan & Zisserman 2015)",
                min_size=32,
            )
        )
    rows.append(
        Architecture(
            "alexnet",
            "alexnet",
            alexnet,
            61_100_840,
            "alexnet-owt-7be5be79.pth",
            "AlexNet, one-tower variant (Krizhevsky 2014)",
            min_size=63,
        )
    )
    rows.append(
        Architecture(
            "mobilenet_v2",
            "mobilenet",
            mobilenet,
            3_504_872,
            "mobilenet_v2-b0353104.pth",
            "MobileNetV2 (inverted residuals; Sandler et al. 2018)",
            min_size=1,
        )
    )
    rows.append(
        Architecture(
            "mobilenet_v3_small",
            "mobilenet",
            mobilenet,
            2_542_856,
            "mobilenet_v3_small-047dcff4.pth",
            "MobileNetV3-Small (squeeze-excite, hardswish; Howard et al. 2019)",
            min_size=1,
        )
    )
    rows.append(
        Architecture(
            "mobilenet_v3_large",
            "mobilenet",
            mobilenet,
            5_483_032,
            "mobilenet_v3_large-8738ca79.pth",
            "MobileNetV3-Large (squeeze-excite, hardswish; Howard et al. 2019)",
            min_size=1,
        )
    )
    for name, params, file in (
        ("densenet121", 7_978_856, "densenet121-a639ec97.pth"),
        ("densenet161", 28_681_000, "densenet161-8d451a50.pth"),
        ("densenet169", 14_149_480, "densenet169-b2777c0a.pth"),
        ("densenet201", 20_013_928, "densenet201-c1103571.pth"),
    ):
        rows.append(
            Architecture(
                name,
                "densenet",
                densenet,
                params,
                file,
                f"DenseNet-{name[8:]} (concatenating blocks; Huang et al. 2017)",
                min_size=29,
                adapt=lambda s, _m: rename_legacy_keys(s),
            )
        )
    rows.append(
        Architecture(
            "inception_v3",
            "inception",
            inception,
            27_161_264,
            "inception_v3_google-0cc3c7bd.pth",
            "Inception-v3 with auxiliary head (Szegedy et al. 2016)",
            crop=299,
            resize=342,
            min_size=75,
            adapt=_drop_aux_if_absent,
        )
    )
    rows.append(
        Architecture(
            "squeezenet1_0",
            "squeezenet",
            squeezenet,
            1_248_424,
            "squeezenet1_0-b66bff10.pth",
            "SqueezeNet 1.0 (fire modules; Iandola et al. 2016)",
            min_size=21,
        )
    )
    rows.append(
        Architecture(
            "squeezenet1_1",
            "squeezenet",
            squeezenet,
            1_235_496,
            "squeezenet1_1-b8a52dc0.pth",
            "SqueezeNet 1.1 (fire modules)",
            min_size=17,
        )
    )
    return {a.name: a for a in rows}


CATALOGUE: dict[str, Architecture] = _entries()
"""Architecture name -> :class:`Architecture`."""


def get_architecture(name: str) -> Architecture:
    """The catalogue entry ``name`` (:class:`InputError` naming the choices otherwise)."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise InputError(
            f"unknown catalogue architecture {name!r}; available: {', '.join(CATALOGUE)}"
        ) from None


def is_catalogue_name(name: object) -> bool:
    """True if ``name`` is a string naming a catalogue architecture."""
    return isinstance(name, str) and name in CATALOGUE


__all__ = ["CATALOGUE", "WEIGHTS_URL", "Architecture", "get_architecture", "is_catalogue_name"]
