"""The first 100 real MNIST and CIFAR-10 test images, shipped inside the package.

Datasets ``mnist100`` (``(100, 1, 28, 28)``, labels begin 7,2,1,0,4,1,4,9,5,9) and
``cifar100`` (``(100, 3, 32, 32)``, CHW, labels begin 3,8,8,0,6,6,1) -- the latter is
*not* CIFAR-100, it is 100 CIFAR-10 images. Source: the public ERAN repository (eth-sri/eran,
``data/``), converted by ``scripts/make_builtin_data.py`` into
``nnbound/assets/data/{mnist,cifar10}_test_100.npz`` (uint8 ``images`` + ``labels``; read with
``allow_pickle=False``). Only a ``test`` split exists.
"""

from __future__ import annotations

import zipfile
from importlib import resources

import numpy as np
import torch

from nnbound.data.cifar import CIFAR10_CLASSES
from nnbound.data.dataset import Dataset, scale_pixels
from nnbound.data.mnist import MNIST_CLASSES
from nnbound.errors import InputError

# dataset name -> (asset file, image shape (C, H, W), class names, description of the origin)
BUILTIN: dict[str, tuple[str, tuple[int, int, int], tuple[str, ...], str]] = {
    "mnist100": ("mnist_test_100.npz", (1, 28, 28), MNIST_CLASSES, "MNIST"),
    "cifar100": ("cifar10_test_100.npz", (3, 32, 32), CIFAR10_CLASSES, "CIFAR-10"),
}


def load_builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``(100, C, H, W)``, labels uint8 ``(100,)``) of built-in set ``name``."""
    asset, shape, _, _ = BUILTIN[name]
    # nnbound may be a namespace package (MultiplexedPath): join one part at a time.
    ref = resources.files("nnbound") / "assets" / "data" / asset
    try:
        with ref.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        # A broken install, not a user error, but still worth one clear line.
        raise InputError(
            f"built-in data asset {asset} is missing or corrupt ({exc}); reinstall nnbound or "
            "rerun scripts/make_builtin_data.py"
        ) from None
    if images.dtype != np.uint8 or images.shape[1:] != shape or labels.shape != images.shape[:1]:
        raise InputError(f"built-in data asset {asset} has unexpected arrays {images.shape}")
    return images, labels


def load_builtin(name: str, split: str, input_range: tuple[float, float]) -> Dataset:
    """Built-in set ``name`` (``mnist100`` or ``cifar100``) scaled to ``input_range``."""
    if split != "test":
        raise InputError(
            f"built-in dataset {name} has only a 'test' split (100 test images), not {split!r}"
        )
    asset, _, classes, origin = BUILTIN[name]
    images, labels = load_builtin_arrays(name)
    return Dataset(
        images=scale_pixels(images, 255.0, input_range),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=name,
        input_range=input_range,
        class_names=classes,
        source=(
            f"first {len(labels)} {origin} test images, package asset {asset} "
            "(from the ERAN repository eth-sri/eran data/)"
        ),
    )
