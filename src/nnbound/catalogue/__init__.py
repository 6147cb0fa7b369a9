"""ImageNet-size architectures written in plain torch with torchvision's parameter names, so
torchvision's state dicts load with ``strict=True``: ResNet-18..152, VGG-11..19 (+BN), AlexNet,
MobileNetV2/V3, DenseNet-121..201, Inception-v3, SqueezeNet 1.0/1.1.

They have residual / concatenating graphs, outside nnbound's sequential IR: CLEVER and the
attacks run on the torch models; certified bounds run on their graph form
(:func:`catalogue_graph`, :func:`as_graph`; ``load_model("resnet18")`` gives it too).
:func:`cifar_resnet` / :func:`cifar_resnet_graph` build CIFAR-size ResNets (32x32 inputs,
ResNet-18's widths by default) for benchmarks.

>>> from nnbound.catalogue import build_model
>>> model = build_model("resnet18", image_size=64)          # random weights, seed 0
>>> model.weights.startswith("random")
True
"""

from nnbound.catalogue.cifar import CifarResNet, cifar_resnet
from nnbound.catalogue.graph import as_graph, catalogue_graph, cifar_resnet_graph
from nnbound.catalogue.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageClassifier,
    build_model,
    count_parameters,
)
from nnbound.catalogue.registry import (
    CATALOGUE,
    WEIGHTS_URL,
    Architecture,
    get_architecture,
    is_catalogue_name,
)
from nnbound.catalogue.weights import check_state_dict, read_state_dict

__all__ = [
    "CATALOGUE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WEIGHTS_URL",
    "Architecture",
    "CifarResNet",
    "ImageClassifier",
    "as_graph",
    "build_model",
    "catalogue_graph",
    "check_state_dict",
    "cifar_resnet",
    "cifar_resnet_graph",
    "count_parameters",
    "get_architecture",
    "is_catalogue_name",
    "read_state_dict",
]
