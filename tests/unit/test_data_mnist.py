"""MNIST IDX parsing: plain and gzipped files written here, and every way they can be broken."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.data import load_dataset
from nnbound.data.mnist import read_idx
from nnbound.errors import InputError

TYPE_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def idx_bytes(arr: np.ndarray, type_code: int | None = None) -> bytes:
    """IDX encoding of ``arr``: 0x0000, type byte, ndim byte, big-endian uint32 dims, data."""
    code = TYPE_CODES[arr.dtype.type] if type_code is None else type_code
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_mnist(
    folder: Path, n: int = 5, gz: bool = False, split: str = "t10k", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # make the full range appear
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / f"{split}-images-idx3-ubyte", idx_bytes(images), gz)
    write(folder / f"{split}-labels-idx1-ubyte", idx_bytes(labels), gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_loads_plain_and_gzipped(tmp_path: Path, gz: bool) -> None:
    images, labels = make_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.shape == (1, 28, 28) and len(ds) == 5 and ds.name == "mnist"
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    expected = images.astype(np.float64)[:, None] / 255 - 0.5
    np.testing.assert_allclose(ds.images.numpy(), expected, atol=1e-7)
    assert ds.images.dtype == torch.float32
    unit = load_dataset("mnist", data_dir=str(tmp_path), input_range=(0, 1))
    np.testing.assert_allclose(unit.images.numpy(), expected + 0.5, atol=1e-7)


def test_train_split_and_torchvision_layout(tmp_path: Path) -> None:
    _, labels = make_mnist(tmp_path / "MNIST" / "raw", n=7, split="train", gz=True)
    ds = load_dataset("mnist", split="train", data_dir=tmp_path)
    assert len(ds) == 7 and ds.labels.tolist() == labels.tolist()
    assert "train-images-idx3-ubyte.gz" in ds.source


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    p = tmp_path / "plain-but-named.gz"
    p.write_bytes(idx_bytes(arr))
    assert np.array_equal(read_idx(p), arr)
    q = tmp_path / "gzipped"
    q.write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(q), arr)


@pytest.mark.parametrize("dtype", list(TYPE_CODES))
def test_read_idx_round_trips_every_type(tmp_path: Path, dtype) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    out = read_idx(write(tmp_path / "a.idx", idx_bytes(arr)))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert np.array_equal(out, arr)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data_is_refused(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    p = write(tmp_path / "x", data[:-10], gz)
    with pytest.raises(InputError, match=r"truncated IDX data.*2342") as exc:
        read_idx(p)
    assert str(p) in str(exc.value)


def test_truncated_header_and_empty_file(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(InputError, match=r"truncated IDX header"):
        read_idx(write(tmp_path / "h", data[:9]))
    with pytest.raises(InputError, match=r"not an IDX file.*missing"):
        read_idx(write(tmp_path / "e", b""))


def test_huge_declared_size_fails_fast_as_truncation(tmp_path: Path) -> None:
    head = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 60000, 28, 100000)
    with pytest.raises(InputError, match=r"truncated IDX data"):
        read_idx(write(tmp_path / "big", head + b"\x00" * 100, gz=True))


def test_bad_magic_unknown_type_and_trailing_bytes(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros(4, np.uint8))
    with pytest.raises(InputError, match=r"not an IDX file"):
        read_idx(write(tmp_path / "m", b"\x01" + good[1:]))
    with pytest.raises(InputError, match=r"unknown IDX data type 0x07"):
        read_idx(write(tmp_path / "t", idx_bytes(np.zeros(4, np.uint8), type_code=0x07)))
    with pytest.raises(InputError, match=r"0 dimensions"):
        read_idx(write(tmp_path / "z", bytes([0, 0, 8, 0])))
    with pytest.raises(InputError, match=r"trailing bytes"):
        read_idx(write(tmp_path / "g", good + b"\x00"))
    with pytest.raises(InputError, match=r"file not found"):
        read_idx(tmp_path / "nope")


def test_corrupt_gzip_stream(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    with pytest.raises(InputError, match=r"cannot read"):
        read_idx(write(tmp_path / "c", blob[:12] + b"\xff" * 20 + blob[32:]))
    with pytest.raises(InputError, match=r"cannot read|truncated"):
        read_idx(write(tmp_path / "cut", blob[: len(blob) // 2]))


def test_mnist_specific_checks(tmp_path: Path) -> None:
    make_mnist(tmp_path, n=4)
    lab = tmp_path / "t10k-labels-idx1-ubyte"
    lab.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(InputError, match=r"3 labels for 4 images"):
        load_dataset("mnist", data_dir=tmp_path)
    lab.write_bytes(idx_bytes(np.array([0, 1, 10, 2], np.uint8)))
    with pytest.raises(InputError, match=r"label 10 is not a digit"):
        load_dataset("mnist", data_dir=tmp_path)
    lab.write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((4, 27, 28), np.uint8)))
    with pytest.raises(InputError, match=r"expected uint8 images \(N, 28, 28\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_missing_files_and_no_data_dir_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--data-dir") as exc:
        load_dataset("mnist")
    assert "mnist100" in str(exc.value)
    with pytest.raises(InputError, match=r"not found.*mnist100"):
        load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(InputError, match=r"not a folder"):
        load_dataset("mnist", data_dir=tmp_path / "absent")
    make_mnist(tmp_path)  # test files only: the train split is still missing
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte"):
        load_dataset("mnist", split="train", data_dir=tmp_path)
