"""Small real trained networks shipped with nnbound (``nnbound/assets/models/*.safetensors``).

Each was trained by others (certified or adversarial training) and converted once by
``scripts/make_builtin_models.py`` from the authors' PyTorch state dicts; each file stores the
network, ``input_range`` (0, 1) (pixels scaled to [0, 1]) and ``meta`` with the source, the
architecture and the accuracy measured on the first 100 test images.

:func:`builtin_architecture` gives the matching ``nn.Module`` with the authors' parameter names,
so the original ``.pth`` files can be loaded into it (``load_state_dict``) and compared.
"""

from __future__ import annotations

from importlib import resources

import torch.nn.functional as F
from torch import Tensor, nn

from nnbound.errors import InputError
from nnbound.network.native import load_network
from nnbound.network.network import Network

__all__ = ["BUILTIN_MODELS", "builtin_architecture", "load_builtin"]

BUILTIN_MODELS: dict[str, str] = {
    "mnist-fc-3layer": "MNIST MLP 784-128-64-10, ReLU (auto_LiRPA example model)",
    "mnist-cnn-small": "MNIST CNN 2 conv (8, 16 ch) + 256 dense, ReLU (auto_LiRPA example model)",
    "mnist-a-adv": "MNIST CNN 2 conv (16, 32 ch) + 100 dense, ReLU, adversarially trained "
    "(auto_LiRPA)",
    "mnist-kw": "MNIST CNN 2 conv (16, 32 ch) + 100 dense, ReLU, provably robust at eps=0.1 "
    "(Wong & Kolter 2018)",
    "cifar-2c2f": "CIFAR-10 CNN 2 conv (4, 4 ch) + 32 dense, ReLU, raw [0,1] pixels "
    "(auto_LiRPA example model)",
}
"""Built-in model name -> one-line description."""

# name -> (original file in /work/shared/models and tests/data/torch, source, input shape)
BUILTIN_SOURCES: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "mnist-fc-3layer": (
        "mnist_fc_3layer.pth",
        "auto_LiRPA examples/vision/pretrained/mnist_fc_3layer.pth",
        (1, 28, 28),
    ),
    "mnist-cnn-small": (
        "mnist_cnn_small.pth",
        "auto_LiRPA examples/vision/pretrained/mnist_cnn_small.pth",
        (1, 28, 28),
    ),
    "mnist-a-adv": (
        "mnist_a_adv.pth",
        "auto_LiRPA examples/vision/pretrain/mnist_a_adv.pth",
        (1, 28, 28),
    ),
    "mnist-kw": (
        "kw_mnist.pth",
        "locuslab/convex_adversarial (Wong & Kolter 2018 provably robust MNIST model, eps 0.1)",
        (1, 28, 28),
    ),
    "cifar-2c2f": (
        "cifar_2c2f.pth",
        "auto_LiRPA examples/vision/pretrained/cifar_2c2f.pth",
        (3, 32, 32),
    ),
}


class MnistFc3Layer(nn.Module):
    """auto_LiRPA's ``mnist_fc_3layer``: ``x.view(-1, 784)`` -> fc1 (128) -> ReLU -> fc2 (64)
    -> ReLU -> fc3 (10). Input ``(B, 1, 28, 28)``, output ``(B, 10)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(-1, 784)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class MnistCnnSmall(nn.Module):
    """auto_LiRPA's ``cnn_MNIST`` (``mnist_cnn_small.pth``): conv1 (8, 4x4, s2, p1) -> ReLU ->
    conv2 (16, 4x4, s2, p1) -> ReLU -> ``view(-1, 784)`` -> fc1 (256) -> ReLU -> fc2 (10).
    Input ``(B, 1, 28, 28)``, output ``(B, 10)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 4, stride=2, padding=1)
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = x.view(-1, 784)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def _mnist_small_sequential() -> nn.Sequential:
    """The Wong & Kolter "small" MNIST CNN (keys 0, 2, 5, 7)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def _cifar_2c2f() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 28 * 28, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def _check_name(name: str) -> None:
    if name not in BUILTIN_MODELS:
        raise InputError(
            f"unknown built-in model {name!r}; available: {', '.join(sorted(BUILTIN_MODELS))}"
        )


def builtin_architecture(name: str) -> nn.Module:
    """A freshly initialised ``nn.Module`` with built-in model ``name``'s architecture and the
    authors' parameter names (so their original state dict loads into it)."""
    _check_name(name)
    factories = {
        "mnist-fc-3layer": MnistFc3Layer,
        "mnist-cnn-small": MnistCnnSmall,
        "mnist-a-adv": _mnist_small_sequential,
        "mnist-kw": _mnist_small_sequential,
        "cifar-2c2f": _cifar_2c2f,
    }
    return factories[name]()


def load_builtin(name: str) -> Network:
    """Built-in model ``name`` (a key of :data:`BUILTIN_MODELS`) as a float32 network.

    Raises:
        InputError: unknown name (the message lists the available ones).
    """
    _check_name(name)
    ref = resources.files("nnbound").joinpath("assets", "models", f"{name}.safetensors")
    with resources.as_file(ref) as path:
        return load_network(path)
