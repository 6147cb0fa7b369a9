"""The built-in first-100 MNIST / CIFAR-10 test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.data import DATASETS, load_dataset
from nnbound.data.builtin_images import load_builtin_arrays
from nnbound.errors import InputError

CSV_DIR = Path("/work/shared/data")  # the ERAN CSVs the assets were made from, when present


def test_mnist100() -> None:
    ds = load_dataset("mnist100")
    assert len(ds) == 100 and ds.shape == (1, 28, 28) and ds.name == "mnist100"
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert ds.input_range == (-0.5, 0.5)
    assert float(ds.images.min()) == -0.5 and float(ds.images.max()) == 0.5
    assert "eth-sri/eran" in ds.source
    # a 7 has ink in the middle rows and blank corners
    assert float(ds.images[0, 0, 0, 0]) == -0.5 and float(ds.images[0].max()) > 0.4


def test_cifar100_is_cifar10_images_chw() -> None:
    ds = load_dataset("cifar100")
    assert len(ds) == 100 and ds.shape == (3, 32, 32)
    assert ds.labels[:7].tolist() == [3, 8, 8, 0, 6, 6, 1]
    assert ds.class_names[3] == "cat" and ds.num_classes == 10
    assert "CIFAR-10" in DATASETS["cifar100"]


@pytest.mark.parametrize("name", ["mnist100", "cifar100"])
def test_pixel_range_conversion(name: str) -> None:
    raw, _ = load_builtin_arrays(name)
    unit = load_dataset(name, input_range=(0.0, 1.0))
    ref = load_dataset(name)
    np.testing.assert_allclose(unit.images.numpy(), raw / 255.0, atol=1e-7)
    np.testing.assert_allclose(ref.images.numpy(), raw / 255.0 - 0.5, atol=1e-7)
    sym = load_dataset(name, input_range=(-1, 1))
    torch.testing.assert_close(sym.images, 2 * unit.images - 1, atol=1e-6, rtol=0)
    # exact grid points: v = 0 -> lo, v = 255 -> hi
    assert float(sym.images.min()) == -1.0 and float(sym.images.max()) == 1.0


@pytest.mark.skipif(not CSV_DIR.is_dir(), reason="source CSVs not available")
@pytest.mark.parametrize(
    ("name", "csv", "hwc"),
    [
        ("mnist100", "mnist_test_100.csv", (28, 28, 1)),
        ("cifar100", "cifar10_test_100.csv", (32, 32, 3)),
    ],
)
def test_assets_match_the_source_csv(name: str, csv: str, hwc: tuple[int, int, int]) -> None:
    rows = np.loadtxt(CSV_DIR / csv, delimiter=",", dtype=np.int64)
    images, labels = load_builtin_arrays(name)
    assert labels.tolist() == rows[:, 0].tolist()
    # CSV rows are HWC; the asset is CHW
    assert np.array_equal(images, rows[:, 1:].reshape(-1, *hwc).transpose(0, 3, 1, 2))


def test_only_a_test_split() -> None:
    with pytest.raises(InputError, match=r"only a 'test' split"):
        load_dataset("mnist100", split="train")


def test_full_sets_point_to_the_builtin_ones() -> None:
    with pytest.raises(InputError) as exc:
        load_dataset("mnist")
    assert "--data-dir" in str(exc.value) and "'mnist100'" in str(exc.value)
    assert set(DATASETS) >= {"digits", "mnist", "cifar", "mnist100", "cifar100"}
