"""An ImageNet classifier on ``[0, 1]`` pixels: the catalogue architecture behind the usual
ImageNet mean/std normalisation, so eps (and CLEVER's sampling radii) live in pixel space.

:func:`build_model` makes one, with a user's weights or with seeded random weights (and then
says so: :attr:`ImageClassifier.weights` starts with ``"random"``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from nnbound.catalogue.blocks import init_like_torchvision
from nnbound.catalogue.registry import Architecture, get_architecture
from nnbound.catalogue.weights import load_into, read_state_dict
from nnbound.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RANDOM_WEIGHTS_WARNING = "scores are meaningless for a trained model"


class ImageClassifier(nn.Module):
    """``net((x - mean) / std)`` for pixels ``x`` in ``[0, 1]``, shape ``(B, 3, H, W)``;
    returns logits ``(B, num_classes)``.

    Attributes:
        net: the catalogue architecture (torchvision's parameter names).
        name: the architecture's name.
        input_shape: ``(3, H, W)``.
        input_range: ``(0.0, 1.0)``: the pixel domain, in which eps is measured.
        weights: where the weights came from (a path, or ``"random (seed S) - ..."``).
        arch: the catalogue entry.
    """

    def __init__(self, net: nn.Module, arch: Architecture, image_size: int, weights: str) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.name = arch.name
        self.input_shape = (3, image_size, image_size)
        self.input_range = (0.0, 1.0)
        self.weights = weights
        self.register_buffer(
            "mean",
            torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "std",
            torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1),
            persistent=False,
        )

    @property
    def device(self) -> torch.device:
        """The device of the parameters."""
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters."""
        return self.mean.dtype

    @property
    def random_weights(self) -> bool:
        """True when no weights file was loaded."""
        return self.weights.startswith("random")

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def build_model(
    name: str,
    *,
    weights: str | Path | None = None,
    seed: int = 0,
    image_size: int | None = None,
    num_classes: int = 1000,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ImageClassifier:
    """Catalogue model ``name`` in eval mode, parameters frozen (``requires_grad=False``).

    Args:
        name: a key of :data:`~nnbound.catalogue.registry.CATALOGUE`.
        weights: a ``.safetensors`` / ``.pth`` state dict (torchvision's, or any with the same
            keys and shapes); None = random weights drawn with ``seed``.
        seed: seed of the random initialisation (used when ``weights`` is None).
        image_size: input side (default: the architecture's crop, 224 or 299); smaller inputs
            are fine for tests, down to the architecture's ``min_size``.
        num_classes: classes of the output (1000 for torchvision's ImageNet weights).
        device, dtype: where and in what precision the model lives.

    Raises:
        InputError: unknown name, image size below the minimum, bad weights file.
    """
    arch = get_architecture(name)
    size = arch.crop if image_size is None else int(image_size)
    if size < max(arch.min_size, 1):
        raise InputError(
            f"{name} needs inputs of at least {arch.min_size}x{arch.min_size}, "
            f"got --image-size {size}"
        )
    if isinstance(num_classes, bool) or int(num_classes) < 2:
        raise InputError(f"num_classes must be >= 2, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = init_like_torchvision(arch.build(name, int(num_classes)))
    if weights is None:
        note = f"random (seed {seed}) - {RANDOM_WEIGHTS_WARNING}"
    else:
        state = read_state_dict(weights)
        if arch.adapt is not None:
            state = arch.adapt(state, net)
        load_into(net, state, str(weights))
        note = str(weights)
    model = ImageClassifier(net, arch, size, note)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements of ``module``."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RANDOM_WEIGHTS_WARNING",
    "ImageClassifier",
    "build_model",
    "count_parameters",
]
