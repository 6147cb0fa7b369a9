"""The :class:`Dataset` record and the one pixel convention every loader uses.

Pixel convention (the same for every source): a raw value ``v`` in ``[0, vmax]`` (``vmax`` is
255 for MNIST/CIFAR uint8 pixels, 16 for scikit-learn's 8x8 digits) maps to

    x = v / vmax * (hi - lo) + lo        with (lo, hi) = input_range

so ``input_range=(-0.5, 0.5)`` (the default, and the convention of the RecurJac/CROWN/Fast-Lin
references: ``x / 255 - 0.5``) gives images in ``[-0.5, 0.5]`` and ``(0, 1)`` gives the usual
``x / 255``. eps is always measured in this input space: an L_inf eps of 0.1 under
``(-0.5, 0.5)`` is 25.5 grey levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from nnbound.errors import InputError

DEFAULT_INPUT_RANGE: tuple[float, float] = (-0.5, 0.5)
"""The references' convention: pixels ``v / 255 - 0.5``."""

SPLITS: tuple[str, ...] = ("train", "test")


def check_input_range(input_range: tuple[float, float] | list[float]) -> tuple[float, float]:
    """``input_range`` as a ``(lo, hi)`` pair of floats, or :class:`InputError` if not finite or
    not ``lo < hi``."""
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise InputError(f"input_range must be a pair (low, high), got {input_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"input_range must be finite with low < high, got {input_range!r}")
    return (lo, hi)


def check_split(split: str, allowed: tuple[str, ...] = SPLITS) -> str:
    """``split`` if it is one of ``allowed``, else :class:`InputError`."""
    if split not in allowed:
        raise InputError(f"unknown split {split!r}; expected one of: {', '.join(allowed)}")
    return split


def scale_pixels(raw: np.ndarray, vmax: float, input_range: tuple[float, float]) -> Tensor:
    """Raw pixel values ``raw`` (any shape, values in ``[0, vmax]``) as a float32 tensor in
    ``input_range``: ``raw / vmax * (hi - lo) + lo``.

    Computed in float64 and rounded once to float32, so ``(-0.5, 0.5)`` gives exactly the
    float32 nearest to ``v / 255 - 0.5``.
    """
    lo, hi = check_input_range(input_range)
    x = np.asarray(raw, dtype=np.float64) / float(vmax) * (hi - lo) + lo
    # Clip the float64 rounding error of ``v / vmax * (hi - lo) + lo`` at v = vmax.
    x = np.clip(x, lo, hi)
    return torch.from_numpy(x.astype(np.float32))


@dataclass(frozen=True, eq=False)
class Dataset:
    """Labelled images ready to feed a :class:`~nnbound.network.Network`.

    Attributes:
        images: float32 tensor ``(N, *shape)`` (e.g. ``(N, 1, 28, 28)``, channels first),
            already scaled to ``input_range`` (see the module docstring).
        labels: int64 tensor ``(N,)`` with values in ``[0, len(class_names))``.
        name: the dataset name it was loaded as (``"mnist"``, ``"digits"``, ...).
        input_range: ``(lo, hi)``, the domain of every pixel; eps lives in this space.
        class_names: one name per class; its length is the number of classes.
        source: where the data came from (files, package asset or library call, split rule).

    Construction checks dtypes, shapes, label range and that pixels lie in ``input_range``.
    """

    images: Tensor
    labels: Tensor
    name: str
    input_range: tuple[float, float]
    class_names: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_range", check_input_range(self.input_range))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not isinstance(self.images, Tensor) or not torch.is_floating_point(self.images):
            raise InputError(f"dataset {self.name}: images must be a float tensor")
        if self.images.dim() < 2:
            raise InputError(
                f"dataset {self.name}: images must be (N, *shape), got {tuple(self.images.shape)}"
            )
        if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.long:
            raise InputError(f"dataset {self.name}: labels must be an int64 (long) tensor")
        if self.labels.shape != (self.images.shape[0],):
            raise InputError(
                f"dataset {self.name}: {self.images.shape[0]} images but labels have shape "
                f"{tuple(self.labels.shape)}"
            )
        if not self.class_names:
            raise InputError(f"dataset {self.name}: class_names is empty")
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise InputError(
                f"dataset {self.name}: labels must lie in [0, {len(self.class_names) - 1}], "
                f"got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )
        if self.images.numel():
            lo, hi = self.input_range
            if not bool(torch.isfinite(self.images).all()):
                raise InputError(f"dataset {self.name}: images contain NaN or inf")
            # float32 rounding of a bound that float32 cannot hold exactly (e.g. 0.1) may land
            # a hair outside it; allow that, nothing more.
            tol = 1e-6 * max(1.0, abs(lo), abs(hi))
            if float(self.images.min()) < lo - tol or float(self.images.max()) > hi + tol:
                raise InputError(
                    f"dataset {self.name}: pixels span [{float(self.images.min()):g}, "
                    f"{float(self.images.max()):g}], outside input_range {self.input_range}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one image, without the batch axis (e.g. ``(1, 28, 28)``)."""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: slice | Tensor | list[int] | range) -> Dataset:
        """The images and labels selected by ``index`` (a slice, index list or bool mask)."""
        if isinstance(index, (list, range)):
            index = torch.as_tensor(list(index), dtype=torch.long)
        return replace(self, images=self.images[index], labels=self.labels[index])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, shape={self.shape}, "
            f"classes={self.num_classes}, input_range={self.input_range})"
        )
