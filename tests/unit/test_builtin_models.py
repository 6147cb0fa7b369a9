"""The shipped built-in models: metadata, accuracy on real images, and agreement with the
authors' original PyTorch state dicts (tests/data/torch)."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.errors import InputError
from nnbound.network import Normalize
from nnbound.network.builtin import (
    BUILTIN_MODELS,
    BUILTIN_SOURCES,
    builtin_architecture,
    load_builtin,
)
from nnbound.network.from_torch import from_torch, load_state_dict

DATA = Path(__file__).resolve().parents[1] / "data" / "torch"

# Accuracy on the first 100 test images, measured when the models were converted
# (scripts/make_builtin_models.py). The authors report ~98-99% on MNIST for these.
MEASURED = {
    "mnist-fc-3layer": 0.99,
    "mnist-cnn-small": 0.97,
    "mnist-a-adv": 0.98,
    "mnist-kw": 0.99,
    "cifar-2c2f": 0.43,
}


@functools.cache
def _images(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 100 test images shipped with the package: (N, C, H, W) in [0, 1], labels."""
    name = "mnist_test_100.npz" if dataset == "mnist" else "cifar10_test_100.npz"
    ref = resources.files("nnbound").joinpath("assets", "data", name)
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as d:
        images, labels = d["images"], d["labels"]
    return torch.tensor(images, dtype=torch.float32) / 255.0, torch.tensor(
        labels, dtype=torch.int64
    )


def _accuracy(model: torch.nn.Module | object, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())  # type: ignore[operator]


def test_names_and_unknown_name() -> None:
    assert set(BUILTIN_MODELS) == set(MEASURED) == set(BUILTIN_SOURCES)
    with pytest.raises(InputError, match="available: cifar-2c2f, mnist-a-adv"):
        load_builtin("mnist-nope")


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_builtin_metadata_and_accuracy_on_real_images(name: str) -> None:
    net = load_builtin(name)
    dataset = "cifar10" if name.startswith("cifar") else "mnist"
    assert net.name == name
    assert net.input_shape == ((3, 32, 32) if dataset == "cifar10" else (1, 28, 28))
    assert net.input_range == (0.0, 1.0)
    assert net.dtype == torch.float32
    assert net.meta["dataset"] == dataset
    assert net.meta["source"] and net.meta["architecture"]
    assert float(net.meta["accuracy_first100"]) == MEASURED[name]
    x, y = _images(dataset)
    assert _accuracy(net, x, y) >= MEASURED[name] - 0.01


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_original_state_dict_reproduces_pytorch_and_equals_builtin(name: str) -> None:
    file_name, _, input_shape = BUILTIN_SOURCES[name]
    module = builtin_architecture(name)
    module.load_state_dict(load_state_dict(DATA / file_name), strict=True)
    module.eval()
    net = from_torch(module, input_shape, input_range=(0.0, 1.0))
    x, _ = _images("cifar10" if name.startswith("cifar") else "mnist")
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    builtin = load_builtin(name)
    assert len(builtin.layers) == len(net.layers)
    for a, b in zip(builtin.layers, net.layers, strict=True):
        assert type(a) is type(b)
        for key, t in a.tensors().items():
            assert torch.equal(t, b.tensors()[key])


def test_cifar_2c2f_expects_raw_pixels_not_cifar_normalisation() -> None:
    """The finding recorded in the model's meta: the usual CIFAR mean/std hurts accuracy."""
    net = load_builtin("cifar-2c2f")
    assert not any(isinstance(layer, Normalize) for layer in net.layers)
    x, y = _images("cifar10")
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert _accuracy(net, x, y) > _accuracy(net, (x - mean) / std, y) + 0.05
