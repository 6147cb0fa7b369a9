"""scikit-learn's bundled 8x8 handwritten digits (1797 images, shipped with sklearn: no download).

Split (deterministic, documented so results can be reproduced elsewhere):
``sklearn.model_selection.train_test_split(np.arange(1797), test_size=0.25, random_state=0,
stratify=target)``, each side then sorted by original index -> 1347 train / 450 test images.
Pixels are integers 0..16 and are scaled with ``v / 16 * (hi - lo) + lo``.
"""

from __future__ import annotations

import numpy as np
import torch

from nnbound.data.dataset import Dataset, check_split, scale_pixels

TEST_SIZE = 0.25
RANDOM_STATE = 0
DIGIT_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))


def split_indices(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of the documented stratified split, each sorted ascending."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(target)), test_size=TEST_SIZE, random_state=RANDOM_STATE, stratify=target
    )
    return np.sort(train), np.sort(test)


def load_digits(split: str, input_range: tuple[float, float]) -> Dataset:
    """The ``split`` ("train" or "test") of the digits, images ``(N, 1, 8, 8)``."""
    check_split(split)
    # Imported lazily: sklearn is heavy and only this loader needs it.
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.asarray(bunch.images)  # (1797, 8, 8), float64 values 0..16
    target = np.asarray(bunch.target)
    train, test = split_indices(target)
    idx = train if split == "train" else test
    return Dataset(
        images=scale_pixels(images[idx][:, None, :, :], 16.0, input_range),
        labels=torch.from_numpy(target[idx].astype(np.int64)),
        name="digits",
        input_range=input_range,
        class_names=DIGIT_CLASSES,
        source=(
            f"sklearn.datasets.load_digits, {split} split of train_test_split("
            f"test_size={TEST_SIZE}, random_state={RANDOM_STATE}, stratify=target), sorted"
        ),
    )
