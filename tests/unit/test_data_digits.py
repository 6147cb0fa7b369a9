"""scikit-learn digits: shapes, the documented split, pixel scaling, Dataset checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from nnbound.data import DATASETS, Dataset, load_dataset
from nnbound.data.digits import split_indices
from nnbound.errors import InputError


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    bunch = sk_load_digits()
    return bunch.images, bunch.target


def test_split_sizes_shapes_and_dtypes() -> None:
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1347, 450)
    assert train.shape == test.shape == (1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.long
    assert train.num_classes == 10 and train.class_names[3] == "3"
    assert train.input_range == (-0.5, 0.5)
    assert "random_state=0" in test.source and test.name == "digits"
    assert "digits" in DATASETS


def test_split_is_disjoint_stratified_and_deterministic(raw) -> None:
    _, target = raw
    tr, te = split_indices(target)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(target)
    assert (np.diff(tr) > 0).all() and (np.diff(te) > 0).all()
    # stratified: every class has 25% +- 1 image of its members in the test split
    for c in range(10):
        n_c, t_c = (target == c).sum(), (target[te] == c).sum()
        assert abs(t_c - 0.25 * n_c) <= 1
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_pixel_scaling_matches_the_documented_formula(raw) -> None:
    images, target = raw
    _, te = split_indices(target)
    unit = load_dataset("digits", input_range=(0.0, 1.0))
    np.testing.assert_allclose(unit.images[:, 0].numpy(), images[te] / 16.0, atol=1e-7)
    assert torch.equal(unit.labels, torch.from_numpy(target[te]).long())
    ref = load_dataset("digits")  # default (-0.5, 0.5)
    torch.testing.assert_close(ref.images, unit.images - 0.5, atol=1e-7, rtol=0)
    wide = load_dataset("digits", input_range=(-1, 3))
    torch.testing.assert_close(wide.images, unit.images * 4 - 1, atol=1e-6, rtol=0)
    assert float(ref.images.min()) == -0.5 and float(ref.images.max()) == 0.5


@pytest.mark.parametrize("bad", [(1.0, 0.0), (0.0, 0.0), (0.0, float("inf")), (0.0,), "ab"])
def test_bad_input_range_is_refused(bad) -> None:
    with pytest.raises(InputError, match=r"input_range"):
        load_dataset("digits", input_range=bad)


def test_unknown_name_and_split() -> None:
    with pytest.raises(InputError, match=r"unknown dataset 'imagenet'.*digits"):
        load_dataset("imagenet")
    with pytest.raises(InputError, match=r"unknown split 'val'"):
        load_dataset("digits", split="val")


def test_dataset_record_validates_itself() -> None:
    img = torch.zeros(3, 1, 2, 2)
    ok = Dataset(img, torch.tensor([0, 1, 1]), "t", (0.0, 1.0), ("a", "b"))
    assert len(ok) == 3 and ok.shape == (1, 2, 2) and "n=3" in repr(ok)
    assert len(ok.subset(slice(0, 2))) == 2 and ok.subset([2]).labels.tolist() == [1]
    with pytest.raises(InputError, match=r"labels must lie"):
        Dataset(img, torch.tensor([0, 1, 2]), "t", (0.0, 1.0), ("a", "b"))
    with pytest.raises(InputError, match=r"int64"):
        Dataset(img, torch.tensor([0, 1, 1], dtype=torch.int32), "t", (0.0, 1.0), ("a", "b"))
    with pytest.raises(InputError, match=r"3 images"):
        Dataset(img, torch.tensor([0, 1]), "t", (0.0, 1.0), ("a", "b"))
    with pytest.raises(InputError, match=r"outside input_range"):
        Dataset(img + 2, torch.tensor([0, 1, 1]), "t", (0.0, 1.0), ("a", "b"))
    with pytest.raises(InputError, match=r"NaN"):
        Dataset(img * float("nan"), torch.tensor([0, 1, 1]), "t", (0.0, 1.0), ("a", "b"))
    with pytest.raises(InputError, match=r"float"):
        Dataset(img.long(), torch.tensor([0, 1, 1]), "t", (0.0, 1.0), ("a", "b"))
