"""ImageNet-style image folders: torchvision's resize / center-crop geometry, [0, 1] pixels,
labels from a mapping file, from class-prefixed file names or none, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnbound.data.imagenet import list_images, load_image_folder, preprocess, read_label_map
from nnbound.errors import InputError


def _save(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(np.uint8)).save(path)


def test_resize_shorter_side_then_center_crop(tmp_path: Path) -> None:
    # 40 high x 80 wide, left half black, right half white, one red column in the middle:
    # resize 20 (short side) -> 20 x 40, crop 20 -> columns 10..29 of the resized image
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 40:] = 255
    _save(tmp_path / "a.png", arr)
    out = preprocess(tmp_path / "a.png", crop=20, resize=20)
    assert out.shape == (3, 20, 20) and out.dtype == np.uint8
    assert (out[:, :, :9] == 0).all() and (out[:, :, 11:] == 255).all()
    # a tall grey image: shorter side is the width
    _save(tmp_path / "b.png", np.full((90, 30, 3), 7))
    out = preprocess(tmp_path / "b.png", crop=16, resize=18)
    assert out.shape == (3, 16, 16) and (out == 7).all()


def test_grayscale_and_rgba_become_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((10, 10), 200, np.uint8), mode="L").save(tmp_path / "g.png")
    Image.fromarray(np.full((10, 10, 4), 100, np.uint8), mode="RGBA").save(tmp_path / "r.png")
    for name, v in (("g.png", 200), ("r.png", 100)):
        out = preprocess(tmp_path / name, crop=8, resize=8)
        assert out.shape == (3, 8, 8) and (out == v).all()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(4):
        _save(tmp_path / f"img{i}.jpg", rng.integers(0, 256, (30 + i, 40, 3)))
    (tmp_path / "notes.md").write_text("not an image")
    return tmp_path


def test_a_labelled_folder(folder: Path) -> None:
    (folder / "labels.csv").write_text(
        "file,label\nimg0.jpg,5\nimg1.jpg, 7\n# c\nimg2.jpg,0\nimg3.jpg,999\nunused.jpg,3\n"
    )
    data = load_image_folder(folder, crop=24, resize=28)
    assert data.images.shape == (4, 3, 24, 24) and data.images.dtype == torch.float32
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    assert data.labels is not None and data.labels.tolist() == [5, 7, 0, 999]
    assert data.files == ("img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg")
    assert "labels.csv" in data.source
    part = load_image_folder(folder, crop=24, resize=28, start=1, count=2)
    assert part.files == ("img1.jpg", "img2.jpg") and part.labels.tolist() == [7, 0]
    assert torch.equal(part.images, data.images[1:3])


def test_a_space_separated_label_file_elsewhere(folder: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("labels") / "val.txt"
    other.write_text("img0.jpg 1\nimg1.jpg 2\nimg2.jpg 3\nimg3.jpg 4\n")
    data = load_image_folder(folder, crop=16, resize=16, labels=other)
    assert data.labels.tolist() == [1, 2, 3, 4]


def test_labels_from_class_prefixed_names_as_the_reference(tmp_path: Path) -> None:
    _save(tmp_path / "139.00029510.jpg", np.zeros((20, 20, 3)))
    _save(tmp_path / "20.00000001.png", np.zeros((20, 20, 3)))
    data = load_image_folder(tmp_path, crop=16, resize=16)
    assert data.files == ("139.00029510.jpg", "20.00000001.png")
    assert data.labels.tolist() == [139, 20]
    _save(tmp_path / "7.png", np.zeros((20, 20, 3)))  # not CLASS.ID.EXT: no labels at all
    assert load_image_folder(tmp_path, crop=16, resize=16).labels is None


def test_no_labels_and_class_names(folder: Path) -> None:
    (folder / "class_names.txt").write_text("tench\ngoldfish\n")
    data = load_image_folder(folder, crop=16, resize=16)
    assert data.labels is None and data.class_names == ("tench", "goldfish")


def test_errors_are_clear(folder: Path, tmp_path_factory) -> None:
    with pytest.raises(InputError, match="image folder not found"):
        load_image_folder(folder / "nope")
    with pytest.raises(InputError, match="no images"):
        list_images(tmp_path_factory.mktemp("empty"))
    (folder / "labels.csv").write_text("img0.jpg,1\n")
    with pytest.raises(InputError, match=r"no label for img1\.jpg"):
        load_image_folder(folder, crop=16, resize=16)
    (folder / "labels.csv").write_text("img0.jpg,1\nimg1.jpg,cat\n")
    with pytest.raises(InputError, match=r"labels\.csv:2: label 'cat' is not an integer"):
        read_label_map(folder / "labels.csv")
    (folder / "labels.csv").write_text("img0.jpg,1000\nimg1.jpg,1\nimg2.jpg,1\nimg3.jpg,1\n")
    with pytest.raises(InputError, match=r"label 1000 of img0\.jpg is outside \[0, 1000\)"):
        load_image_folder(folder, crop=16, resize=16)
    (folder / "labels.csv").unlink()
    (folder / "img9.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"img9\.png: not a readable image"):
        load_image_folder(folder, crop=16, resize=16)
    with pytest.raises(InputError, match="--startimage 7 outside the 5 images"):
        load_image_folder(folder, start=7)
